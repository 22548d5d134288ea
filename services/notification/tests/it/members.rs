//! The member cache: ListMembers is asked once per membership version of a channel
//! (counted by a forwarding proxy in front of messaging), and a join or a leave is never
//! missed however full the cache is.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use parley_proto::messaging::v1::{
    self as mpb,
    messaging_service_client::MessagingServiceClient,
    messaging_service_server::{MessagingService, MessagingServiceServer},
};
use tonic::{Request, Response, Status, transport::Channel};

use crate::{Env, as_user, env, pushed_messages};

/// A messaging service that forwards every call, as the same caller, to the real one and
/// counts the calls per method.
#[derive(Clone)]
struct Counting {
    upstream: MessagingServiceClient<Channel>,
    calls: Arc<Mutex<HashMap<&'static str, usize>>>,
}

impl Counting {
    fn count(&self, method: &'static str) {
        *self.calls.lock().expect("lock").entry(method).or_default() += 1;
    }
}

macro_rules! forward {
    ($($method:ident($req:ident) -> $resp:ident;)*) => {
        #[tonic::async_trait]
        impl MessagingService for Counting {
            $(
                async fn $method(
                    &self,
                    req: Request<mpb::$req>,
                ) -> Result<Response<mpb::$resp>, Status> {
                    self.count(stringify!($method));
                    let user = parley_kit::propagation::caller(&req)?;
                    self.upstream
                        .clone()
                        .$method(as_user(req.into_inner(), &user))
                        .await
                }
            )*

            // Items carry their own callers: no caller metadata to forward.
            async fn send_messages(
                &self,
                req: Request<mpb::SendMessagesRequest>,
            ) -> Result<Response<mpb::SendMessagesResponse>, Status> {
                self.count("send_messages");
                self.upstream.clone().send_messages(req.into_inner()).await
            }
        }
    };
}

forward! {
    create_channel(CreateChannelRequest) -> CreateChannelResponse;
    get_channel(GetChannelRequest) -> GetChannelResponse;
    update_channel(UpdateChannelRequest) -> UpdateChannelResponse;
    list_channels(ListChannelsRequest) -> ListChannelsResponse;
    list_channel_positions(ListChannelPositionsRequest) -> ListChannelPositionsResponse;
    list_members(ListMembersRequest) -> ListMembersResponse;
    filter_contacts(FilterContactsRequest) -> FilterContactsResponse;
    add_member(AddMemberRequest) -> AddMemberResponse;
    remove_member(RemoveMemberRequest) -> RemoveMemberResponse;
    set_member_role(SetMemberRoleRequest) -> SetMemberRoleResponse;
    list_public_channels(ListPublicChannelsRequest) -> ListPublicChannelsResponse;
    join_channel(JoinChannelRequest) -> JoinChannelResponse;
    create_invite(CreateInviteRequest) -> CreateInviteResponse;
    accept_invite(AcceptInviteRequest) -> AcceptInviteResponse;
    transfer_ownership(TransferOwnershipRequest) -> TransferOwnershipResponse;
    send_message(SendMessageRequest) -> SendMessageResponse;
    list_messages(ListMessagesRequest) -> ListMessagesResponse;
    edit_message(EditMessageRequest) -> EditMessageResponse;
    delete_message(DeleteMessageRequest) -> DeleteMessageResponse;
    set_archived(SetArchivedRequest) -> SetArchivedResponse;
    delete_channel(DeleteChannelRequest) -> DeleteChannelResponse;
    ban_member(BanMemberRequest) -> BanMemberResponse;
    unban_member(UnbanMemberRequest) -> UnbanMemberResponse;
    list_bans(ListBansRequest) -> ListBansResponse;
    mute_member(MuteMemberRequest) -> MuteMemberResponse;
    unmute_member(UnmuteMemberRequest) -> UnmuteMemberResponse;
    block_user(BlockUserRequest) -> BlockUserResponse;
    unblock_user(UnblockUserRequest) -> UnblockUserResponse;
    list_blocks(ListBlocksRequest) -> ListBlocksResponse;
    create_attachment(CreateAttachmentRequest) -> CreateAttachmentResponse;
    get_attachment(GetAttachmentRequest) -> GetAttachmentResponse;
    search_messages(SearchMessagesRequest) -> SearchMessagesResponse;
}

/// Starts the counting proxy in front of the stack's messaging.
async fn proxy(env: &Env) -> anyhow::Result<(SocketAddr, Counting)> {
    let counting = Counting {
        upstream: env.messaging.client.clone(),
        calls: Arc::default(),
    };
    let router = tonic::service::Routes::new(MessagingServiceServer::new(counting.clone()))
        .into_axum_router();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok((addr, counting))
}

/// Env with notification asking messaging through the counting proxy.
async fn counted() -> anyhow::Result<(Env, Counting)> {
    let mut env = env().await?;
    let (addr, counting) = proxy(&env).await?;
    let url = format!("http://{addr}");
    env.notification = Some(env.start(&[("PARLEY__MESSAGING__URL", &url)]).await?);
    Ok((env, counting))
}

fn list_members_calls(c: &Counting) -> usize {
    c.calls
        .lock()
        .expect("lock")
        .get("list_members")
        .copied()
        .unwrap_or(0)
}

#[tokio::test]
async fn member_lists_are_asked_once_per_membership_version() -> anyhow::Result<()> {
    let (env, counting) = counted().await?;
    let ch = env.group("alice", &["bob"]).await?;
    env.webhook("bob", "/hook/bob").await?;
    let mut sent = Vec::new();
    for i in 0..5 {
        sent.push(env.send("alice", &ch, &format!("m{i}")).await?);
        env.wait_consumed().await?;
    }
    env.wait_settled().await?;
    assert_eq!(
        list_members_calls(&counting),
        1,
        "one miss, then four hits at the same version"
    );
    // Every message pushed once; webhook deliveries may arrive in any order.
    let mut pushed = pushed_messages(&env.receiver.seen("/hook/bob"));
    pushed.sort();
    sent.sort();
    assert_eq!(pushed, sent);

    // A join changes the version: asked again once, then cached again.
    env.add_member("alice", &ch, "carol").await?;
    for i in 5..8 {
        env.send("alice", &ch, &format!("m{i}")).await?;
        env.wait_consumed().await?;
    }
    env.wait_settled().await?;
    assert_eq!(list_members_calls(&counting), 2);
    assert_eq!(pushed_messages(&env.receiver.seen("/hook/bob")).len(), 8);

    // The counters (process-wide: other tests in the same process may add to them).
    let hits = env
        .metric("notification_member_cache_total{result=\"hit\"}")
        .await?;
    let misses = env
        .metric("notification_member_cache_total{result=\"miss\"}")
        .await?;
    assert!(hits >= 6.0 && misses >= 2.0, "hits {hits}, misses {misses}");
    Ok(())
}

#[tokio::test]
async fn a_cached_member_list_never_outlives_a_join_or_a_leave() -> anyhow::Result<()> {
    let (env, counting) = counted().await?;
    let ch = env.group("alice", &["bob", "carol"]).await?;
    for u in ["bob", "carol", "dave"] {
        env.webhook(u, &format!("/hook/{u}")).await?;
    }
    // Fill the cache with {alice, bob, carol} and use it once.
    let m1 = env.send("alice", &ch, "one").await?;
    env.wait_settled().await?;
    let m2 = env.send("alice", &ch, "two").await?;
    env.wait_settled().await?;
    assert_eq!(list_members_calls(&counting), 1, "m2 came from the cache");

    // Same size, other members: only the version tells the lists apart.
    env.remove_member("alice", &ch, "carol").await?;
    env.add_member("alice", &ch, "dave").await?;
    let m3 = env.send("alice", &ch, "three").await?;
    env.wait_settled().await?;

    assert_eq!(
        pushed_messages(&env.receiver.seen("/hook/bob")),
        vec![m1.clone(), m2.clone(), m3.clone()]
    );
    assert_eq!(
        pushed_messages(&env.receiver.seen("/hook/carol")),
        vec![m1, m2],
        "carol left before m3 (offline, with a device): no push for it"
    );
    assert_eq!(
        pushed_messages(&env.receiver.seen("/hook/dave")),
        vec![m3],
        "dave joined before m3"
    );
    assert_eq!(list_members_calls(&counting), 2, "m3 was a miss");
    Ok(())
}

#[tokio::test]
async fn without_the_cache_every_message_asks_messaging() -> anyhow::Result<()> {
    let mut env = env().await?;
    let (addr, counting) = proxy(&env).await?;
    let url = format!("http://{addr}");
    env.notification = Some(
        env.start(&[
            ("PARLEY__MESSAGING__URL", &url),
            ("PARLEY__FANOUT__MEMBER_CACHE_CHANNELS", "0"),
        ])
        .await?,
    );
    let ch = env.group("alice", &["bob"]).await?;
    for i in 0..3 {
        env.send("alice", &ch, &format!("m{i}")).await?;
    }
    env.wait_consumed().await?;
    assert_eq!(list_members_calls(&counting), 3);
    Ok(())
}

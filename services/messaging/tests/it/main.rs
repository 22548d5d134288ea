//! Messaging integration tests: the gRPC service against real Postgres and Redis, called
//! directly (no gateway), to prove that the service that owns the data enforces the
//! guarantees itself.

mod authz;
mod batch;
mod events;
mod members;
mod overload;
mod seq;

use std::net::SocketAddr;

use parley_kit::propagation::with_user;
use parley_proto::messaging::v1::{self as pb, messaging_service_client::MessagingServiceClient};
use tonic::{Request, Status};

pub type Svc = MessagingServiceClient<tonic::transport::Channel>;

pub async fn client(addr: SocketAddr) -> anyhow::Result<Svc> {
    Ok(MessagingServiceClient::connect(format!("http://{addr}")).await?)
}

/// A request made on behalf of `user` (as the gateway does after verifying a token).
pub fn as_user<T>(user: &str, msg: T) -> Request<T> {
    with_user(Request::new(msg), user).expect("a valid user id")
}

/// Creates a group channel owned by `owner`; returns its id.
pub async fn group(svc: &mut Svc, owner: &str, members: &[&str]) -> anyhow::Result<String> {
    let req = pb::CreateChannelRequest {
        kind: pb::ChannelKind::Group as i32,
        name: "test".into(),
        members: members.iter().map(|m| (*m).to_owned()).collect(),
    };
    let resp = svc.create_channel(as_user(owner, req)).await?.into_inner();
    anyhow::ensure!(resp.created, "channel not created");
    Ok(resp.channel.map(|c| c.id).unwrap_or_default())
}

pub async fn send(
    svc: &mut Svc,
    user: &str,
    channel: &str,
    cid: &str,
    body: &str,
) -> Result<pb::SendMessageResponse, Status> {
    let req = pb::SendMessageRequest {
        attachment_ids: Vec::new(),
        channel_id: channel.to_owned(),
        client_msg_id: cid.to_owned(),
        body: body.to_owned(),
    };
    Ok(svc.send_message(as_user(user, req)).await?.into_inner())
}

/// Every message of `channel` in seq order, paged with `after`.
pub async fn all_messages(
    svc: &mut Svc,
    user: &str,
    channel: &str,
) -> anyhow::Result<Vec<pb::Message>> {
    let mut out: Vec<pb::Message> = Vec::new();
    loop {
        let after = out.last().map_or(0, |m| m.seq);
        let req = pb::ListMessagesRequest {
            channel_id: channel.to_owned(),
            before: None,
            after: Some(after),
            limit: 200,
        };
        let page = svc.list_messages(as_user(user, req)).await?.into_inner();
        out.extend(page.messages);
        if !page.has_more {
            return Ok(out);
        }
    }
}

/// Asserts `s` carries the API error `code` (gRPC code and the machine-readable tag).
#[track_caller]
pub fn assert_code(s: &Status, code: parley_kit::ErrorCode) {
    assert_eq!(s.code(), code.grpc_code(), "{s:?}");
    assert_eq!(parley_kit::ErrorCode::from_status(s), code, "{s:?}");
    assert!(!s.message().is_empty(), "{s:?}");
}

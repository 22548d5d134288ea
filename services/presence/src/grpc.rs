//! The gRPC face of presence: validates requests into domain types, runs the store's
//! scripts, publishes the transitions they report, converts results back to protobuf.

use std::{collections::HashSet, sync::Arc};

use parley_kit::{
    domain::{UserId, parse_uuid},
    propagation::{USER_ID_KEY, inject_map},
};
use parley_proto::presence::v1::{self as pb, presence_service_server::PresenceService};
use tonic::{Request, Response, Status};

use crate::{
    Config, Error,
    events::{self, Publisher},
    store::{Conn, Renewal, Store, Transition},
};

pub struct Presence {
    store: Store,
    publisher: Publisher,
    config: Arc<Config>,
}

impl Presence {
    pub fn new(store: Store, publisher: Publisher, config: Arc<Config>) -> Self {
        Self {
            store,
            publisher,
            config,
        }
    }

    /// The TTL of a request in ms: 0 means the default, otherwise within the configured range.
    fn ttl_ms(&self, ttl_seconds: u32) -> Result<u64, Error> {
        let c = &self.config.connections;
        let secs = match ttl_seconds {
            0 => c.default_ttl_secs,
            s if (c.min_ttl_secs..=c.max_ttl_secs).contains(&s) => s,
            s => {
                return Err(Error::invalid(format!(
                    "ttl_seconds {s} out of range {}-{} (0 = default)",
                    c.min_ttl_secs, c.max_ttl_secs
                )));
            }
        };
        Ok(u64::from(secs) * 1000)
    }

    /// A batch of connection references: 1 to `max_batch`, each valid.
    fn conns(&self, refs: &[pb::ConnectionRef]) -> Result<Vec<Conn>, Error> {
        let max = self.config.connections.max_batch;
        if refs.is_empty() || refs.len() > max {
            return Err(Error::invalid(format!(
                "{} connections; a batch holds 1-{max}",
                refs.len()
            )));
        }
        refs.iter()
            .map(|r| {
                let pb::ConnectionRef {
                    user_id,
                    connection_id,
                } = r;
                conn(user_id, connection_id)
            })
            .collect()
    }

    fn retention_ms(&self) -> u64 {
        self.config.retention.last_seen_secs.saturating_mul(1000)
    }
}

fn conn(user_id: &str, connection_id: &str) -> Result<Conn, Error> {
    Ok(Conn {
        user: UserId::parse(user_id)?,
        id: parse_uuid("connection_id", connection_id)?,
    })
}

/// A gateway node id: 1-128 characters, no control characters.
fn node(s: &str) -> Result<&str, Error> {
    let n = s.chars().count();
    if (1..=128).contains(&n) && !s.chars().any(char::is_control) {
        Ok(s)
    } else {
        Err(Error::invalid(
            "node_id must be 1-128 characters without control characters",
        ))
    }
}

/// RegisterConnection and Typing act for one end user: when the gateway says whom the call
/// is made for, it must be that user.
fn check_caller<T>(req: &Request<T>, user: &UserId) -> Result<(), Error> {
    match req.metadata().get(USER_ID_KEY) {
        None => Ok(()),
        Some(v) if v.to_str().is_ok_and(|v| v == user.as_str()) => Ok(()),
        Some(_) => Err(Error::PermissionDenied(format!(
            "the call is not made on behalf of {user}"
        ))),
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[tonic::async_trait]
impl PresenceService for Presence {
    #[tracing::instrument(skip_all, fields(user = %req.get_ref().user_id, node = %req.get_ref().node_id))]
    async fn register_connection(
        &self,
        req: Request<pb::RegisterConnectionRequest>,
    ) -> Result<Response<pb::RegisterConnectionResponse>, Status> {
        let user = UserId::parse(&req.get_ref().user_id).map_err(Error::from)?;
        check_caller(&req, &user)?;
        let pb::RegisterConnectionRequest {
            user_id,
            connection_id,
            node_id,
            ttl_seconds,
        } = req.into_inner();
        let conn = conn(&user_id, &connection_id)?;
        let node = node(&node_id)?;
        let ttl = self.ttl_ms(ttl_seconds)?;
        let r = self.store.register(&conn, node, ttl).await?;
        metrics::counter!("presence_connections_registered_total").increment(1);
        let t = Transition {
            user: user_id,
            version: r.version,
            seen_ms: r.seen_ms,
        };
        if r.came_online {
            self.publisher
                .transitions(std::slice::from_ref(&t), true, r.seen_ms, &inject_map())
                .await;
        }
        Ok(Response::new(pb::RegisterConnectionResponse {
            presence: Some(events::presence(&t, true)),
            came_online: r.came_online,
        }))
    }

    #[tracing::instrument(skip_all, fields(node = %req.get_ref().node_id, connections = req.get_ref().connections.len()))]
    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let pb::HeartbeatRequest {
            node_id,
            connections,
            ttl_seconds,
        } = req.into_inner();
        let node = node(&node_id)?;
        let conns = self.conns(&connections)?;
        let ttl = self.ttl_ms(ttl_seconds)?;
        let hb = self.store.heartbeat(node, &conns, ttl).await?;
        let (mut restored, mut rejected) = (Vec::new(), Vec::new());
        for (r, renewal) in connections.into_iter().zip(&hb.renewals) {
            match renewal {
                Renewal::Renewed => {}
                Renewal::Restored => restored.push(r),
                Renewal::Rejected => rejected.push(r),
            }
        }
        let renewed = conns.len() - rejected.len();
        metrics::counter!("presence_heartbeat_renewals_total").increment(renewed as u64);
        if !restored.is_empty() {
            metrics::counter!("presence_connections_restored_total")
                .increment(restored.len() as u64);
            tracing::info!(
                node,
                restored = restored.len(),
                "heartbeat restored expired connections"
            );
        }
        if !rejected.is_empty() {
            metrics::counter!("presence_connections_rejected_total")
                .increment(rejected.len() as u64);
        }
        self.publisher
            .transitions(&hb.came_online, true, hb.now_ms, &inject_map())
            .await;
        Ok(Response::new(pb::HeartbeatResponse { restored, rejected }))
    }

    #[tracing::instrument(skip_all, fields(node = %req.get_ref().node_id, connections = req.get_ref().connections.len()))]
    async fn unregister_connections(
        &self,
        req: Request<pb::UnregisterConnectionsRequest>,
    ) -> Result<Response<pb::UnregisterConnectionsResponse>, Status> {
        let pb::UnregisterConnectionsRequest {
            node_id,
            connections,
        } = req.into_inner();
        let node = node(&node_id)?;
        let conns = self.conns(&connections)?;
        let u = self
            .store
            .unregister(node, &conns, self.retention_ms())
            .await?;
        self.publisher
            .transitions(&u.went_offline, false, u.now_ms, &inject_map())
            .await;
        Ok(Response::new(pb::UnregisterConnectionsResponse {
            went_offline: u
                .went_offline
                .iter()
                .map(|t| events::presence(t, false))
                .collect(),
        }))
    }

    #[tracing::instrument(skip_all, fields(users = req.get_ref().user_ids.len()))]
    async fn get_presence(
        &self,
        req: Request<pb::GetPresenceRequest>,
    ) -> Result<Response<pb::GetPresenceResponse>, Status> {
        let pb::GetPresenceRequest { user_ids } = req.into_inner();
        let max = self.config.query.max_users;
        if user_ids.is_empty() || user_ids.len() > max {
            return Err(Error::invalid(format!(
                "{} user ids; GetPresence takes 1-{max}",
                user_ids.len()
            ))
            .into());
        }
        let mut seen = HashSet::with_capacity(user_ids.len());
        let mut users = Vec::with_capacity(user_ids.len());
        for id in &user_ids {
            let user = UserId::parse(id).map_err(Error::from)?;
            if seen.insert(user.clone()) {
                users.push(user);
            }
        }
        let snapshots = self.store.get(&users).await?;
        let presences = users
            .into_iter()
            .zip(snapshots)
            .map(|(user, s)| pb::UserPresence {
                user_id: user.as_str().to_owned(),
                status: if s.online {
                    pb::Status::Online
                } else {
                    pb::Status::Offline
                }
                .into(),
                last_seen_at: s.seen_ms.map(events::timestamp),
                version: s.version,
            })
            .collect();
        Ok(Response::new(pb::GetPresenceResponse { presences }))
    }

    #[tracing::instrument(skip_all, fields(user = %req.get_ref().user_id, channel = %req.get_ref().channel_id))]
    async fn typing(
        &self,
        req: Request<pb::TypingRequest>,
    ) -> Result<Response<pb::TypingResponse>, Status> {
        let user = UserId::parse(&req.get_ref().user_id).map_err(Error::from)?;
        check_caller(&req, &user)?;
        let pb::TypingRequest {
            user_id: _,
            channel_id,
        } = req.into_inner();
        let channel = parse_uuid("channel_id", &channel_id).map_err(Error::from)?;
        let payload = events::typing(&channel.to_string(), user.as_str(), now_ms(), inject_map());
        let broadcast = self
            .store
            .typing(&user, &channel, self.config.typing.throttle_ms, &payload)
            .await?;
        if broadcast {
            metrics::counter!("presence_events_published_total", "kind" => "typing").increment(1);
        } else {
            metrics::counter!("presence_typing_throttled_total").increment(1);
        }
        Ok(Response::new(pb::TypingResponse { broadcast }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids() {
        assert!(node("gateway-7f9c").is_ok());
        assert!(node(&"n".repeat(128)).is_ok());
        assert!(node(&"n".repeat(129)).is_err());
        assert!(node("").is_err());
        assert!(node("a\nb").is_err());
    }

    #[test]
    fn connection_refs() {
        let id = uuid::Uuid::now_v7();
        let c = conn("alice", &id.to_string().to_uppercase()).expect("valid");
        assert_eq!(c.id, id, "uppercase UUIDs are the same connection");
        assert!(conn("alice", "not-a-uuid").is_err());
        assert!(conn("bad user", &id.to_string()).is_err());
    }
}

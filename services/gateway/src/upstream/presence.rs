//! The gateway's side of presence: registers each WebSocket connection with the presence
//! service, renews every local connection in batches each heartbeat interval, and removes
//! them on close and on drain. Presence is optional for chat: every failure here is logged
//! and counted (`gateway_presence_errors_total`) and never breaks sending or history.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use parley_kit::propagation::{Outbound, with_user};
use parley_proto::presence::v1::{self as pb, presence_service_client::PresenceServiceClient};
use tokio_util::sync::CancellationToken;
use tonic::{Request, service::interceptor::InterceptedService, transport::Channel};

use crate::ApiError;

type Client = PresenceServiceClient<InterceptedService<Channel, Outbound>>;

/// Heartbeats are sent in batches of at most this many connections (the contract's limit).
const BATCH: usize = 5000;

/// Presence as seen from one gateway node.
pub struct Presence {
    client: Client,
    channel: Channel,
    node_id: String,
    ttl_seconds: u32,
    /// connection id → user id of every live local connection.
    local: Mutex<HashMap<String, String>>,
}

pub fn count_error(op: &'static str, e: &tonic::Status) {
    metrics::counter!("gateway_presence_errors_total", "op" => op).increment(1);
    tracing::warn!(op, code = ?e.code(), error = %e.message(), "presence call failed");
}

impl Presence {
    pub fn new(channel: Channel, node_id: String, heartbeat: Duration) -> Arc<Self> {
        // A connection outlives one missed heartbeat but not two: TTL = 1.5 intervals, so a
        // crashed node's users turn offline within two intervals (plus the sweep period).
        let ttl_seconds = ((heartbeat.as_secs_f64() * 1.5).ceil() as u32).max(5);
        Arc::new(Self {
            client: PresenceServiceClient::with_interceptor(channel.clone(), Outbound),
            channel,
            node_id,
            ttl_seconds,
            local: Mutex::new(HashMap::new()),
        })
    }

    fn client(&self) -> Client {
        self.client.clone()
    }

    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    fn local(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.local
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers a new local connection (the heartbeat loop also restores it if this fails).
    pub async fn connected(&self, user: &str, connection_id: &str) {
        self.local()
            .insert(connection_id.to_owned(), user.to_owned());
        let req = pb::RegisterConnectionRequest {
            user_id: user.to_owned(),
            connection_id: connection_id.to_owned(),
            node_id: self.node_id.clone(),
            ttl_seconds: self.ttl_seconds,
        };
        let req = match with_user(Request::new(req), user) {
            Ok(r) => r,
            Err(e) => return count_error("register", &e),
        };
        if let Err(e) = self.client().register_connection(req).await {
            count_error("register", &e);
        }
    }

    /// Removes a local connection that closed.
    pub async fn disconnected(&self, user: &str, connection_id: &str) {
        self.local().remove(connection_id);
        let refs = vec![pb::ConnectionRef {
            user_id: user.to_owned(),
            connection_id: connection_id.to_owned(),
        }];
        self.unregister(refs).await;
    }

    async fn unregister(&self, connections: Vec<pb::ConnectionRef>) {
        for chunk in connections.chunks(BATCH) {
            let req = pb::UnregisterConnectionsRequest {
                node_id: self.node_id.clone(),
                connections: chunk.to_vec(),
            };
            if let Err(e) = self.client().unregister_connections(req).await {
                count_error("unregister", &e);
            }
        }
    }

    /// Renews every local connection each `interval` until `shutdown`; then unregisters
    /// them all (the node is draining; its users go offline unless connected elsewhere).
    pub async fn heartbeat_loop(self: Arc<Self>, interval: Duration, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            let refs = self.snapshot();
            for chunk in refs.chunks(BATCH) {
                let req = pb::HeartbeatRequest {
                    node_id: self.node_id.clone(),
                    connections: chunk.to_vec(),
                    ttl_seconds: self.ttl_seconds,
                };
                match self.client().heartbeat(req).await {
                    Ok(r) => {
                        let restored = r.get_ref().restored.len();
                        if restored > 0 {
                            tracing::info!(restored, "presence restored expired connections");
                        }
                    }
                    Err(e) => count_error("heartbeat", &e),
                }
            }
        }
        let refs = self.snapshot();
        self.local().clear();
        self.unregister(refs).await;
    }

    fn snapshot(&self) -> Vec<pb::ConnectionRef> {
        self.local()
            .iter()
            .map(|(c, u)| pb::ConnectionRef {
                user_id: u.clone(),
                connection_id: c.clone(),
            })
            .collect()
    }

    /// Current presence of up to 500 users.
    pub async fn get(&self, user_ids: Vec<String>) -> Result<Vec<pb::UserPresence>, ApiError> {
        match self
            .client()
            .get_presence(pb::GetPresenceRequest { user_ids })
            .await
        {
            Ok(r) => Ok(r.into_inner().presences),
            Err(e) => {
                count_error("get", &e);
                Err(e.into())
            }
        }
    }

    /// Reports typing; the event reaches the channel's members through pub/sub.
    pub async fn typing(&self, user: &str, channel_id: &str) -> Result<(), ApiError> {
        let req = with_user(
            Request::new(pb::TypingRequest {
                user_id: user.to_owned(),
                channel_id: channel_id.to_owned(),
            }),
            user,
        )?;
        match self.client().typing(req).await {
            Ok(_) => Ok(()),
            Err(e) => {
                count_error("typing", &e);
                Err(e.into())
            }
        }
    }
}

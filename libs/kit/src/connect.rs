//! Connections to the things every service talks to, built one way: Redis with one
//! connection policy, and gRPC client channels to other services.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tonic::transport::{Channel, Endpoint};

/// The Redis connection policy: connect and answer within `timeout` (2 s unless a service
/// configures it), retry a failed (re)connection twice, then report the error; the
/// connection manager reconnects on its own afterwards.
pub const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// The policy for a connection whose commands may block (`XREADGROUP BLOCK`): the answer
/// may take `blocks_for` plus the usual timeout.
pub fn redis_policy(timeout: Duration, blocks_for: Duration) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout + blocks_for))
        .set_number_of_retries(2)
}

/// A managed Redis connection with the policy above.
pub async fn redis(
    client: &redis::Client,
    timeout: Duration,
) -> redis::RedisResult<ConnectionManager> {
    ConnectionManager::new_with_config(client.clone(), redis_policy(timeout, Duration::ZERO)).await
}

/// A lazily connecting gRPC channel to `url`: a service starts while the one it calls is
/// down, and calls fail `unavailable` until it is up. `timeout` bounds each call,
/// `connect_timeout` each connection attempt; TCP_NODELAY (small replies are not held back).
pub fn grpc_channel(
    url: &str,
    timeout: Duration,
    connect_timeout: Duration,
) -> Result<Channel, tonic::transport::Error> {
    Ok(endpoint(url, timeout, connect_timeout)?.connect_lazy())
}

/// Like [`grpc_channel`] for one URL or several separated by commas: calls are balanced
/// over the replicas and keep flowing while one of them restarts.
pub fn grpc_balanced(
    urls: &str,
    timeout: Duration,
    connect_timeout: Duration,
) -> anyhow::Result<Channel> {
    let endpoints = urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| endpoint(u, timeout, connect_timeout))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(match endpoints.as_slice() {
        [] => anyhow::bail!("no URL given"),
        [one] => one.connect_lazy(),
        _ => Channel::balance_list(endpoints.into_iter()),
    })
}

fn endpoint(
    url: &str,
    timeout: Duration,
    connect_timeout: Duration,
) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(url.to_owned())?
        .timeout(timeout)
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn channels_are_lazy_and_urls_are_checked() {
        let t = Duration::from_secs(1);
        // Nothing listens there: a lazy channel is still built.
        assert!(grpc_channel("http://127.0.0.1:1", t, t).is_ok());
        assert!(grpc_balanced("http://127.0.0.1:1, http://127.0.0.1:2", t, t).is_ok());
        assert!(grpc_balanced(" , ", t, t).is_err());
        assert!(grpc_channel("not a url\n", t, t).is_err());
    }
}

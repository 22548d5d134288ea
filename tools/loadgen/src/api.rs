//! The gateway's REST API as far as the load generator needs it (dev tokens, channels,
//! members, history, search) and WebSocket connection set-up.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::{StreamExt, stream};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Members sent with the create request; the rest are added one by one (the request body
/// limit is 16 KiB).
const CREATE_MEMBERS: usize = 300;

#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    /// `base` like `http://127.0.0.1:8080`. Refuses a non-loopback host unless `allow_remote`.
    pub fn new(base: &str, allow_remote: bool) -> Result<Self> {
        let url = reqwest::Url::parse(base).with_context(|| format!("bad --url {base}"))?;
        if url.scheme() != "http" {
            bail!("--url must be http:// (TLS is not supported)");
        }
        let host = url.host_str().unwrap_or_default();
        let loopback = host == "localhost"
            || host
                .trim_matches(|c| c == '[' || c == ']')
                .parse::<IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if !loopback && !allow_remote {
            bail!("refusing to load {host}: only loopback targets unless --allow-remote");
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(64)
            .build()?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
        })
    }

    async fn post(&self, token: Option<&str>, path: &str, body: Value) -> Result<Value> {
        let mut req = self.http.post(format!("{}{path}", self.base)).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.with_context(|| format!("POST {path}"))?;
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("POST {path}: {status} {v}");
        }
        Ok(v)
    }

    pub async fn token(&self, user: &str) -> Result<String> {
        let v = self
            .post(None, "/v1/auth/dev-token", json!({ "user_id": user }))
            .await
            .context("dev tokens must be enabled (make up / scripts/up.sh enable them)")?;
        v["token"]
            .as_str()
            .map(str::to_owned)
            .context("dev-token response without token")
    }

    /// Tokens for `users`, in order, `concurrency` requests at a time.
    pub async fn tokens(&self, users: &[String], concurrency: usize) -> Result<Vec<String>> {
        stream::iter(users.iter().map(|u| self.token(u)))
            .buffered(concurrency.max(1))
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect()
    }

    /// Creates a group channel owned by the holder of `owner_token` with `members` (the
    /// owner excluded); returns its id.
    pub async fn create_channel(
        &self,
        owner_token: &str,
        name: &str,
        members: &[String],
        concurrency: usize,
    ) -> Result<String> {
        let (first, rest) = members.split_at(members.len().min(CREATE_MEMBERS));
        let v = self
            .post(
                Some(owner_token),
                "/v1/channels",
                json!({"kind": "group", "name": name, "members": first}),
            )
            .await?;
        let id = v["id"]
            .as_str()
            .context("channel response without id")?
            .to_owned();
        let path = format!("/v1/channels/{id}/members");
        let added: Vec<Result<Value>> = stream::iter(
            rest.iter()
                .map(|u| self.post(Some(owner_token), &path, json!({ "user_id": u }))),
        )
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
        for a in added {
            a?;
        }
        Ok(id)
    }

    /// `GET …/messages?before=&limit=`: the seqs of the page, newest first.
    pub async fn history_before(
        &self,
        token: &str,
        channel: &str,
        before: u64,
        limit: u32,
    ) -> Result<Vec<u64>> {
        let resp = self
            .http
            .get(format!(
                "{}/v1/channels/{channel}/messages?before={before}&limit={limit}",
                self.base
            ))
            .bearer_auth(token)
            .send()
            .await?;
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("history: {status} {v}");
        }
        Ok(v["messages"]
            .as_array()
            .map(|a| a.iter().filter_map(|m| m["seq"].as_u64()).collect())
            .unwrap_or_default())
    }

    /// `GET path_and_query` as the holder of `token`: the status and the JSON body (`null`
    /// when the body is not JSON).
    async fn get(&self, token: &str, path_and_query: &str) -> Result<(reqwest::StatusCode, Value)> {
        let resp = self
            .http
            .get(format!("{}{path_and_query}", self.base))
            .bearer_auth(token)
            .send()
            .await?;
        let status = resp.status();
        Ok((status, resp.json().await.unwrap_or(Value::Null)))
    }

    /// The ids of every channel the holder of `token` is a member of (`GET /v1/channels`,
    /// every page).
    pub async fn channel_ids(&self, token: &str) -> Result<Vec<String>> {
        let mut ids = Vec::new();
        let mut cursor = String::new();
        // A bound on the pages, in case a server kept answering a cursor.
        for _ in 0..1000 {
            let (status, v) = self
                .get(
                    token,
                    &format!("/v1/channels?limit=200&cursor={}", percent_encode(&cursor)),
                )
                .await?;
            if !status.is_success() {
                bail!("GET /v1/channels: {status} {v}");
            }
            ids.extend(
                v["channels"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|c| c["id"].as_str().map(str::to_owned)),
            );
            match v["next_cursor"].as_str() {
                Some(c) if !c.is_empty() => cursor = c.to_owned(),
                _ => return Ok(ids),
            }
        }
        bail!("GET /v1/channels: more than 1000 pages")
    }

    /// `GET /v1/search?q=&channel_id=&limit=`: the first page's hits. Anything but `200` is
    /// an error.
    pub async fn search(
        &self,
        token: &str,
        q: &str,
        channel: Option<&str>,
        limit: u32,
    ) -> Result<SearchPage> {
        let mut path = format!("/v1/search?q={}&limit={limit}", percent_encode(q));
        if let Some(c) = channel {
            let _ = write!(path, "&channel_id={}", percent_encode(c));
        }
        let (status, v) = self.get(token, &path).await?;
        if status != reqwest::StatusCode::OK {
            bail!("search: {status} {v}");
        }
        let Some(hits) = v["hits"].as_array() else {
            bail!("search: no `hits` in {v}");
        };
        Ok(SearchPage {
            hits: hits
                .iter()
                .map(|h| {
                    let m = &h["message"];
                    let s = |k: &str| m[k].as_str().unwrap_or_default().to_owned();
                    SearchHit {
                        id: s("id"),
                        channel_id: s("channel_id"),
                        created_at: s("created_at"),
                        deleted: m["deleted"].as_bool().unwrap_or(false),
                        system: !m["system"].is_null(),
                    }
                })
                .collect(),
            next_cursor: v["next_cursor"].as_str().is_some_and(|c| !c.is_empty()),
        })
    }

    fn ws_url(&self, token: &str) -> String {
        let rest = self.base.trim_start_matches("http://");
        format!("ws://{rest}/v1/ws?token={token}")
    }

    /// Opens a WebSocket and waits for `hello`. Small buffers so 10,000 idle connections
    /// stay cheap on the load generator's side.
    pub async fn connect(&self, token: &str) -> Result<Ws> {
        let cfg = WebSocketConfig::default()
            .read_buffer_size(16 * 1024)
            .write_buffer_size(0);
        let (mut ws, _) = tokio::time::timeout(
            Duration::from_secs(30),
            tokio_tungstenite::connect_async_with_config(self.ws_url(token), Some(cfg), true),
        )
        .await
        .context("WebSocket connect timed out")?
        .context("WebSocket connect")?;
        let hello = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(m) = ws.next().await {
                if let Message::Text(t) = m? {
                    let v: Value = serde_json::from_str(&t)?;
                    if v["type"] == "hello" {
                        return Ok(());
                    }
                }
            }
            bail!("closed before hello")
        })
        .await
        .context("no hello within 30 s")?;
        hello?;
        Ok(ws)
    }
}

/// One page of search results, as far as the load generator checks it.
#[derive(Debug, Clone, Default)]
pub struct SearchPage {
    pub hits: Vec<SearchHit>,
    /// The server says a next page follows.
    pub next_cursor: bool,
}

/// A hit's message: what the checks look at (empty strings when a field is missing).
#[derive(Debug, Clone, Default)]
pub struct SearchHit {
    pub id: String,
    pub channel_id: String,
    /// RFC 3339 UTC with microseconds (fixed width, so it orders as text).
    pub created_at: String,
    pub deleted: bool,
    pub system: bool,
}

/// `s` percent-encoded as a URL query value (RFC 3986: every byte but the unreserved
/// characters).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Closes a socket politely, ignoring errors (the run is over).
pub async fn close(mut ws: Ws) {
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_by_default() {
        assert!(Api::new("http://127.0.0.1:8080", false).is_ok());
        assert!(Api::new("http://localhost:8080", false).is_ok());
        assert!(Api::new("http://[::1]:8080", false).is_ok());
        assert!(Api::new("http://10.0.0.1:8080", false).is_err());
        assert!(Api::new("http://example.com", false).is_err());
        assert!(Api::new("http://example.com", true).is_ok());
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(percent_encode("launch"), "launch");
        assert_eq!(percent_encode("a b&c=d+e%"), "a%20b%26c%3Dd%2Be%25");
        assert_eq!(percent_encode("über-x_y.z~"), "%C3%BCber-x_y.z~");
        assert_eq!(percent_encode("\"bo\" -x"), "%22bo%22%20-x");
    }
}

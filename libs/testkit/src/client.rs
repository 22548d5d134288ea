//! Clients of the gateway as an app would use it: tokens, REST, WebSocket.

use super::*;

/// Signs a token the test gateways accept.
pub fn token(user: &str, exp_in_secs: i64) -> String {
    #[derive(serde::Serialize)]
    struct Claims<'a> {
        sub: &'a str,
        exp: i64,
    }
    let exp = chrono::Utc::now().timestamp() + exp_in_secs;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &Claims { sub: user, exp },
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap_or_default()
}

/// Signs a token with arbitrary `claims` and `secret` (HS256): forged, expired or
/// incomplete tokens for tests of authentication.
pub fn token_with(claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap_or_default()
}

/// A REST client acting as one user against one gateway.
#[derive(Clone)]
pub struct Client {
    pub base: String,
    pub user: String,
    pub token: String,
    http: reqwest::Client,
}

/// Status and JSON body of a response (`Value::Null` for an empty body).
pub type Reply = (u16, Value, reqwest::header::HeaderMap);

impl Client {
    pub fn new(base: &str, user: &str) -> Self {
        Self {
            base: base.to_owned(),
            user: user.to_owned(),
            token: token(user, 3600),
            http: reqwest::Client::new(),
        }
    }

    /// The same user with another token (e.g. an expired or forged one).
    pub fn with_token(&self, token: &str) -> Self {
        Self {
            token: token.to_owned(),
            ..self.clone()
        }
    }

    /// The same user against another gateway.
    pub fn on(&self, base: &str) -> Self {
        Self {
            base: base.to_owned(),
            ..self.clone()
        }
    }

    /// Any request with this user's token and a raw body.
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        token: Option<&str>,
    ) -> anyhow::Result<Reply> {
        let method = reqwest::Method::from_bytes(method.as_bytes())?;
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await?;
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        Ok((status, body, headers))
    }

    pub async fn req(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Reply> {
        self.raw(
            method,
            path,
            body.map(|b| b.to_string().into_bytes()),
            Some(&self.token),
        )
        .await
    }

    /// Creates a group channel with `members`; returns its id.
    pub async fn group(&self, name: &str, members: &[&str]) -> anyhow::Result<String> {
        let (s, b, _) = self
            .req(
                "POST",
                "/v1/channels",
                Some(json!({"kind": "group", "name": name, "members": members})),
            )
            .await?;
        anyhow::ensure!(s == 201, "create channel: {s} {b}");
        Ok(b["id"].as_str().context("channel id")?.to_owned())
    }

    /// `POST …/messages` returning the raw reply (any status).
    pub async fn post_message(
        &self,
        channel: &str,
        cid: &str,
        body: &str,
    ) -> anyhow::Result<Reply> {
        self.req(
            "POST",
            &format!("/v1/channels/{channel}/messages"),
            Some(json!({"client_msg_id": cid, "body": body})),
        )
        .await
    }

    /// `GET …/messages?{query}`; errors unless `200`. Returns the page body.
    pub async fn history(&self, channel: &str, query: &str) -> anyhow::Result<Value> {
        let (s, b, _) = self
            .req(
                "GET",
                &format!("/v1/channels/{channel}/messages?{query}"),
                None,
            )
            .await?;
        anyhow::ensure!(s == 200, "history: {s} {b}");
        Ok(b)
    }

    /// `GET /v1/channels/{id}`; errors unless `200`.
    pub async fn channel(&self, channel: &str) -> anyhow::Result<Value> {
        let (s, b, _) = self
            .req("GET", &format!("/v1/channels/{channel}"), None)
            .await?;
        anyhow::ensure!(s == 200, "get channel: {s} {b}");
        Ok(b)
    }

    /// Sends a message over REST; returns the message object.
    pub async fn send(&self, channel: &str, cid: &str, body: &str) -> anyhow::Result<Value> {
        let (s, b, _) = self
            .req(
                "POST",
                &format!("/v1/channels/{channel}/messages"),
                Some(json!({"client_msg_id": cid, "body": body})),
            )
            .await?;
        anyhow::ensure!(s == 201 || s == 200, "send: {s} {b}");
        Ok(b)
    }
}

type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket client acting as one user.
pub struct Ws {
    stream: WsStream,
    pub hello: Value,
}

impl Ws {
    /// Connects with `?token=` and waits for `hello`.
    pub async fn connect(base: &str, user: &str) -> anyhow::Result<Self> {
        match Self::try_connect(base, &token(user, 3600)).await? {
            Ok(ws) => Ok(ws),
            Err((status, body)) => anyhow::bail!("websocket rejected: {status} {body}"),
        }
    }

    /// Connects with `?token={token}`: the socket after its `hello`, or the status and
    /// JSON body of the HTTP answer that refused the upgrade.
    pub async fn try_connect(
        base: &str,
        token: &str,
    ) -> anyhow::Result<Result<Self, (u16, Value)>> {
        let url = format!("{}/v1/ws?token={token}", base.replacen("http", "ws", 1));
        let stream = match tokio_tungstenite::connect_async(url).await {
            Ok((stream, _)) => stream,
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                let body = resp.body().as_deref().unwrap_or_default();
                let body = serde_json::from_slice(body)
                    .unwrap_or(Value::String(String::from_utf8_lossy(body).into()));
                return Ok(Err((resp.status().as_u16(), body)));
            }
            Err(e) => return Err(e.into()),
        };
        let mut ws = Self {
            stream,
            hello: Value::Null,
        };
        let hello = ws
            .next_frame(Duration::from_secs(10))
            .await?
            .context("no hello")?;
        anyhow::ensure!(hello["type"] == "hello", "first frame: {hello}");
        ws.hello = hello;
        Ok(Ok(ws))
    }

    pub async fn send(&mut self, v: Value) -> anyhow::Result<()> {
        self.stream
            .send(tokio_tungstenite::tungstenite::Message::Text(
                v.to_string().into(),
            ))
            .await?;
        Ok(())
    }

    pub async fn send_text(&mut self, t: &str) -> anyhow::Result<()> {
        self.stream
            .send(tokio_tungstenite::tungstenite::Message::Text(
                t.to_owned().into(),
            ))
            .await?;
        Ok(())
    }

    pub async fn send_binary(&mut self, b: Vec<u8>) -> anyhow::Result<()> {
        self.stream
            .send(tokio_tungstenite::tungstenite::Message::Binary(b.into()))
            .await?;
        Ok(())
    }

    /// Every frame that arrives within `within` (stops early when the socket closes).
    pub async fn frames_for(&mut self, within: Duration) -> anyhow::Result<Vec<Value>> {
        let deadline = tokio::time::Instant::now() + within;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Ok(out);
            }
            match self.next_frame(left).await? {
                Some(f) => out.push(f),
                None => return Ok(out),
            }
        }
    }

    /// Frames up to and including the first one for which `done` holds; errors when none
    /// does within `within`.
    pub async fn until(
        &mut self,
        within: Duration,
        mut done: impl FnMut(&Value) -> bool,
    ) -> anyhow::Result<Vec<Value>> {
        let deadline = tokio::time::Instant::now() + within;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_frame(left).await? {
                Some(f) => {
                    let stop = done(&f);
                    out.push(f);
                    if stop {
                        return Ok(out);
                    }
                }
                None => anyhow::bail!("no matching frame within {within:?}; got {out:?}"),
            }
        }
    }

    /// The frames before the first one for which `marker` holds (that one is read, not
    /// returned); errors when none does within `within`.
    pub async fn before(
        &mut self,
        within: Duration,
        marker: impl FnMut(&Value) -> bool,
    ) -> anyhow::Result<Vec<Value>> {
        let mut frames = self.until(within, marker).await?;
        frames.pop();
        Ok(frames)
    }

    /// A barrier in `channel` (one of this user's): `via`, a member, sends one more message
    /// there, and the frames that arrive before it are returned. A connection gets a
    /// channel's messages in seq order, and a gateway node reads every topic on one Redis
    /// subscription in publish order: whatever of `channel` was published before this call
    /// and is due to this connection has arrived by then, and so has anything else published
    /// before it for this connection, unless held back (see [`Ws::joined_barrier`]).
    pub async fn barrier(
        &mut self,
        via: &Client,
        channel: &str,
        within: Duration,
    ) -> anyhow::Result<Vec<Value>> {
        let cid = format!("barrier-{}", uuid::Uuid::new_v4().simple());
        let marker = via.send(channel, &cid, "barrier").await?;
        let seq = marker["seq"].as_u64().context("seq of the marker")?;
        self.before(within, |f| {
            f["type"] == "message"
                && f["message"]["channel_id"] == channel
                && f["message"]["seq"] == seq
        })
        .await
    }

    /// A barrier on this user's own topic: `me` (this connection's user) creates a channel
    /// with nobody else, and the frames that arrive before its `member_joined` are returned.
    /// A gateway node reads every topic on one Redis subscription in publish order, so
    /// whatever was published before this call and is due to this connection has arrived by
    /// then. A `ping` (answered first, its `pong` left out) ends the hold of messages that a
    /// connection keeps until the client's first frame (see `resume`). Messages held for a
    /// gap in their channel are fetched later: the barrier does not wait for those. (It
    /// costs one of the user's channel creations.)
    pub async fn joined_barrier(
        &mut self,
        me: &Client,
        within: Duration,
    ) -> anyhow::Result<Vec<Value>> {
        let r = format!("barrier-{}", uuid::Uuid::new_v4().simple());
        self.send(json!({"type": "ping", "ref": r})).await?;
        let mut frames = self
            .before(within, |f| f["type"] == "pong" && f["ref"] == r.as_str())
            .await?;
        let channel = me.group("barrier", &[]).await?;
        frames.extend(
            self.before(within, |f| {
                f["type"] == "member_joined" && f["channel_id"] == channel.as_str()
            })
            .await?,
        );
        Ok(frames)
    }

    /// The next JSON frame, or `None` on timeout / close.
    pub async fn next_frame(&mut self, within: Duration) -> anyhow::Result<Option<Value>> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let next = tokio::time::timeout_at(deadline, self.stream.next()).await;
            match next {
                Err(_) => return Ok(None),
                Ok(None) => return Ok(None),
                Ok(Some(m)) => match m? {
                    tokio_tungstenite::tungstenite::Message::Text(t) => {
                        return Ok(Some(serde_json::from_str(t.as_str())?));
                    }
                    tokio_tungstenite::tungstenite::Message::Close(_) => return Ok(None),
                    _ => continue,
                },
            }
        }
    }

    /// Waits for the next frame of type `kind`, skipping others; errors on timeout.
    pub async fn expect(&mut self, kind: &str, within: Duration) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_frame(left).await? {
                Some(f) if f["type"] == kind => return Ok(f),
                Some(_) => continue,
                None => anyhow::bail!("no `{kind}` frame within {within:?}"),
            }
        }
    }

    /// Collects `message` frames until `n` arrived or `within` passed.
    pub async fn messages(&mut self, n: usize, within: Duration) -> anyhow::Result<Vec<Value>> {
        let deadline = tokio::time::Instant::now() + within;
        let mut out = Vec::new();
        while out.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_frame(left).await? {
                Some(f) if f["type"] == "message" => out.push(f["message"].clone()),
                Some(_) => {}
                None => break,
            }
        }
        Ok(out)
    }

    /// Whether the server ends the connection (close frame, end of stream or a transport
    /// error) within `within`; text frames before the end are skipped. `false` on timeout.
    pub async fn closed_within(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => return false,
                Ok(
                    None
                    | Some(Err(_))
                    | Some(Ok(tokio_tungstenite::tungstenite::Message::Close(_))),
                ) => return true,
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    /// The text frames that arrive until the server closes the connection, and the close
    /// code of its close frame (`None` when it ended without one); errors when the
    /// connection is still open after `within`.
    pub async fn until_closed(
        &mut self,
        within: Duration,
    ) -> anyhow::Result<(Vec<Value>, Option<u16>)> {
        use tokio_tungstenite::tungstenite::Message;
        let deadline = tokio::time::Instant::now() + within;
        let mut frames = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => anyhow::bail!("still open after {within:?}"),
                Ok(None | Some(Err(_))) => return Ok((frames, None)),
                Ok(Some(Ok(Message::Close(f)))) => {
                    return Ok((frames, f.map(|f| u16::from(f.code))));
                }
                Ok(Some(Ok(Message::Text(t)))) => frames.push(serde_json::from_str(t.as_str())?),
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    /// Closes the socket.
    pub async fn close(mut self) {
        let _ = self.stream.close(None).await;
    }
}

//! HTTP routes of the public API, the request span/metrics middleware and the extractors
//! that turn raw requests into validated input (or an API error).

use std::{sync::Arc, time::Instant};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{FromRequest, FromRequestParts, MatchedPath, Path, Query, Request, State},
    http::{HeaderValue, StatusCode, request::Parts},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, patch, post},
};
use parley_kit::{
    ErrorCode,
    domain::{ClientMsgId, MessageBody, UserId, parse_uuid},
    propagation::with_user,
};
use parley_proto::messaging::v1 as pb;
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::{Value, json};
use tonic::Request as GrpcRequest;
use tracing::Instrument as _;

use crate::{ApiError, App, ratelimit::Kind, view};

type AppState = State<Arc<App>>;

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(parley_kit::metrics::render))
        .route("/v1/auth/dev-token", post(dev_token))
        .route("/v1/channels", post(create_channel).get(list_channels))
        .route("/v1/channels/{id}", get(get_channel))
        .route(
            "/v1/channels/{id}/members",
            get(list_members).post(add_member),
        )
        .route(
            "/v1/channels/{id}/members/{user_id}",
            axum::routing::delete(remove_member),
        )
        .route(
            "/v1/channels/{id}/messages",
            post(send_message).get(list_messages),
        )
        .route(
            "/v1/channels/{id}/messages/{seq}",
            patch(edit_message).delete(delete_message),
        )
        .route("/v1/channels/{id}/read", post(mark_read))
        .route("/v1/channels/{id}/receipts", get(get_receipts))
        .route("/v1/unread", get(get_unread))
        .route("/v1/presence", get(get_presence))
        .route("/v1/devices", post(crate::notification::register))
        .route(
            "/v1/devices/{id}",
            axum::routing::delete(crate::notification::unregister),
        )
        .route(
            "/v1/channels/{id}/notifications",
            axum::routing::put(crate::notification::set_level),
        )
        .route("/v1/ws", get(crate::ws::upgrade))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::not_found("no such endpoint for this method")
        })
        .layer(middleware::from_fn(observe))
        .with_state(app)
}

/// Request span (continuing a client's `traceparent`), RED metrics per route, and the
/// `x-trace-id` response header so a bug report leads to the trace.
async fn observe(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().as_str().to_owned();
    let span = tracing::info_span!(
        "http.server",
        otel.name = %format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    parley_kit::propagation::set_parent_from_headers(&span, req.headers());
    let trace_id = span.in_scope(parley_kit::telemetry::current_trace_id);
    if let Some(id) = &trace_id {
        span.record("trace_id", id.as_str());
    }
    let started = Instant::now();
    let mut resp = next.run(req).instrument(span.clone()).await;
    let status = resp.status().as_u16();
    span.record("http.response.status_code", status);
    let labels = [
        ("method", method),
        ("route", route),
        ("status", status.to_string()),
    ];
    metrics::counter!("http_server_requests_total", &labels).increment(1);
    metrics::histogram!("http_server_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    if let Some(id) = trace_id.and_then(|id| HeaderValue::from_str(&id).ok()) {
        resp.headers_mut().insert("x-trace-id", id);
    }
    resp
}

/// The authenticated caller.
pub struct Caller(pub UserId);

impl FromRequestParts<Arc<App>> for Caller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        let token = crate::auth::bearer(&parts.headers, None)?;
        Ok(Self(app.auth.verify(&token)?))
    }
}

/// A JSON body read within the configured size limit, with API errors for empty,
/// oversized and malformed bodies.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Arc<App>> for JsonBody<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, app: &Arc<App>) -> Result<Self, ApiError> {
        let limit = app.config.http.max_body_bytes;
        let body = axum::body::to_bytes(req.into_body(), limit)
            .await
            .map_err(|_| {
                ApiError::new(
                    ErrorCode::TooLarge,
                    format!("request body over {limit} bytes"),
                )
            })?;
        parse_json(&body).map(Self)
    }
}

fn parse_json<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid(
            "request body is empty; expected a JSON object",
        ));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::invalid(format!("malformed JSON: {e}")))
}

/// Query strings whose malformed values are API errors, not axum's plain-text rejections.
pub struct Q<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<Arc<App>> for Q<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, app)
            .await
            .map(|Query(q)| Self(q))
            .map_err(|e| ApiError::invalid(format!("bad query: {}", e.body_text())))
    }
}

/// Path parameters whose malformed values (e.g. invalid UTF-8) are API errors, not axum's
/// plain-text rejections.
pub struct P<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<Arc<App>> for P<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, app)
            .await
            .map(|Path(p)| Self(p))
            .map_err(|e| ApiError::invalid(format!("bad path: {}", e.body_text())))
    }
}

fn channel_path(id: &str) -> Result<String, ApiError> {
    Ok(parse_uuid("channel id", id)?.to_string())
}

fn seq_path(s: &str) -> Result<u64, ApiError> {
    s.parse::<u64>()
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| ApiError::invalid("seq must be a positive integer"))
}

/// `201` with `body` when the request created something, `200` when it found it existing
/// (idempotent creates: retried sends, direct channels, members, devices).
pub(crate) fn created_or_existing(created: bool, body: Value) -> Response {
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    (status, Json(body)).into_response()
}

pub(crate) fn grpc<T>(user: &UserId, msg: T) -> Result<GrpcRequest<T>, ApiError> {
    Ok(with_user(GrpcRequest::new(msg), user.as_str())?)
}

async fn readyz(State(app): AppState) -> Response {
    if app.stopping.is_cancelled() || app.draining.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response();
    }
    let two_secs = std::time::Duration::from_secs(2);
    let optional = |c: Option<tonic::transport::Channel>| async move {
        match c {
            Some(c) => Some(serving(c, two_secs).await),
            None => None,
        }
    };
    let (messaging_ok, presence_ok, receipts_ok, notification_ok) = tokio::join!(
        serving(app.messaging_channel.clone(), two_secs),
        optional(app.presence.as_ref().map(|p| p.channel())),
        optional(app.receipts.as_ref().map(|r| r.channel())),
        optional(app.notification.as_ref().map(|(_, ch)| ch.clone())),
    );
    let mut redis = app.redis.clone();
    let redis_ok = tokio::time::timeout(
        two_secs,
        redis::cmd("PING").query_async::<String>(&mut redis),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    // Presence, receipts and notification are reported but do not gate readiness: chat must keep
    // working through their outage (a gateway taken out of rotation would stop it).
    let body = Json(json!({
        "messaging": messaging_ok, "redis": redis_ok, "pubsub": app.hub.connected(),
        "presence": presence_ok, "receipts": receipts_ok, "notification": notification_ok,
    }));
    if messaging_ok && redis_ok && app.hub.connected() {
        (StatusCode::OK, body).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}

/// Whether the gRPC service behind `channel` reports SERVING within `within`.
async fn serving(channel: tonic::transport::Channel, within: std::time::Duration) -> bool {
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let probe = health.check(tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    });
    tokio::time::timeout(within, probe).await.is_ok_and(|r| {
        r.is_ok_and(|r| {
            r.get_ref().status
                == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        })
    })
}

#[derive(Deserialize)]
struct DevTokenBody {
    user_id: String,
}

async fn dev_token(
    State(app): AppState,
    JsonBody(b): JsonBody<DevTokenBody>,
) -> Result<Json<Value>, ApiError> {
    if !app.auth.dev_enabled() {
        return Err(ApiError::not_found("dev tokens are disabled"));
    }
    let user = UserId::parse(&b.user_id)?;
    let (token, exp) = app
        .auth
        .issue_dev(&user)
        .ok_or_else(|| ApiError::new(ErrorCode::Internal, "cannot issue token"))?;
    let expires_at = chrono::DateTime::from_timestamp(exp as i64, 0)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    Ok(Json(json!({"token": token, "expires_at": expires_at})))
}

#[derive(Deserialize)]
struct CreateChannelBody {
    kind: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    members: Vec<String>,
}

async fn create_channel(
    State(app): AppState,
    Caller(user): Caller,
    JsonBody(b): JsonBody<CreateChannelBody>,
) -> Result<Response, ApiError> {
    let kind = match b.kind.as_str() {
        "group" => pb::ChannelKind::Group,
        "direct" => pb::ChannelKind::Direct,
        _ => return Err(ApiError::invalid("kind must be \"group\" or \"direct\"")),
    };
    let mut added: Vec<&str> = Vec::with_capacity(b.members.len());
    for m in &b.members {
        UserId::parse(m)?;
        if m != user.as_str() && !added.contains(&m.as_str()) {
            added.push(m);
        }
    }
    // Members of a new group count as members added by its creator (`rate.joins`).
    let joins = match kind {
        pb::ChannelKind::Group => added.len() as u32,
        _ => 0,
    };
    let req = pb::CreateChannelRequest {
        kind: kind as i32,
        name: b.name,
        members: b.members,
    };
    let req = grpc(&user, req)?;
    let create = async {
        let resp = app
            .messaging
            .clone()
            .create_channel(req)
            .await?
            .into_inner();
        let created = resp.created;
        Ok((resp, created))
    };
    let create = app
        .limiter
        .counted(Kind::Joins, user.as_str(), joins, create);
    let (resp, _) = app
        .limiter
        .counted(Kind::ChannelCreations, user.as_str(), 1, create)
        .await?;
    let channel = resp
        .channel
        .as_ref()
        .map(view::channel)
        .unwrap_or(Value::Null);
    Ok(created_or_existing(resp.created, channel))
}

#[derive(Deserialize)]
struct PageQuery {
    limit: Option<String>,
    cursor: Option<String>,
    before: Option<String>,
    after: Option<String>,
}

fn parse_limit(app: &App, raw: Option<&str>) -> Result<u32, ApiError> {
    let max = app.config.limits.max_page;
    match raw {
        None => Ok(app.config.limits.default_page),
        Some(s) => s
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| ApiError::invalid(format!("limit must be an integer from 1 to {max}"))),
    }
}

async fn list_channels(
    State(app): AppState,
    Caller(user): Caller,
    Q(q): Q<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = parse_limit(&app, q.limit.as_deref())?;
    let req = pb::ListChannelsRequest {
        limit,
        cursor: q.cursor.unwrap_or_default(),
    };
    let resp = app
        .messaging
        .clone()
        .list_channels(grpc(&user, req)?)
        .await?
        .into_inner();
    let next = (!resp.next_cursor.is_empty()).then_some(resp.next_cursor);
    let mut channels: Vec<Value> = resp.channels.iter().map(view::channel).collect();
    // `unread` on every entry when receipts answers; omitted (not guessed) when it is down.
    if let Some(receipts) = &app.receipts
        && let Ok(u) = receipts.unread(&user).await
    {
        let counts: std::collections::HashMap<&str, u64> = u
            .channels
            .iter()
            .map(|c| (c.channel_id.as_str(), c.unread))
            .collect();
        for c in &mut channels {
            let n = c["id"]
                .as_str()
                .and_then(|id| counts.get(id))
                .copied()
                .unwrap_or(0);
            c["unread"] = json!(n);
        }
    }
    Ok(Json(json!({"channels": channels, "next_cursor": next})))
}

#[derive(Deserialize)]
struct PresenceQuery {
    user_ids: Option<String>,
}

/// Most users one `GET /v1/presence` may ask about (the presence batch limit).
const MAX_PRESENCE_QUERY: usize = 500;

async fn get_presence(
    State(app): AppState,
    Caller(user): Caller,
    Q(q): Q<PresenceQuery>,
) -> Result<Json<Value>, ApiError> {
    app.limiter
        .check(Kind::PresenceQueries, user.as_str())
        .await?;
    let raw = q.user_ids.unwrap_or_default();
    let mut ids = Vec::new();
    for part in raw.split(',').filter(|p| !p.is_empty()) {
        ids.push(UserId::parse(part)?.to_string());
    }
    if ids.is_empty() || ids.len() > MAX_PRESENCE_QUERY {
        return Err(ApiError::invalid(format!(
            "user_ids must list 1-{MAX_PRESENCE_QUERY} comma-separated user ids"
        )));
    }
    let presence = app.presence.as_ref().ok_or_else(|| {
        ApiError::new(
            ErrorCode::Unavailable,
            "presence is not configured on this gateway",
        )
    })?;
    let (visible, hidden) = crate::presence::visible(&app, &user, ids.clone()).await?;
    let mut found: std::collections::HashMap<String, Value> = if visible.is_empty() {
        Default::default()
    } else {
        presence.get(visible).await?
    }
    .iter()
    .chain(
        hidden
            .into_iter()
            .map(crate::presence::hidden)
            .collect::<Vec<_>>()
            .iter(),
    )
    .map(|p| (p.user_id.clone(), crate::presence::view(p)))
    .collect();
    let list: Vec<Value> = ids.iter().filter_map(|u| found.remove(u)).collect();
    Ok(Json(json!({"presence": list})))
}

fn receipts(app: &App) -> Result<&crate::receipts::Receipts, ApiError> {
    app.receipts.as_ref().ok_or_else(|| {
        ApiError::new(
            ErrorCode::Unavailable,
            "receipts is not configured on this gateway",
        )
    })
}

#[derive(Deserialize)]
struct ReadBody {
    seq: u64,
}

async fn mark_read(
    State(app): AppState,
    Caller(user): Caller,
    P(id): P<String>,
    JsonBody(b): JsonBody<ReadBody>,
) -> Result<StatusCode, ApiError> {
    let channel_id = channel_path(&id)?;
    app.limiter.check(Kind::ReadMarks, user.as_str()).await?;
    receipts(&app)?.read(&user, channel_id, b.seq).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn get_receipts(
    State(app): AppState,
    Caller(user): Caller,
    P(id): P<String>,
) -> Result<Json<Value>, ApiError> {
    let channel_id = channel_path(&id)?;
    Ok(Json(receipts(&app)?.receipts(&user, channel_id).await?))
}

async fn get_unread(State(app): AppState, Caller(user): Caller) -> Result<Json<Value>, ApiError> {
    let u = receipts(&app)?.unread(&user).await?;
    Ok(Json(crate::receipts::unread_view(&u)))
}

async fn get_channel(
    State(app): AppState,
    Caller(user): Caller,
    P(id): P<String>,
) -> Result<Json<Value>, ApiError> {
    let req = pb::GetChannelRequest {
        channel_id: channel_path(&id)?,
    };
    let resp = app
        .messaging
        .clone()
        .get_channel(grpc(&user, req)?)
        .await?
        .into_inner();
    Ok(Json(
        resp.channel
            .as_ref()
            .map(view::channel)
            .unwrap_or(Value::Null),
    ))
}

async fn list_members(
    State(app): AppState,
    Caller(user): Caller,
    P(id): P<String>,
) -> Result<Json<Value>, ApiError> {
    let req = pb::ListMembersRequest {
        channel_id: channel_path(&id)?,
    };
    let resp = app
        .messaging
        .clone()
        .list_members(grpc(&user, req)?)
        .await?
        .into_inner();
    let members: Vec<Value> = resp
        .members
        .iter()
        .map(|m| json!({"user_id": m.user_id, "role": view::role(m.role), "joined_at": view::time(m.joined_at.as_ref())}))
        .collect();
    Ok(Json(json!({"members": members})))
}

#[derive(Deserialize)]
struct AddMemberBody {
    user_id: String,
}

async fn add_member(
    State(app): AppState,
    Caller(user): Caller,
    P(id): P<String>,
    JsonBody(b): JsonBody<AddMemberBody>,
) -> Result<Response, ApiError> {
    let target = UserId::parse(&b.user_id)?;
    let req = pb::AddMemberRequest {
        channel_id: channel_path(&id)?,
        user_id: target.to_string(),
    };
    let req = grpc(&user, req)?;
    let add = async {
        let resp = app.messaging.clone().add_member(req).await?.into_inner();
        let created = resp.created;
        Ok((resp, created))
    };
    let (resp, _) = app
        .limiter
        .counted(Kind::Joins, user.as_str(), 1, add)
        .await?;
    let body = resp
        .member
        .as_ref()
        .map(view::member)
        .unwrap_or(Value::Null);
    Ok(created_or_existing(resp.created, body))
}

async fn remove_member(
    State(app): AppState,
    Caller(user): Caller,
    P((id, target)): P<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let target = UserId::parse(&target)?;
    let req = pb::RemoveMemberRequest {
        channel_id: channel_path(&id)?,
        user_id: target.to_string(),
    };
    app.messaging
        .clone()
        .remove_member(grpc(&user, req)?)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct SendBody {
    client_msg_id: String,
    body: String,
}

/// Validates, rate-limits and sends one message; shared by REST and WebSocket.
pub(crate) async fn send(
    app: &App,
    user: &UserId,
    channel_id: &str,
    client_msg_id: &str,
    body: &str,
) -> Result<pb::SendMessageResponse, ApiError> {
    let req = prepare_send(app, user, channel_id, client_msg_id, body).await?;
    app.sender.send(user, req).await
}

/// A send validated and counted against the sender's rate limit, ready for messaging.
pub(crate) async fn prepare_send(
    app: &App,
    user: &UserId,
    channel_id: &str,
    client_msg_id: &str,
    body: &str,
) -> Result<pb::SendMessageRequest, ApiError> {
    let channel_id = channel_path(channel_id)?;
    let cid = ClientMsgId::parse(client_msg_id)?;
    let body = MessageBody::parse(body, app.config.limits.max_message_bytes)?;
    app.limiter.check(Kind::Messages, user.as_str()).await?;
    Ok(pb::SendMessageRequest {
        channel_id,
        client_msg_id: cid.as_str().to_owned(),
        body: body.as_str().to_owned(),
    })
}

async fn send_message(
    State(app): AppState,
    Caller(user): Caller,
    P(id): P<String>,
    JsonBody(b): JsonBody<SendBody>,
) -> Result<Response, ApiError> {
    let resp = send(&app, &user, &id, &b.client_msg_id, &b.body).await?;
    let body = resp
        .message
        .as_ref()
        .map(view::message)
        .unwrap_or(Value::Null);
    Ok(created_or_existing(resp.created, body))
}

async fn list_messages(
    State(app): AppState,
    Caller(user): Caller,
    P(id): P<String>,
    Q(q): Q<PageQuery>,
) -> Result<Json<Value>, ApiError> {
    let channel_id = channel_path(&id)?;
    let limit = parse_limit(&app, q.limit.as_deref())?;
    let cursor = |name: &str, v: Option<String>| -> Result<Option<u64>, ApiError> {
        v.map(|s| {
            s.parse::<u64>()
                .ok()
                .filter(|n| *n <= i64::MAX as u64)
                .ok_or_else(|| {
                    ApiError::invalid(format!("{name} must be a non-negative integer seq"))
                })
        })
        .transpose()
    };
    let before = cursor("before", q.before)?;
    let after = cursor("after", q.after)?;
    if before.is_some() && after.is_some() {
        return Err(ApiError::invalid("use either before or after, not both"));
    }
    let req = pb::ListMessagesRequest {
        channel_id,
        before,
        after,
        limit,
    };
    let resp = app
        .messaging
        .clone()
        .list_messages(grpc(&user, req)?)
        .await?
        .into_inner();
    Ok(Json(
        json!({"messages": resp.messages.iter().map(view::message).collect::<Vec<_>>(), "has_more": resp.has_more}),
    ))
}

#[derive(Deserialize)]
struct EditBody {
    body: String,
}

async fn edit_message(
    State(app): AppState,
    Caller(user): Caller,
    P((id, seq)): P<(String, String)>,
    JsonBody(b): JsonBody<EditBody>,
) -> Result<Json<Value>, ApiError> {
    let channel_id = channel_path(&id)?;
    let seq = seq_path(&seq)?;
    let body = MessageBody::parse(&b.body, app.config.limits.max_message_bytes)?;
    app.limiter.check(Kind::Edits, user.as_str()).await?;
    let req = pb::EditMessageRequest {
        channel_id,
        seq,
        body: body.as_str().to_owned(),
    };
    let resp = app
        .messaging
        .clone()
        .edit_message(grpc(&user, req)?)
        .await?
        .into_inner();
    Ok(Json(
        resp.message
            .as_ref()
            .map(view::message)
            .unwrap_or(Value::Null),
    ))
}

async fn delete_message(
    State(app): AppState,
    Caller(user): Caller,
    P((id, seq)): P<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let req = pb::DeleteMessageRequest {
        channel_id: channel_path(&id)?,
        seq: seq_path(&seq)?,
    };
    app.limiter.check(Kind::Edits, user.as_str()).await?;
    app.messaging
        .clone()
        .delete_message(grpc(&user, req)?)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

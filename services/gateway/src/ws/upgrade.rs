//! `GET /v1/ws`: authenticates, admits the connection under the connection caps, upgrades.

use std::sync::Arc;

use axum::{
    extract::{
        State,
        ws::{WebSocketUpgrade, rejection::WebSocketUpgradeRejection},
    },
    http::HeaderMap,
    response::{IntoResponse, Response},
};
use parley_kit::ErrorCode;
use serde::Deserialize;

use super::Conn;
use crate::{ApiError, App, extract::Q};

#[derive(Deserialize)]
pub struct WsQuery {
    token: Option<String>,
}

/// `GET /v1/ws`: authenticates, then upgrades.
pub async fn upgrade(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Q(q): Q<WsQuery>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let user =
        match crate::auth::bearer(&headers, q.token.as_deref()).and_then(|t| app.auth.verify(&t)) {
            Ok(u) => u,
            Err(e) => return e.into_response(),
        };
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => {
            return ApiError::invalid(format!("not a WebSocket upgrade: {}", e.body_text()))
                .into_response();
        }
    };
    if app.draining.is_cancelled() {
        return ApiError::new(
            ErrorCode::Unavailable,
            "this node is draining; connect to another",
        )
        .into_response();
    }
    let session = uuid::Uuid::now_v7().to_string();
    let ticket = match app.admission.admit(user.as_str(), &session).await {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let tracker = app.connections.clone();
    ws.max_message_size(app.config.ws.max_frame_bytes)
        .max_frame_size(app.config.ws.max_frame_bytes)
        .read_buffer_size(app.config.ws.read_buffer_bytes)
        .on_upgrade(move |socket| {
            tracker.track_future(async move { Conn::run(app, user, socket, session, ticket).await })
        })
}

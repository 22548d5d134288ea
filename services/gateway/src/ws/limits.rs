//! Limits of one connection's client frames: a token bucket, and when it keeps being
//! exceeded, a close with a documented code.

use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;

/// WebSocket close code for a connection closed for breaking a documented limit
/// (RFC 6455 1008, policy violation).
pub(super) const CLOSE_POLICY: u16 = 1008;

/// How many refused frames within `FLOOD_WINDOW` close the connection is `ws.flood_close_after`.
pub(super) const FLOOD_WINDOW: Duration = Duration::from_secs(10);

/// Just the `ref` of a client frame.
#[derive(Deserialize)]
pub(super) struct RefOnly {
    #[serde(rename = "ref", default)]
    pub(super) r: Option<Value>,
}

/// Why a client frame was not taken.
pub(super) enum Flood {
    /// Over the frame rate: answered `rate_limited` (retry after this many seconds).
    Refused(u64),
    /// Over the rate again and again: the connection is closed.
    Close,
}

/// A connection's frame rate: a token bucket of `ws.frames_burst` refilled at
/// `ws.frames_per_sec`; more than `ws.flood_close_after` refusals within ten seconds close
/// the connection.
pub(super) struct FrameBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
    refused: u32,
    refused_since: Instant,
    close_after: u32,
}

impl FrameBucket {
    pub(super) fn new(cfg: &crate::WsConfig) -> Self {
        let now = Instant::now();
        let burst = f64::from(cfg.frames_burst.max(1));
        Self {
            rate: f64::from(cfg.frames_per_sec.max(1)),
            burst,
            tokens: burst,
            at: now,
            refused: 0,
            refused_since: now,
            close_after: cfg.flood_close_after.max(1),
        }
    }

    pub(super) fn take(&mut self, now: Instant) -> Result<(), Flood> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        if now.saturating_duration_since(self.refused_since) > FLOOD_WINDOW {
            self.refused = 0;
            self.refused_since = now;
        }
        self.refused += 1;
        if self.refused > self.close_after {
            return Err(Flood::Close);
        }
        let wait = ((1.0 - self.tokens) / self.rate).ceil().max(1.0);
        Err(Flood::Refused(wait as u64))
    }
}

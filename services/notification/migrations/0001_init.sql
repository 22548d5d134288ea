-- Notification service schema (search_path = notification).

-- A device of a user. Push tokens (fcm/apns/webpush: platform 1-3) identify one app
-- install and have exactly one owner; a webhook URL (platform 4) may be registered by
-- several users, once each.
CREATE TABLE devices (
    id          uuid        PRIMARY KEY,
    user_id     text        NOT NULL,
    platform    smallint    NOT NULL CHECK (platform BETWEEN 1 AND 4),
    token       text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX devices_push_token ON devices (platform, token) WHERE platform <> 4;
CREATE UNIQUE INDEX devices_webhook ON devices (platform, token, user_id) WHERE platform = 4;
CREATE INDEX devices_user ON devices (user_id, created_at, id);

-- A member's level for a channel (1 all, 2 mentions, 3 none); no row means "all".
CREATE TABLE preferences (
    channel_id  uuid        NOT NULL,
    user_id     text        NOT NULL,
    level       smallint    NOT NULL CHECK (level BETWEEN 1 AND 3),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (channel_id, user_id)
);

-- The delivery log: one row per (message, device). The primary key makes the fan-out
-- idempotent (a redelivered event inserts nothing); `status` decides whether a push
-- still has to go out:
--   pending  due at next_attempt_at (first attempt after the coalescing window)
--   sent     the provider answered 2xx (never sent again)
--   dead     gave up after max_attempts (or a permanent refusal); kept for inspection
--   gone     the device was removed (provider said 404/410, or the user unregistered it)
CREATE TABLE deliveries (
    message_id      uuid        NOT NULL,
    device_id       uuid        NOT NULL,
    -- Stable id of the (message, device) pair: X-Parley-Delivery-Id on every retry.
    delivery_id     uuid        NOT NULL UNIQUE,
    user_id         text        NOT NULL,
    channel_id      uuid        NOT NULL,
    channel_name    text        NOT NULL DEFAULT '',
    seq             bigint      NOT NULL,
    sender_id       text        NOT NULL,
    preview         text        NOT NULL,
    status          text        NOT NULL DEFAULT 'pending'
                                CHECK (status IN ('pending', 'sent', 'dead', 'gone')),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    last_error      text,
    -- W3C trace context (traceparent/tracestate) of the span that fanned the message out.
    trace_context   jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    PRIMARY KEY (message_id, device_id)
);
-- Workers scan only what is pending, oldest due first.
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status = 'pending';
-- Coalescing gathers the pending rows of one (device, channel).
CREATE INDEX deliveries_group ON deliveries (device_id, channel_id) WHERE status = 'pending';
-- The dead-letter gauge counts these.
CREATE INDEX deliveries_dead ON deliveries (created_at) WHERE status = 'dead';

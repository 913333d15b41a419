-- Devices, notifications, per-device deliveries and the stale-token table.

CREATE TABLE devices (
    id                bigserial PRIMARY KEY,
    app               text        NOT NULL,
    user_id           text        NOT NULL,
    platform          text        NOT NULL CHECK (platform IN ('apns', 'fcm', 'webpush')),
    -- APNs/FCM: the provider token. Web Push: the subscription endpoint.
    token             text        NOT NULL,
    p256dh            text,
    auth              text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    registered_at     timestamptz NOT NULL DEFAULT now(),
    last_delivered_at timestamptz,
    UNIQUE (app, platform, token)
);
-- Audience pages: app + user, keyset on id.
CREATE INDEX devices_app_user_id ON devices (app, user_id, id);

CREATE TABLE notifications (
    id             uuid        PRIMARY KEY,
    app            text        NOT NULL,
    audience       text[]      NOT NULL,
    payload        jsonb       NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz NOT NULL,
    -- keyset cursor of the fan-out: a redelivered notify task resumes here
    fanout_cursor  bigint      NOT NULL DEFAULT 0,
    fanout_done_at timestamptz
);

-- One row per (notification, device): the outcome, and the claim that keeps a
-- redelivered batch from sending twice.
CREATE TABLE deliveries (
    notification_id uuid        NOT NULL REFERENCES notifications (id) ON DELETE CASCADE,
    device_id       bigint      NOT NULL,
    platform        text        NOT NULL,
    token_tail      text        NOT NULL,
    status          text        NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'sending', 'retrying', 'delivered', 'failed', 'dead', 'expired', 'skipped')),
    attempts        integer     NOT NULL DEFAULT 0,
    provider_status integer,
    reason          text,
    claimed_until   timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (notification_id, device_id)
);

-- Dead-token verdicts from the providers; the sweep removes the devices.
CREATE TABLE stale_tokens (
    device_id     bigint      PRIMARY KEY,
    app           text        NOT NULL,
    platform      text        NOT NULL,
    token         text        NOT NULL,
    reason        text        NOT NULL,
    provider_since timestamptz,
    learned_at    timestamptz NOT NULL DEFAULT now()
);

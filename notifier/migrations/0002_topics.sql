-- Our own topics: a notification to a topic fans out to every subscribed device, on
-- every channel, with per-device outcomes like any audience.
CREATE TABLE topic_subscriptions (
    app        text        NOT NULL,
    topic      text        NOT NULL,
    device_id  bigint      NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (app, topic, device_id)
);
CREATE INDEX topic_subscriptions_device ON topic_subscriptions (device_id);

-- A notification's audience is users, one of our topics, or a provider-side target
-- (an FCM topic or condition) sent as one request.
ALTER TABLE notifications ADD COLUMN topic text;
ALTER TABLE notifications ADD COLUMN provider_target jsonb;

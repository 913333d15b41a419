-- Critical notifications: one row per (notification, user) waits for the category's
-- confirmation window; then `resume_owed` confirms it (a device of the user was
-- Delivered) or dispatches the fallback, once (README, "A fallback for what must arrive").
CREATE TABLE fallbacks (
    notification_id uuid        NOT NULL REFERENCES notifications (id) ON DELETE CASCADE,
    user_id         text        NOT NULL,
    -- the user's devices when the fan-out wrote the row: judged even after a sweep removed them
    device_ids      bigint[]    NOT NULL DEFAULT '{}',
    status          text        NOT NULL DEFAULT 'waiting'
                    CHECK (status IN ('waiting', 'dispatching', 'sent', 'confirmed', 'failed', 'cancelled')),
    due_at          timestamptz NOT NULL,
    attempts        integer     NOT NULL DEFAULT 0,
    reason          text,
    detail          text,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (notification_id, user_id)
);
CREATE INDEX fallbacks_due ON fallbacks (due_at) WHERE status IN ('waiting', 'dispatching');

-- Token hygiene: what the sweep removed, and the mass-invalidation guard's holds.

-- One row per device the sweep removed. `token` is kept only in archive mode; the tail
-- always, for `notifier tokens` and for support questions ("why did my phone stop?").
CREATE TABLE removed_devices (
    device_id      bigint      PRIMARY KEY,
    app            text        NOT NULL,
    platform       text        NOT NULL,
    user_id        text        NOT NULL,
    token          text,
    token_tail     text        NOT NULL,
    p256dh         text,
    auth           text,
    cause          text        NOT NULL CHECK (cause IN ('dead', 'inactive')),
    reason         text,
    registered_at  timestamptz NOT NULL,
    removed_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX removed_devices_app_time ON removed_devices (app, removed_at);

-- An app whose tokens were declared dead en masse: removal waits for an operator.
CREATE TABLE sweep_holds (
    app          text        PRIMARY KEY,
    held_at      timestamptz NOT NULL DEFAULT now(),
    verdicts     integer     NOT NULL,
    devices      integer     NOT NULL,
    confirmed_at timestamptz
);

CREATE INDEX stale_tokens_app_learned ON stale_tokens (app, learned_at);
CREATE INDEX devices_app_registered ON devices (app, registered_at);

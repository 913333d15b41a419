-- Scheduling, user preferences and collapsing (README, "Scheduling and preferences").
--   scheduled -> waits for due_at (its local send time, or the end of the user's quiet
--                hours); `resume_owed` releases it then, in pages, like a retry
--   cancelled -> `notifier cancel` reached it before it was sent
--   judging   -> written by a fan-out whose rules (preferences, local time) have not judged
--                it yet: never claimed or released; a resumed fan-out judges it
ALTER TABLE deliveries DROP CONSTRAINT deliveries_status_check;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_status_check CHECK (status IN (
    'pending', 'sending', 'retrying', 'delivered', 'failed', 'dead', 'expired', 'skipped', 'scheduled', 'cancelled',
    'judging'));
DROP INDEX deliveries_owed_due;
CREATE INDEX deliveries_owed_due ON deliveries (due_at) WHERE status IN ('pending', 'sending', 'retrying', 'scheduled');

-- send_at: an instant; local_at: a wall-clock time in each user's zone ('08:00' or
-- '2026-12-24T08:00'); the fan-out starts no earlier than release_at.
ALTER TABLE notifications ADD COLUMN send_at timestamptz;
ALTER TABLE notifications ADD COLUMN local_at text;
ALTER TABLE notifications ADD COLUMN release_at timestamptz;
ALTER TABLE notifications ADD COLUMN cancelled_at timestamptz;
ALTER TABLE notifications ADD COLUMN collapse_key text;
CREATE INDEX notifications_collapse ON notifications (app, collapse_key, created_at) WHERE collapse_key IS NOT NULL;

-- What a user asked for; a user with no row has the app's default time zone and no rules.
CREATE TABLE user_prefs (
    app         text        NOT NULL,
    user_id     text        NOT NULL,
    time_zone   text,
    quiet_start time,
    quiet_end   time,
    opted_out   text[]      NOT NULL DEFAULT '{}',
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (app, user_id),
    CHECK ((quiet_start IS NULL) = (quiet_end IS NULL))
);

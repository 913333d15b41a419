-- Everything owed has an owner. PostgreSQL, not the broker, says what is still to be
-- sent and when; broker messages only wake a worker up.
--
-- deliveries.due_at: when a row needs attention if nothing else happens to it.
--   pending  -> dispatched; if no task has claimed it by due_at, its task is presumed lost
--   sending  -> claimed; due_at is the claim's lease, renewed while the batch runs
--   retrying -> due_at is the retry time (backoff, Retry-After, a parked batch)
-- `resume_owed` (every NOTIFIER_RESUME_INTERVAL seconds) dispatches what is due; the
-- partial index serves it at any table size, because finished rows are not in it.
ALTER TABLE deliveries ADD COLUMN due_at timestamptz NOT NULL DEFAULT now();
-- The claim that may write this row's outcome; a writer whose claim lapsed writes nothing.
ALTER TABLE deliveries ADD COLUMN claim_id uuid;
-- Times the resumer dispatched this row again (it waits longer each time).
ALTER TABLE deliveries ADD COLUMN dispatches smallint NOT NULL DEFAULT 0;
ALTER TABLE deliveries DROP COLUMN claimed_until;
CREATE INDEX deliveries_owed_due ON deliveries (due_at) WHERE status IN ('pending', 'sending', 'retrying');

-- The fan-out's own lease: one fan-out per notification at a time, resumed by
-- `resume_owed` when its owner stopped renewing it.
ALTER TABLE notifications ADD COLUMN fanout_owner uuid;
ALTER TABLE notifications ADD COLUMN fanout_until timestamptz;
-- What an idempotency key stands for: a reused key with other content is refused.
ALTER TABLE notifications ADD COLUMN fingerprint text;
CREATE INDEX notifications_fanout_open ON notifications (fanout_until) WHERE fanout_done_at IS NULL;

-- A fan-out dispatched again by the resumer waits twice as long before the next time
-- (its task may only be waiting in a long queue).
ALTER TABLE notifications ADD COLUMN fanout_dispatches smallint NOT NULL DEFAULT 0;
-- Fan-outs under way when migration 0005 ran have no lease: give them one that has
-- lapsed, so the resumer finishes them.
UPDATE notifications SET fanout_until = now() WHERE fanout_done_at IS NULL AND fanout_until IS NULL;

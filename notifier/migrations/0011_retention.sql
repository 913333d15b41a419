-- Outcome retention (notifier/retention.py): old notifications are found by creation
-- time, and what the sweep removed long ago by removal time, through these indexes, so
-- the hourly purge costs what it deletes, not what the tables hold.
CREATE INDEX notifications_created ON notifications (created_at);
CREATE INDEX removed_devices_removed_at ON removed_devices (removed_at);
-- Where the sweep's inactivity pass stopped: each sweep looks at the next slice of the
-- devices table by id, so its cost does not grow with the table.
CREATE TABLE sweep_cursor (
    name  text   PRIMARY KEY,
    after bigint NOT NULL
);

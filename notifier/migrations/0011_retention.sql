-- Outcome retention (notifier/retention.py): old notifications are found by creation
-- time, and what the sweep removed long ago by removal time, through these indexes, so
-- the hourly purge costs what it deletes, not what the tables hold.
CREATE INDEX notifications_created ON notifications (created_at);
CREATE INDEX removed_devices_removed_at ON removed_devices (removed_at);

-- A whole-app broadcast (notify(everyone=True), or one platform's): its fan-out pages
-- straight over the app's devices by id, through this index.
ALTER TABLE notifications ADD COLUMN everyone text;  -- '*' every platform, else the platform
CREATE INDEX devices_app_id ON devices (app, id);
-- The sweep's inactivity pass reads a slice of devices by id per run (sweep_cursor, 0011):
-- the expression index over last_delivered_at is no longer read, and maintaining it cost
-- an index write with every delivered device (no HOT update while an index covers it).
DROP INDEX devices_last_active;

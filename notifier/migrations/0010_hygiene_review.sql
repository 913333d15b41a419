-- Holds made before the guard went per platform (0007) have platform '': each becomes one
-- hold per platform of the app that has verdicts waiting, so an upgrade never lets a held
-- mass invalidation through. A confirmed one stays confirmed, with its cut-off.
INSERT INTO sweep_holds (app, platform, held_at, verdicts, devices, confirmed_at)
SELECT h.app, p.platform, h.held_at, h.verdicts, h.devices, h.confirmed_at
  FROM sweep_holds h JOIN (SELECT DISTINCT app, platform FROM stale_tokens) p ON p.app = h.app
 WHERE h.platform = ''
ON CONFLICT DO NOTHING;
DELETE FROM sweep_holds WHERE platform = '';
-- A device its user unregistered must not come back with `notifier tokens --restore`:
-- unregistering forgets the token's removals too (by token, through this index).
CREATE INDEX removed_devices_token ON removed_devices (app, platform, token) WHERE token IS NOT NULL;
-- The retry window counts from a device's first attempt, not from the notification's
-- creation: a device first reached an hour into a backlog still gets its whole window.
ALTER TABLE deliveries ADD COLUMN first_tried_at timestamptz;
-- Claims of this row that lapsed (their batch died: a crash, a kill, a wedge). A device
-- whose batches keep dying (a poison payload or token) fails after a few, not after
-- NOTIFIER_MAX_ATTEMPTS, each of which took a whole batch down with it.
ALTER TABLE deliveries ADD COLUMN lapses smallint NOT NULL DEFAULT 0;

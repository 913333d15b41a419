-- The mass-invalidation guard decides per app and platform: an APNs sandbox/production
-- mix-up is every iOS token of an app, however many Android devices it has.
ALTER TABLE sweep_holds ADD COLUMN platform text NOT NULL DEFAULT '';
ALTER TABLE sweep_holds DROP CONSTRAINT sweep_holds_pkey;
ALTER TABLE sweep_holds ADD PRIMARY KEY (app, platform);
-- What the sweep removes is restorable (token, keys and topics kept for restore_days); a
-- removal an operator confirmed does not count again towards the guard.
ALTER TABLE removed_devices ADD COLUMN topics text[];
ALTER TABLE removed_devices ADD COLUMN confirmed boolean NOT NULL DEFAULT false;
CREATE INDEX removed_devices_app_platform_time ON removed_devices (app, platform, removed_at);

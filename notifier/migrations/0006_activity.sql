-- Inactivity is neither a registration nor a delivery for NOTIFIER_INACTIVE_DAYS: the
-- sweep's expiry query reads this expression, and the index serves it at any size.
CREATE INDEX devices_last_active ON devices ((greatest(registered_at, last_delivered_at)));

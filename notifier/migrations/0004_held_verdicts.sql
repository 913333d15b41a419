-- A verdict on a token is 'dead' (the provider says it will never work again: the sweep
-- removes the device) or 'held' (the provider says it belongs to another app, project or
-- environment, which can be our own misconfiguration: suppressed, removed only when an
-- operator confirms with `notifier sweep --confirm APP`, voided with `--release APP`).
ALTER TABLE stale_tokens ADD COLUMN kind text NOT NULL DEFAULT 'dead' CHECK (kind IN ('dead', 'hold'));

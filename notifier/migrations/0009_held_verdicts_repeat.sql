-- A held verdict (the token may be ours to blame: a wrong bundle id or Firebase project)
-- suppresses the token for a day, then lets one send through. The same verdict again,
-- a day or more after the first, while other tokens of the app and platform are
-- delivered to (our credentials work) and this one never was, makes it dead.
ALTER TABLE stale_tokens ADD COLUMN repeats integer NOT NULL DEFAULT 1;
ALTER TABLE stale_tokens ADD COLUMN first_learned_at timestamptz NOT NULL DEFAULT now();
UPDATE stale_tokens SET first_learned_at = learned_at;

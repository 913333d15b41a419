-- Bearer tokens of the HTTP API (`notifier api-token`), per app, stored as SHA-256 hashes:
-- a token is 32 random bytes, so a fast hash keeps a leaked table from giving tokens away.
--   send:     everything for the app (register, send, cancel, status)
--   register: register and unregister devices only: safe to put in a web page
CREATE TABLE api_tokens (
    id         bigserial   PRIMARY KEY,
    app        text        NOT NULL,
    name       text        NOT NULL,
    scope      text        NOT NULL CHECK (scope IN ('send', 'register')),
    hash       bytea       NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);

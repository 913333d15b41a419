-- Bearer tokens of the HTTP API (`notifier api-token`), per app, stored as SHA-256 hashes:
-- a token is 32 random bytes, so a fast hash keeps a leaked table from giving tokens away.
--   send:     everything for the app (register, send, cancel, status)
--   register: register and unregister devices only, for a web page: each registration
--             carries user_proof, HMAC-SHA256(signing_secret, user), which the app's own
--             backend computes for its logged-in user, so a page's token cannot register
--             a device for another user
CREATE TABLE api_tokens (
    id         bigserial   PRIMARY KEY,
    app        text        NOT NULL,
    name       text        NOT NULL,
    scope      text        NOT NULL CHECK (scope IN ('send', 'register')),
    hash       bytea       NOT NULL UNIQUE,
    signing_secret bytea,  -- register tokens: the key of user_proof (kept: it verifies proofs)
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);

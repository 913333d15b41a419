"""The HTTP API's bearer tokens: made once and shown once, kept as SHA-256 hashes."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from notifier.store.base import StoreBase, transient

PREFIX = "ntf_"
SCOPES = ("send", "register")


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class AccessQueries(StoreBase):
    @transient
    def create_api_token(self, app: str, name: str, scope: str) -> tuple[str, str | None]:
        """A new token for ``app`` and, for scope ``register``, the signing secret of its
        user proofs (hex). Only the token's hash is stored: this is the one time it is seen."""
        if scope not in SCOPES:
            raise ValueError(f"scope is one of {SCOPES}")
        token = PREFIX + secrets.token_urlsafe(32)
        secret = secrets.token_bytes(32) if scope == "register" else None
        with self._pool.connection() as conn:
            conn.execute("INSERT INTO api_tokens (app, name, scope, hash, signing_secret) VALUES (%s, %s, %s, %s, %s)",
                         (app, name, scope, token_hash(token), secret))
        return token, secret.hex() if secret else None

    @transient
    def api_token(self, token: str) -> tuple[str, str, bytes | None] | None:
        """(app, scope, signing secret) of a live token; None for an unknown or revoked one."""
        if not token.startswith(PREFIX) or len(token) > 100:
            return None
        with self._pool.connection() as conn:
            row = conn.execute("SELECT app, scope, signing_secret FROM api_tokens"
                               " WHERE hash = %s AND revoked_at IS NULL", (token_hash(token),)).fetchone()
        return None if row is None else (row[0], row[1], bytes(row[2]) if row[2] is not None else None)

    @transient
    def revoke_api_tokens(self, app: str, name: str) -> int:
        with self._pool.connection() as conn:
            return conn.execute("UPDATE api_tokens SET revoked_at = now() WHERE app = %s AND name = %s"
                                " AND revoked_at IS NULL", (app, name)).rowcount


def user_proof(secret_hex: str, user: str) -> str:
    """What the app's backend puts beside a register token for its logged-in ``user``."""
    return _proof(bytes.fromhex(secret_hex), user)


def proves(secret: bytes, user: str, proof: str) -> bool:
    """``proof`` is ``user_proof`` for ``user`` under the token's signing ``secret``."""
    return hmac.compare_digest(_proof(secret, user), proof.lower())


def _proof(secret: bytes, user: str) -> str:
    return hmac.new(secret, user.encode(), hashlib.sha256).hexdigest()

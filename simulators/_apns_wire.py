"""APNs request validation and provider-token (JWT) verification.

Pure functions and small classes with no I/O, used by :mod:`simulators.apns`.
Reason strings are the ones Apple documents in "Handling notification responses
from APNs" (Table "Values for the APNs JSON reason key").
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

PATH_PREFIX = "/3/device/"
MAX_PAYLOAD = 4096  # bytes, every push type but VoIP
MAX_VOIP_PAYLOAD = 5120
MAX_COLLAPSE_ID = 64  # bytes
PUSH_TYPES = frozenset(
    {"alert", "background", "location", "voip", "complication", "fileprovider",
     "mdm", "liveactivity", "pushtotalk", "widgets", "controls"}
)
PRIORITIES = frozenset({"1", "5", "10"})
_TOKEN_RE = re.compile(r"[0-9a-fA-F]{64}")


def generate_signing_key() -> tuple[str, str]:
    """A fresh ES256 key pair: (private key PEM as a .p8 holds it (PKCS#8), public key PEM)."""
    private = ec.generate_private_key(ec.SECP256R1())
    private_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM,
        serialization.PublicFormat.SubjectPublicKeyInfo,
    ).decode()
    return private_pem, public_pem


@dataclass(frozen=True, slots=True)
class JwtClaims:
    """The verified parts of a provider token."""

    kid: str
    iss: str
    iat: int


class TokenVerifier:
    """Verifies ``authorization: bearer <JWT>`` headers (ES256, ``kid``, ``iss``, ``iat``).

    Signatures are verified once per distinct token and cached (providers reuse a
    token for up to an hour); the age check runs on every request.
    """

    _CACHE_LIMIT = 4096

    def __init__(self, team_id: str, keys: dict[str, str], max_age: float) -> None:
        self._team_id = team_id
        self._keys = {
            kid: serialization.load_pem_public_key(pem.encode()) for kid, pem in keys.items()
        }
        self._max_age = max_age
        self._cache: dict[str, JwtClaims | None] = {}

    def verify(self, authorization: str | None, now: float) -> tuple[str | None, JwtClaims | None]:
        """Returns (403 reason or None, claims when the signature checked out)."""
        if not authorization:
            return "MissingProviderToken", None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return "MissingProviderToken", None
        if token in self._cache:
            claims = self._cache[token]
        else:
            claims = self._decode(token.strip())
            if len(self._cache) >= self._CACHE_LIMIT:
                self._cache.clear()
            self._cache[token] = claims
        if claims is None:
            return "InvalidProviderToken", None
        if now - claims.iat > self._max_age:
            return "ExpiredProviderToken", claims
        return None, claims

    def _decode(self, token: str) -> JwtClaims | None:
        try:
            header = jwt.get_unverified_header(token)
            kid = header.get("kid")
            if header.get("alg") != "ES256" or not isinstance(kid, str) or kid not in self._keys:
                return None
            claims = jwt.decode(
                token, key=self._keys[kid], algorithms=["ES256"],  # type: ignore[arg-type]
                options={"verify_iat": False, "verify_exp": False, "require": ["iss", "iat"]},
            )
        except jwt.PyJWTError:
            return None
        iat = claims.get("iat")
        if claims.get("iss") != self._team_id or not isinstance(iat, int) or iat > time.time() + 300:
            return None
        return JwtClaims(kid=kid, iss=claims["iss"], iat=iat)


@dataclass(frozen=True, slots=True)
class Rejection:
    status: int
    reason: str


def validate(
    method: str, path: str, headers: dict[str, str], duplicated: bool, body: bytes,
    auth: TokenVerifier, now: float,
) -> tuple[str, Rejection | None, JwtClaims | None, Any]:
    """Check a request the way APNs does: returns (token, rejection, jwt claims, payload).

    Order: method, path, provider token, headers, device token, payload.
    """
    token = path[len(PATH_PREFIX):] if path.startswith(PATH_PREFIX) else ""
    payload = _parse(body)
    if method != "POST":
        return token, Rejection(405, "MethodNotAllowed"), None, payload
    if not path.startswith(PATH_PREFIX) or "/" in token:
        return token, Rejection(404, "BadPath"), None, payload
    reason, claims = auth.verify(headers.get("authorization"), now)
    if reason is not None:
        return token, Rejection(403, reason), claims, payload
    rejection = _check_headers(headers, duplicated) or _check_body(token, headers, body, payload)
    return token, rejection, claims, payload


def _check_headers(headers: dict[str, str], duplicated: bool) -> Rejection | None:
    if duplicated:
        return Rejection(400, "DuplicateHeaders")
    apns_id = headers.get("apns-id")
    if apns_id is not None:
        try:
            uuid.UUID(apns_id)
        except ValueError:
            return Rejection(400, "BadMessageId")
    if not headers.get("apns-topic"):
        return Rejection(400, "MissingTopic")
    push_type = headers.get("apns-push-type")
    if push_type is not None and push_type not in PUSH_TYPES:
        return Rejection(400, "InvalidPushType")
    priority = headers.get("apns-priority")
    if priority is not None and priority not in PRIORITIES:
        return Rejection(400, "BadPriority")
    expiration = headers.get("apns-expiration")
    if expiration is not None and not expiration.isdigit():
        return Rejection(400, "BadExpirationDate")
    collapse_id = headers.get("apns-collapse-id")
    if collapse_id is not None and len(collapse_id.encode()) > MAX_COLLAPSE_ID:
        return Rejection(400, "BadCollapseId")
    return None


def _check_body(token: str, headers: dict[str, str], body: bytes, payload: Any) -> Rejection | None:
    if not token:
        return Rejection(400, "MissingDeviceToken")
    if not _TOKEN_RE.fullmatch(token):
        return Rejection(400, "BadDeviceToken")
    if not body:
        return Rejection(400, "PayloadEmpty")
    limit = MAX_VOIP_PAYLOAD if headers.get("apns-push-type") == "voip" else MAX_PAYLOAD
    if len(body) > limit:
        return Rejection(413, "PayloadTooLarge")
    if not isinstance(payload, dict):
        # Apple documents no reason for a malformed JSON body; PayloadEmpty is the
        # closest documented one.
        return Rejection(400, "PayloadEmpty")
    return None


def _parse(body: bytes) -> Any:
    if not body:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None

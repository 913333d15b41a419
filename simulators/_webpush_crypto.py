"""Cryptography for the Web Push simulator: subscription keys, VAPID, message decryption.

* Subscription keys (RFC 8291 §2): a P-256 key pair (the public half is ``p256dh``,
  an uncompressed point) and a 16-byte authentication secret (``auth``).
* VAPID (RFC 8292): parses the ``Authorization`` header (``vapid t=<jwt>, k=<key>``,
  §3, or the pre-RFC ``WebPush <jwt>`` + ``Crypto-Key: p256ecdsa=<key>`` pair) and
  verifies the ES256 JWT (RFC 7515/7518 §3.4) independently of py_vapid, then checks
  the claims (§2: ``aud`` is the push resource's origin, ``exp`` is in the future and
  no more than 24 hours ahead, ``sub`` is a ``mailto:`` or ``https:`` URI).
* Decryption (RFC 8291 §3.3-3.4 and §4 over RFC 8188 ``aes128gcm``), checking the
  RFC 8291 constraints on the coding header (65-byte ``keyid`` holding the sender's
  uncompressed P-256 key; a single record).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import os
import re
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

MAX_EXP_AHEAD = 24 * 60 * 60  # RFC 8292 §2: exp no more than 24 hours from the request
_SUB_RE = re.compile(r"^(mailto:[^@\s]+@[^@\s]+|https://[^/\s]+.*)$", re.IGNORECASE)


def b64url_encode(data: bytes) -> str:
    """Base64url without padding (RFC 7515 §2), the encoding of every Web Push key."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(data: str) -> bytes:
    """Decode base64url, with or without padding. Raises ValueError on bad input."""
    raw = data.strip().encode("ascii")
    try:
        return base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"bad base64url: {exc}") from exc


@dataclass(frozen=True)
class SubscriptionKeys:
    """The user agent's half of RFC 8291: what a browser keeps to decrypt pushes."""

    private_key: ec.EllipticCurvePrivateKey
    auth_secret: bytes
    public_point: bytes  # uncompressed, 65 octets

    @classmethod
    def generate(cls) -> SubscriptionKeys:
        return cls.from_private(ec.generate_private_key(ec.SECP256R1()), os.urandom(16))

    @classmethod
    def from_private(cls, private_key: ec.EllipticCurvePrivateKey, auth_secret: bytes) -> SubscriptionKeys:
        point = private_key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        return cls(private_key, auth_secret, point)

    def public_json(self) -> dict[str, str]:
        """The ``keys`` member of PushSubscription.toJSON()."""
        return {"p256dh": b64url_encode(self.public_point), "auth": b64url_encode(self.auth_secret)}


class VapidError(Exception):
    """A VAPID failure; ``status`` is 401 (no usable credentials) or 403 (rejected)."""

    def __init__(self, status: int, reason: str, key: str | None = None,
                 claims: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.key = key
        self.claims = claims or {}


def _params(text: str, seps: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in re.split(f"[{seps}]", text):
        name, eq, value = part.strip().partition("=")
        if eq:
            out[name.strip().lower()] = value.strip().strip('"')
    return out


def parse_vapid_header(authorization: str | None, crypto_key: str | None) -> tuple[str, str]:
    """Return ``(jwt, k)`` from the request headers or raise VapidError(401)."""
    if not authorization:
        raise VapidError(401, "missing Authorization header")
    scheme, _, rest = authorization.strip().partition(" ")
    scheme = scheme.lower()
    if scheme == "vapid":  # RFC 8292 §3: vapid t=<jwt>, k=<key>
        params = _params(rest, ",")
        if "t" not in params or "k" not in params:
            raise VapidError(401, "vapid scheme without t= and k= parameters")
        return params["t"], params["k"]
    if scheme == "webpush":  # draft-ietf-webpush-vapid-01, still sent by py_vapid's Vapid01
        key = _params(crypto_key or "", ";,").get("p256ecdsa")
        if not key:
            raise VapidError(401, "WebPush scheme without Crypto-Key: p256ecdsa=")
        return rest.strip(), key
    raise VapidError(401, f"unsupported Authorization scheme {scheme!r}")


class VapidVerifier:
    """Verifies VAPID tokens. Signature checks are cached per (token, key): senders
    reuse a token for hours, and the claims are re-checked on every request anyway."""

    def __init__(self, max_cache: int = 4096) -> None:
        self._cache: dict[tuple[str, str], dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._max_cache = max_cache

    def verify(self, token: str, key: str, audience: str) -> dict[str, Any]:
        """Return the verified claims, or raise VapidError(403)."""
        with self._lock:
            claims = self._cache.get((token, key))
        if claims is None:
            claims = self._verify_signature(token, key)
            with self._lock:
                if len(self._cache) >= self._max_cache:
                    self._cache.clear()
                self._cache[(token, key)] = claims
        self._check_claims(claims, key, audience)
        return dict(claims)

    @staticmethod
    def _verify_signature(token: str, key: str) -> dict[str, Any]:
        try:
            public_key = ec.EllipticCurvePublicKey.from_encoded_point(
                ec.SECP256R1(), b64url_decode(key)
            )
        except ValueError:
            raise VapidError(403, "k is not an uncompressed P-256 public key", key) from None
        parts = token.split(".")
        if len(parts) != 3:
            raise VapidError(403, "token is not a JWS compact serialisation", key)
        try:
            header = json.loads(b64url_decode(parts[0]))
            claims = json.loads(b64url_decode(parts[1]))
            signature = b64url_decode(parts[2])
        except ValueError:
            raise VapidError(403, "token is not valid base64url JSON", key) from None
        if not isinstance(header, dict) or header.get("alg") != "ES256":
            raise VapidError(403, "JWT alg must be ES256", key)
        if not isinstance(claims, dict):
            raise VapidError(403, "JWT claims are not an object", key)
        if len(signature) != 64:  # RFC 7518 §3.4: R || S, 32 octets each
            raise VapidError(403, "ES256 signature must be 64 octets (R||S)", key, claims)
        der = encode_dss_signature(int.from_bytes(signature[:32], "big"),
                                   int.from_bytes(signature[32:], "big"))
        try:
            public_key.verify(der, f"{parts[0]}.{parts[1]}".encode("ascii"),
                              ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise VapidError(403, "JWT signature does not verify with k", key, claims) from None
        return claims

    @staticmethod
    def _check_claims(claims: dict[str, Any], key: str, audience: str) -> None:
        if claims.get("aud") != audience:
            raise VapidError(403, f"aud {claims.get('aud')!r} is not {audience!r}", key, claims)
        exp = claims.get("exp")
        now = time.time()
        if not isinstance(exp, int | float) or isinstance(exp, bool):
            raise VapidError(403, "exp missing or not a number", key, claims)
        if exp <= now:
            raise VapidError(403, "token expired", key, claims)
        if exp > now + MAX_EXP_AHEAD:
            raise VapidError(403, "exp more than 24 hours ahead", key, claims)
        sub = claims.get("sub")
        if not isinstance(sub, str) or not _SUB_RE.match(sub):
            raise VapidError(403, "sub must be a mailto: or https: URI", key, claims)


class DecryptError(Exception):
    """The body is not a valid RFC 8291 message for this subscription."""


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.digest(key, data, "sha256")


def decrypt(body: bytes, keys: SubscriptionKeys) -> bytes:
    """Decrypt an RFC 8291 ``aes128gcm`` body with the subscription's keys.

    Written out from the RFCs (rather than via ``http_ece``, which is what pywebpush
    encrypts with) so that a misreading cannot hide on both sides, and because it is
    about twice as fast; the RFC 8291 Appendix A vector is in the tests.
    """
    # RFC 8188 §2.1 header: salt(16) | rs(4) | idlen(1) | keyid(idlen) | one record
    if len(body) < 21:
        raise DecryptError("body shorter than the aes128gcm header")
    salt, rs, idlen = body[:16], struct.unpack("!L", body[16:20])[0], body[20]
    if idlen != 65:  # RFC 8291 §4: keyid is the sender's uncompressed P-256 key
        raise DecryptError("keyid is not a 65-octet uncompressed P-256 key")
    as_public, record = body[21:86], body[86:]
    if rs < 18 or len(record) > rs:  # RFC 8291 §4: a single record
        raise DecryptError("message must be a single record (rs too small)")
    if len(record) < 17:  # RFC 8188 §2: at least the delimiter octet and the 16-octet tag
        raise DecryptError("record shorter than tag + delimiter")
    try:
        sender = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), as_public)
    except ValueError:
        raise DecryptError("keyid is not a point on P-256") from None
    ecdh_secret = keys.private_key.exchange(ec.ECDH(), sender)
    # RFC 8291 §3.4: IKM = HKDF(auth_secret, ecdh_secret, "WebPush: info" 0x00 ua || as, 32)
    prk_key = _hmac(keys.auth_secret, ecdh_secret)
    ikm = _hmac(prk_key, b"WebPush: info\x00" + keys.public_point + as_public + b"\x01")
    # RFC 8188 §2.2, §2.3: CEK and NONCE from PRK = HMAC(salt, IKM); the first record's
    # nonce is NONCE itself (sequence number 0)
    prk = _hmac(salt, ikm)
    cek = _hmac(prk, b"Content-Encoding: aes128gcm\x00\x01")[:16]
    nonce = _hmac(prk, b"Content-Encoding: nonce\x00\x01")[:12]
    try:
        padded = AESGCM(cek).decrypt(nonce, record, None)
    except InvalidTag:
        raise DecryptError("aes128gcm authentication failed (wrong keys or corrupted body)") from None
    # RFC 8188 §2: plaintext || delimiter (0x02 for the last record) || zero padding
    unpadded = padded.rstrip(b"\x00")
    if not unpadded or unpadded[-1] != 2:
        raise DecryptError("last record must end with padding delimiter 0x02")
    return unpadded[:-1]

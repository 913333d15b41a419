"""Google OAuth 2.0 side of the FCM simulator: a service account and its token endpoint.

Implements the JWT bearer grant (RFC 7523 section 2.1, as Google documents it at
https://developers.google.com/identity/protocols/oauth2/service-account#httprest):
``POST /token`` with form fields ``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer``
and ``assertion=<RS256 JWT signed with the service account key>``. Google accepts ``aud`` =
``https://oauth2.googleapis.com/token`` (google-auth always sends that, whatever the
``token_uri``) and we also accept this simulator's own ``/token`` URL.
"""

from __future__ import annotations

import secrets
import threading
import time
import urllib.parse
from functools import cached_property
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
MAX_ASSERTION_LIFETIME = 3600  # Google rejects assertions valid for more than an hour
CLOCK_SKEW = 300


class ServiceAccount:
    """One RSA service-account key (generated lazily, once) and the access tokens issued."""

    def __init__(self, project_id: str, token_lifetime: int) -> None:
        self.project_id = project_id
        self.token_lifetime = token_lifetime
        self.private_key_id = secrets.token_hex(20)
        self.client_email = f"firebase-adminsdk-sim@{project_id}.iam.gserviceaccount.com"
        self.client_id = str(100000000000000000000 + secrets.randbelow(10**20))
        self._lock = threading.Lock()
        self._tokens: dict[str, float] = {}  # access token -> monotonic expiry

    @cached_property
    def _key(self) -> rsa.RSAPrivateKey:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    @cached_property
    def public_key(self) -> rsa.RSAPublicKey:
        return self._key.public_key()

    def info(self, token_uri: str) -> dict[str, str]:
        """The service-account JSON, as downloaded from the Google Cloud console."""
        pem = self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        quoted = urllib.parse.quote(self.client_email)
        return {
            "type": "service_account",
            "project_id": self.project_id,
            "private_key_id": self.private_key_id,
            "private_key": pem,
            "client_email": self.client_email,
            "client_id": self.client_id,
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": token_uri,
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "client_x509_cert_url": f"https://www.googleapis.com/robot/v1/metadata/x509/{quoted}",
            "universe_domain": "googleapis.com",
        }

    # -- token endpoint --------------------------------------------------------------------
    def grant(self, form: bytes, token_uri: str) -> tuple[int, dict[str, Any]]:
        """Handle a token request body; returns (HTTP status, JSON answer)."""
        fields = urllib.parse.parse_qs(form.decode("utf-8", "replace"))
        grant_type = fields.get("grant_type", [""])[0]
        if grant_type != JWT_BEARER:
            return 400, _oauth_error("unsupported_grant_type", f"Invalid grant_type: {grant_type}")
        assertion = fields.get("assertion", [""])[0]
        problem = self._check_assertion(assertion, token_uri)
        if problem:
            return 400, _oauth_error("invalid_grant", problem)
        token = "ya29.sim-" + secrets.token_urlsafe(24)
        with self._lock:
            self._tokens[token] = time.monotonic() + self.token_lifetime
        return 200, {
            "access_token": token,
            "expires_in": self.token_lifetime,
            "token_type": "Bearer",
        }

    def _check_assertion(self, assertion: str, token_uri: str) -> str | None:
        try:
            header = jwt.get_unverified_header(assertion)
            claims = jwt.decode(
                assertion,
                self.public_key,
                algorithms=["RS256"],
                audience=[GOOGLE_TOKEN_URI, token_uri],
                issuer=self.client_email,
                leeway=CLOCK_SKEW,
                options={"require": ["iss", "aud", "iat", "exp"]},
            )
        except jwt.InvalidSignatureError:
            return "Invalid JWT Signature."
        except jwt.InvalidIssuerError:
            return "Invalid email or User ID"
        except (jwt.ExpiredSignatureError, jwt.ImmatureSignatureError):
            return _TIMEFRAME
        except jwt.PyJWTError as exc:
            return f"Invalid JWT: {type(exc).__name__}"
        if header.get("kid") not in (None, self.private_key_id):
            return "Invalid JWT Signature."
        iat, exp = claims["iat"], claims["exp"]
        now = time.time()
        if exp - iat > MAX_ASSERTION_LIFETIME or iat > now + CLOCK_SKEW or exp <= iat:
            return _TIMEFRAME
        return None

    # -- bearer check for the API endpoints ------------------------------------------------
    def valid(self, authorization: str | None) -> bool:
        if not authorization or not authorization.startswith("Bearer "):
            return False
        expiry = self._tokens.get(authorization[7:])
        return expiry is not None and expiry > time.monotonic()

    def expire_all(self) -> None:
        with self._lock:
            self._tokens = dict.fromkeys(self._tokens, 0.0)


_TIMEFRAME = (
    "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe."
    " Check your iat and exp values in the JWT claim."
)


def _oauth_error(error: str, description: str) -> dict[str, Any]:
    return {"error": error, "error_description": description}

"""FCM-shaped answers: JSON responses and google.rpc.Status errors with FcmError details.

Error shape: https://firebase.google.com/docs/reference/fcm/rest/v1/ErrorCode and
https://cloud.google.com/apis/design/errors#http_mapping.
"""

from __future__ import annotations

import json
from typing import Any

from simulators._fcm_wire import WireResponse

FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"
JSON_HEADERS = [("content-type", "application/json; charset=UTF-8")]
# behaviour -> (HTTP status, google.rpc status, FCM errorCode, message)
ERRORS: dict[str, tuple[int, str, str, str]] = {
    "unregistered": (404, "NOT_FOUND", "UNREGISTERED", "Requested entity was not found."),
    "invalid_token": (400, "INVALID_ARGUMENT", "INVALID_ARGUMENT",
                      "The registration token is not a valid FCM registration token"),
    "sender_mismatch": (403, "PERMISSION_DENIED", "SENDER_ID_MISMATCH", "SenderId mismatch"),
    "quota": (429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED",
              "Quota exceeded for quota metric 'Send requests' of service fcm.googleapis.com."),
    "unavailable": (503, "UNAVAILABLE", "UNAVAILABLE", "The service is currently unavailable."),
    "internal": (500, "INTERNAL", "INTERNAL", "Internal error encountered."),
    "third_party_auth": (401, "UNAUTHENTICATED", "THIRD_PARTY_AUTH_ERROR",
                         "Auth error from APNS or Web Push Service"),
}
BEHAVIOURS = frozenset(ERRORS) | {"live", "slow"}
UNAUTHENTICATED = (
    "Request had invalid authentication credentials. Expected OAuth 2 access token, login "
    "cookie or other valid authentication credential."
)
WWW_AUTHENTICATE = [("www-authenticate", 'Bearer realm="https://accounts.google.com/"')]


def json_response(
    status: int, payload: Any, headers: list[tuple[str, str]] | None = None
) -> WireResponse:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return WireResponse(status, body, JSON_HEADERS + (headers or []))


def google_error(
    status: int,
    grpc_status: str,
    message: str,
    error_code: str | None = None,
    *,
    field: str | None = None,
    headers: list[tuple[str, str]] | None = None,
) -> WireResponse:
    """A google.rpc.Status error body, as FCM answers (details only when there are some)."""
    error: dict[str, Any] = {"code": status, "message": message, "status": grpc_status}
    details: list[dict[str, Any]] = []
    if error_code:
        details.append({"@type": FCM_ERROR, "errorCode": error_code})
    if field:
        details.append(
            {"@type": BAD_REQUEST, "fieldViolations": [{"field": field, "description": message}]}
        )
    if details:
        error["details"] = details
    return json_response(status, {"error": error}, headers)


def unauthenticated() -> WireResponse:
    return google_error(401, "UNAUTHENTICATED", UNAUTHENTICATED, headers=WWW_AUTHENTICATE)

"""Which Web Push endpoints we POST to: safe by default.

A Web Push endpoint is any URL a browser (or anyone calling ``register_device``) hands
us, and the workers POST to it and store what it answers. Unchecked, that is a way into
internal services (server-side request forgery). So:

- only the known push services' origins are accepted (``KNOWN_PUSH_SERVICES``: Google,
  Mozilla, Apple, Microsoft); ``NOTIFIER_WEBPUSH_ORIGINS`` lists more (a self-hosted push
  service; the simulators in tests and the demo);
- a host that is, or resolves to, a loopback, private, link-local or otherwise
  non-public address is refused, at registration and again at send time (DNS can
  change), unless its origin is listed in ``NOTIFIER_WEBPUSH_ORIGINS`` explicitly.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from notifier.errors import ConfigError, InvalidNotification

# The push services browsers use today; "*." matches any subdomain.
KNOWN_PUSH_SERVICES = (
    "https://fcm.googleapis.com",  # Chrome, Edge on Android, Opera, Samsung Internet
    "https://updates.push.services.mozilla.com",  # Firefox
    "https://web.push.apple.com",  # Safari
    "https://*.notify.windows.com",  # Edge on Windows (WNS)
)


class ForbiddenEndpoint(OSError):
    """The endpoint's host resolves to an address we do not POST to."""


@dataclass(frozen=True, slots=True)
class Origin:
    host: str  # lower case; "*.example.com" matches subdomains
    port: int

    @classmethod
    def parse(cls, origin: str) -> Origin:
        parts = urlsplit(origin.strip())
        if parts.scheme != "https" or not parts.hostname or parts.path not in ("", "/"):
            raise ConfigError(f"NOTIFIER_WEBPUSH_ORIGINS: {origin!r} is not an https origin (https://host[:port])")
        host = parts.hostname.lower()
        if origin.strip().lower().startswith("https://*."):
            host = "*." + host.removeprefix("*.")
        return cls(host, parts.port or 443)

    def matches(self, host: str, port: int) -> bool:
        if port != self.port:
            return False
        if self.host.startswith("*."):
            return host.endswith(self.host[1:])
        return host == self.host


def origin_of(endpoint: str) -> str:
    """A Web Push endpoint's push service, as ``https://host[:port]`` (lower case, no
    default port): the circuit breakers' key. "" for an endpoint that does not parse."""
    try:
        parts = urlsplit(endpoint)
        host, port = (parts.hostname or "").lower(), parts.port or 443
    except ValueError:
        return ""
    return f"https://{host}" + ("" if port == 443 else f":{port}")


def non_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    return not ip.is_global or ip.is_multicast


@dataclass(frozen=True, slots=True)
class EndpointPolicy:
    known: tuple[Origin, ...]
    listed: tuple[Origin, ...]  # NOTIFIER_WEBPUSH_ORIGINS: trusted to resolve anywhere

    @classmethod
    def from_origins(cls, listed: tuple[str, ...]) -> EndpointPolicy:
        return cls(tuple(Origin.parse(o) for o in KNOWN_PUSH_SERVICES), tuple(Origin.parse(o) for o in listed))

    def listed_explicitly(self, host: str, port: int) -> bool:
        return any(o.matches(host, port) for o in self.listed)

    def check(self, endpoint: str) -> tuple[str, int]:
        """The endpoint's (host, port) when its origin is allowed; raises InvalidNotification."""
        try:
            parts = urlsplit(endpoint)
            host, port = (parts.hostname or "").lower(), parts.port or 443
        except ValueError:
            raise InvalidNotification("a Web Push endpoint must be an https URL with a valid port") from None
        if not any(o.matches(host, port) for o in (*self.known, *self.listed)):
            raise InvalidNotification(
                f"Web Push endpoint origin https://{host}:{port} is not a known push service; "
                "list it in NOTIFIER_WEBPUSH_ORIGINS if it is yours")
        if not self.listed_explicitly(host, port) and _is_ip(host) and non_public(host):
            raise InvalidNotification("a Web Push endpoint cannot point at a loopback, private or link-local address")
        return host, port

    def check_resolved(self, endpoint: str) -> None:
        """``check``, and the host's addresses now: for registration."""
        host, port = self.check(endpoint)
        if self.listed_explicitly(host, port) or _is_ip(host):
            return
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError:
            return  # unresolvable now: nothing is sent to it until it resolves, and then it is checked again
        if any(non_public(str(info[4][0])) for info in infos):
            raise InvalidNotification(f"Web Push endpoint host {host} resolves to a non-public address")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True

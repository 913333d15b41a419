"""Web Push endpoints: only known push services, never a private address unless listed."""

import asyncio

import pytest

from notifier.endpoints import EndpointPolicy, ForbiddenEndpoint, Origin, non_public
from notifier.errors import ConfigError, InvalidNotification
from notifier.webpush import GuardedResolver, WebPushAnswer, WebPushChannel

DEFAULT = EndpointPolicy.from_origins(())


@pytest.mark.parametrize("endpoint", [
    "https://fcm.googleapis.com/fcm/send/abc",
    "https://updates.push.services.mozilla.com/wpush/v2/abc",
    "https://web.push.apple.com/QGx",
    "https://wns2-by3p.notify.windows.com/w/?token=abc",
])
def test_the_known_push_services_are_accepted(endpoint: str) -> None:
    DEFAULT.check(endpoint)


@pytest.mark.parametrize("endpoint", [
    "https://push.example.com/x",  # any other host
    "https://fcm.googleapis.com:8443/fcm/send/abc",  # a known host on another port
    "https://evil-fcm.googleapis.com.attacker.net/x",
    "https://notify.windows.com.attacker.net/x",
    "https://127.0.0.1/push/x", "https://10.0.0.8/x", "https://169.254.169.254/latest/meta-data",
    "https://[::1]/x",
])
def test_anything_else_is_refused_by_default(endpoint: str) -> None:
    with pytest.raises(InvalidNotification):
        DEFAULT.check(endpoint)


def test_a_malformed_port_is_refused_not_raised() -> None:
    with pytest.raises(InvalidNotification, match="valid port"):
        DEFAULT.check("https://fcm.googleapis.com:99999/fcm/send/abc")


def test_a_listed_origin_may_be_private() -> None:
    policy = EndpointPolicy.from_origins(("https://127.0.0.1:8443", "https://*.push.internal"))
    policy.check("https://127.0.0.1:8443/push/abc")
    policy.check("https://eu.push.internal/x")
    with pytest.raises(InvalidNotification):
        policy.check("https://127.0.0.1:9443/push/abc")  # another port is another origin


def test_registration_resolves_the_host() -> None:
    """A known-looking origin listed to accept it, then refused for resolving to loopback."""
    policy = EndpointPolicy(known=(Origin("localhost", 443),), listed=())
    with pytest.raises(InvalidNotification, match="non-public"):
        policy.check_resolved("https://localhost/push/x")


def test_origins_setting_is_checked() -> None:
    with pytest.raises(ConfigError):
        Origin.parse("http://127.0.0.1:8443")
    assert Origin.parse("https://*.example.com").matches("a.example.com", 443)
    assert not Origin.parse("https://*.example.com").matches("example.com.evil", 443)


def test_non_public_addresses() -> None:
    assert all(non_public(a) for a in ("127.0.0.1", "10.1.2.3", "192.168.0.1", "169.254.169.254", "::1",
                                       "fe80::1", "0.0.0.0", "100.64.0.1", "224.0.0.1"))
    assert not any(non_public(a) for a in ("8.8.8.8", "142.250.74.74", "2a00:1450:4001:80b::200a"))


def test_at_send_time_the_resolver_refuses_private_addresses() -> None:
    async def resolve(policy: EndpointPolicy) -> object:
        resolver = GuardedResolver(policy)
        try:
            return await resolver.resolve("localhost", 443)
        finally:
            await resolver.close()

    with pytest.raises(ForbiddenEndpoint):
        asyncio.run(resolve(DEFAULT))
    assert asyncio.run(resolve(EndpointPolicy.from_origins(("https://localhost",))))


def test_a_refused_push_is_a_message_fault_that_keeps_the_token() -> None:
    from py_vapid import Vapid02

    from notifier.outcomes import MessageRejected

    v = Vapid02()
    v.generate_keys()
    channel = WebPushChannel("app", v, "mailto:ops@example.com", timeout=5, max_in_flight=1)
    assert isinstance(channel.classify(WebPushAnswer(0, None, b"not a known push service")), MessageRejected)

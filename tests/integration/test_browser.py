"""A real browser round trip: Debian's firefox-esr, headless, pointed at the simulator's
push service (its WebSocket side: ``dom.push.serverURL``), opens the page ``notifier
serve`` serves, subscribes with the app's VAPID key and stores the subscription through
the HTTP API; ``notify.delay()`` reaches its service worker once, decrypted by Firefox;
after the page unsubscribes, the next send records a dead token.

Firefox is driven over its own Marionette port (``harness.marionette``), so no geckodriver
is needed. ``make test`` installs firefox-esr when it is missing (``apt-get``); without it
this test fails, it never skips.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from notifier.cli import main as cli
from notifier.store.access import user_proof
from tests.integration.conftest import free_port, wait_until

APP = "testapp"
USER = "browser-user"
FIREFOX = shutil.which("firefox-esr") or shutil.which("firefox")


@pytest.fixture
def firefox(webpush) -> Iterator[Any]:
    """A headless Firefox whose push service is the simulator, and a Marionette session."""
    from harness.marionette import Marionette

    assert FIREFOX, "firefox-esr is not installed (apt-get install firefox-esr; make test does it)"
    profile = Path(tempfile.mkdtemp(prefix="notifier-firefox-"))
    port = free_port()
    prefs = {
        "dom.push.serverURL": webpush.ws_url,
        "dom.push.testing.allowInsecureServerURL": True,
        "dom.push.enabled": True,
        "dom.push.connection.enabled": True,
        "dom.serviceWorkers.enabled": True,
        "dom.serviceWorkers.testing.enabled": True,
        "permissions.default.desktop-notification": 1,
        "marionette.port": port,
        "browser.shell.checkDefaultBrowser": False,
        "datareporting.policy.dataSubmissionEnabled": False,
        "app.update.disabledForTesting": True,
        "browser.startup.homepage_override.mstone": "ignore",
        "network.proxy.type": 0,
    }
    (profile / "user.js").write_text("".join(f"user_pref({json.dumps(k)}, {json.dumps(v)});\n"
                                             for k, v in prefs.items()))
    log = open(profile / "firefox.log", "w")
    proc = subprocess.Popen([FIREFOX, "--headless", "--marionette", "--no-remote", "--profile", str(profile)],
                            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "MOZ_CRASHREPORTER_DISABLE": "1"})
    client = None
    try:
        wait_until(lambda: _connects(port, proc, profile), timeout=60, what="Firefox's Marionette port")
        client = Marionette("127.0.0.1", port)
        client.start_session()
        yield client
    finally:
        if client is not None:
            client.close()
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        shutil.rmtree(profile, ignore_errors=True)


def _connects(port: int, proc: subprocess.Popen[bytes], profile: Path) -> bool:
    assert proc.poll() is None, (profile / "firefox.log").read_text()[-3000:]
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def page_call(client: Any, what: str) -> Any:
    """Call ``window.notifierPage[what]()`` and return its result (or raise its error)."""
    result = client.execute_async_script(f"""
        const [resolve] = arguments;
        window.notifierPage.{what}().then((v) => resolve({{ok: v}}), (e) => resolve({{error: String(e)}}));
    """, script_timeout=30_000)
    assert "error" not in result, result["error"]
    return result["ok"]


def received(client: Any) -> list[str]:
    return client.execute_script(
        "return Array.from(document.querySelectorAll('#received li.push')).map((li) => li.textContent);")


def test_a_real_browser_subscribes_receives_once_and_unsubscribing_makes_a_dead_token(
        api_server, firefox, webpush, worker, settled, store) -> None:
    from workers import notify

    out = CliRunner().invoke(cli, ["api-token", "create", APP, "--name", "page", "--scope", "register"])
    token, secret = out.output.split()
    firefox.navigate(f"{api_server}/#token={token}&user={USER}&proof={user_proof(secret, USER)}")
    wait_until(lambda: firefox.execute_script("return document.getElementById('state').textContent") == "ready",
               timeout=30, what="the service worker registered")
    device_id = page_call(firefox, "subscribe")
    with store.pool.connection() as conn:
        (endpoint,) = conn.execute("SELECT token FROM devices WHERE id = %s AND user_id = %s",
                                   (device_id, USER)).fetchone()
    sub_id = endpoint.rsplit("/push/", 1)[1]
    assert webpush.browsers.channel(sub_id) is not None  # Firefox registered it on the WebSocket

    nid = notify.delay(APP, [USER], title="hello browser", body="decrypted by Firefox", data={"n": 1}).id
    assert settled(nid).counts == {"delivered": 1}
    got = wait_until(lambda: received(firefox) or None, timeout=30, what="the service worker's message")
    assert len(got) == 1 and '"title":"hello browser"' in got[0] and '"body":"decrypted by Firefox"' in got[0]
    wait_until(lambda: webpush.browsers.channel(sub_id).acks, what="Firefox's ack")
    assert webpush.delivered_count(endpoint) == 1 and len(webpush.browsers.channel(sub_id).acks) == 1

    assert page_call(firefox, "unsubscribe") is True
    wait_until(lambda: webpush.browsers.channel(sub_id).unsubscribed, what="the unregister on the WebSocket")
    again = notify.delay(APP, [USER], title="anyone there?").id
    assert settled(again).counts == {"dead": 1}
    with store.pool.connection() as conn:
        assert conn.execute("SELECT count(*) FROM stale_tokens WHERE device_id = %s", (device_id,)).fetchone()[0] == 1
    assert received(firefox) == got  # still exactly the one push

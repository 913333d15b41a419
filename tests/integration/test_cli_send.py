"""The operator's verbs: register one device, send and follow the recorded outcomes."""

from __future__ import annotations

import json
import os

from click.testing import CliRunner

from notifier.cli import main as cli

APP = "testapp"


def test_register_then_send_to_users_and_a_users_file(webpush, apns, worker, tmp_path) -> None:
    sub = webpush.subscribe()
    token = os.urandom(32).hex()
    (tmp_path / "sub.json").write_text(json.dumps(sub))
    out = CliRunner().invoke(cli, ["register", APP, "cli-web", "webpush", f"@{tmp_path / 'sub.json'}", "--json"])
    assert out.exit_code == 0 and json.loads(out.output)["device_id"] > 0, out.output
    out = CliRunner().invoke(cli, ["register", APP, "cli-ios", "apns", token])
    assert out.exit_code == 0 and out.output.startswith("registered device"), out.output
    (tmp_path / "users.txt").write_text("cli-ios\n\n")
    out = CliRunner().invoke(cli, ["send", APP, "--user", "cli-web", "--users-file", str(tmp_path / "users.txt"),
                                   "--title", "hello", "--data", '{"k": 1}', "--json"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.output)
    assert result["settled"] and result["counts"] == {"delivered": 2}
    assert webpush.delivered_count(sub) == 1 and apns.delivered_count(token) == 1
    assert json.loads(webpush.records[-1].payload)["data"] == {"k": 1}


def test_bad_input_is_one_line_and_nothing_is_sent(webpush, worker) -> None:
    out = CliRunner().invoke(cli, ["register", APP, "u", "apns", "not-hex"])
    assert out.exit_code == 1 and len(out.output.strip().splitlines()) == 1 and "hex" in out.output, out.output
    out = CliRunner().invoke(cli, ["send", APP, "--title", "to nobody"])
    assert out.exit_code == 1 and "exactly one audience" in out.output, out.output
    out = CliRunner().invoke(cli, ["send", APP, "--user", "u", "--data", "{not json"])
    assert out.exit_code == 1 and "--data" in out.output
    assert webpush.records == []

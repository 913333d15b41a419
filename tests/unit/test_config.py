"""Configuration: unknown keys and bad values fail at startup."""

from pathlib import Path

import pytest

from notifier.config import Settings, load_apps
from notifier.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "vapid.pem").write_text("not read here")
    p = tmp_path / "apps.toml"
    p.write_text(text)
    return p


def test_loads_an_app(tmp_path: Path) -> None:
    p = write(tmp_path, '[apps.shop.webpush]\nvapid_private_key_file = "vapid.pem"\nvapid_subject = "mailto:a@b.c"\n')
    apps = load_apps(p)
    assert apps["shop"].webpush is not None and apps["shop"].webpush.vapid_private_key_file == tmp_path / "vapid.pem"
    s = Settings.from_env({"NOTIFIER_APPS": str(p), "NOTIFIER_BATCH_SIZE": "50"})
    assert s.batch_size == 50 and "vapid" not in repr(s)


@pytest.mark.parametrize(
    "text, message",
    [
        ('[apps.shop.webpush]\nvapid_private_key_file = "vapid.pem"\nvapid_subjct = "mailto:a@b.c"\n', "unknown keys"),
        ('[apps.shop.webpush]\nvapid_private_key_file = "nope.pem"\nvapid_subject = "mailto:a@b.c"\n', "does not exist"),
        ('[apps.shop.webpush]\nvapid_private_key_file = "vapid.pem"\nvapid_subject = "ops"\n', "mailto"),
        ('[apps.shop.gcm]\n', "unknown keys"),
        ('[apps.Shop.webpush]\n', "app must be"),
        ("apps = [", "cannot read"),
    ],
)
def test_bad_apps_file(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises((ConfigError, ValueError), match=message):
        load_apps(write(tmp_path, text))


def test_bad_env() -> None:
    with pytest.raises(ConfigError, match="NOTIFIER_BATCH_SIZE"):
        Settings.from_env({"NOTIFIER_BATCH_SIZE": "lots"})
    with pytest.raises(ConfigError, match="NOTIFIER_SEND_TIMEOUT"):
        Settings.from_env({"NOTIFIER_SEND_TIMEOUT": "0"})
    with pytest.raises(ConfigError, match="NOTIFIER_CA_BUNDLE"):
        Settings.from_env({"NOTIFIER_CA_BUNDLE": "/nonexistent"})


def test_hygiene_settings() -> None:
    s = Settings.from_env({"NOTIFIER_SWEEP_INTERVAL": "120", "NOTIFIER_SWEEP_MODE": "archive",
                           "NOTIFIER_GUARD_SHARE": "0.3"})
    assert (s.sweep_interval, s.sweep_mode, s.guard_share, s.inactive_days) == (120, "archive", 0.3, 270)
    with pytest.raises(ConfigError, match="NOTIFIER_SWEEP_MODE"):
        Settings.from_env({"NOTIFIER_SWEEP_MODE": "shred"})
    with pytest.raises(ConfigError, match="NOTIFIER_GUARD_SHARE"):
        Settings.from_env({"NOTIFIER_GUARD_SHARE": "2"})


def test_beat_schedules_the_sweep_every_ten_minutes() -> None:
    from beat_schedule import beat_schedule

    entry = beat_schedule(Settings.from_env({}))["sweep-stale-tokens"]
    assert entry["task"] == "notifier.sweep_stale_tokens" and entry["schedule"] == 600.0
    assert beat_schedule(Settings.from_env({"NOTIFIER_SWEEP_INTERVAL": "60"}))["sweep-stale-tokens"]["schedule"] == 60


def test_nothing_is_read_at_import(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Celery app takes its settings when it first needs them, never at import."""
    from celery import Celery

    from workers.celery import configuration

    fresh = Celery("check")
    fresh.add_defaults(configuration)  # as workers.celery does, before anything is set
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6399/3")
    monkeypatch.setenv("NOTIFIER_VISIBILITY_TIMEOUT", "120")
    assert fresh.conf.broker_url == "redis://127.0.0.1:6399/3"
    assert fresh.conf.broker_transport_options == {"visibility_timeout": 120}


def test_beat_schedules_the_purge_hourly() -> None:
    from beat_schedule import beat_schedule

    entry = beat_schedule(Settings.from_env({}))["purge-outcomes"]
    assert entry["task"] == "notifier.purge_outcomes" and entry["schedule"] == 3600.0
    assert entry["options"]["queue"] == "maintenance"
    assert Settings.from_env({"NOTIFIER_RETENTION_DAYS": "90"}).retention_days == 90

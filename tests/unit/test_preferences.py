"""send_at, preferences and categories: checked at the boundary, one clear error each."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta, timezone
from pathlib import Path

import pytest

from notifier.config import load_apps
from notifier.errors import ConfigError, InvalidNotification
from notifier.model import LocalTime, Notification, NotifyRequest, Users
from notifier.preferences import check_opt_out, check_quiet_hours, check_send_at, check_time_zone

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def test_send_at_forms() -> None:
    assert check_send_at("08:00", NOW) == LocalTime(time(8))
    assert check_send_at("2026-12-24T08:00", NOW) == LocalTime(time(8), date(2026, 12, 24))
    assert check_send_at(datetime(2026, 12, 24, 8, 0), NOW) == LocalTime(time(8), date(2026, 12, 24))
    berlin = datetime(2026, 12, 24, 8, 0, tzinfo=timezone(timedelta(hours=1)))
    assert check_send_at(berlin, NOW) == datetime(2026, 12, 24, 7, 0, tzinfo=UTC)
    assert check_send_at("2026-12-24T08:00+01:00", NOW) == datetime(2026, 12, 24, 7, 0, tzinfo=UTC)
    assert check_send_at(None, NOW) is None


@pytest.mark.parametrize("value", ["8am", "24:00", "", 1.5, NOW + timedelta(days=367), "2028-01-01T08:00"])
def test_bad_send_at(value: object) -> None:
    with pytest.raises(InvalidNotification, match="send_at"):
        check_send_at(value, NOW)


def test_a_local_time_spans_the_worlds_offsets_and_survives_the_broker() -> None:
    local = LocalTime(time(8), date(2026, 12, 24))
    assert local.earliest(NOW) == datetime(2026, 12, 23, 18, 0, tzinfo=UTC)  # 08:00 at UTC+14
    assert local.latest(NOW) == datetime(2026, 12, 24, 20, 0, tzinfo=UTC)  # 08:00 at UTC-12
    req = NotifyRequest("0" * 8, "app", Users(("u",)), Notification(title="t", category="digest", ttl=60), NOW,
                        local_at=local)
    again = NotifyRequest.from_json(req.to_json())
    assert again == req and again.expires_at == local.latest(NOW) + timedelta(seconds=60)
    assert "category" not in Notification(title="t").to_json()  # fingerprints from before categories hold


def test_preference_checks() -> None:
    assert check_time_zone("Asia/Tokyo") == "Asia/Tokyo"
    assert check_quiet_hours(("22:00", "07:00")) == (time(22), time(7))
    assert check_opt_out(["promo", "news", "promo"]) == ("news", "promo")
    for bad in ("Mars/Olympus", "", "../../etc/passwd"):
        with pytest.raises(InvalidNotification, match="time_zone"):
            check_time_zone(bad)
    for quiet in (("22:00",), ("22:00", "22:00"), ("10pm", "7am"), "22:00-07:00"):
        with pytest.raises(InvalidNotification, match="quiet_hours"):
            check_quiet_hours(quiet)
    with pytest.raises(InvalidNotification, match="opt_out"):
        check_opt_out("promo")


@pytest.mark.parametrize("table, why", [
    ('time_zone = "Mars/Olympus"', "time_zone"),
    ('[apps.a.categories.promo]\nquiet_hours = "later"', "quiet_hours"),
    ("[apps.a.categories.promo]\ncap = 0", "cap"),
    ("[apps.a.categories.promo]\ncap_window = -5", "cap_window"),
    ("[apps.a.categories.Promo]", "category"),
    ("[apps.a.categories.promo]\ncolour = 1", "takes"),
    ("[apps.a.categories.alert]\ncritical = true", "fallback_task or fallback_webhook"),
    ('[apps.a.categories.alert]\nfallback_task = "x.y"', "needs critical"),
    ('[apps.a.categories.alert]\ncritical = true\nfallback_webhook = "ftp://x"', "http"),
    ('[apps.a.categories.alert]\ncritical = true\nfallback_task = "a b"', "task name"),
])
def test_bad_categories_fail_at_startup(tmp_path: Path, table: str, why: str) -> None:
    (tmp_path / "apps.toml").write_text(f"[apps.a]\n{table}\n")
    with pytest.raises(ConfigError, match=why):
        load_apps(tmp_path / "apps.toml")


def test_categories_from_the_apps_file(tmp_path: Path) -> None:
    (tmp_path / "apps.toml").write_text('[apps.a]\ntime_zone = "Europe/Berlin"\n'
                                        '[apps.a.categories.promo]\nquiet_hours = "drop"\ncap = 3\n')
    app = load_apps(tmp_path / "apps.toml")["a"]
    assert app.time_zone == "Europe/Berlin"
    assert (app.category("promo").quiet_hours, app.category("promo").cap) == ("drop", 3)
    assert app.category("other").quiet_hours == "ignore" and app.category("other").name == "other"
    assert app.category(None).name == ""

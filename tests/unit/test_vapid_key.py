"""Reading the VAPID key: py_vapid's own reader invents a key for a missing file and logs parse errors."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from py_vapid import Vapid02

from notifier.webpush import read_vapid_key


def test_a_missing_file_is_an_error_and_no_key_is_made(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not parse"):
        read_vapid_key(tmp_path / "vapid.pem")
    assert not (tmp_path / "vapid.pem").exists()


def test_a_bad_key_is_one_error_and_nothing_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "vapid.pem").write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    with caplog.at_level(logging.DEBUG), pytest.raises(ValueError):
        read_vapid_key(tmp_path / "vapid.pem")
    assert caplog.records == []


@pytest.mark.parametrize("form", ["pem", "der"])
def test_the_key_reads_back_as_written(tmp_path: Path, form: str) -> None:
    key = Vapid02()
    key.generate_keys()
    path = tmp_path / "vapid.pem"
    if form == "pem":
        key.save_key(str(path))
    else:
        path.write_text("".join(key.private_pem().decode().splitlines()[1:-1]))
    assert read_vapid_key(path).public_key.public_numbers() == key.public_key.public_numbers()

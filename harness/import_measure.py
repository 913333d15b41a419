"""Bulk import at scale, in a scratch database: a CSV of N devices (a third per platform)
through ``notifier import``, then the same file again (every token known: the
move-on-reregister path).

    python -m harness.import_measure --devices 1000000   # on the server of $DATABASE_URL
"""

from __future__ import annotations

import argparse
import base64
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from harness.services import create_database, drop_database
from notifier.migrate import migrate

SERVER = os.environ.get("DATABASE_URL", "postgresql://127.0.0.1:5432/postgres")


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def write_csv(path: Path, n: int) -> None:
    point = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    p256dh, auth = _b64(point), _b64(os.urandom(16))
    with open(path, "w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["user", "platform", "token", "p256dh", "auth"])
        for i in range(n):
            user = f"user-{i // 2}"
            match i % 3:
                case 0:
                    out.writerow([user, "apns", os.urandom(32).hex(), "", ""])
                case 1:
                    out.writerow([user, "fcm", "fcm-" + os.urandom(60).hex(), "", ""])
                case _:
                    out.writerow([user, "webpush", f"https://fcm.googleapis.com/fcm/send/{uuid.uuid4().hex}",
                                  p256dh, auth])


def timed_import(url: str, path: Path) -> tuple[float, dict[str, object]]:
    env = {k: v for k, v in os.environ.items() if k != "NOTIFIER_APPS"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "notifier.cli", "import", "measure", str(path), "--json"],
                          env={**env, "DATABASE_URL": url}, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"import failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return seconds, json.loads(proc.stdout)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, default=1_000_000)
    args = p.parse_args()
    name = f"notifier_import_{uuid.uuid4().hex[:8]}"
    url = create_database(SERVER, name)
    try:
        migrate(url)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "devices.csv"
            write_csv(path, args.devices)
            print(f"{args.devices:,} rows, {path.stat().st_size / 1e6:.0f} MB of CSV")
            for label in ("new devices", "again (all known)"):
                seconds, report = timed_import(url, path)
                print(f"{label}: {seconds:.1f} s, {args.devices / seconds:,.0f} rows/s: {report['inserted']} new, "
                      f"{report['updated']} updated, {report['bad']} bad")
    finally:
        drop_database(SERVER, name)


if __name__ == "__main__":
    main()

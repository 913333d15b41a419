"""Bulk registration: ``register_devices(app, rows)`` and the files ``notifier import`` reads.

Each row gets ``register_device``'s checks (user, platform, token, the app's credentials
for that platform, and for Web Push the endpoint rules: known push services, no private
address — resolved once per host, not once per row) and its move-on-reregister rule: a
token already known for the app moves to the row's user and is refreshed, never
duplicated. Within one call the last row for a token wins, as it would registering one
by one. Bad rows are reported with their line numbers and stored not at all; good rows
are loaded in chunks (COPY into a temporary table, one upsert per chunk), so a failure
part-way keeps the chunks already loaded.

Files (``read_rows``): CSV with a header naming ``user``, ``platform``, ``token`` and,
for Web Push, either the subscription JSON as ``token`` or its endpoint as ``token``
with ``p256dh`` and ``auth`` columns (django-push-notifications' tables export to this
shape: README, "Bulk import"); or JSON lines, one ``{"user", "platform", "token"}``
object a line (``token`` a subscription object for Web Push).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

from notifier.api import default_store
from notifier.checks import check_app, check_platform, check_token, check_user
from notifier.config import Settings
from notifier.errors import InvalidNotification
from notifier.model import CheckedToken, Platform
from notifier.store import Store

CHUNK = 50_000  # rows per COPY and upsert: one transaction each
MAX_REPORTED = 1_000  # bad rows kept with their reasons; the count goes on


@dataclass(frozen=True)
class BadRow:
    line: int
    error: str


@dataclass
class ImportReport:
    rows: int = 0  # rows read
    inserted: int = 0  # new devices
    updated: int = 0  # known tokens moved or refreshed
    bad: int = 0
    bad_rows: list[BadRow] = field(default_factory=list)  # the first MAX_REPORTED

    @property
    def stored(self) -> int:
        return self.inserted + self.updated

    def to_json(self) -> dict[str, Any]:
        return {"rows": self.rows, "inserted": self.inserted, "updated": self.updated, "bad": self.bad,
                "bad_rows": [{"line": b.line, "error": b.error} for b in self.bad_rows]}


Row = tuple[str, Platform, CheckedToken]


class _RowChecks:
    """register_device's checks for one app, with what does not change from row to row
    (the app's platforms, each Web Push host's addresses) worked out once."""

    def __init__(self, app: str, settings: Settings) -> None:
        self.app = check_app(app)
        self.settings = settings
        cfg = settings.apps.get(self.app)
        if settings.apps_file is not None and cfg is None:
            raise InvalidNotification(f"app {self.app!r} is not in {settings.apps_file}")
        self.platforms = None if cfg is None else set(cfg.platforms())
        self._hosts: dict[str, InvalidNotification | None] = {}  # by the endpoint URL's netloc

    def __call__(self, user: object, platform: object, token: object) -> Row:
        plat = check_platform(platform)
        if self.platforms is not None and plat not in self.platforms:
            raise InvalidNotification(f"app {self.app!r} has no {plat} credentials in {self.settings.apps_file}")
        checked = check_token(plat, token)
        if plat is Platform.WEBPUSH:
            self._check_endpoint(checked.token)
        return check_user(user), plat, checked

    def _check_endpoint(self, endpoint: str) -> None:
        """The origin rules and the host's addresses, worked out once per host (the
        subscription check already refused anything but a plain https URL)."""
        netloc = endpoint.split("/", 3)[2]
        if netloc not in self._hosts:
            try:
                self.settings.endpoint_policy.check_resolved(endpoint)
                self._hosts[netloc] = None
            except InvalidNotification as exc:
                self._hosts[netloc] = exc
        if (refused := self._hosts[netloc]) is not None:
            raise refused


def register_devices(app: str, rows: Iterable[Any], *, store: Store | None = None,
                     first_line: int = 1) -> ImportReport:
    """Register many devices; see the module docstring.

    ``rows``: ``(user, platform, token)`` tuples or ``{"user", "platform", "token"}``
    mappings; row *i* is reported as line ``first_line + i``. Or ``(line, row)`` pairs
    from ``read_rows``, which number the lines of a file. An unknown app raises
    ``InvalidNotification`` before anything is stored.
    """
    checks = _RowChecks(app, Settings.current())
    loader = _Loader(store or default_store(), checks.app)
    report = loader.report
    chunk: dict[tuple[Platform, str], Row] = {}
    _check_rows(rows, first_line, checks, chunk, loader)
    if chunk:
        loader.load(chunk)
    return report


def _check_rows(rows: Iterable[Any], first_line: int, checks: _RowChecks, chunk: dict[tuple[Platform, str], Row],
                loader: _Loader) -> None:
    report = loader.report
    for line, row in _numbered(rows, first_line):
        report.rows += 1
        try:
            user, platform, token = _fields(row)
            checked = checks(user, platform, token)
        except InvalidNotification as exc:
            report.bad += 1
            if len(report.bad_rows) < MAX_REPORTED:
                report.bad_rows.append(BadRow(line, str(exc)))
            continue
        key = (checked[1], checked[2].token)
        chunk.pop(key, None)  # the last row for a token wins, in row order
        chunk[key] = checked
        if len(chunk) >= CHUNK:
            loader.load(chunk)


class _Loader:
    """Loads chunks one at a time, in order, so a later row for a token still wins.

    Sequential on purpose: loading on a thread beside the checks was slower on two cores
    (the checks, the server and the loader's GIL waits compete for the same CPUs)."""

    def __init__(self, store: Store, app: str) -> None:
        self.store, self.app, self.report = store, app, ImportReport()

    def load(self, chunk: dict[tuple[Platform, str], Row]) -> None:
        inserted, updated = self.store.register_many(self.app, list(chunk.values()))
        self.report.inserted += inserted
        self.report.updated += updated
        chunk.clear()


def _numbered(rows: Iterable[Any], first_line: int) -> Iterator[tuple[int, Any]]:
    for i, row in enumerate(rows):
        if isinstance(row, tuple) and len(row) == 2 and isinstance(row[0], int):
            yield row  # already numbered by read_rows
        else:
            yield first_line + i, row


def _fields(row: Any) -> tuple[object, object, object]:
    if isinstance(row, Mapping):
        if isinstance(row.get("_error"), str):  # a line read_rows could not parse
            raise InvalidNotification(row["_error"])
        token = row.get("token")
        if row.get("p256dh") or row.get("auth"):  # a Web Push endpoint with its keys in columns
            token = {"endpoint": token, "keys": {"p256dh": row.get("p256dh"), "auth": row.get("auth")}}
        return row.get("user"), row.get("platform"), token
    if isinstance(row, list | tuple) and len(row) == 3:
        return row[0], row[1], row[2]
    raise InvalidNotification("a row is (user, platform, token) or a mapping with those keys")


# -- files -----------------------------------------------------------------------------------

FORMATS = ("csv", "jsonl")


def detect_format(name: str) -> str:
    return "jsonl" if name.lower().endswith((".jsonl", ".ndjson", ".json")) else "csv"


def read_rows(stream: IO[str], fmt: str) -> Iterator[tuple[int, Mapping[str, Any]]]:
    """(line number, row) for each data line; the CSV header is line 1. A line that is
    not a row at all comes back as ``{"_error": why}``, reported like any bad row."""
    if fmt == "jsonl":
        for line, text in enumerate(stream, 1):
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except ValueError:
                yield line, {"_error": "not a JSON object"}
                continue
            yield line, obj if isinstance(obj, dict) else {"_error": "not a JSON object"}
        return
    reader = csv.DictReader(stream)
    missing = {"user", "platform", "token"} - set(reader.fieldnames or ())
    if missing:
        raise InvalidNotification(f"the CSV header (line 1) lacks {', '.join(sorted(missing))}: "
                                  "it needs user,platform,token (and p256dh,auth for Web Push endpoints)")
    for row in reader:
        if None in row:  # more fields than the header names
            yield reader.line_num, {"_error": "more fields than the header names"}
        else:
            yield reader.line_num, row

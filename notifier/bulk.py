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
import itertools
import json
import multiprocessing
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import IO, Any

from notifier.api import default_store
from notifier.checks import check_app, check_platform, check_token, check_user
from notifier.config import Settings
from notifier.errors import InvalidNotification
from notifier.model import CheckedToken, Platform
from notifier.store import Store
from notifier.store.devices import import_csv

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
                     first_line: int = 1, chunk: int = CHUNK) -> ImportReport:
    """Register many devices; see the module docstring.

    ``rows``: ``(user, platform, token)`` tuples or ``{"user", "platform", "token"}``
    mappings; row *i* is reported as line ``first_line + i``. Or ``(line, row)`` pairs
    from ``read_rows``, which number the lines of a file. An unknown app raises
    ``InvalidNotification`` before anything is stored.

    Past one chunk of rows, a second process checks the next chunk while PostgreSQL loads
    this one: the checks and the server's upsert each take about half the time, and on
    a thread the checks would share this process's GIL with the loader.
    """
    checks = _RowChecks(app, Settings.current())
    store = store or default_store()
    report = ImportReport()
    blocks = _blocks(rows, first_line, chunk)
    head = list(itertools.islice(blocks, 2))
    if len(head) < 2:  # one chunk or none: checked here, no process to start
        for block in head:
            _load(store, checks.app, _check_block(checks, block), report)
        return report
    spawn = multiprocessing.get_context("spawn")  # not fork: this process holds pool threads
    with ProcessPoolExecutor(1, mp_context=spawn, initializer=_child_init, initargs=(checks.app,)) as pool:
        pending: deque[Future[CheckedBlock]] = deque()
        for block in itertools.chain(head, blocks):
            pending.append(pool.submit(_check_in_child, block))
            if len(pending) > 1:  # one chunk checked ahead of the one loading, no more
                _load(store, checks.app, pending.popleft().result(), report)
        while pending:
            _load(store, checks.app, pending.popleft().result(), report)
    return report


# (line, (user, platform, token)), or (line, why it is not a row)
Block = list[tuple[int, tuple[object, object, object] | str]]


@dataclass(frozen=True)
class CheckedBlock:
    rows: int
    text: str  # the good rows, one per token (the last wins), as register_csv copies them
    bad: int
    bad_rows: list[BadRow]


def _blocks(rows: Iterable[Any], first_line: int, chunk: int) -> Iterator[Block]:
    """Rows as plain picklable fields, ``chunk`` at a time, in order."""
    block: Block = []
    for line, row in _numbered(rows, first_line):
        try:
            block.append((line, _fields(row)))
        except InvalidNotification as exc:
            block.append((line, str(exc)))
        if len(block) >= chunk:
            yield block
            block = []
    if block:
        yield block


def _check_block(checks: _RowChecks, block: Block) -> CheckedBlock:
    good: dict[tuple[Platform, str], Row] = {}
    bad: list[BadRow] = []
    n_bad = 0
    for line, fields in block:
        try:
            if isinstance(fields, str):
                raise InvalidNotification(fields)
            checked = checks(*fields)
        except InvalidNotification as exc:
            n_bad += 1
            if len(bad) < MAX_REPORTED:
                bad.append(BadRow(line, str(exc)))
            continue
        key = (checked[1], checked[2].token)
        good.pop(key, None)  # the last row for a token wins, in row order
        good[key] = checked
    return CheckedBlock(len(block), import_csv(good.values()), n_bad, bad)


def _load(store: Store, app: str, block: CheckedBlock, report: ImportReport) -> None:
    """Chunks load one at a time, in order, so a later chunk's row for a token still wins."""
    report.rows += block.rows
    report.bad += block.bad
    report.bad_rows.extend(block.bad_rows[:MAX_REPORTED - len(report.bad_rows)])
    if block.text:
        inserted, updated = store.register_csv(app, block.text)
        report.inserted += inserted
        report.updated += updated


_child_checks: _RowChecks | None = None


def _child_init(app: str) -> None:
    global _child_checks
    _child_checks = _RowChecks(app, Settings.current())


def _check_in_child(block: Block) -> CheckedBlock:
    assert _child_checks is not None
    return _check_block(_child_checks, block)


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

"""The simulator's server-side h2 connection: two speed-ups and two protocol fixes.

Profiling the simulator under aioapns load showed two hot spots, both pure overhead:

1. h2 sends ``authorization`` as a never-indexed HPACK literal (h2.utilities
   ``_secure_headers``), so the same ~200-byte JWT is Huffman-decoded in pure Python
   on every request. :class:`MemoDecoder` memoises long literals whose name comes from
   the static table; such literals do not touch the dynamic table, so reusing the
   decoded tuple is exact.
2. ``H2Connection.open_inbound_streams`` scans every stream on each new stream.
   :class:`FastH2Connection` answers with ``len(self.streams)`` when that upper bound
   is already under SETTINGS_MAX_CONCURRENT_STREAMS (the only use of the value is
   that comparison), and falls back to h2's exact scan (which also prunes closed
   streams) otherwise.

Three more speed-ups, found by profiling the simulator beside a 100,000-device broadcast
(``notifier bench``), where its CPU competes with the pipeline's on two cores:

5. h2's inbound header validation is a chain of seven generators that loops over every
   character of every name and value in Python (12 % of the simulator's CPU).
   :func:`check_request_headers` applies the same rules (h2 4.x ``validate_headers``,
   RFC 9113 §8.2-8.3) in one pass with regular expressions, and raises the same
   ``ProtocolError`` (a GOAWAY); the connection is built with
   ``validate_inbound_headers=False``. h2 then decodes names and values as UTF-8
   before they are checked, so bytes that are not UTF-8 are a ``ProtocolError`` too,
   and a stream over the limit is checked before it is refused (4): a malformed block
   gets the GOAWAY alone, as from h2.
6. ``H2Connection._receive_frame`` formats ``repr(frame)`` for a no-op trace log on
   every frame (2.4 %): :meth:`FastH2Connection._receive_frame` dispatches without it.
7. Response headers are sent as plain HPACK literals, not Huffman-coded (HPACK allows
   either; every decoder takes both): ``apns-id`` is new on every response.

Two corrections to h2 4.x's server side, both about SETTINGS_MAX_CONCURRENT_STREAMS
(RFC 9113 §5.1.2, §6.5.3):

3. h2 treats the values of the initial SETTINGS frame as already in force, so the
   client's ACK of that frame is matched against the *next* pending change: a limit
   lowered before that ACK arrived was enforced one SETTINGS frame early, while the
   client, which had not yet seen it, legally kept opening streams.
   :meth:`FastH2Connection.initiate_connection` queues the initial limit as pending,
   so each ACK applies the change it acknowledges.
4. h2 answers a HEADERS frame over the limit with a connection error (GOAWAY
   PROTOCOL_ERROR). Here it is a stream error: the stream is reset with
   REFUSED_STREAM (§8.7: not processed, safe to retry), a :class:`StreamRefused`
   event replaces its RequestReceived, and its later frames are ignored (DATA is
   still credited to the connection window; header blocks are still decoded so the
   HPACK table stays in sync).

Only the simulator's own connections use these classes; nothing is patched globally.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

from h2.connection import H2Connection, _decode_headers
from h2.errors import ErrorCodes
from h2.events import Event, RequestReceived, TrailersReceived
from h2.exceptions import ProtocolError, StreamClosedError, StreamIDTooLowError
from h2.settings import SettingCodes
from hpack import Decoder, Encoder
from hpack.hpack import decode_integer
from hyperframe.frame import DataFrame, Frame, HeadersFrame, RstStreamFrame

_STATIC_TABLE_SIZE = 61
_MIN_MEMO_LENGTH = 64
_MEMO_LIMIT = 1024
_REFUSED_MEMORY = 2**16  # refused stream ids remembered, like h2's MAX_CLOSED_STREAMS


# (5) h2 4.x validate_headers, for what a server receives: a request or its trailers
_NAME = re.compile(r"[!-@\[-~]+")  # 0x21-0x40, 0x5b-0x7e: no control, space, upper case or non-ASCII
_BAD_VALUE = re.compile(r"[\x00\n\r]|\A[ \t]|[ \t]\Z")
_CONNECTION_HEADERS = frozenset(["connection", "proxy-connection", "keep-alive", "transfer-encoding", "upgrade"])
_PSEUDO = frozenset([":method", ":scheme", ":authority", ":path", ":status", ":protocol"])


_WELL_FORMED: set[tuple[str, str]] = set()  # fields seen to pass _check_field; most repeat on every request
_WELL_FORMED_LIMIT = 4096


def _check_field(name: str, value: str) -> None:
    if _NAME.fullmatch(name) is None or name.find(":", 1) != -1:
        raise ProtocolError(f"Illegal or empty header name: {name!r}")
    if value and _BAD_VALUE.search(value):
        raise ProtocolError(f"Illegal character or surrounding whitespace in header value: {value!r}")
    if len(_WELL_FORMED) >= _WELL_FORMED_LIMIT:
        _WELL_FORMED.clear()
    _WELL_FORMED.add((name, value))


def check_request_headers(headers: Iterable[tuple[str, str]], *, trailers: bool = False) -> None:
    """Raise ProtocolError where h2's validate_headers would, in one pass (5)."""
    pseudo: dict[str, str] = {}
    regular = False
    host: str | None = None
    for name, value in headers:
        if (name, value) not in _WELL_FORMED:
            _check_field(name, value)
        if name[0] == ":":
            _check_pseudo(pseudo, name, value, regular, trailers)
            continue
        regular = True
        if name in _CONNECTION_HEADERS:
            raise ProtocolError(f"Connection-specific header field present: {name!r}.")
        if name == "te" and value.lower() != "trailers":
            raise ProtocolError(f"Invalid value for TE header: {value!r}")
        if name == "host" and not trailers:
            if host is not None:
                raise ProtocolError("Request header block has multiple Host headers.")
            host = value
    if trailers:
        if pseudo:
            raise ProtocolError(f"Received pseudo-header in trailer {set(pseudo)}")
        return
    _check_request_block(pseudo.keys(), pseudo.get(":method"), pseudo.get(":authority"), host)


def _check_pseudo(pseudo: dict[str, str], name: str, value: str, regular: bool, trailers: bool) -> None:
    if name in pseudo:
        raise ProtocolError(f"Received duplicate pseudo-header field {name!r}")
    if regular:
        raise ProtocolError(f"Received pseudo-header field out of sequence: {name!r}")
    if name not in _PSEUDO:
        raise ProtocolError(f"Received custom pseudo-header field {name!r}")
    if name == ":path" and not value and not trailers:
        raise ProtocolError("An empty :path header is forbidden")
    pseudo[name] = value


def _check_request_block(pseudo: AbstractSet[str], method: str | None, authority: str | None, host: str | None) -> None:
    connect = method == "CONNECT"
    required = [":method"] + ([":scheme", ":path"] if not connect or ":protocol" in pseudo else [])
    for name in required:
        if name not in pseudo:
            raise ProtocolError(f"Header block missing mandatory {name!r} header")
    if connect and ":protocol" not in pseudo and pseudo & {":scheme", ":path"}:
        raise ProtocolError("Ordinary CONNECT MUST NOT include :scheme or :path")
    if ":status" in pseudo:
        raise ProtocolError("Encountered response-only headers {':status'}")
    if not connect and ":protocol" in pseudo:
        raise ProtocolError("Encountered connect-request-only headers {':protocol'}")
    if authority is None and host is None:
        raise ProtocolError("Request header block does not have an :authority or Host header.")
    if authority is not None and host is not None and authority != host:
        raise ProtocolError(f"Request header block has mismatched :authority and Host headers: "
                            f"{authority!r} / {host!r}")


class PlainEncoder(Encoder):
    """(7) HPACK literals without Huffman coding."""

    def encode(self, headers: Any, huffman: bool = False) -> bytes:
        return super().encode(headers, huffman=False)


@dataclass(frozen=True, slots=True)
class StreamRefused(Event):
    """A request stream over SETTINGS_MAX_CONCURRENT_STREAMS, reset with REFUSED_STREAM."""

    stream_id: int
    headers: list[tuple[str, str]]
    open_streams: int
    limit: int


class MemoDecoder(Decoder):
    def __init__(self, max_header_list_size: int) -> None:
        super().__init__(max_header_list_size=max_header_list_size)
        self._memo: dict[bytes, Any] = {}

    def _decode_literal_no_index(self, data: bytes | memoryview) -> Any:
        name_index, used = decode_integer(data, 4)
        if not 0 < name_index <= _STATIC_TABLE_SIZE:
            return super()._decode_literal_no_index(data)
        length, used2 = decode_integer(data[used:], 7)
        total = used + used2 + length
        if length < _MIN_MEMO_LENGTH or len(data) < total:
            return super()._decode_literal_no_index(data)
        key = bytes(data[:total])
        hit = self._memo.get(key)
        if hit is None:
            hit = super()._decode_literal_no_index(data)
            if hit[1] != total:  # not what we parsed: don't memoise
                return hit
            if len(self._memo) >= _MEMO_LIMIT:
                self._memo.clear()
            self._memo[key] = hit
        return hit


class FastH2Connection(H2Connection):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        limit = self.decoder.max_header_list_size
        self.decoder = MemoDecoder(limit)
        self.encoder = PlainEncoder()
        assert not self.config.validate_inbound_headers, "(5) checks them itself: pass validate_inbound_headers=False"
        self.refused: dict[int, None] = {}  # refused stream ids, oldest first
        self._admit_over_limit = False

    def initiate_connection(self) -> None:
        super().initiate_connection()
        # (3) the initial SETTINGS frame carried this limit: its ACK must apply it
        # (a no-op), not the next change. Only this setting is ever updated later.
        limit = SettingCodes.MAX_CONCURRENT_STREAMS
        self.local_settings[limit] = self.local_settings[limit]

    @property
    def open_inbound_streams(self) -> int:
        if self._admit_over_limit:
            return 0
        upper_bound = len(self.streams)
        if upper_bound < self.local_settings.max_concurrent_streams:
            return upper_bound
        return super().open_inbound_streams

    def _receive_frame(self, frame: Frame) -> list[Event]:
        if frame.stream_id in self.refused and not isinstance(frame, (DataFrame, HeadersFrame)):
            return []  # (4) RST_STREAM, WINDOW_UPDATE, PRIORITY on a refused stream
        # (6) h2 4.x H2Connection._receive_frame, less its trace log's repr(frame)
        events: list[Event]
        try:
            frames, events = self._frame_dispatch_table[frame.__class__](frame)
        except StreamClosedError as e:
            if self._stream_is_closed_by_reset(e.stream_id):
                f = RstStreamFrame(e.stream_id)
                f.error_code = e.error_code
                self._prepare_for_sending([f])
                events = e._events
            else:
                raise
        except StreamIDTooLowError as e:
            if self._stream_is_closed_by_reset(e.stream_id):
                f = RstStreamFrame(e.stream_id)
                f.error_code = ErrorCodes.STREAM_CLOSED
                self._prepare_for_sending([f])
                events = []
            elif self._stream_is_closed_by_end(e.stream_id):
                raise StreamClosedError(e.stream_id) from e
            else:
                raise
        else:
            self._prepare_for_sending(frames)
        return events

    def _receive_data_frame(self, frame: DataFrame) -> Any:
        frames, events = super()._receive_data_frame(frame)
        if frame.stream_id in self.refused:  # credited to the connection; no extra RST
            frames = [f for f in frames if not isinstance(f, RstStreamFrame)]
        return frames, events

    def _receive_headers_frame(self, frame: HeadersFrame) -> Any:
        try:
            return self._open_or_refuse(frame)
        except UnicodeDecodeError as exc:  # h2 decodes names and values before (5) sees them
            raise ProtocolError(f"Header field is not UTF-8: {exc}") from exc

    def _open_or_refuse(self, frame: HeadersFrame) -> Any:
        stream_id = frame.stream_id
        if stream_id in self.refused:  # keep the HPACK table in sync, ignore the rest
            _decode_headers(self.decoder, frame.data)
            return [], []
        if stream_id in self.streams:  # trailers: no new stream to count
            return _checked(super()._receive_headers_frame(frame))
        limit = self.local_settings.max_concurrent_streams
        open_streams = self.open_inbound_streams
        if open_streams < limit:
            return _checked(super()._receive_headers_frame(frame))
        # (4) over the limit: open the stream as h2 would (stream ids, HPACK, header
        # validation: a malformed block is still a GOAWAY, never a reset first), then
        # refuse it with a stream error instead of a GOAWAY.
        self._admit_over_limit = True
        try:
            frames, events = _checked(super()._receive_headers_frame(frame))
        finally:
            self._admit_over_limit = False
        self.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
        self.refused[stream_id] = None
        if len(self.refused) > _REFUSED_MEMORY:
            del self.refused[next(iter(self.refused))]
        headers = next((e.headers for e in events if isinstance(e, RequestReceived)), [])
        kept = [e for e in events if getattr(e, "stream_id", None) != stream_id]
        refused = StreamRefused(stream_id, list(headers), open_streams, limit)  # type: ignore[arg-type]
        return frames, [*kept, refused]


def _checked(received: tuple[list[Frame], list[Event]]) -> tuple[list[Frame], list[Event]]:
    """(5) what h2's _receive_headers_frame returned, once its header blocks pass."""
    for event in received[1]:
        if isinstance(event, RequestReceived):
            check_request_headers(event.headers)  # type: ignore[arg-type]
        elif isinstance(event, TrailersReceived):
            check_request_headers(event.headers, trailers=True)  # type: ignore[arg-type]
    return received

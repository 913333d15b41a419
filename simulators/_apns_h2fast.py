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

from dataclasses import dataclass
from typing import Any

from h2.connection import H2Connection, _decode_headers
from h2.errors import ErrorCodes
from h2.events import Event, RequestReceived
from h2.settings import SettingCodes
from hpack import Decoder
from hpack.hpack import decode_integer
from hyperframe.frame import DataFrame, Frame, HeadersFrame, RstStreamFrame

_STATIC_TABLE_SIZE = 61
_MIN_MEMO_LENGTH = 64
_MEMO_LIMIT = 1024
_REFUSED_MEMORY = 2**16  # refused stream ids remembered, like h2's MAX_CLOSED_STREAMS


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
        return super()._receive_frame(frame)

    def _receive_data_frame(self, frame: DataFrame) -> Any:
        frames, events = super()._receive_data_frame(frame)
        if frame.stream_id in self.refused:  # credited to the connection; no extra RST
            frames = [f for f in frames if not isinstance(f, RstStreamFrame)]
        return frames, events

    def _receive_headers_frame(self, frame: HeadersFrame) -> Any:
        stream_id = frame.stream_id
        if stream_id in self.refused:  # keep the HPACK table in sync, ignore the rest
            _decode_headers(self.decoder, frame.data)
            return [], []
        if stream_id in self.streams:
            return super()._receive_headers_frame(frame)
        limit = self.local_settings.max_concurrent_streams
        open_streams = self.open_inbound_streams
        if open_streams < limit:
            return super()._receive_headers_frame(frame)
        # (4) over the limit: open the stream as h2 would (stream ids, HPACK, header
        # validation), then refuse it with a stream error instead of a GOAWAY.
        self._admit_over_limit = True
        try:
            frames, events = super()._receive_headers_frame(frame)
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

"""Two behaviour-preserving speed-ups for the simulator's server-side h2 connections.

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

Only the simulator's own connections use these classes; nothing is patched globally.
"""

from __future__ import annotations

from typing import Any

from h2.connection import H2Connection
from hpack import Decoder
from hpack.hpack import decode_integer

_STATIC_TABLE_SIZE = 61
_MIN_MEMO_LENGTH = 64
_MEMO_LIMIT = 1024


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

    @property
    def open_inbound_streams(self) -> int:
        upper_bound = len(self.streams)
        if upper_bound < self.local_settings.max_concurrent_streams:
            return upper_bound
        return super().open_inbound_streams

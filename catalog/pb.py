"""The Archiver Appliance's PB/HTTP format (``getData.raw``), encoded with numpy.

A response is one chunk per calendar year (UTC) of the samples: a line holding a
``PayloadInfo`` message (type, PV name, year, element count, headers such as ``EGU``), then
one line per sample (``ScalarDouble``, ``VectorDouble`` or ``ScalarString`` of
``EPICSEvent.proto``: seconds into the year, nanoseconds, value). Chunks are separated by an
empty line. Inside a line the bytes ESC (0x1B), LF (0x0A) and CR (0x0D) are written as
ESC 1, ESC 2 and ESC 3, so that a newline only ever ends a line.

Numeric samples are encoded for all rows at once: each row is a fixed set of byte columns
(the varints padded, a mask saying which bytes are real), flattened, escaped, and cut into
lines at each row's escaped length. Strings (rare, short) are encoded row by row.
"""

from __future__ import annotations

import numpy as np

SCALAR_STRING, SCALAR_DOUBLE, WAVEFORM_DOUBLE = 0, 6, 13
ESC, LF, CR = 0x1B, 0x0A, 0x0D
_CODES = np.zeros(256, np.uint8)
_CODES[[ESC, LF, CR]] = [1, 2, 3]


def encode(pv: str, seconds: np.ndarray, values, meta: dict[str, str]) -> bytes:
    """The ``getData.raw`` body of one PV: ``seconds`` (UNIX, float), ``values`` (1-D
    numbers, 2-D rows of numbers, or strings) and ``meta`` headers (``EGU``, ``PREC``)."""
    seconds = np.asarray(seconds, dtype=np.float64)
    kind = _payload_type(values)
    width = np.asarray(values).shape[1] if kind == WAVEFORM_DOUBLE else 1
    whole = np.floor(seconds).astype(np.int64)
    nanos = np.clip(np.round((seconds - whole) * 1e9), 0, 999_999_999).astype(np.int64)
    years = whole.astype("datetime64[s]").astype("datetime64[Y]")
    chunks = []
    if len(seconds) == 0:
        return payload_info(pv, kind, 1970, width, meta) + b"\n"
    edges = np.flatnonzero(np.r_[True, years[1:] != years[:-1], True])
    for a, b in zip(edges[:-1], edges[1:], strict=False):
        year = int(years[a].astype(int)) + 1970
        start = int(np.datetime64(f"{year:04d}-01-01T00:00:00", "s").astype(np.int64))
        head = payload_info(pv, kind, year, width, meta) + b"\n"
        chunks.append(head + _samples(kind, whole[a:b] - start, nanos[a:b], values, a, b))
    return b"\n".join(chunks)


def _payload_type(values) -> int:
    array = np.asarray(values) if not isinstance(values, list) else None
    if array is None:
        array = np.asarray(values, dtype=object) if values and isinstance(values[0], str) \
            else np.asarray(values)
    if array.dtype.kind in "OUS" and array.ndim == 1:
        return SCALAR_STRING
    return WAVEFORM_DOUBLE if array.ndim == 2 else SCALAR_DOUBLE


def payload_info(pv: str, kind: int, year: int, count: int, meta: dict[str, str]) -> bytes:
    """The escaped ``PayloadInfo`` line (without its newline)."""
    msg = b"\x08" + _varint(kind) + _string(2, pv) + b"\x18" + _varint(year)
    msg += b"\x20" + _varint(count)
    for name, value in meta.items():
        field = _string(1, name) + _string(2, str(value))
        msg += b"\x7a" + _varint(len(field)) + field
    return escape(msg)


def escape(data: bytes) -> bytes:
    """ESC, LF and CR as ESC 1, ESC 2, ESC 3 (ESC first)."""
    return (data.replace(b"\x1b", b"\x1b\x01").replace(b"\n", b"\x1b\x02")
            .replace(b"\r", b"\x1b\x03"))


def _samples(kind: int, into_year, nanos, values, a: int, b: int) -> bytes:
    if kind == SCALAR_STRING:
        lines = [b"\x08" + _varint(int(s)) + b"\x10" + _varint(int(n)) + _string(3, str(v))
                 for s, n, v in zip(into_year, nanos, list(values[a:b]), strict=True)]
        return b"".join(escape(line) + b"\n" for line in lines)
    data = np.ascontiguousarray(np.asarray(values[a:b], dtype="<f8"))
    n = len(into_year)
    secs_bytes, secs_mask = _varints(into_year)
    nano_bytes, nano_mask = _varints(nanos)
    parts = [np.full((n, 1), 0x08, np.uint8), secs_bytes, np.full((n, 1), 0x10, np.uint8),
             nano_bytes]
    masks = [np.ones((n, 1), bool), secs_mask, np.ones((n, 1), bool), nano_mask]
    if kind == SCALAR_DOUBLE:
        parts.append(np.full((n, 1), 0x19, np.uint8))
    else:  # packed repeated double: tag, byte length, the doubles
        length = np.frombuffer(_varint(8 * data.shape[1]), np.uint8)
        parts.append(np.tile(np.r_[np.uint8(0x1A), length], (n, 1)))
    masks.append(np.ones((n, parts[-1].shape[1]), bool))
    raw = data.reshape(n, -1).view(np.uint8)
    parts.append(raw)
    masks.append(np.ones(raw.shape, bool))
    cells, real = np.hstack(parts), np.hstack(masks)
    # escape the real bytes in one pass, then end each row (its escaped length) with LF
    lengths = real.sum(axis=1) + ((_CODES[cells] > 0) & real).sum(axis=1)
    flat = np.frombuffer(escape(cells[real].tobytes()), np.uint8)
    out = np.insert(flat, np.cumsum(lengths), LF)
    return out.tobytes()


def _varints(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unsigned varints of ``values`` (< 2**35) as 5 byte columns and which are used."""
    values = np.asarray(values, dtype=np.int64)
    shifts = 7 * np.arange(5)
    groups = (values[:, None] >> shifts) & 0x7F
    used = 1 + (values[:, None] >= (1 << shifts[1:])).sum(axis=1)
    mask = np.arange(5) < used[:, None]
    more = np.arange(5) < (used - 1)[:, None]
    return (groups | (more * 0x80)).astype(np.uint8), mask


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _string(field: int, text: str) -> bytes:
    data = text.encode()
    return bytes([field << 3 | 2]) + _varint(len(data)) + data

"""The classic RHIC daily ASCII files: one line per attribute value of every archived reading.

>>> line = "yi2-wcm3,Tue Nov  6 23:52:07 2001,wcmBeam,16.4228"
>>> parse_line(line, ZoneInfo("America/New_York"))
AsciiLine(object='yi2-wcm3', time=datetime.datetime(2001, 11, 6, 23, 52, 7, tzinfo=...), ...)

A line is ``object,time,attribute,value``: ``time`` is the attribute's upstream timestamp in C
``ctime`` format in facility-local time, truncated to the second (``time.ctime`` with English
names, whatever the locale). Values are written by the data key's type: floats as the shortest
repr that round-trips (float32 arrays as float32), integers as integers, booleans as ``1`` /
``0``, strings as they are, arrays with their elements separated by single spaces (flattened).
A field holding a comma, a double quote, CR or LF is quoted CSV-style (in double quotes, inner
double quotes doubled), so every file reads with the :mod:`csv` module.

:class:`AsciiDayWriter` is a document callback that appends each event page to the file of its
run's archive day (``rhicdata.Nov062001.dat``) with a single ``write`` on an ``O_APPEND``
descriptor, so a crash loses at most the page being written, and a restart on the same day
appends to the same file (first cutting a torn last line, should a kill have cut a write
short). The ``connection`` and ``exchange`` streams are not object readings and are left out.
:func:`export_day` makes the same bytes from the archive, with the same :func:`format_page`.

Times in a file are local wall-clock times: in the hour a DST change repeats, two different
instants print the same, and :func:`parse_line` reads such a time as its first occurrence.
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import itertools
import logging
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import tzlocal
from event_model import DocumentRouter

from .query import Archive, is_object_stream, parse_day

log = logging.getLogger(__name__)

WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_SPECIAL = re.compile(r'[,"\r\n]')
_INT = re.compile(r"^[+-]?\d+$")
_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$|^[+-]?(nan|inf)$")


def _local_zone() -> ZoneInfo:
    return ZoneInfo(tzlocal.get_localzone_name())


# -- names and times ---------------------------------------------------------------------------
def day_file_name(prefix: str, day: str | dt.date) -> str:
    """``<prefix>.<Mon><DD><YYYY>.dat``, e.g. ``rhicdata.Nov062001.dat``."""
    d = parse_day(day)
    return f"{prefix}.{MONTHS[d.month - 1]}{d.day:02d}{d.year:04d}.dat"


@functools.lru_cache(maxsize=4096)
def _ctime(second: int, zone: ZoneInfo) -> str:
    t = dt.datetime.fromtimestamp(second, zone)
    return (
        f"{WEEKDAYS[t.weekday()]} {MONTHS[t.month - 1]} {t.day:2d} "
        f"{t.hour:02d}:{t.minute:02d}:{t.second:02d} {t.year}"
    )


def format_ctime(timestamp: float, zone: ZoneInfo) -> str:
    """UNIX seconds as ``Tue Nov  6 23:52:07 2001`` in ``zone`` (truncated to the second)."""
    return _ctime(math.floor(timestamp), zone)


def parse_ctime(text: str, zone: ZoneInfo) -> dt.datetime:
    """``Tue Nov  6 23:52:07 2001`` as an aware datetime in ``zone``; ``ValueError`` if not."""
    try:
        weekday, month, day, clock, year = text.split()
        hour, minute, second = (int(x) for x in clock.split(":"))
        when = dt.datetime(
            int(year), MONTHS.index(month) + 1, int(day), hour, minute, second, tzinfo=zone
        )
    except ValueError:
        raise ValueError(f"not a ctime timestamp: {text!r}") from None
    if WEEKDAYS[when.weekday()] != weekday:
        raise ValueError(f"{text!r}: {when.date()} is not a {weekday}")
    return when


# -- values ------------------------------------------------------------------------------------
def _kind(data_key: Mapping[str, Any] | None) -> str | None:
    """The numpy kind a data key promises (``f``, ``f4``, ``i``, ``b``), or ``None``."""
    if not data_key:
        return None
    if data_key.get("dtype_numpy"):
        dtype = np.dtype(data_key["dtype_numpy"])
        if dtype.kind == "f" and dtype.itemsize <= 4:
            return "f4"
        return {"u": "i"}.get(dtype.kind, dtype.kind)
    return {"boolean": "b", "integer": "i"}.get(data_key.get("dtype", ""))


def _scalar(value: Any, kind: str | None) -> str:
    if value is None or value is pd.NA:
        return ""
    if kind == "f":
        return repr(float(value))
    if kind == "f4":
        return str(np.float32(value))
    if kind == "i":
        return str(int(value))
    if kind == "b" or isinstance(value, bool | np.bool_):
        return "1" if value else "0"
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def format_value(value: Any, data_key: Mapping[str, Any] | None = None) -> str:
    """The value field (unquoted) of ``value``, typed by its event-model ``data_key``.

    The data key, not the Python type, decides: a ``<f8`` number is always written as a float
    and an ``<i8`` one as an integer, so a value reads back from the archive as it was written.
    """
    kind = _kind(data_key)
    is_array = (data_key or {}).get("dtype") == "array"
    if is_array or isinstance(value, list | tuple | np.ndarray):
        return " ".join(_scalar(v, kind) for v in np.asarray(value).ravel().tolist())
    return _scalar(value, kind)


def quote(field: str) -> str:
    """``field`` as a CSV field: quoted, inner quotes doubled, if it holds ``,`` ``"`` CR LF."""
    if _SPECIAL.search(field):
        return '"' + field.replace('"', '""') + '"'
    return field


def format_line(
    obj: str,
    timestamp: float,
    attribute: str,
    value: Any,
    zone: ZoneInfo,
    data_key: Mapping[str, Any] | None = None,
) -> str:
    """One line, newline included: ``yi2-wcm3,Tue Nov  6 23:52:07 2001,wcmBeam,16.4228``."""
    fields = (obj, format_ctime(timestamp, zone), attribute, format_value(value, data_key))
    return ",".join(quote(f) for f in fields) + "\n"


def format_page(
    obj: str,
    data_keys: Mapping[str, Mapping[str, Any]],
    data: Mapping[str, Sequence[Any]],
    timestamps: Mapping[str, Sequence[float]],
    zone: ZoneInfo,
) -> str:
    """The lines of one event page of ``obj``: rows in order, attributes in data-key order.

    The live writer and :func:`export_day` both format through this function.
    """
    attrs = [a for a in data_keys if a in data]
    rows = len(data[attrs[0]]) if attrs else 0
    return "".join(
        format_line(obj, timestamps[a][i], a, data[a][i], zone, data_keys[a])
        for i in range(rows)
        for a in attrs
    )


# -- reading -----------------------------------------------------------------------------------
class AsciiLine(NamedTuple):
    """One parsed line: the value stays text; :meth:`parsed` converts it."""

    object: str
    time: dt.datetime
    attribute: str
    value: str

    @property
    def timestamp(self) -> float:
        """The line's time as UNIX seconds."""
        return self.time.timestamp()

    def parsed(self) -> int | float | str | list:
        """The value as a number, a list of numbers or text (see :func:`parse_value`)."""
        return parse_value(self.value)


def parse_value(text: str) -> int | float | str | list:
    """A value field back to Python: ``int``, ``float``, ``list`` of numbers or ``str``.

    The file does not carry types, so this guesses the way the writer prints: digits are an
    ``int``; what ``repr(float)`` prints (``16.4228``, ``1e-05``, ``nan``) a ``float``; numbers
    separated by single spaces a ``list`` (an array); anything else stays text. An array of one
    element reads as a scalar, an empty array as ``""``, booleans as ``1`` / ``0``.
    """
    if _INT.match(text):
        return int(text)
    if _FLOAT.match(text):
        return float(text)
    parts = text.split(" ")
    if len(parts) > 1 and all(_INT.match(p) or _FLOAT.match(p) for p in parts):
        return [int(p) if _INT.match(p) else float(p) for p in parts]
    return text


def _line(fields: list[str], zone: ZoneInfo) -> AsciiLine:
    if len(fields) != 4:
        raise ValueError(f"expected 4 fields (object,time,attribute,value), got {fields!r}")
    obj, when, attr, value = fields
    return AsciiLine(obj, parse_ctime(when, zone), attr, value)


def parse_line(line: str, zone: ZoneInfo | None = None) -> AsciiLine:
    """Parse one line (trailing newline optional; quoted fields may hold newlines).

    Times are read in ``zone`` (default the machine's); ``ValueError`` if it is not a line.
    """
    text = line[:-1] if line.endswith("\n") else line
    text = text[:-1] if text.endswith("\r") else text
    rows = list(csv.reader([text], strict=True))
    if len(rows) != 1:
        raise ValueError(f"not one line: {line!r}")
    return _line(rows[0], zone or _local_zone())


def iter_day_file(path: str | Path, zone: ZoneInfo | None = None) -> Iterator[AsciiLine]:
    """The lines of a day file, parsed one by one."""
    zone = zone or _local_zone()
    with open(path, newline="", encoding="utf-8") as f:
        for fields in csv.reader(f, strict=True):
            yield _line(fields, zone)


def read_day_file(path: str | Path, zone: ZoneInfo | None = None) -> list[AsciiLine]:
    """Every line of a day file; ``ValueError`` (``csv.Error``) on a line that does not parse."""
    return list(iter_day_file(path, zone))


# -- writing -----------------------------------------------------------------------------------
class _Stream(NamedTuple):
    run: str  # start uid
    obj: str | None  # None: a stream that is not written (connection, exchange)
    data_keys: dict[str, dict]
    path: Path


class AsciiDayWriter(DocumentRouter):
    """A document router writing the daily ASCII files of the runs it sees.

    Parameters
    ----------
    directory
        Where the files go (created if missing).
    prefix
        File name prefix: ``<prefix>.Nov062001.dat``.
    zone
        The facility time zone of the times in the lines (default the machine's).

    The file of a run is that of its start document's ``day`` (else of its start time). A
    write that fails is logged and counted in ``errors``; it never stops the caller.
    Subscribe it to the RunEngine directly (a page costs one ``os.write``) or behind a queue
    that keeps pages as they are: merging pages reorders lines against :func:`export_day`.
    Event pages are written as pages; a lone event is written as a page of one row.
    """

    def __init__(
        self, directory: str | Path, prefix: str = "rhicdata", zone: ZoneInfo | None = None
    ):
        super().__init__()
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.zone = zone or _local_zone()
        self.errors = 0
        self.lines = 0  # lines written
        self._runs: dict[str, Path] = {}  # open run's start uid -> its day file
        self._streams: dict[str, _Stream] = {}  # by descriptor uid
        self._fds: dict[Path, int] = {}

    def path(self, day: str | dt.date) -> Path:
        """The file of archive ``day``."""
        return self.directory / day_file_name(self.prefix, day)

    def __call__(self, name: str, doc: dict, validate: bool = False) -> tuple[str, dict]:
        try:
            return super().__call__(name, doc, validate)
        except Exception:  # noqa: BLE001 - the ASCII file must never stop the monitoring
            self.errors += 1
            log.exception("ASCII day file: writing %s failed", name)
            return name, doc

    def close(self) -> None:
        """Close the open files (a later page of an open run reopens its file)."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    # -- documents ---------------------------------------------------------------------------
    def start(self, doc: dict) -> None:
        day = doc.get("day") or dt.datetime.fromtimestamp(doc["time"], self.zone).date()
        self._runs[doc["uid"]] = path = self.path(day)
        self._fd(path)  # the day's file exists from the start of its run

    def descriptor(self, doc: dict) -> None:
        path = self._runs.get(doc["run_start"])
        if path is None:
            log.warning("ASCII day file: stream %r of a run started before me", doc["name"])
            return
        obj = doc["name"] if is_object_stream(doc["name"]) else None
        self._streams[doc["uid"]] = _Stream(doc["run_start"], obj, doc["data_keys"], path)

    def event_page(self, doc: dict) -> None:
        stream = self._streams.get(doc["descriptor"])
        if stream is None or stream.obj is None:
            return
        data = doc["data"]
        text = format_page(stream.obj, stream.data_keys, data, doc["timestamps"], self.zone)
        _write_all(self._fd(stream.path), text.encode("utf-8"))
        self.lines += len(doc["seq_num"]) * sum(a in data for a in stream.data_keys)

    def stop(self, doc: dict) -> None:
        uid = doc["run_start"]
        path = self._runs.pop(uid, None)
        self._streams = {d: s for d, s in self._streams.items() if s.run != uid}
        if path not in self._runs.values() and path in self._fds:
            os.close(self._fds.pop(path))

    def _fd(self, path: Path) -> int:
        fd = self._fds.get(path)
        if fd is None:
            fd = self._fds[path] = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            if dropped := _drop_torn_tail(fd):
                log.warning("ASCII day file %s: dropped a torn last line (%d bytes)", path, dropped)
        return fd


def _write_all(fd: int, data: bytes) -> None:
    """One ``write`` of ``data`` (O_APPEND: all at the end); continue if the kernel wrote less."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _drop_torn_tail(fd: int, block: int = 65536) -> int:
    """Cut a file that does not end with a newline back to its last one; return bytes cut.

    One ``write`` per page makes a torn line unlikely, not impossible: a process killed in
    the middle of a large ``write`` may leave part of it.
    """
    size = end = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return 0
    while end > 0:
        start = max(0, end - block)
        chunk = os.pread(fd, end - start, start)
        cut = chunk.rfind(b"\n")
        if cut >= 0:
            end = start + cut + 1
            break
        end = start
    os.ftruncate(fd, end)
    return size - end


# -- export ------------------------------------------------------------------------------------
def export_day(
    archive: Archive,
    day: str | dt.date,
    object: str | None = None,  # noqa: A002 - the name users know
    zone: ZoneInfo | None = None,
) -> str:
    """The day file of ``day`` made again from the archive (or only ``object``'s lines).

    Byte for byte what :class:`AsciiDayWriter` wrote for the readings archived so far: runs in
    start order, and in a run the event pages in the order the RunEngine emitted them (their
    event ``time``; streams in the start document's object order, then ``seq_num``, break a
    tie), each formatted by :func:`format_page`.

    Parameters
    ----------
    archive
        The query helper of the warden's Tiled server.
    day
        The archive day, ``YYYY-MM-DD``.
    object
        Only this object's lines (the live file's lines of that object).
    zone
        The facility time zone (default the archive's).
    """
    zone = zone or archive.zone
    day = parse_day(day).isoformat()
    names = [object] if object is not None else archive.streams(day)
    rows: list[tuple] = []
    data_keys: dict[tuple[str, str], dict] = {}
    for order, obj in enumerate(n for n in names if is_object_stream(n)):
        df = archive.raw_day(obj, day)
        for run, keys in df.attrs["data_keys"].items():
            data_keys[run, obj] = keys
        columns = {c: df[c].tolist() for c in df.columns}
        for i in range(len(df)):
            row = {c: v[i] for c, v in columns.items()}
            rows.append((row["run_time"], row["time"], order, row["seq_num"], obj, row))
    rows.sort(key=lambda r: r[:4])
    out = []
    for (_, _, _, obj), group in itertools.groupby(rows, key=lambda r: r[:3] + (r[4],)):
        page = [r[5] for r in group]
        keys = data_keys[page[0]["run"], obj]
        data = {a: [row[a] for row in page] for a in keys}
        stamps = {a: [row[f"ts_{a}"] for row in page] for a in keys}
        out.append(format_page(obj, keys, data, stamps, zone))
    return "".join(out)

"""The spool: every document bound for the archive, on local disk first.

A write-ahead log of JSON lines (``["event_page", {...}]``) in numbered segment files
(``000000000001.jsonl`` ...). The RunEngine's callback appends a document with one
``os.write`` and goes on; the archive writer reads the spool back, writes to the archive,
and deletes a segment once all of it is in the archive. So an archive outage, a restart
or a ``kill -9`` loses nothing that reached the spool: the next writer replays it.

Each segment starts with the start and descriptor documents of the runs still open when it
was begun, so a segment can be replayed on its own; the sink skips what the archive
already holds (see :class:`catalog.writer.TiledRunSink`).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

log = logging.getLogger(__name__)

SEGMENT_BYTES = 64 * 1024 * 1024
SUFFIX = ".jsonl"
POLL = 0.02  # s: how often a reader in another process looks for more
READ_BYTES = 8 * 1024 * 1024  # at most this much per read (one batch of the writer)


class SpoolBusy(RuntimeError):
    """Another process holds the spool directory."""


@dataclass(frozen=True, order=True)
class Position:
    """A place in the spool: a segment number and a byte offset in it."""

    segment: int
    offset: int


def encode(name: str, doc: dict) -> bytes:
    """One spool line for a document.

    orjson (an event page of 5 attributes x 5 rows: 2 us, against 49 us for ``json``, in the
    RunEngine's thread), but for a line holding ``null``: orjson writes NaN and infinities
    as ``null``, so such a document goes through ``json``, whose ``NaN`` and ``Infinity``
    read back as the floats they were. numpy values go through :func:`_plain` either way
    (orjson's own numpy writer would write float32 with float32's shortest digits).
    """
    line = orjson.dumps([name, doc], default=_plain, option=orjson.OPT_APPEND_NEWLINE)
    if b"null" in line:  # a NaN, an infinity, a None (or the word in a string)
        line = (json.dumps([name, doc], default=_plain, separators=(",", ":")) + "\n").encode()
    return line


def decode(line: bytes) -> tuple[str, dict]:
    """The ``(name, doc)`` of a spool line."""
    try:
        return tuple(orjson.loads(line))
    except orjson.JSONDecodeError:  # NaN or Infinity: json's tokens
        return tuple(json.loads(line))


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot spool a {type(value).__name__}")


class SpoolReader:
    """Read a spool from its oldest segment on, while a :class:`Spool` (in this process or
    another) appends to it.

    The highest-numbered segment is the live one: it is read up to its last whole line. A
    segment with a higher one beside it is finished (the appender closes a segment before it
    begins the next).
    """

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self._looked = Position(0, 0)  # how far the last read looked (a part line included)

    def _path(self, n: int) -> Path:
        return self.directory / f"{n:012d}{SUFFIX}"

    def segments(self) -> list[int]:
        """Numbers of the segments on disk, oldest first."""
        return sorted(int(p.stem) for p in self.directory.glob(f"*{SUFFIX}") if p.stem.isdigit())

    def first(self) -> Position:
        """Where reading starts: the oldest segment on disk."""
        return Position(self.segments()[0], 0)

    def read(self, pos: Position, max_bytes: int = READ_BYTES
             ) -> tuple[list[tuple[str, dict]], Position]:
        """Whole documents from ``pos`` on (up to about ``max_bytes``), and where they end.

        At the end of a finished segment, move to the next one. A finished segment that ends
        in a torn line (a crash mid-write) loses only that line.
        """
        later = [n for n in self.segments() if n > pos.segment]  # before reading: see above
        path = self._path(pos.segment)
        with open(path, "rb") as f:
            f.seek(pos.offset)
            chunk = f.read(max_bytes)
            if len(chunk) == max_bytes and b"\n" not in chunk:  # one line longer than that
                chunk += f.readline()
            at_end = not f.read(1)
        self._looked = Position(pos.segment, pos.offset + len(chunk))
        whole = chunk[: chunk.rfind(b"\n") + 1]
        docs = [decode(line) for line in whole.splitlines()]
        next_pos = Position(pos.segment, pos.offset + len(whole))
        if later and at_end:  # all of a finished segment
            if len(whole) < len(chunk):
                log.warning("spool segment %s ends in a torn line (%d bytes): dropped",
                            path.name, len(chunk) - len(whole))
            next_pos = Position(later[0], 0)
        return docs, next_pos

    def wait(self, after: Position, timeout: float) -> bool:
        """Wait until there is something to read after ``after``; False on timeout."""
        deadline = time.monotonic() + timeout
        looked = self._looked.offset if self._looked.segment == after.segment else 0
        while True:
            try:  # more than the last read saw (not only the same part of a line again)
                if self._path(after.segment).stat().st_size > max(after.offset, looked):
                    return True
            except FileNotFoundError:
                return True  # deleted under us: read() says so
            if any(n > after.segment for n in self.segments()):
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(POLL, left))

    def release(self, upto: Position) -> None:
        """Delete the segments before ``upto`` (all of them is in the archive)."""
        for n in self.segments():
            if n < upto.segment:
                self._path(n).unlink(missing_ok=True)

    def pending_bytes(self, pos: Position) -> int:
        """Bytes in the spool from ``pos`` to its end."""
        total = -pos.offset
        for n in self.segments():
            if n >= pos.segment:
                try:
                    total += self._path(n).stat().st_size
                except FileNotFoundError:
                    continue
        return max(0, total)


class Spool(SpoolReader):
    """Append documents to ``directory``; read them back from the oldest segment on.

    One appender (the RunEngine's callback thread) and one reader (the archive writer, a
    thread of this process or a process of its own with a :class:`SpoolReader`).
    """

    def __init__(self, directory: str | Path, segment_bytes: int = SEGMENT_BYTES):
        super().__init__(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.segment_bytes = segment_bytes
        self._owner = open(self.directory / "lock", "w")  # noqa: SIM115 - held while open
        try:
            fcntl.flock(self._owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._owner.close()
            raise SpoolBusy(f"the spool {self.directory} is in use by another warden") from None
        self._lock = threading.Condition()
        self._open_runs: dict[str, list[bytes]] = {}  # start uid -> its start + descriptors
        found = self.segments()
        self._segment = (found[-1] if found else 0) + 1  # never append to an old segment
        self._fd = self._open(self._segment)
        self._end = Position(self._segment, 0)

    # -- appending -------------------------------------------------------------------------
    def append(self, name: str, doc: dict) -> Position:
        """Write one document; return the position just after it."""
        line = encode(name, doc)
        with self._lock:
            if self._end.offset + len(line) > self.segment_bytes and self._end.offset:
                self._roll()
            self._write(line)
            if name == "start":
                self._open_runs[doc["uid"]] = [line]
            elif name == "descriptor" and doc["run_start"] in self._open_runs:
                self._open_runs[doc["run_start"]].append(line)
            elif name == "stop":
                self._open_runs.pop(doc["run_start"], None)
            self._lock.notify_all()
            return self._end

    def _write(self, line: bytes) -> None:
        os.write(self._fd, line)  # one write per line: a crash can only tear the last one
        self._end = Position(self._segment, self._end.offset + len(line))

    def _roll(self) -> None:
        os.fsync(self._fd)
        os.close(self._fd)
        self._segment += 1
        self._fd = self._open(self._segment)
        self._end = Position(self._segment, 0)
        for lines in self._open_runs.values():  # each segment replays on its own
            for line in lines:
                self._write(line)

    def _open(self, n: int) -> int:
        return os.open(self._path(n), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    @property
    def end(self) -> Position:
        """The position after the last document appended."""
        with self._lock:
            return self._end

    def wait(self, after: Position, timeout: float) -> bool:
        """Wait until something is appended after ``after``; False on timeout (in this
        process: woken by the append itself)."""
        with self._lock:
            return self._lock.wait_for(lambda: self._end > after, timeout)

    def close(self, drained: bool = False) -> None:
        """Close the open segment; remove it if ``drained`` (all of it is in the archive)."""
        with self._lock:
            os.fsync(self._fd)
            os.close(self._fd)
            if drained:
                self._path(self._segment).unlink(missing_ok=True)
        self._owner.close()  # releases the lock

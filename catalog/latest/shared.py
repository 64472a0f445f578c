"""``latest`` shared between processes through one small SQLite file.

The service's :class:`LatestPublisher` copies the entries of its
:class:`~catalog.latest.store.LatestStore` that changed into the table ``latest``, every
0.1 s. The archive writer's :class:`ArchivedTimes` records, after each batch it commits, the
newest upstream timestamp it wrote of each object into the table ``archived``. The server's
:class:`SharedLatest` reads both: an entry with its ``archived_time``.

Every process opens the file with Python's ``sqlite3`` (WAL: readers never wait for a writer).
"""

from __future__ import annotations

import logging
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import msgpack

from ..tiled_internals import msgpack_default
from .store import LatestStore

log = logging.getLogger(__name__)

# Rows written by one INSERT. sqlite3 lets go of the interpreter lock for every statement it
# steps (``executemany``: every row), and getting it back behind a busy thread (the upstream
# callbacks') takes up to the switch interval, 5 ms: one statement per 400 rows, not one per row.
ROWS_PER_INSERT = 400  # (800 parameters: under SQLite's oldest limit, 999)

_TABLES = """
CREATE TABLE IF NOT EXISTS latest (name TEXT PRIMARY KEY, entry BLOB);
CREATE TABLE IF NOT EXISTS archived (name TEXT PRIMARY KEY, time REAL NOT NULL, at REAL NOT NULL,
                                     rows INTEGER NOT NULL DEFAULT 0);
"""


class LatestPublisher:
    """Copies the entries of ``store`` that changed into the SQLite file ``path``, every
    ``interval`` seconds, on a thread of its own; :class:`SharedLatest` reads them.

    An entry that changed is one whose :meth:`LatestStore.mark` moved since the last copy
    (a value received or the connection), among those :meth:`LatestStore.changed` names.
    ``on_published(entries, t)``, if given, hears what each pass wrote.
    """

    def __init__(self, store: LatestStore, path: Path, interval: float = 0.1,
                 on_published: Callable[[dict[str, dict], float], None] | None = None):
        self.store, self.path, self.interval = store, Path(path), interval
        self.on_published = on_published
        self._db = _latest_db(self.path)
        self._db.executescript(_TABLES)
        with self._db:  # a previous run's entries are not the latest
            self._db.execute("DELETE FROM latest")
            self._db.execute("DELETE FROM archived")
        self._sent: dict[str, tuple] = {}
        self._turn = threading.Lock()  # one pass at a time on the one connection
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="latest-publisher", daemon=True)
        self.publish()  # every object has its row before any reader looks

    def start(self) -> LatestPublisher:
        self._thread.start()
        return self

    def publish(self) -> list[str]:
        """Write the entries that changed since the last call; return their names (safe from
        any thread: passes take turns)."""
        with self._turn:
            return self._publish()

    def _publish(self) -> list[str]:
        entries, marks = {}, {}
        for name in self.store.changed():
            mark = self.store.mark(name)
            if self._sent.get(name) != mark:
                marks[name] = mark
                entries[name] = self.store.get(name)
        if entries:
            rows = [(name, msgpack.packb(entry, default=msgpack_default))
                    for name, entry in entries.items()]
            with self._db:
                _insert(self._db, "INSERT OR REPLACE INTO latest VALUES ", "(?, ?)", rows)
            self._sent.update(marks)
            if self.on_published is not None:
                self.on_published(entries, time.time())
        return list(entries)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.publish()
            except Exception:  # noqa: BLE001 - keep publishing; the next pass tries again
                log.exception("latest: could not publish")

    def stop(self) -> None:
        """Stop the thread after one last pass."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self.publish()
        self._db.close()


class ArchivedTimes:
    """The archive writer's part of the file: call it with each batch of documents once
    committed to the archive; it records each stream's newest upstream timestamp written and
    the rows its run holds (the newest ``seq_num``), one small transaction a batch. Streams
    are known by their descriptors, which every spool segment repeats."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._db = _latest_db(self.path)
        self._db.executescript(_TABLES)
        self._streams: dict[str, str] = {}  # descriptor uid -> stream name

    def __call__(self, docs: Iterable[tuple[str, dict]]) -> None:
        newest: dict[str, tuple[float, int]] = {}  # stream -> (upstream time, seq_num)
        for name, doc in docs:
            if name == "descriptor":
                self._streams[doc["uid"]] = doc["name"]
            elif name == "event_page":
                stream = self._streams.get(doc["descriptor"])
                t = max((max(ts) for ts in doc["timestamps"].values() if ts), default=None)
                if stream is not None and t is not None:
                    seen = newest.get(stream, (-math.inf, 0))
                    rows = max(doc.get("seq_num") or [0])
                    newest[stream] = (max(t, seen[0]), max(rows, seen[1]))
        if newest:
            at = time.time()
            with self._db:  # (a replayed batch is older: it moves neither time nor rows)
                _insert(self._db, "INSERT INTO archived VALUES ", "(?, ?, ?, ?)",
                        [(name, t, at, rows) for name, (t, rows) in newest.items()],
                        " ON CONFLICT(name) DO UPDATE SET"
                        " rows = iif(excluded.time >= time, excluded.rows, rows),"
                        " time = max(time, excluded.time), at = excluded.at")

    def close(self) -> None:
        self._db.close()


class SharedLatest:
    """``latest`` as the file holds it: the publisher's entries with the writer's
    ``archived_time``, for the server's process (one connection per thread)."""

    def __init__(self, path: Path, objects: list[str]):
        self.path = Path(path)
        self.objects = list(objects)
        self._local = threading.local()

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = _latest_db(self.path)
        return db

    def get(self, name: str) -> dict[str, Any]:
        row = self._db().execute(
            "SELECT latest.entry, archived.time, archived.rows FROM latest"
            " LEFT JOIN archived USING (name) WHERE latest.name = ?", (name,)).fetchone()
        if row is None:
            raise KeyError(name)
        entry = msgpack.unpackb(row[0])
        entry["archived_time"], entry["archived_rows"] = row[1], row[2] or 0
        return entry

    def archived(self, after: float = 0.0) -> list[tuple[str, float, float]]:
        """``(object, newest archived upstream time, wall time written)`` of the objects the
        writer recorded after wall time ``after``."""
        return self._db().execute(
            "SELECT name, time, at FROM archived WHERE at > ?", (after,)).fetchall()


def _insert(db: sqlite3.Connection, head: str, row: str, rows: list[tuple],
            tail: str = "") -> None:
    """``head`` + ``row``, ``row`` ... + ``tail``, ``ROWS_PER_INSERT`` rows a statement."""
    for i in range(0, len(rows), ROWS_PER_INSERT):
        chunk = rows[i:i + ROWS_PER_INSERT]
        db.execute(head + ",".join([row] * len(chunk)) + tail, [x for r in chunk for x in r])


def _latest_db(path: Path) -> sqlite3.Connection:
    """The shared file: WAL (readers never wait for a writer), no fsync (it holds nothing the
    archive does not)."""
    db = sqlite3.connect(path, check_same_thread=False, timeout=10)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")
    return db


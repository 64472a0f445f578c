"""Copy archived runs from one backend to another (``warden migrate SRC DST [--day D]``).

Runs are replayed as the documents they were made of — start, one descriptor per stream,
event pages, stop — into the destination's own sink, so the copy is exactly what the warden
would have written there. A run is known by its start uid: one already complete in the
destination is skipped, so migrating twice duplicates nothing; an incomplete copy (a
migration that was interrupted) is removed and copied again.

Reading a Tiled SQL archive (SQLite, PostgreSQL) goes through an in-process Tiled server on
loopback, as any client would; a MongoDB archive is read from its collections directly.
"""

from __future__ import annotations

import contextlib
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from event_model import pack_event_page

from .backends import Backend, MongoBackend, open_backend
from .latest import LatestStore
from .query import _plain, parse_day
from .server import TiledServer, warden_app
from .uri import ArchiveURI, ArchiveURIError

PAGE_ROWS = 5000  # events per replayed page


@dataclass
class MigrationSummary:
    """What :func:`migrate` did."""

    source: str
    destination: str
    days: list[str] = field(default_factory=list)  # days of the runs looked at
    copied: list[str] = field(default_factory=list)  # start uids copied
    replaced: list[str] = field(default_factory=list)  # incomplete copies removed and copied
    skipped: list[str] = field(default_factory=list)  # already in the destination
    events: int = 0  # rows copied
    seconds: float = 0.0

    def lines(self) -> list[str]:
        return [
            f"source       {self.source}",
            f"destination  {self.destination}",
            f"days         {', '.join(self.days) or '-'}",
            f"runs         {len(self.copied)} copied ({len(self.replaced)} of them replacing "
            f"an incomplete copy), {len(self.skipped)} already there",
            f"rows         {self.events} in {self.seconds:.1f} s",
        ]


def migrate(
    src_uri: str | ArchiveURI,
    dst_uri: str | ArchiveURI,
    day: str | None = None,
    *,
    src_data_dir: str | Path | None = None,
    dst_data_dir: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> MigrationSummary:
    """Copy the runs of archive ``day`` (default: every day) from ``src_uri`` to ``dst_uri``.

    ``*_data_dir`` are the array directories of PostgreSQL archives (see
    :func:`catalog.backends.open_backend`). Raises ``QueryError`` for a malformed day,
    ``ArchiveURIError`` for a bad URI or when source and destination are the same archive,
    ``ArchiveUnavailable`` when either cannot be opened.
    """
    if day is not None:
        day = parse_day(day).isoformat()
    src_uri, dst_uri = (ArchiveURI.parse(u) if isinstance(u, str) else u
                        for u in (src_uri, dst_uri))
    if src_uri == dst_uri:
        raise ArchiveURIError("source and destination are the same archive")
    say = progress or (lambda line: None)
    t0 = time.perf_counter()
    src = open_backend(src_uri, data_dir=src_data_dir, init=False)
    dst = open_backend(dst_uri, data_dir=dst_data_dir)
    summary = MigrationSummary(src.describe(), dst.describe())
    try:
        key = secrets.token_hex(16)  # one for both servers (see served)
        with _reader(src, key) as reader, _writer(dst, key) as writer:
            for start, stop, documents in reader.runs(day):
                uid = start["uid"]
                if start.get("day") not in summary.days:
                    summary.days.append(start.get("day"))
                present, complete = writer.has_run(uid)
                if present and (complete or stop is None):
                    summary.skipped.append(uid)
                    say(f"{start.get('day')} run {uid[:8]}: already there")
                    continue
                if present:
                    writer.delete_run(uid)
                    summary.replaced.append(uid)
                rows = writer.write(documents())
                summary.events += rows
                summary.copied.append(uid)
                say(f"{start.get('day')} run {uid[:8]}: copied {rows} rows")
    finally:
        src.close()
        dst.close()
    summary.days.sort()
    summary.seconds = time.perf_counter() - t0
    return summary


# -- serving a SQL backend in-process -----------------------------------------------------------
@contextlib.contextmanager
def served(
    backend: Backend, objects: list[str] | None = None, api_key: str | None = None
) -> Iterator[tuple[str, str]]:
    """Serve ``backend.tree`` at ``/archive`` (and an empty ``latest`` of ``objects``) on a
    loopback port: yield (url, api key).

    Tiled keeps the API key of its apps in one process-wide settings object: servers running
    at the same time in one process must be given the same ``api_key``.
    """
    key = api_key or secrets.token_hex(16)
    app = warden_app(backend.tree, LatestStore(objects or []), "UTC", key)
    server = TiledServer(app, host="127.0.0.1", port=0)
    with server.running() as url:
        yield url, key


# -- reading --------------------------------------------------------------------------------------
Run = tuple[dict, "dict | None", Callable[[], Iterator[tuple[str, dict]]]]


class _SQLReader:
    def __init__(self, catalog):
        self.catalog = catalog.v3 if getattr(catalog, "is_sql", False) else catalog

    def runs(self, day: str | None) -> Iterator[Run]:
        from tiled.queries import Key

        catalog = self.catalog if day is None else self.catalog.search(Key("start.day") == day)
        runs = sorted(catalog.values(), key=lambda run: run.metadata["start"]["time"])
        for run in runs:
            start = _plain(run.metadata["start"])
            if "prepared" in start:
                continue  # a day's run made ahead, empty until its day (catalog.writer)
            stop = run.metadata.get("stop")
            stop = _plain(stop) if stop else None
            yield start, stop, lambda run=run, start=start, stop=stop: self._docs(run, start, stop)

    def _docs(self, run, start: dict, stop: dict | None) -> Iterator[tuple[str, dict]]:
        yield "start", start
        for name in run:
            yield from self._stream(run[name], name, start["uid"])
        if stop is not None:
            yield "stop", stop

    def _stream(self, stream, name: str, run_start: str) -> Iterator[tuple[str, dict]]:
        md = _plain(stream.metadata)
        node = stream.base
        try:
            table = node["internal"].read()
        except KeyError:  # described, no row written
            table = None
        data_keys = md["data_keys"]
        if table is not None:  # the keys in the order they were written (see Archive)
            position = {c: i for i, c in enumerate(table.columns)}
            order = sorted(data_keys, key=lambda k: position.get(f"ts_{k}", len(position)))
            data_keys = {k: data_keys[k] for k in order}
        descriptor = {
            **md,
            "data_keys": data_keys,
            "name": name,
            "run_start": run_start,
            "object_keys": {name: list(data_keys)},
        }
        yield "descriptor", descriptor
        if table is None:
            return
        keys = [k for k in data_keys if f"ts_{k}" in table.columns]
        for lo in range(0, len(table), PAGE_ROWS):
            chunk = table.iloc[lo : lo + PAGE_ROWS]
            n = len(chunk)
            data = {}
            for key in keys:
                if key in table.columns:
                    data[key] = chunk[key].tolist()
                else:  # an array node, sliced (never .read(): it may be longer than the table)
                    data[key] = np.asarray(node[key][lo : lo + n]).tolist()
            seq_num = [int(s) for s in chunk["seq_num"]]
            yield "event_page", {
                "descriptor": descriptor["uid"],
                "uid": [_event_uid(descriptor["uid"], s) for s in seq_num],
                "seq_num": seq_num,
                "time": chunk["time"].astype(float).tolist(),
                "data": data,
                "timestamps": {k: chunk[f"ts_{k}"].astype(float).tolist() for k in keys},
                "filled": {},
            }


def _event_uid(descriptor_uid: str, seq_num: int) -> str:
    """A stable uid for an event whose own uid the SQL layout did not keep."""
    return str(uuid.uuid5(uuid.UUID(descriptor_uid), str(seq_num)))


class _MongoReader:
    def __init__(self, backend: MongoBackend):
        self.db = backend.database

    def runs(self, day: str | None) -> Iterator[Run]:
        query = {} if day is None else {"day": day}
        for start in list(self.db["run_start"].find(query, {"_id": False}).sort("time", 1)):
            stop = self.db["run_stop"].find_one({"run_start": start["uid"]}, {"_id": False})
            yield start, stop, lambda start=start, stop=stop: self._docs(start, stop)

    def _docs(self, start: dict, stop: dict | None) -> Iterator[tuple[str, dict]]:
        yield "start", start
        descriptors = self.db["event_descriptor"].find({"run_start": start["uid"]}, {"_id": False})
        for descriptor in list(descriptors.sort("time", 1)):
            yield "descriptor", descriptor
            events = self.db["event"].find({"descriptor": descriptor["uid"]}, {"_id": False})
            page: list[dict] = []
            for event in events.sort("seq_num", 1):
                page.append(event)
                if len(page) == PAGE_ROWS:
                    yield "event_page", pack_event_page(*page)
                    page = []
            if page:
                yield "event_page", pack_event_page(*page)
        if stop is not None:
            yield "stop", stop


@contextlib.contextmanager
def _reader(backend: Backend, api_key: str):
    if isinstance(backend, MongoBackend):
        yield _MongoReader(backend)
        return
    from tiled.client import from_uri

    with served(backend, api_key=api_key) as (url, key):
        yield _SQLReader(from_uri(url, api_key=key)["archive"])


# -- writing --------------------------------------------------------------------------------------
class _Writer:
    def __init__(self, backend: Backend, sink, catalog=None):
        self.backend = backend
        self.sink = sink
        self.catalog = catalog  # the Tiled client of a SQL destination

    def has_run(self, uid: str) -> tuple[bool, bool]:
        if isinstance(self.backend, MongoBackend):
            return self.backend.has_run(uid)
        try:
            run = self.catalog[uid]
        except KeyError:
            return False, False
        return True, bool(run.metadata.get("stop"))

    def delete_run(self, uid: str) -> None:
        if isinstance(self.backend, MongoBackend):
            self.backend.delete_run(uid)
        else:
            self.catalog.delete_contents(uid, recursive=True, external_only=False)

    def write(self, documents: Iterator[tuple[str, Any]]) -> int:
        rows = 0
        for name, doc in documents:
            self.sink(name, doc)
            if name == "event_page":
                rows += len(doc["seq_num"])
        return rows


@contextlib.contextmanager
def _writer(backend: Backend, api_key: str):
    if isinstance(backend, MongoBackend):
        yield _Writer(backend, backend.sink())
        return
    from tiled.client import from_uri

    with served(backend, api_key=api_key) as (url, key):
        yield _Writer(backend, backend.sink(url, key), from_uri(url, api_key=key)["archive"])


__all__ = ["MigrationSummary", "migrate", "served"]

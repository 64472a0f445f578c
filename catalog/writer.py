"""Archive writers: documents in, a Tiled catalog of Bluesky runs out.

:class:`TiledRunSink` writes the layout that ``bluesky-tiled-plugins`` reads
(``BlueskyRun`` / ``BlueskyEventStream`` 3.0, the same as its ``TiledWriter``): a container
per run keyed by the start uid, a composite container per stream, an appendable ``internal``
table (``seq_num``, ``time``, one column per scalar data key, ``ts_<key>``), and each array
data key as an extendable array node (SQLite tables cannot hold list columns). Unlike
``TiledWriter`` it appends each event page as it arrives, so every flush of the plan is
queryable at once. On SQL archives it creates the streams a batch of documents describes in
one catalog transaction (:meth:`TiledRunSink.prepare`), and tomorrow's run with today's
streams ahead of midnight, so neither a start nor a new day stalls on creating nodes.

:class:`SpooledWriter` drains the on-disk spool (:mod:`catalog.spool`) into any sink on one
thread, so nothing is lost while the archive is away (the archive writer process runs it).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa
from event_model import DocumentRouter, merge_event_pages
from tiled.structures.core import Spec

from .direct import DirectTables
from .spool import READ_BYTES, Position, SpoolReader, encode
from .tiled_internals import NewStream, TableLocation

log = logging.getLogger(__name__)
RUN_SPECS = [{"name": "BlueskyRun", "version": "3.0"}]
STREAM_SPECS = [{"name": "BlueskyEventStream", "version": "3.0"},
                {"name": "composite", "version": None}]
PREPARE_AHEAD = 600.0  # s before midnight (by the documents' times) to prepare tomorrow's run
PREPARE_CHUNK = 500  # streams of tomorrow's run created per batch written


def prepared_key(day: str) -> str:
    """The key of the run node prepared for ``day`` until that day's run takes it over."""
    return f"prepared-{day}"


class TiledRunSink(DocumentRouter):
    """Write documents into a Tiled container (the archive root) over its client API.

    Writing the same documents again changes nothing (the spool replays them after an outage
    or a crash): a run or stream that exists is reused, and an event page only adds the rows
    whose ``seq_num`` is past what each node holds. After a failed write, call
    :meth:`resync` so the next page asks the archive what it holds.

    With ``direct`` (a SQL archive), :meth:`prepare` creates the runs and streams of a batch
    in one transaction before the batch is written, and, once the documents reach ``ahead``
    seconds before the current day's midnight, the next day's run with every stream of this
    one (``chunk`` streams a batch), under :func:`prepared_key` (its start holds no ``day``:
    no query by day finds it). The next day's first run takes it over.
    """

    def __init__(self, root, direct: DirectTables | None = None,
                 ahead: float = PREPARE_AHEAD, chunk: int = PREPARE_CHUNK):
        super().__init__()
        self.root = root
        self.direct = direct  # append table rows straight into the SQL storage
        self.ahead, self.chunk = ahead, chunk
        self._preparing: tuple[str, str, list[dict]] | None = None  # day, zone, streams left
        self.prepared_days: list[str] = []  # days prepared ahead by this sink
        self._runs: dict[str, Any] = {}  # by start uid: its node, or None until needed
        self._fresh: set[str] = set()  # runs this sink made and nothing failed since
        self._streams: dict[str, _Stream] = {}  # by descriptor uid
        self._ready: dict[str, TableLocation] = {}  # streams prepared, by descriptor uid
        self._starts: dict[str, dict] = {}  # by uid, until the stop
        self._described: dict[str, dict[str, dict]] = {}  # run uid -> name -> descriptor
        self._newest = 0.0  # the newest event time written

    def __call__(self, name: str, doc: dict, validate: bool = False) -> tuple[str, dict]:
        # rows appended so far land before the run's nodes change (a descriptor of a
        # stream made by prepare() changes none: at midnight thousands come between pages)
        if name != "event_page" and not (name == "descriptor" and (
                doc["uid"] in self._ready or doc["uid"] in self._streams)):
            self.commit()
        return super().__call__(name, doc, validate)

    def flush(self) -> None:
        """End of a batch (the writer calls it): commit the rows appended straight into the
        tables, then prepare tomorrow's run if it is time."""
        if self.direct is not None:
            self.commit()
            self._prepare_tomorrow()

    def commit(self) -> None:
        """Commit the rows appended so far (every other write to the archive comes after)."""
        if self.direct is not None:
            self.direct.commit()

    def close(self) -> None:
        """Close the direct connection to the tables (an SQLite file must not stay open in
        a process that opens it again: closing any descriptor of a file drops the process's
        locks on it, those of the open connection included)."""
        if self.direct is not None:
            self.direct.close()

    def prepare(self, docs: Sequence[tuple[str, dict]]) -> None:
        """Create, in one transaction, the runs started and the streams described in
        ``docs`` that the archive has not got (a run prepared ahead for the start's day is
        taken over). A writer calls it before it gives the sink a batch. Without ``direct``
        it does nothing."""
        if self.direct is None:
            return
        starts = {d["uid"]: d for n, d in docs if n == "start" and d["uid"] not in self._runs}
        described: dict[str, list[dict]] = {}
        for name, doc in docs:
            if (name == "descriptor" and doc["uid"] not in self._streams
                    and doc["uid"] not in self._ready):
                described.setdefault(doc["run_start"], []).append(doc)
        for uid in [*starts, *(u for u in described if u not in starts)]:
            start = starts.get(uid) or self._starts.get(uid)
            if start is None:
                continue  # a run started before this writer: looked up as it comes
            descriptors = described.get(uid, [])
            made = self.direct.create_streams(
                uid, {"start": start}, RUN_SPECS, [new_stream(d) for d in descriptors],
                take_over=prepared_key(start["day"]) if "day" in start else None)
            self._runs.setdefault(uid, None)
            self._starts[uid] = start
            self._ready.update({d["uid"]: made[d["name"]] for d in descriptors
                                if d["name"] in made})

    def _prepare_tomorrow(self) -> None:
        """Create tomorrow's run with the streams of today's runs, once the documents are
        within ``ahead`` seconds of midnight: ``chunk`` streams a transaction, one chunk a
        batch, so the writer never stops long for it."""
        days = [(s["day"], s.get("timezone", "UTC")) for s in self._starts.values()
                if "day" in s]
        if not days:
            return
        day, zone = max(days)
        tomorrow = (dt.date.fromisoformat(day) + dt.timedelta(days=1)).isoformat()
        if self._preparing is None or self._preparing[0] != tomorrow:
            midnight = dt.datetime.combine(dt.date.fromisoformat(tomorrow), dt.time(0),
                                           ZoneInfo(zone)).timestamp()
            if tomorrow in self.prepared_days or not (
                    midnight - self.ahead <= self._newest < midnight):
                return
            streams: dict[str, dict] = {}
            for uid, start in self._starts.items():
                if start.get("day") == day:
                    streams.update(self._described.get(uid, {}))
            self._preparing = (tomorrow, zone, list(streams.values()))
        _, zone, left = self._preparing
        key = prepared_key(tomorrow)
        placeholder = {"uid": key, "time": time.time(), "plan_name": "prepared",
                       "prepared": tomorrow, "timezone": zone}
        chunk, left[:] = left[:self.chunk], left[self.chunk:]
        self.direct.create_streams(key, {"start": placeholder}, RUN_SPECS,
                                   [new_stream(d, prepared=tomorrow) for d in chunk])
        if not left:
            self._preparing = None
            self.prepared_days.append(tomorrow)
            log.info("prepared the run of %s", tomorrow)

    def _run(self, uid: str):
        """The run's node (looked up the first time it is needed)."""
        if self._runs.get(uid) is None:
            self._runs[uid] = self.root[uid]
        return self._runs[uid]

    def start(self, doc: dict) -> None:
        uid = doc["uid"]
        self._starts.setdefault(uid, doc)
        if uid in self._runs:
            return
        try:
            self._runs[uid] = self.root[uid]
        except KeyError:
            self._runs[uid] = self.root.create_container(
                key=uid, metadata={"start": doc}, specs=[Spec("BlueskyRun", version="3.0")]
            )
            self._fresh.add(uid)

    def descriptor(self, doc: dict) -> None:
        if doc["uid"] in self._streams:
            return
        uid, name = doc["run_start"], doc["name"]
        self._described.setdefault(uid, {})[name] = doc
        where = self._ready.pop(doc["uid"], None)
        if where is not None:  # made by prepare(): nothing to ask
            self._streams[doc["uid"]] = _Stream(
                lambda: self._run(uid)[name].base, doc["data_keys"], direct=self.direct,
                run=uid, where=where, schema=schema_of(doc["data_keys"]))
            return
        run = self._run(uid)
        if uid not in self._fresh and name in run:
            self._streams[doc["uid"]] = _Stream(run[name].base, doc["data_keys"], known=False,
                                                direct=self.direct, run=uid)
            return
        node = run.create_container(
            key=name,
            metadata=stream_metadata(doc),
            specs=[Spec("BlueskyEventStream", version="3.0"), Spec("composite")],
        ).base
        self._streams[doc["uid"]] = _Stream(node, doc["data_keys"], direct=self.direct, run=uid)

    def event_page(self, doc: dict) -> None:
        self._streams[doc["descriptor"]].append(doc)
        self._newest = max(self._newest, doc["time"][-1])

    def stop(self, doc: dict) -> None:
        uid = doc["run_start"]
        run = self._runs.pop(uid, None) or self.root[uid]
        run.update_metadata(metadata={"stop": doc}, drop_revision=True)
        self._fresh.discard(uid)
        self._starts.pop(uid, None)
        self._described.pop(uid, None)
        for d in [d for d, s in self._streams.items() if s.run == uid]:
            del self._streams[d]

    def resync(self) -> None:
        """Forget what this sink believes the archive holds (after a failed write)."""
        if self.direct is not None:
            self.direct.rollback()
        self._fresh.clear()
        for stream in self._streams.values():
            stream.known = False


def stream_metadata(descriptor: dict) -> dict:
    """A stream node's metadata: its descriptor, as bluesky-tiled-plugins keeps it."""
    return {k: v for k, v in descriptor.items() if k not in {"name", "object_keys", "run_start"}}


def schema_of(data_keys: dict[str, dict], names: Sequence[str] | None = None) -> pa.Schema:
    """The ``internal`` table's schema: ``seq_num``, ``time``, the scalar data keys, then
    ``ts_<key>`` of every data key (``names``: those columns, in that order). Column types
    come from the data keys, so a page of whole numbers stays a float column."""
    if names is None:
        scalars = [k for k, dk in data_keys.items() if dk["dtype"] != "array"]
        names = ["seq_num", "time", *scalars, *(f"ts_{k}" for k in data_keys)]
    types = {"number": pa.float64(), "integer": pa.int64(), "boolean": pa.bool_(),
             "string": pa.string()}
    fields = []
    for name in names:
        key = name.removeprefix("ts_") if name.startswith("ts_") else name
        if name in ("time",) or name.startswith("ts_") and key in data_keys:
            fields.append((name, pa.float64()))
        elif name == "seq_num":
            fields.append((name, pa.int64()))
        else:
            fields.append((name, types.get(data_keys[name]["dtype"], pa.string())))
    return pa.schema(fields)


def new_stream(descriptor: dict, prepared: str | None = None) -> NewStream:
    """The nodes of a described stream, to create in bulk (``prepared``: ahead, for that
    day; its metadata says so until its day's descriptor replaces it)."""
    keys = descriptor["data_keys"]
    md = stream_metadata(descriptor)
    if prepared is not None:
        md["prepared"] = prepared
    return NewStream(descriptor["name"], md, STREAM_SPECS, schema_of(keys),
                     {k: v for k, v in keys.items() if v["dtype"] != "array"})


class _Stream:
    """One stream's nodes: the ``internal`` table and its large-array nodes.

    ``stored`` holds, per node, the last ``seq_num`` it has (``seq_num`` counts 1, 2, ...
    in each stream). The table is written before the arrays, so a write cut short leaves
    the arrays behind the table, never ahead. ``node`` is the stream's Tiled node, or a
    callable that looks it up (a stream made by :meth:`TiledRunSink.prepare`, whose table's
    ``where`` and ``schema`` are known, needs its node only for arrays).
    """

    def __init__(self, node, data_keys: dict[str, dict], known: bool = True,
                 direct: DirectTables | None = None, run: str = "",
                 where: TableLocation | None = None, schema: pa.Schema | None = None):
        self._node = node
        self.run = run  # the run's uid
        self.direct = direct
        self.where = where  # the table's location in the SQL storage, for direct appends
        self.schema = schema  # the table's (made ahead, or the first page's)
        self.data_keys = data_keys
        self.array_keys = [k for k, dk in data_keys.items() if dk["dtype"] == "array"]
        self.table = None
        self.arrays: dict[str, Any] = {}
        self.stored: dict[str, int] = {}
        self.known = known  # False: ask the archive what it holds before the next append

    @property
    def node(self):
        if callable(self._node):
            self._node = self._node()
        return self._node

    def append(self, page: dict) -> None:
        if not self.known:
            self._ask_archive()
        last, done = page["seq_num"][-1], self.stored.get("internal", 0)
        if last > done:
            self._append_table(rows_after(page, done))
            self.stored["internal"] = int(last)
        for key in self.array_keys:
            done = self.stored.get(key, 0)
            if last > done:
                if self.direct is not None:
                    self.direct.commit()  # the table lands before the arrays
                new = np.asarray(page["seq_num"]) > done
                self._append_array(key, np.asarray(page["data"][key])[new])
                self.stored[key] = int(last)

    def _ask_archive(self) -> None:
        children = set(self.node)
        if "internal" in children:
            self.table = self.node["internal"]
            seq = self.table.read(columns=["seq_num"])["seq_num"]
            self.stored["internal"] = int(seq.max()) if len(seq) else 0
        for key in self.array_keys:
            if key in children:
                self.arrays[key] = self.node[key]
                self.stored[key] = int(self.arrays[key].shape[0])
        self.known = True

    def _append_table(self, page: dict) -> None:
        data, stamps = page["data"], page["timestamps"]
        columns: dict[str, Any] = {"seq_num": page["seq_num"], "time": page["time"]}
        columns.update({k: v for k, v in data.items() if k not in self.array_keys})
        columns.update({f"ts_{k}": v for k, v in stamps.items()})
        if self.schema is None:  # (the columns of the first page, in its order)
            self.schema = schema_of(self.data_keys, columns)
        if self.table is None and self.where is None:
            md = {k: v for k, v in self.data_keys.items() if k in columns}
            if self.direct is not None:
                self.direct.commit()  # (Tiled takes the tables' write lock to create one)
            self.table = self.node.create_appendable_table(
                schema=self.schema, key="internal", metadata=md
            )
        if self.direct is None:
            self.table.append_partition(0, pa.table(columns, schema=self.schema))
            return
        if self.where is None:
            self.where = self.direct.location(self.table)
        self.direct.append(self.where, self.schema, columns)

    def _append_array(self, key: str, array: np.ndarray) -> None:
        node = self.arrays.get(key)
        if node is None:
            dims = ("time", *(f"dim_int_{i}" for i in range(1, array.ndim)))
            self.arrays[key] = self.node.write_array(
                array, key=key, metadata=self.data_keys[key], dims=dims
            )
        else:
            node.patch(array, offset=node.shape[:1], extend=True)


def rows_after(page: dict, seq_num: int) -> dict:
    """The rows of an event page past ``seq_num`` (all of them: the page itself)."""
    if page["seq_num"][0] > seq_num:
        return page
    return rows_where(page, np.asarray(page["seq_num"]) > seq_num)


def rows_where(page: dict, keep: np.ndarray) -> dict:
    """The rows of an event page where ``keep`` is true (all of them: the page itself)."""
    if keep.all():
        return page
    idx = np.flatnonzero(keep)

    def pick(values):
        return [values[i] for i in idx]

    return {
        **page,
        "seq_num": pick(page["seq_num"]),
        "time": pick(page["time"]),
        "uid": pick(page["uid"]),
        "data": {k: pick(v) for k, v in page["data"].items()},
        "timestamps": {k: pick(v) for k, v in page["timestamps"].items()},
    }


class SpooledWriter:
    """Writes the spool to ``sink`` on a thread of its own: the archive writer process's
    loop (:mod:`warden.writer_process`), while the service appends to the spool.

    The thread reads the spool in order and merges the event pages of each stream into one
    write. When the archive cannot be reached (connection refused, 5xx) it keeps the
    documents in the spool and tries again, every ``retry`` seconds at first and then less
    often; documents the archive refuses (4xx, bad data) are counted in ``errors`` and kept
    in ``rejected.jsonl`` beside the spool. ``on_committed(docs)`` is given each batch once
    committed: the documents written (event pages merged), those refused left out;
    ``on_progress(writer)`` is called after each change of :attr:`position` or the counters.
    ``replayed_until`` is where the writer before this one had got to: the documents before
    it are written again (the sink skips what the archive holds) without being counted. The
    writer ends with :meth:`abandon`, or on a bug (:meth:`is_alive`).
    """

    def __init__(
        self,
        sink: Callable[[str, dict], None],
        spool: SpoolReader,
        on_committed: Callable[[list[tuple[str, dict]]], None] | None = None,
        retry: float = 0.5,
        name: str = "archive-writer",
        on_progress: Callable[[SpooledWriter], None] | None = None,
        replayed_until: Position | None = None,
    ):
        self.sink = sink
        self.spool = spool
        self.on_committed = on_committed
        self.on_progress = on_progress
        self.retry = retry
        self.errors = 0  # documents the archive refused
        self.written = 0  # rows of event pages written
        self.outages = 0  # times the archive became unreachable
        self.unavailable_since: float | None = None  # time.time() of the first failure
        self.last_error = ""
        self._position = self.spool.first()
        self._replayed_until = replayed_until
        self._lock = threading.Lock()  # (position)
        self._abandon = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # -- the writer thread -----------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._write_spool()
        except Exception as exc:  # a bug, not the archive away: the spool keeps the rest
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.exception("the archive writer stopped; unwritten documents stay in %s",
                          self.spool.directory)

    def _write_spool(self) -> None:
        while not self._abandon.is_set():
            replay = self._replayed_until is not None and self._position < self._replayed_until
            if replay and self._position.segment == self._replayed_until.segment:
                docs, after = self.spool.read(self._position, max_bytes=min(  # (a batch end)
                    READ_BYTES, self._replayed_until.offset - self._position.offset))
            else:
                docs, after = self.spool.read(self._position)
            if not docs and after == self._position:
                self.spool.wait(self._position, timeout=0.5)
                continue
            if not self._write_batch(docs, report=not replay):
                return  # abandoned while the archive was away: the spool keeps the rest
            with self._lock:
                self._position = after
            self.spool.release(after)
            self._progress()

    def _progress(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self)

    @property
    def position(self) -> Position:
        """Where the documents not yet in the archive begin."""
        with self._lock:
            return self._position

    def _write_batch(self, docs: list[tuple[str, dict]], report: bool = True) -> bool:
        """Write ``docs`` (merged); on an outage, wait and write them again (the sink skips
        what already landed). Count them if ``report``; give them to ``on_committed``. False
        if told to give up."""
        delay = self.retry
        while True:
            try:
                prepare = getattr(self.sink, "prepare", None)
                if prepare is not None:
                    prepare(docs)
                written = []
                for name, doc in merge_pages(docs):
                    if self._write(name, doc):
                        written.append((name, doc))
                flush = getattr(self.sink, "flush", None)
                if flush is not None:
                    flush()
            except Exception as exc:  # noqa: BLE001
                if not _unreachable(exc):
                    raise
                if self.unavailable_since is None:
                    self.outages += 1
                    self.unavailable_since = time.time()
                    log.warning("archive unreachable (%s); spooling to %s", exc,
                                self.spool.directory)
                self.last_error = f"{type(exc).__name__}: {exc}"
                self._progress()
                _resync(self.sink)
                if self._abandon.wait(delay):
                    return False
                delay = min(delay * 2, 5.0)
                continue
            if self.unavailable_since is not None:
                log.warning("archive back after %.1f s; spool replayed",
                            time.time() - self.unavailable_since)
                self.unavailable_since = None
            if report:
                self.written += sum(len(doc["seq_num"]) for name, doc in written
                                    if name == "event_page")
            if self.on_committed is not None:
                self.on_committed(written)
            return True

    def _write(self, name: str, doc: dict) -> bool:
        """Give one document to the sink; False if the archive refused it (kept aside)."""
        try:
            self.sink(name, doc)
        except Exception as exc:  # noqa: BLE001
            if _unreachable(exc):
                raise
            self.errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.exception("the archive refused a %s document; kept in rejected.jsonl", name)
            with open(self.spool.directory / "rejected.jsonl", "ab") as f:
                f.write(encode(name, doc))
            return False
        return True

    def is_alive(self) -> bool:
        """Whether the writer thread runs (it ends on :meth:`abandon`, or on a bug)."""
        return self._thread.is_alive()

    def abandon(self) -> None:
        """Stop after the batch being written (at once while the archive is away) and close
        the sink; what is not written stays in the spool."""
        self._abandon.set()
        self._thread.join()
        close_sink = getattr(self.sink, "close", None)
        if close_sink is not None:
            close_sink()


def _unreachable(exc: BaseException) -> bool:
    """The archive could not be reached or failed inside (try again), as opposed to
    refusing the document (4xx, bad data: trying again would fail again)."""
    import httpx

    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code >= 500 or exc.response.status_code == 429
    if isinstance(exc, (httpx.TransportError, ConnectionError, TimeoutError)):
        return True
    from sqlalchemy.exc import DBAPIError, InterfaceError
    from sqlalchemy.exc import OperationalError as SQLOperationalError

    if isinstance(exc, (SQLOperationalError, InterfaceError)):  # the catalog (bulk creation)
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:  # dropped under a statement
        return True
    from adbc_driver_manager import OperationalError  # direct appends: server gone, busy

    if isinstance(exc, OperationalError):
        return True
    try:
        from pymongo.errors import ConnectionFailure
    except ImportError:
        return False
    return isinstance(exc, ConnectionFailure)


def _resync(sink) -> None:
    resync = getattr(sink, "resync", None)
    if resync is not None:
        resync()


def merge_pages(batch: list[tuple[str, dict]]) -> Iterator[tuple[str, dict]]:
    """Documents in order, with the event pages of each stream between two other documents
    merged into one page."""
    pages: dict[str, list[dict]] = {}
    for name, doc in batch:
        if name == "event_page":
            pages.setdefault(doc["descriptor"], []).append(doc)
            continue
        yield from (("event_page", _merged(p)) for p in pages.values())
        pages.clear()
        yield name, doc
    yield from (("event_page", _merged(p)) for p in pages.values())


def _merged(pages: list[dict]) -> dict:
    return pages[0] if len(pages) == 1 else merge_event_pages(pages)

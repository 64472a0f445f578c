"""Ingest: N objects x M scalar attributes updated at R Hz, through three pipelines.

* **warden**: the real :class:`~warden.service.WardenService` (monitoring plan, buffers,
  queued writer, Tiled server on SQLite) with ``generic`` sim objects, driven by our own thread
  calling ``sim_put`` instead of its :class:`SimUpstream`. A :class:`LatencyProbe` times every
  update until the publisher has made it visible to the server process (freshness: update ->
  served ``latest``) and until the writer process has recorded it archived (persistence lag:
  update -> archive).
* **naive**: what a user writes first: ``bps.monitor`` of every signal in one run, into
  ``TiledWriter(client, batch_size=1)`` against a Tiled server on SQLite.
* **ceiling**: the same devices and driver, subscriptions that only count.

Every value's upstream timestamp is the wall time of its ``sim_put``; "offered" counts puts,
"archived" counts distinct ``(stream, attribute, timestamp)`` found in the SQLite tables at the
end, so a value written twice counts once and ``lost = offered - archived`` is exact.
"""

from __future__ import annotations

import math
import random
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .common import (
    API_KEY,
    LatencyHistogram,
    ProcessStats,
    children_of,
    count_all_rows,
    count_archived,
    disk_bytes,
    emit,
    note,
    sqlite_files,
)

M_DEFAULT = 5
OFFERED_DEFAULT = 22_000.0  # values/s offered at every N (target: >= 20,000 at N = 1,000)
OFFERED_QUICK = 5_000.0  # --quick: a load the service drains in seconds
# full set, seconds per N: (warden window, naive window, longest wait for the writer to drain),
# cut to fit about 40 minutes on 2 cores (the brief asks >= 300 s per N)
FULL_SECONDS = {100: (180.0, 60.0, 180.0), 1_000: (300.0, 120.0, 180.0),
                10_000: (120.0, 60.0, 60.0)}
CREATE_S_PER_STREAM = 0.25  # allowed for creating each stream before the window (50 ms seen)


def attributes(m: int) -> list[str]:
    return [f"a{k}" for k in range(m)]


def object_names(n: int) -> list[str]:
    return [f"o{i:05d}" for i in range(n)]


def generic_devices(n: int, m: int) -> list:
    """``n`` fake-EPICS ``generic`` devices of ``m`` attributes, as ``source: sim`` builds."""
    from warden_devices.build import build_device

    attrs = {a: a for a in attributes(m)}
    return [build_device(name, "generic", f"{name}:", "sim", attrs) for name in object_names(n)]


class Driver(threading.Thread):
    """Put a new value on every attribute of every device, ``rate`` rounds per second.

    One upstream timestamp per object per round (its attributes share it, as an IOC record
    group would). Values are noise-like float64, as a digitized reading is (what compresses
    least on disk). Without ``rate`` it runs flat out. Stops after ``duration`` seconds or
    ``max_values`` puts, at an object boundary, or when :meth:`halt` is called. Upstream
    times come from ``now`` (a :class:`~plans.clock.Clock`'s ``time`` to cross a midnight);
    with ``record``, every object's times are kept in ``stamps``, round by round, in the
    order of ``devices``.
    """

    def __init__(self, devices, m: int, rate: float | None, duration: float,
                 max_values: int | None = None, now: Callable[[], float] = time.time,
                 record: bool = False):
        super().__init__(name="driver", daemon=True)
        self.now = now
        self.stamps: list[float] | None = [] if record else None
        self.groups = [[getattr(d, a) for a in attributes(m)] for d in devices]
        self.m = m
        self.rate = rate
        self.duration = duration
        self.max_values = max_values or math.inf
        self.offered = 0
        self.rounds = 0
        self.late_rounds = 0
        self.t_start = self.t_end = 0.0
        self.cpu_s = 0.0
        self._halt = threading.Event()

    def halt(self) -> None:
        self._halt.set()

    def run(self) -> None:
        clock, stamps = self.now, self.stamps
        self.t_start = t0 = clock()
        deadline = t0 + self.duration
        gauss = random.Random(0).gauss
        r = 0
        while not self._halt.is_set():
            for sigs in self.groups:
                if self._halt.is_set():
                    break
                t = clock()
                for k, sig in enumerate(sigs):  # a reading: a level and its noise, every
                    sig.sim_put(100.0 * k + gauss(0.0, 0.01), timestamp=t)  # bit of it
                self.offered += self.m
                if stamps is not None:
                    stamps.append(t)
            r += 1
            self.rounds = r
            now = clock()
            if now >= deadline or self.offered >= self.max_values:
                break
            if self.rate:
                due = t0 + r / self.rate
                if due > now:
                    self._halt.wait(min(due, deadline) - now)
                    if clock() >= deadline:
                        break
                else:
                    self.late_rounds += 1
        self.t_end = clock()
        self.cpu_s = time.thread_time()

    def summary(self) -> dict[str, Any]:
        wall = max(self.t_end - self.t_start, 1e-9)
        return {
            "offered": self.offered,
            "offered_per_s": round(self.offered / wall, 1),
            "rounds": self.rounds,
            "late_rounds": self.late_rounds,
            "driver_wall_s": round(wall, 2),
            "driver_cpu_s": round(self.cpu_s, 2),
        }


# -- the warden ------------------------------------------------------------------------------
class _Matcher:
    """Matches rows to the first record of their object at least as new: each row's
    ``(object, upstream time)`` against records ``(object, wall time, newest upstream time)``
    (a publication of ``latest``, or the writer's archived time), in bulk. Rows with no such
    record yet wait for the next call; records that may serve a later row are kept."""

    STRIDE = 1e6  # s: object k's times are keyed k * STRIDE + (t - t0), one sorted axis

    def __init__(self, n: int, t0: float):
        self._t0 = t0  # times are kept as t - t0 (see STRIDE)
        self.origin = t0
        self._rows = (np.empty(0, np.int64), np.empty(0))
        self._recs = (np.empty(0, np.int64), np.empty(0), np.empty(0))
        self._newest_row = np.full(n, -math.inf)

    def match(self, r_obj: np.ndarray, r_ts: np.ndarray, p_obj: np.ndarray, p_at: np.ndarray,
              p_new: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Add rows and records; return (record's wall time, row's upstream time) of every
        row matched, in no order."""
        t0, stride = self._t0, self.STRIDE
        r_obj = np.concatenate([self._rows[0], r_obj])
        r_ts = np.concatenate([self._rows[1], r_ts - t0])
        p_obj = np.concatenate([self._recs[0], p_obj])
        p_at = np.concatenate([self._recs[1], p_at])
        p_new = np.concatenate([self._recs[2], p_new - t0])
        order = np.lexsort((p_at, p_obj))  # by object, then in the order recorded
        p_obj, p_at, p_new = p_obj[order], p_at[order], p_new[order]
        # newest value recorded so far, per object: one ascending axis over all objects
        served_upto = np.maximum.accumulate(p_obj * stride + p_new)
        first = np.searchsorted(served_upto, r_obj * stride + r_ts, side="left")
        found = first < len(p_obj)
        found[found] = p_obj[first[found]] == r_obj[found]
        matched = p_at[first[found]], r_ts[found] + t0
        self._rows = (r_obj[~found], r_ts[~found])
        # a later row is newer than every row so far: keep the records that may serve it
        np.maximum.at(self._newest_row, r_obj, r_ts)
        keep = served_upto - p_obj * stride >= self._newest_row[p_obj]
        self._recs = (p_obj[keep], p_at[keep], p_new[keep])
        return matched

    def pending(self) -> tuple[np.ndarray, np.ndarray]:
        """Rows not matched yet: (object, upstream time - ``origin``)."""
        return self._rows


class LatencyProbe:
    """Times every update of the service's objects to ``latest`` and to the archive.

    Every row's update time comes from the pages the RunEngine emits (the probe is one of
    the service's document ``callbacks``). A row is fresh once the publisher has copied a
    value of the object at least as new (its last attribute's), which is usually before the
    page is emitted (``latest`` reads the buffers); it is archived once the writer process
    has recorded, in the shared ``latest`` file, an archived time at least as new: the time
    it recorded it is the row's persistence time (read every ``POLL`` seconds; two records
    of an object within one read count as the later, at most ``POLL`` late). The hooks,
    which run on the service's threads, only append; a thread of the benchmark's own
    matches them in bulk every ``SETTLE_PERIOD`` seconds (:meth:`settle`).

    Upstream times are clock times (``origin``: a clock time before any of them); the hooks'
    wall times are moved onto that clock by ``offset`` (clock minus wall time, 0 unless the
    service runs on an offset :class:`~plans.clock.Clock`). ``persist_by_second`` keeps the
    largest persistence lag of the rows stamped in each clock second.
    """

    SETTLE_PERIOD = 1.0  # s
    POLL = 0.05  # s: how often the writer's archived times are read

    def __init__(self, objects: list[str], m: int, origin: float | None = None):
        self.m = m
        self.offset = 0.0  # s: clock time minus wall time
        self.key = f"a{m - 1}"  # the last attribute put: its row is complete
        self.since = math.inf  # count only rows stamped at or after the driver's start
        self.warm_until = math.inf  # rows stamped before this are warm-up
        self.fresh = LatencyHistogram()
        self.fresh_warm = LatencyHistogram()
        self.persist = LatencyHistogram()
        self.persist_warm = LatencyHistogram()
        self.values_seen = 0
        self.values_written = 0
        self.timeline: list[tuple[float, int]] = []  # (wall time, values written)
        self.persist_by_second: dict[int, float] = {}
        self._index = {name: k for k, name in enumerate(objects)}
        self._streams: dict[str, int] = {}  # descriptor uid -> object index
        t0 = (time.time() if origin is None else origin) - 1e4
        self._fresh = _Matcher(len(objects), t0)
        self._archived = _Matcher(len(objects), t0)
        # what the hooks append (under _lock), taken in bulk by settle():
        self._new_rows: list[tuple[int, list[float]]] = []  # (object, update times)
        self._new_pubs: list[tuple[float, list[int], list[float]]] = []  # (at, objects,
        # each object's newest upstream time); the writer's records: (objects, at, newest)
        self._new_archived: list[tuple[list[int], list[float], list[float]]] = []
        self._lock = threading.Lock()
        self._settling = threading.Lock()
        self._shared = None  # the service's shared latest file (its archived times)
        self._read_upto = 0.0
        self._stop_settling = threading.Event()
        self._threads: list[threading.Thread] = []

    def __call__(self, name: str, doc: dict) -> None:
        """Document callback: the rows of every page the plan emits."""
        if name == "descriptor" and doc["name"] in self._index:
            self._streams[doc["uid"]] = self._index[doc["name"]]
        elif name == "event_page":
            k = self._streams.get(doc["descriptor"])
            ts = doc["timestamps"].get(self.key) if k is not None else None
            if ts:
                with self._lock:
                    self._new_rows.append((k, ts))
                self.values_seen += self.m * len(ts)

    def published(self, entries: dict[str, dict], now: float) -> None:
        """The publisher's hook: these entries are served from ``now`` on."""
        objects, newest = [], []
        for obj, entry in entries.items():
            value = entry["attributes"].get(self.key)
            if value is not None:
                objects.append(self._index[obj])
                newest.append(value["timestamp"])
        with self._lock:
            self._new_pubs.append((now + self.offset, objects, newest))

    def read_archived(self) -> None:
        """Take the archived times the writer recorded since the last read."""
        if self._shared is None:
            return
        records = self._shared.archived(self._read_upto)
        if records:
            self._read_upto = max(at for _, _, at in records)
            known = [(self._index[o], t, at + self.offset) for o, t, at in records
                     if o in self._index]
            with self._lock:
                self._new_archived.append(([k for k, _, _ in known], [at for _, _, at in known],
                                           [t for _, t, _ in known]))

    def listen(self, service) -> None:
        """Hear what ``service``'s publisher publishes and its writer archives, and settle
        every ``SETTLE_PERIOD`` seconds, on threads of the benchmark's own."""
        service.publisher.on_published = self.published
        self._shared = service.served_latest()

        def settling():
            while not self._stop_settling.wait(self.SETTLE_PERIOD):
                self.settle()

        def reading():
            while not self._stop_settling.wait(self.POLL):
                self.read_archived()

        self._threads = [threading.Thread(target=settling, name="bench-settle", daemon=True),
                         threading.Thread(target=reading, name="bench-archived", daemon=True)]
        for thread in self._threads:
            thread.start()

    def settle(self) -> None:
        """Count what the hooks kept (call before reading the figures)."""
        with self._lock:
            rows, self._new_rows = self._new_rows, []
            pubs, self._new_pubs = self._new_pubs, []
            archived, self._new_archived = self._new_archived, []
        r_obj = np.repeat(np.array([k for k, _ in rows], np.int64),
                          np.array([len(t) for _, t in rows], np.int64))
        r_ts = np.fromiter((t for _, ts in rows for t in ts), float, len(r_obj))
        with self._settling:
            when, ts = self._fresh.match(
                r_obj, r_ts,
                np.concatenate([np.empty(0, np.int64)] + [np.array(o, np.int64)
                                                          for _, o, _ in pubs]),
                np.concatenate([np.empty(0)] + [np.full(len(o), a) for a, o, _ in pubs]),
                np.concatenate([np.empty(0)] + [np.array(n, float) for _, _, n in pubs]))
            self._count(self.fresh, self.fresh_warm, when, ts)
            when, ts = self._archived.match(
                r_obj, r_ts,
                np.concatenate([np.empty(0, np.int64)] + [np.array(o, np.int64)
                                                          for o, _, _ in archived]),
                np.concatenate([np.empty(0)] + [np.array(a, float) for _, a, _ in archived]),
                np.concatenate([np.empty(0)] + [np.array(n, float) for _, _, n in archived]))
            self._settle_written(when, ts)

    def stop_settling(self) -> None:
        """Stop the probe's threads, then read and settle what is left."""
        self._stop_settling.set()
        for thread in self._threads:
            thread.join()
        self.read_archived()
        self.settle()

    def unarchived(self) -> np.ndarray:
        """Upstream times of the counted rows not matched to an archived time (yet)."""
        obj, ts = self._archived.pending()
        ts = ts + self._archived.origin
        return ts[ts >= self.since]

    def _count(self, hist: LatencyHistogram, warm_hist: LatencyHistogram,
               when: np.ndarray, ts: np.ndarray) -> None:
        """Add the latencies of the values stamped since ``since``, warm-up apart."""
        keep = ts >= self.since
        when, ts = when[keep], ts[keep]
        warm = ts < self.warm_until
        warm_hist.add(when[warm] - ts[warm], self.m)
        hist.add(when[~warm] - ts[~warm], self.m)

    def _settle_written(self, when: np.ndarray, ts: np.ndarray) -> None:
        if not len(when):
            return
        order = np.argsort(when, kind="stable")
        when, ts = when[order], ts[order]
        self._count(self.persist, self.persist_warm, when, ts)
        counted = ts >= self.since
        if counted.any():  # the largest lag of each second's rows
            secs = np.floor(ts[counted]).astype(np.int64)
            lags = when[counted] - ts[counted]
            by = np.argsort(secs, kind="stable")
            secs, lags = secs[by], lags[by]
            starts = np.flatnonzero(np.diff(secs, prepend=secs[0] - 1))
            for sec, lag in zip(secs[starts].tolist(),
                                np.maximum.reduceat(lags, starts).tolist(), strict=True):
                self.persist_by_second[sec] = max(lag, self.persist_by_second.get(sec, 0.0))
        # the timeline: values written by the end of every wall second
        total = self.values_written + self.m * np.cumsum(ts >= self.since)
        last = np.flatnonzero(np.diff(np.floor(when), append=math.inf))
        self.timeline += zip(when[last].tolist(), total[last].tolist(), strict=True)
        self.values_written = int(total[-1])


def instrument_latest(service, m: int) -> LatencyProbe:
    """A probe of ``service``'s latency (before it starts; :meth:`LatencyProbe.listen` once
    it has)."""
    probe = LatencyProbe(service.latest.objects, m, origin=service.clock.time())
    service.callbacks.append(probe)
    return probe


def warden_config(workdir: Path, n: int, m: int, flush_interval: float = 0.5):
    from warden.config import WardenConfig

    attrs = attributes(m)
    return WardenConfig.model_validate({
        "archive": f"sqlite:///{workdir / 'archive.db'}",
        "timezone": "UTC",
        "flush_interval": flush_interval,
        "serve": {"host": "127.0.0.1", "port": 0},
        "objects": [
            {"name": name, "type": "generic", "source": "sim", "mode": "monitor",
             "attributes": attrs}
            for name in object_names(n)
        ],
    })


class WardenRun:
    """The real service with ``n`` generic sim objects, a latency probe, our driver."""

    def __init__(self, workdir: Path, n: int, m: int, flush_interval: float = 0.5,
                 clock=None):
        from warden.service import WardenService

        self.workdir, self.n, self.m = workdir, n, m
        t0 = time.perf_counter()
        self.service = WardenService(warden_config(workdir, n, m, flush_interval),
                                     api_key=API_KEY, port=0, clock=clock)
        self.service.sim = None  # our driver replaces the machine model
        self.service.compact_grace = None  # the figures count rows in the tables file;
        # storage compacts the closed run itself, once they are counted
        self.latest = instrument_latest(self.service, m)  # before start(): the plan hears it
        self.build_s = time.perf_counter() - t0
        self.url = ""
        self.plan: threading.Thread | None = None
        self.samples: list[tuple] = []  # (time, values written, rss MB, writer backlog)
        self._sampling = threading.Event()

    def start(self, plan: bool = True) -> None:
        from warden.processes import tune_gc

        t0 = time.perf_counter()
        self.url = self.service.start()
        tune_gc()  # (as `warden run` does once started)
        self.latest.listen(self.service)
        if plan:
            self.start_plan()
        self.start_s = time.perf_counter() - t0

    def start_plan(self) -> None:
        self.plan = threading.Thread(target=self.service.run, name="warden-plan", daemon=True)
        self.plan.start()
        deadline = time.monotonic() + 120 + self.n / 50
        while len(self.service.connections.state) < self.n:  # every buffer staged
            if time.monotonic() > deadline or not self.plan.is_alive():
                raise RuntimeError("the monitoring plan did not stage its buffers")
            time.sleep(0.05)
        time.sleep(0.5)

    def prime(self, timeout: float) -> float:
        """One reading of every object, then wait until the archive holds it: every stream
        node created, as in a service that has been running. Return the seconds taken."""
        t0 = time.perf_counter()
        self.drive(1.0, 1.0, count=False)  # one round, not in the figures
        deadline = time.monotonic() + timeout
        while self.latest.values_seen < self.n * self.m:  # every page emitted (the first
            if time.monotonic() > deadline:               # flush declares N streams)
                raise RuntimeError("the plan did not emit a page of every object")
            time.sleep(0.05)
        if not self.service.writer.join(timeout=timeout):
            raise RuntimeError(f"the writer did not create the {self.n} streams in {timeout} s")
        return time.perf_counter() - t0

    def sample_memory(self, stats: ProcessStats, period: float = 1.0) -> None:
        def loop():
            while not self._sampling.wait(period):
                self.samples.append((time.time(), self.latest.values_written, stats.rss_mb(),
                                     self.service.writer.backlog))

        threading.Thread(target=loop, name="rss-sampler", daemon=True).start()

    def drive(self, rate: float | None, duration: float, max_values: int | None = None,
              warmup: float = 0.0, count: bool = True) -> Driver:
        """Drive the devices; the figures count the values stamped from now on (none if not
        ``count``: the hooks may settle before the next drive moves ``since``)."""
        clock = self.service.clock
        driver = Driver(self.service.devices, self.m, rate, duration, max_values,
                        now=clock.time)
        now = clock.time() if count else math.inf
        self.latest.since = now
        self.latest.warm_until = now + warmup
        driver.start()
        driver.join()
        return driver

    def finish(self, drain_timeout: float) -> dict[str, Any]:
        """Stop the plan (final flush, stop document) and wait for the writer to drain."""
        t0 = time.time()
        self.service.stop()
        self.plan.join(timeout=drain_timeout)
        drained = self.service.writer.join(max(0.0, drain_timeout - (time.time() - t0)))
        self._sampling.set()
        self.latest.stop_settling()
        return {"drained": drained, "drain_s": round(time.time() - t0, 2),
                "writer_backlog": self.service.writer.backlog,
                "writer_errors": self.service.writer.errors}

    def count(self, until: float = 1e12) -> dict[str, int]:
        return count_archived(self.workdir / "archive.tables.db", attributes(self.m),
                              self.latest.since, until)

    def disk(self) -> dict[str, int]:
        catalog = disk_bytes(*sqlite_files(self.workdir / "archive.db"))
        tables = disk_bytes(*sqlite_files(self.workdir / "archive.tables.db"))
        data = disk_bytes(self.workdir / "archive.data")
        return {"catalog_db": catalog, "tables_db": tables, "data_dir": data,
                "total": catalog + tables + data}

    def close(self, drained: bool) -> None:
        if drained:
            self.service.close()
        elif self.service.server is not None:  # the writer is stuck behind its queue
            self.service.server.stop()


def sustained_rate(timeline: list[tuple[float, int]], t0: float, t1: float) -> float | None:
    """Values written per second between wall times ``t0`` and ``t1``."""
    if not timeline or t1 <= t0:
        return None
    times = np.array([t for t, _ in timeline])
    counts = np.array([c for _, c in timeline])
    before = counts[times <= t0]
    upto = counts[times <= t1]
    c0 = int(before[-1]) if len(before) else 0
    c1 = int(upto[-1]) if len(upto) else 0
    return (c1 - c0) / (t1 - t0)


def run_warden(n: int, m: int, rate: float, duration: float, warmup: float,
               drain_timeout: float, workdir: Path) -> dict[str, Any]:
    note(f"warden: building {n} objects x {m} attributes")
    run = WardenRun(workdir, n, m)
    run.start()
    note(f"warden: serving at {run.url}; creating the {n} streams")
    try:
        streams_s = run.prime(timeout=drain_timeout + CREATE_S_PER_STREAM * n)
    except BaseException:  # the figure fails; leave no writer or server process behind
        run.service.stop()
        run.service.close()
        raise
    note(f"warden: driving {n * m * rate:,.0f} values/s for {duration} s")
    stats = ProcessStats(children_of(run.service))
    driver = run.drive(rate, duration, warmup=warmup)
    proc = stats.report()
    fin = run.finish(drain_timeout)
    counted = run.count()
    lat = run.latest
    lost = driver.offered - counted["values"]
    t_warm = driver.t_start + warmup
    out = {
        **driver.summary(),
        "archived": counted["values"],
        "archived_rows": counted["rows"],
        "archived_row_values": counted["rows"] * m,  # > archived if a row was written twice
        "lost": lost,
        "sustained_values_per_s": _r(sustained_rate(lat.timeline, t_warm, driver.t_end)),
        "archived_per_s_incl_drain": round(
            counted["values"] / max(1e-9, (driver.t_end - driver.t_start) + fin["drain_s"]), 1),
        "freshness": lat.fresh.summary(),
        "freshness_warmup": lat.fresh_warm.summary(),
        "persistence_lag": lat.persist.summary(),
        "persistence_lag_warmup": lat.persist_warm.summary(),
        "warmup_s": warmup,
        "stream_creation_s": round(streams_s, 2),
        **fin,
        "build_s": round(run.build_s, 2),
        "start_s": round(run.start_s, 2),
        "process": proc,
    }
    run.close(fin["drained"])
    return out


# -- the naive pipeline ----------------------------------------------------------------------
def run_naive(n: int, m: int, rate: float, duration: float, workdir: Path,
              settle: float = 30.0) -> dict[str, Any]:
    """``bps.monitor`` of every signal + ``TiledWriter(batch_size=1)``; count in ``duration``."""
    import bluesky.plan_stubs as bps
    import bluesky.preprocessors as bpp
    from bluesky import RunEngine
    from bluesky_tiled_plugins import TiledWriter
    from tiled.client import from_uri
    from tiled.config import Authentication
    from tiled.server.app import build_app

    from catalog.server import TiledServer, sql_catalog

    catalog = sql_catalog(f"sqlite:///{workdir / 'naive.db'}")
    app = build_app(
        catalog,
        authentication=Authentication(single_user_api_key=API_KEY),
        tasks={"startup": list(getattr(catalog, "startup_tasks", [])),
               "shutdown": list(getattr(catalog, "shutdown_tasks", []))},
    )
    server = TiledServer(app)
    url = server.start()
    writer = TiledWriter(from_uri(url, api_key=API_KEY), batch_size=1)
    devices = generic_devices(n, m)
    signals = [getattr(d, a) for d in devices for a in attributes(m)]
    lock = threading.Lock()  # TiledWriter is not thread-safe; the driver and RE both emit
    written = {"event": 0, "descriptor": 0, "errors": 0}
    halt = threading.Event()

    def locked_writer(name: str, doc: dict) -> None:
        with lock:
            try:
                writer(name, doc)
            except Exception:  # noqa: BLE001 - count and go on, as a user's session would
                written["errors"] += 1
                return
            if name in written:
                written[name] += 1

    def plan():
        @bpp.run_decorator(md={"plan_name": "naive_monitor"})
        def inner():
            monitored = []
            for sig in signals:
                if halt.is_set():
                    break
                yield from bps.monitor(sig, name=sig.name)
                monitored.append(sig)
            while not halt.is_set():
                yield from bps.sleep(0.1)
            for sig in monitored:
                yield from bps.unmonitor(sig)

        return (yield from inner())

    RE = RunEngine({}, context_managers=[])
    RE.subscribe(locked_writer)
    note(f"naive: bps.monitor of {len(signals)} signals + TiledWriter(batch_size=1), "
         f"{duration} s")
    stats = ProcessStats()
    runner = threading.Thread(target=RE, args=(plan(),), name="naive-RE", daemon=True)
    driver = Driver(devices, m, rate, duration)
    t0 = time.time()
    runner.start()
    driver.start()
    driver.join()
    t1 = time.time()
    archived_in_window = written["event"]  # one event = one value (one signal per stream)
    descriptors = written["descriptor"]
    proc = stats.report()
    halt.set()
    runner.join(timeout=settle)
    settled = not runner.is_alive()
    server.stop()
    rows = count_all_rows(workdir / "naive.tables.db") if settled else None
    return {
        **driver.summary(),
        "archived": archived_in_window,
        "archived_per_s": round(archived_in_window / (t1 - t0), 1),
        "streams_described": descriptors,
        "signals": len(signals),
        "writer_errors": written["errors"],
        "rows_in_archive_after_stop": rows,
        "window_s": round(t1 - t0, 2),
        "process": proc,
    }


# -- the ceiling -----------------------------------------------------------------------------
def run_ceiling(n: int, m: int, rate: float, duration: float) -> dict[str, Any]:
    """Subscriptions that only count: paced at ``rate``, then flat out."""
    devices = generic_devices(n, m)
    counted = [0]

    def count(*args, **kwargs):
        counted[0] += 1

    for d in devices:
        for a in attributes(m):
            getattr(d, a).subscribe(count, run=False)
    out: dict[str, Any] = {}
    for label, r in (("paced", rate), ("max", None)):
        counted[0] = 0
        driver = Driver(devices, m, r, duration)
        driver.start()
        driver.join()
        wall = driver.t_end - driver.t_start
        out[f"{label}_per_s"] = round(counted[0] / wall, 1)
        out[f"{label}_counted"] = counted[0]
        out[f"{label}_offered"] = driver.offered
    return out


# -- figures ---------------------------------------------------------------------------------
def figure_ingest(quick: bool, sizes: list[int] | None = None, duration: float | None = None,
                  naive_duration: float | None = None, m: int = M_DEFAULT,
                  offered: float | None = None) -> list[dict]:
    sizes = sizes or ([100] if quick else [100, 1_000, 10_000])
    offered = offered or (OFFERED_QUICK if quick else OFFERED_DEFAULT)
    out = []
    for n in sizes:
        rate = offered / (n * m)
        dur = duration or (6.0 if quick else FULL_SECONDS.get(n, (300.0, 120.0, 180.0))[0])
        ndur = naive_duration or (3.0 if quick else FULL_SECONDS.get(n, (0, 120.0, 0))[1])
        drain = 60.0 if quick else FULL_SECONDS.get(n, (0, 0, 180.0))[2]
        warmup = min(10.0, dur / 4)
        with tempfile.TemporaryDirectory(prefix=f"bench-ingest-{n}-") as tmp:
            tmp = Path(tmp)
            (tmp / "w").mkdir()
            (tmp / "n").mkdir()
            # the warden last: a writer still draining must not run beside the references
            ceiling = run_ceiling(n, m, rate, 1.0 if quick else 15.0)
            naive = run_naive(n, m, rate, ndur, tmp / "n")
            warden = run_warden(n, m, rate, dur, warmup, drain_timeout=drain, workdir=tmp / "w")
        sustained = warden["sustained_values_per_s"] or 0.0
        ratios = {
            "warden_vs_naive": _ratio(sustained, naive["archived_per_s"]),
            "warden_incl_drain_vs_naive": _ratio(warden["archived_per_s_incl_drain"],
                                                 naive["archived_per_s"]),
            "warden_vs_ceiling_max": _ratio(sustained, ceiling["max_per_s"]),
            "warden_vs_ceiling_paced": _ratio(sustained, ceiling["paced_per_s"]),
            "archived_vs_offered": _ratio(warden["archived"], warden["offered"]),
        }
        fresh, persist = warden["freshness"]["p99_s"], warden["persistence_lag"]["p99_s"]
        targets = {
            "sustained_ge_20000_per_s": sustained >= 20_000,
            "nothing_lost": warden["lost"] == 0,
            "freshness_p99_le_1s": fresh is not None and fresh <= 1.0,
            "persistence_lag_p99_le_10s": persist is not None and persist <= 10.0,
            "ge_100x_naive": (ratios["warden_vs_naive"] or 0) >= 100,
            "applies": n == 1_000,
        }
        out.append(emit("ingest", N=n, M=m, R=round(rate, 4), offered_target_per_s=offered,
                        quick=quick, warden=warden, naive=naive, ceiling=ceiling,
                        ratios=ratios, targets=targets))
    return out


def figure_memory(quick: bool, values: int | None = None, n: int | None = None,
                  m: int = M_DEFAULT, offered: float | None = None,
                  with_storage: bool = True) -> list[dict]:
    """RSS of the service process while it archives ``values`` values (and bytes on disk).

    100 objects at 10,000 values/s: a load whose writer keeps up, so that RSS shows what the
    service holds, not a growing queue (the full set cuts 10 M values to 3 M: 5 minutes).
    """
    values = values or (200_000 if quick else 3_000_000)
    n = n or (20 if quick else 100)  # --quick: few streams, so the writer drains in seconds
    offered = offered or (20_000.0 if quick else 10_000.0)
    rate = offered / (n * m)
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        tmp = Path(tmp)
        run = WardenRun(tmp, n, m)
        run.start()
        stats = ProcessStats(children_of(run.service))
        rss_start = stats.rss_mb()
        run.sample_memory(stats, period=0.5 if quick else 2.0)
        note(f"memory: {values:,} values at {offered:,.0f}/s through {n} objects")
        driver = run.drive(rate, duration=10 * values / offered + 60, max_values=values)
        proc = stats.report()
        fin = run.finish(drain_timeout=120 if quick else 900)
        counted = run.count()
        rss_end = stats.rss_mb()
        samples = [s for s in run.samples if s[1] > 0]
        memory = _memory_fit(samples, values, rss_start, rss_end)
        out = [emit(
            "memory", N=n, M=m, quick=quick, values_target=values, **driver.summary(),
            archived=counted["values"], lost=driver.offered - counted["values"],
            **memory, **fin, process=proc,
            sustained_values_per_s=_r(sustained_rate(run.latest.timeline, driver.t_start
                                                     + 0.1 * (driver.t_end - driver.t_start),
                                                     driver.t_end)),
            freshness=run.latest.fresh.summary(), persistence_lag=run.latest.persist.summary(),
            targets={"growth_le_50MB_per_10M_values":
                     memory["growth_per_10M_values_mb"] is not None
                     and memory["growth_per_10M_values_mb"] <= 50},
        )]
        if with_storage:
            out.append(_storage_figure(run, counted, m, quick))
        run.close(fin["drained"])
    return out


def figure_storage(quick: bool, values: int | None = None, n: int | None = None,
                   m: int = M_DEFAULT) -> list[dict]:
    """Bytes on disk per archived value, from a dedicated run of ``values`` values."""
    values = values or (100_000 if quick else 2_000_000)
    n = n or (20 if quick else 100)
    offered = 10_000.0
    rate = offered / (n * m)
    with tempfile.TemporaryDirectory(prefix="bench-storage-") as tmp:
        tmp = Path(tmp)
        run = WardenRun(tmp, n, m)
        run.start()
        run.drive(rate, duration=10 * values / offered + 60, max_values=values)
        fin = run.finish(drain_timeout=120 if quick else 900)
        counted = run.count()
        out = [_storage_figure(run, counted, m, quick)]
        run.close(fin["drained"])
    return out


def _storage_figure(run: WardenRun, counted: dict[str, int], m: int, quick: bool) -> dict:
    """Bytes on disk per value: the closed run as its rows in SQLite (how the open day is
    kept), then compacted into Parquet (how every closed day is kept: the figure)."""
    from catalog.compact import Compactor

    values = max(1, counted["values"])
    rows_disk = run.disk()
    t0 = time.perf_counter()
    report = Compactor(run.workdir / "archive.db", grace=0).run()
    compact_s = time.perf_counter() - t0
    disk = run.disk()
    per_value = disk["total"] / values
    refs = _storage_references(m, rows=min(200_000, max(10_000, counted["rows"])))
    return emit(
        "storage", quick=quick, M=m, archived_values=counted["values"],
        archived_rows=counted["rows"], bytes=disk, bytes_per_value=round(per_value, 2),
        bytes_per_value_open_day_rows=round(rows_disk["total"] / values, 2),
        bytes_rows=rows_disk,
        compaction={"tables": report.tables, "rows": report.rows, "deleted": report.deleted,
                    "errors": report.errors, "parquet_bytes": report.parquet_bytes,
                    "seconds": round(compact_s, 2),
                    "rows_per_s": round(report.rows / max(compact_s, 1e-9))},
        references=refs,
        ratios={"warden_vs_plain_sqlite_same_layout":
                _ratio(per_value, refs["plain_sqlite_same_layout"]),
                "open_day_rows_vs_plain_sqlite_same_layout":
                _ratio(rows_disk["total"] / values, refs["plain_sqlite_same_layout"]),
                "warden_vs_raw_16": _ratio(per_value, 16.0)},
        targets={"le_16_bytes_per_value": per_value <= 16.0},
    )


def _storage_references(m: int, rows: int) -> dict[str, float]:
    """Bytes per value of the same rows in bare SQLite tables, written with sqlite3.

    ``plain_sqlite_same_layout``: seq_num, time, a*, ts_a* (what the warden's table holds,
    minus Tiled's ``_dataset_id``/``_partition_id``); ``plain_sqlite_one_timestamp``: time and
    a* only (one upstream time per row); ``raw_float64_value_and_time``: 16.
    """
    import sqlite3

    out = {}
    attrs = attributes(m)
    layouts = {
        "plain_sqlite_same_layout": ["seq_num INTEGER", "time REAL",
                                     *(f"{a} REAL" for a in attrs),
                                     *(f"ts_{a} REAL" for a in attrs)],
        "plain_sqlite_one_timestamp": ["time REAL", *(f"{a} REAL" for a in attrs)],
    }
    rng = np.random.default_rng(0)
    t = 1.7e9 + np.cumsum(rng.random(rows))
    vals = 100.0 * np.arange(m) + rng.normal(0.0, 0.01, size=(rows, m))
    with tempfile.TemporaryDirectory() as tmp:
        for name, cols in layouts.items():
            path = Path(tmp) / f"{name}.db"
            con = sqlite3.connect(path)
            con.execute(f"CREATE TABLE t ({', '.join(cols)})")
            if name == "plain_sqlite_same_layout":
                data = [(i, t[i], *vals[i], *([t[i]] * m)) for i in range(rows)]
            else:
                data = [(t[i], *vals[i]) for i in range(rows)]
            marks = ", ".join("?" * len(cols))
            con.executemany(f"INSERT INTO t VALUES ({marks})", data)
            con.commit()
            con.close()
            out[name] = round(disk_bytes(path) / (rows * m), 2)
    out["raw_float64_value_and_time"] = 16.0
    return out


def _memory_fit(samples, values, rss_start, rss_end) -> dict[str, Any]:
    """RSS at warm-up (10 % of the values archived) and at the end; slope after warm-up."""
    warm_at = 0.1 * values
    after = [(v, r) for _, v, r, _ in samples if v >= warm_at]
    if len(after) < 3:
        return {"rss_start_mb": round(rss_start, 1), "rss_warm_mb": None,
                "rss_end_mb": round(rss_end, 1), "slope_mb_per_million_values": None,
                "growth_after_warmup_mb": None, "growth_per_10M_values_mb": None,
                "rss_peak_mb": None}
    v = np.array([a for a, _ in after], dtype=float)
    r = np.array([b for _, b in after], dtype=float)
    slope = float(np.polyfit(v / 1e6, r, 1)[0])
    return {
        "rss_start_mb": round(rss_start, 1),
        "rss_warm_mb": round(float(r[0]), 1),
        "rss_end_mb": round(float(r[-1]), 1),
        "rss_peak_mb": round(float(max(s[2] for s in samples)), 1),
        "writer_backlog_max_docs": int(max(s[3] for s in samples)),
        "values_at_warm": int(v[0]),
        "slope_mb_per_million_values": round(slope, 3),
        "growth_after_warmup_mb": round(float(r[-1] - r[0]), 1),
        "growth_per_10M_values_mb": round(slope * 10, 1),
        "rss_samples": [[int(a), round(b, 1)] for a, b in zip(v[:: max(1, len(v) // 20)],
                                                              r[:: max(1, len(r) // 20)],
                                                              strict=True)],
    }


def _ratio(a, b) -> float | None:
    if a is None or not b:
        return None
    return round(a / b, 3)


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 1)

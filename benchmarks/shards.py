"""Shards: the one-process service beside K shards over NATS JetStream, across a midnight.

N ``generic`` sim objects x M scalars are offered at one total rate (22,000 values/s), by a
:class:`~benchmarks.ingest.Driver` thread calling ``sim_put``, to

* **single**: the one-process :class:`~warden.service.WardenService` (its writer and server
  in processes of their own; :class:`~benchmarks.ingest.WardenRun`, as *ingest* runs it);
* **sharded**: K shard processes, each a :class:`~warden.shards.Shard` of the same config
  driven in-process on its own objects, and one archive host process
  (:class:`~warden.shards.ArchiveHost`: JetStream writer and Tiled server), NATS JetStream
  between them (``WARDEN_BENCH_NATS_URL``, default ``nats://127.0.0.1:4222``).

Both archive to SQLite under a temporary directory and run on an injected
:class:`~plans.clock.Clock` that is set, just before the window, ``lead`` seconds before
local midnight (UTC), so the window crosses it. Freshness and persistence lag are timed
with :class:`~benchmarks.ingest.LatencyProbe`: for the shards, a watcher in this process on
the deployment's ``latest`` bucket gives it the shards' entries (``o.`` keys) and the
writer's archived times (``a.`` keys), and the shards give it the upstream times of their
puts at the end. ``python -m benchmarks shards [--quick] [--shard-sizes N,N]``.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import secrets
import sqlite3
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from .common import API_KEY, ProcessStats, children_of, emit, note

NATS_URL = os.environ.get("WARDEN_BENCH_NATS_URL", "nats://127.0.0.1:4222")
ZONE = "UTC"
OFFERED = 22_500.0  # values/s at every N: over the 22,000 target, so keeping up reads above it
QUICK = {"n": 50, "offered": 5_000.0, "window": 12.0, "lead": 5.0, "warmup": 3.0}
FULL_WINDOW = 150.0  # s per side and N (the figure: about 25 minutes once streams are cheap)
LEAD = 60.0  # clock seconds from the window's start to midnight
WARMUP = 10.0  # s: the window's first seconds, not in the sustained rate
DRAIN = 180.0  # s: longest wait for the writer after the window, besides stream creation
AROUND_MIDNIGHT = (-10.0, 30.0)  # upstream seconds around midnight of midnight_lag_max_s
BENCH_THREADS = ("bench-settle", "bench-archived")  # the probe's, in the single service


def figure_shards(quick: bool, sizes: list[int] | None = None, duration: float | None = None,
                  m: int = 5, k: int = 2, lead: float | None = None) -> list[dict]:
    sizes = sizes or ([QUICK["n"]] if quick else [1_000, 10_000])
    offered = QUICK["offered"] if quick else OFFERED
    window = duration or (QUICK["window"] if quick else FULL_WINDOW)
    lead = lead or (QUICK["lead"] if quick else LEAD)
    warmup = min(QUICK["warmup"] if quick else WARMUP, window / 4)
    out = []
    for n in sizes:
        rate = offered / (n * m)
        drain = (60.0 if quick else DRAIN) + create_timeout(n)  # a new day's streams too
        with tempfile.TemporaryDirectory(prefix=f"bench-shards-{n}-") as tmp:
            tmp = Path(tmp)
            args = (n, m, rate, window, warmup, lead, drain)
            single = run_single(*args, workdir=tmp / "single")
            sharded = run_sharded(*args, k=k, workdir=tmp / "sharded")
        out.append(emit("shards", N=n, M=m, K=k, R=round(rate, 4), offered_target_per_s=offered,
                        quick=quick, window_s=window, warmup_s=warmup, midnight_lead_s=lead,
                        single=single, sharded=sharded, ratios=_ratios(single, sharded),
                        targets=_targets(sharded, applies=n == 10_000)))
    return out


def create_timeout(n: int) -> float:
    """Seconds allowed for creating ``n`` streams (65 s per 1,000 seen through Tiled)."""
    from .ingest import CREATE_S_PER_STREAM

    return 120.0 + CREATE_S_PER_STREAM * n


def _ratios(single: dict, sharded: dict) -> dict[str, float | None]:
    def ratio(key: str) -> float | None:
        a, b = sharded.get(key), single.get(key)
        return None if a is None or not b else round(a / b, 3)

    return {"shards_vs_single": ratio("sustained_values_per_s"),
            "per_core_shards_vs_single": ratio("values_per_cpu_s"),
            "freshness_p99_shards_vs_single": _ratio_p99(sharded, single, "freshness"),
            "lag_p99_shards_vs_single": _ratio_p99(sharded, single, "persistence_lag")}


def _ratio_p99(a: dict, b: dict, key: str) -> float | None:
    x, y = a[key]["p99_s"], b[key]["p99_s"]
    return None if x is None or not y else round(x / y, 3)


def _targets(side: dict, applies: bool) -> dict[str, bool]:
    fresh, lag = side["freshness"]["p99_s"], side["persistence_lag"]["p99_s"]
    midnight = side["midnight"]
    return {
        "sustained_ge_22000_per_s": (side["sustained_values_per_s"] or 0) >= 22_000,
        "freshness_p99_le_1s": fresh is not None and fresh <= 1.0,
        "persistence_lag_p99_le_10s": lag is not None and lag <= 10.0,
        "nothing_lost": side["lost"] == 0,
        "nothing_doubled": side["doubled_rows"] == 0,
        "midnight_lag_le_10s": (midnight["lag_max_s"] is not None
                                and midnight["lag_max_s"] <= 10.0),
        "next_day_run_holds_its_rows": midnight["next_day_holds_rows"],
        "applies": applies,
    }


# -- the clock -------------------------------------------------------------------------------
def noon_today() -> float:
    """Clock start for building and priming: noon of today, far from either midnight."""
    from plans.clock import day_start

    return day_start(dt.datetime.now(dt.UTC).date(), _zone()) + 12 * 3600.0


def _zone():
    from zoneinfo import ZoneInfo

    return ZoneInfo(ZONE)


def before_midnight(clock_now: float, lead: float) -> float:
    """The clock time ``lead`` seconds before the midnight after ``clock_now``."""
    from plans.clock import Clock

    return Clock(_zone()).next_midnight(clock_now) - lead


# -- the single service ----------------------------------------------------------------------
def run_single(n: int, m: int, rate: float, window: float, warmup: float, lead: float,
               drain: float, workdir: Path) -> dict[str, Any]:
    from plans.clock import Clock

    from .ingest import WardenRun

    workdir.mkdir(parents=True)
    clock = Clock(_zone(), start=noon_today())
    note(f"shards/single: {n} objects x {m} attributes")
    run = WardenRun(workdir, n, m, clock=clock)
    run.latest.offset = clock.time() - time.time()
    run.start()
    try:
        note(f"shards/single: creating the {n} streams")
        streams_s = run.prime(timeout=create_timeout(n))
    except BaseException:
        run.service.stop()
        run.service.close()
        raise
    midnight = clock.next_midnight()
    clock.set(midnight - lead)
    run.latest.offset = clock.time() - time.time()
    note(f"shards/single: driving {n * m * rate:,.0f} values/s for {window} s, "
         f"midnight {lead} s in")
    stats = ProcessStats(children_of(run.service))
    driver = run.drive(rate, window, warmup=warmup)
    proc = stats.report()
    bench = sum(proc["cpu_s_by_thread"].get(t, 0.0) for t in BENCH_THREADS)
    fin = run.finish(drain)
    total = stats.report()
    audit = audit_archive(workdir / "archive.db", workdir / "archive.tables.db", m,
                          run.latest.since, driver.t_end, midnight)
    cpu = {"window": _service_cpu(proc) - bench,
           "until_drained": _service_cpu(total) - bench * total["wall_s"] / proc["wall_s"]}
    out = _side(run.latest, driver.summary(), driver.t_start, driver.t_end, warmup, cpu,
                proc["wall_s"], audit, midnight, streams_s)
    run.close(fin["drained"])
    return {**out, **fin, "process": proc}


def _service_cpu(report: dict) -> float:
    """CPU seconds of the service's process and its server and writer processes."""
    return report["cpu_s"] + sum(report[f"{c}_process"]["cpu_s"] for c in ("server", "writer")
                                 if f"{c}_process" in report)


# -- the shards ------------------------------------------------------------------------------
def run_sharded(n: int, m: int, rate: float, window: float, warmup: float, lead: float,
                drain: float, k: int, workdir: Path) -> dict[str, Any]:
    from .ingest import LatencyProbe, object_names

    workdir.mkdir(parents=True)
    name = f"bench{secrets.token_hex(4)}"
    config = shard_config(workdir, n, m, k, name)
    names = object_names(n)
    offset = noon_today() - time.time()
    probe = LatencyProbe(names, m, origin=time.time() + offset)
    probe.offset = offset
    watch = host = None
    children: list[Child] = []
    note(f"shards/sharded: {k} shards + archive host, {n} objects x {m} attributes")
    try:
        watch = LatestWatch(NATS_URL, name, names, probe)
        host = Child(_archive_host, (config,), "bench-archive-host", timeout=120)
        children += [Child(_shard, (config, i, offset), f"bench-shard{i}", timeout=120 + n / 50)
                    for i in range(k)]
        note(f"shards/sharded: creating the {n} streams")
        t0 = time.perf_counter()
        _each(children, "drive", 1.0, 1.0, False)  # one reading of every object
        if not watch.wait_archived(n, create_timeout(n)):
            raise RuntimeError(f"the writer did not archive every object's first reading in "
                               f"{create_timeout(n):.0f} s ({len(watch.archived_objects)}/{n})")
        streams_s = time.perf_counter() - t0
        midnight = before_midnight(time.time() + offset, 0.0)
        offset = midnight - lead - time.time()
        for got in _each(children, "set_clock", offset):
            probe.offset = got
        note(f"shards/sharded: driving {n * m * rate:,.0f} values/s for {window} s, "
             f"midnight {lead} s in")
        pids = [host.pid, *(c.pid for c in children)]
        cpu0, wall0 = cpu_seconds(pids), time.perf_counter()
        nats0 = nats_server_cpu()
        drives = _each(children, "drive", rate, window, True)
        cpu_window, wall = cpu_seconds(pids) - cpu0, time.perf_counter() - wall0
        nats1 = nats_server_cpu()
        t_drain = time.perf_counter()
        stops = _each(children, "stop", timeout=drain)
        drained = host.ask("join", max(1.0, drain - (time.perf_counter() - t_drain)),
                           timeout=drain + 60)
        drain_s = time.perf_counter() - t_drain
        cpu = {"window": cpu_window, "until_drained": cpu_seconds(pids) - cpu0}
        writer = host.ask("writer")
        time.sleep(1.0)  # the last archived times on their way to the watcher
        t_start = min(d["t_start"] for d in drives)
        t_end = max(d["t_end"] for d in drives)
        probe.since, probe.warm_until = t_start, t_start + warmup
        for d in drives:
            feed_rows(probe, d["objects"], d["stamps"])
        probe.read_archived()
        probe.settle()
        audit = audit_archive(workdir / "archive.db", workdir / "archive.tables.db", m,
                              t_start, t_end, midnight)
        summary = _driver_totals(drives)
        out = _side(probe, summary, t_start, t_end, warmup, cpu, wall, audit, midnight,
                    streams_s)
        host.ask("close", timeout=120)
    finally:
        for child in [*children, *([host] if host is not None else [])]:
            child.kill()
        if watch is not None:
            watch.close()
        _remove(name)
    return {**out, "drained": drained, "drain_s": round(drain_s, 2), "writer": writer,
            "published": [s["published"] for s in stops],
            "publish_retries": [s["retries"] for s in stops],
            "process": {"wall_s": round(wall, 2), "cpu_s": round(cpu_window, 2),
                        "nats_server_cpu_s": (None if nats0 is None or nats1 is None
                                              else round(nats1 - nats0, 2))}}


def shard_config(workdir: Path, n: int, m: int, k: int, name: str) -> dict[str, Any]:
    from .ingest import attributes, object_names

    return {
        "archive": f"sqlite:///{workdir / 'archive.db'}", "timezone": ZONE,
        "flush_interval": 0.5, "serve": {"host": "127.0.0.1", "port": 0},
        "shards": k, "nats": {"url": NATS_URL, "name": name},
        "objects": [{"name": o, "type": "generic", "source": "sim", "mode": "monitor",
                     "attributes": attributes(m)} for o in object_names(n)],
    }


def feed_rows(probe, objects: list[str], stamps: np.ndarray) -> None:
    """Give ``probe`` a shard's rows: its driver's upstream times, round by round."""
    idx = np.arange(len(stamps)) % len(objects)
    key = f"a{probe.m - 1}"
    for i, obj in enumerate(objects):
        probe("descriptor", {"uid": obj, "name": obj})
        probe("event_page", {"descriptor": obj, "timestamps": {key: stamps[idx == i].tolist()}})


def _driver_totals(drives: list[dict]) -> dict[str, Any]:
    wall = max(d["t_end"] for d in drives) - min(d["t_start"] for d in drives)
    offered = sum(d["summary"]["offered"] for d in drives)
    return {"offered": offered, "offered_per_s": round(offered / max(wall, 1e-9), 1),
            "late_rounds": [d["summary"]["late_rounds"] for d in drives],
            "driver_cpu_s": [d["summary"]["driver_cpu_s"] for d in drives]}


class LatestWatch:
    """Watches a deployment's ``latest`` bucket for ``probe``: every shard's entry as it is
    served (``o.`` keys, :meth:`LatencyProbe.published`) and the writer's archived times
    (``a.`` keys, read through :meth:`archived` as the service's shared file is)."""

    def __init__(self, url: str, name: str, objects: list[str], probe):
        import msgpack

        from catalog.jetstream import Bus, NatsLink, latest_key

        self.probe = probe
        self.link = NatsLink(Bus(url, name))
        by_key = {latest_key(o, kind): (o, kind) for o in objects for kind in ("o", "a")}
        self.archived_objects: set[str] = set()
        self._records: list[tuple[str, float, float]] = []
        self._lock = threading.Lock()
        watcher = self.link.call(self.link.bucket(self.link.bus.latest_bucket).watchall())
        probe._shared = self

        async def watch() -> None:
            async for entry in watcher:
                if entry is None or entry.value is None:
                    continue
                at = time.time()
                obj, kind = by_key.get(entry.key, (None, None))
                if kind == "o":
                    probe.published({obj: msgpack.unpackb(entry.value)}, at)
                elif kind == "a":
                    with self._lock:
                        self._records.append((obj, msgpack.unpackb(entry.value), at))
                        self.archived_objects.add(obj)

        self._task = self.link.submit(watch())

    def archived(self, after: float = 0.0) -> list[tuple[str, float, float]]:
        """The writer's records ``(object, upstream time, wall time)`` since the last call."""
        with self._lock:
            records, self._records = self._records, []
        return records

    def wait_archived(self, n: int, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while len(self.archived_objects) < n:
            if time.monotonic() > end:
                return False
            time.sleep(0.2)
        return True

    def close(self) -> None:
        self._task.cancel()
        self.link.close()


# -- child processes -------------------------------------------------------------------------
class Child:
    """A process started through :func:`warden.processes.start_child`, that runs
    ``target(*args, conn)`` and answers ``(command, *args)`` on ``conn``."""

    def __init__(self, target, args: tuple, name: str, timeout: float):
        from warden.processes import child_context, start_child

        self.conn, child_end = child_context().Pipe()
        self.process, self.pid = start_child(target, (*args, child_end), name, self.conn,
                                             (child_end,), name, timeout)
        self.name = name

    def send(self, command: str, *args) -> None:
        self.conn.send((command, *args))

    def recv(self, timeout: float = 600.0) -> Any:
        if not self.conn.poll(timeout):
            raise RuntimeError(f"{self.name} did not answer in {timeout:.0f} s")
        kind, value = self.conn.recv()
        if kind == "error":
            raise RuntimeError(f"{self.name}: {value}")
        return value

    def ask(self, command: str, *args, timeout: float = 600.0) -> Any:
        self.send(command, *args)
        return self.recv(timeout)

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(10)


def _each(children: list[Child], command: str, *args, timeout: float = 900.0) -> list:
    """Send ``command`` to every child at once; their answers."""
    for child in children:
        child.send(command, *args)
    return [child.recv(timeout) for child in children]


def _answer(conn, commands: dict) -> None:
    """Answer ``(command, *args)`` on ``conn`` until ``close`` or the parent is gone."""
    while True:
        try:
            command, *args = conn.recv()
        except (EOFError, OSError):
            return
        try:
            conn.send(("ok", commands[command](*args)))
        except Exception as err:  # noqa: BLE001 - the parent raises it
            conn.send(("error", f"{command}: {type(err).__name__}: {err}"))
        if command == "close":
            return


def _archive_host(config: dict, conn) -> None:
    """Child: the archive host (writer and Tiled server) until ``close``."""
    from warden.config import WardenConfig
    from warden.processes import tune_gc
    from warden.shards import ArchiveHost

    try:
        host = ArchiveHost(WardenConfig.model_validate(config), api_key=API_KEY, port=0,
                           compact_grace=None)  # (rows are counted in the tables file)
        host.start()
        tune_gc()  # (as `warden archive` does once started)
    except Exception as err:  # noqa: BLE001
        conn.send(("error", f"the archive host did not start: {type(err).__name__}: {err}"))
        return
    conn.send(("ok", os.getpid()))
    w = host.writer
    _answer(conn, {
        "join": w.join,
        "writer": lambda: {"written_rows": w.written, "errors": w.errors,
                           "last_error": w.last_error},
        "close": host.close,
    })


def _shard(config: dict, i: int, offset: float, conn) -> None:
    """Child: shard ``i`` of ``config`` on a clock ``offset`` seconds off, driven by our
    driver on its own objects."""
    from plans.clock import Clock
    from warden.config import WardenConfig
    from warden.processes import tune_gc
    from warden.shards import Shard

    from .ingest import Driver

    try:
        clock = Clock(_zone(), start=time.time() + offset)
        shard = Shard(WardenConfig.model_validate(config), i, api_key=API_KEY, clock=clock)
        svc = shard.service
        svc.sim = None  # our driver replaces the machine model
        shard.start()
        plan = threading.Thread(target=shard.run, name="warden-plan", daemon=True)
        plan.start()
        end = time.monotonic() + 120 + len(svc.devices) / 50
        while len(svc.connections.state) < len(svc.devices):  # every buffer staged
            if time.monotonic() > end or not plan.is_alive():
                raise RuntimeError("the monitoring plan did not stage its buffers")
            time.sleep(0.05)
        tune_gc()  # (as `warden run --shard` does once started)
    except Exception as err:  # noqa: BLE001
        conn.send(("error", f"shard {i} did not start: {type(err).__name__}: {err}"))
        return
    conn.send(("ok", os.getpid()))
    m = len(config["objects"][0]["attributes"])

    def drive(rate: float, duration: float, record: bool) -> dict:
        driver = Driver(svc.devices, m, rate, duration, now=clock.time, record=record)
        driver.run()
        return {"summary": driver.summary(), "t_start": driver.t_start, "t_end": driver.t_end,
                "objects": [d.name for d in svc.devices],
                "stamps": np.array(driver.stamps or [], float)}

    def set_clock(offset: float) -> float:
        clock.set(time.time() + offset)
        return clock.time() - time.time()

    def stop() -> dict:
        shard.stop()
        plan.join(120)
        published, retries = shard.publisher.published, shard.publisher.retries
        shard.close()
        return {"published": published, "retries": retries}

    _answer(conn, {"drive": drive, "set_clock": set_clock, "stop": stop,
                   "close": lambda: None})


def cpu_seconds(pids: list[int]) -> float:
    """CPU seconds used so far by processes ``pids`` and their children."""
    total = 0.0
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            for p in [proc, *proc.children(recursive=True)]:
                c = p.cpu_times()
                total += c.user + c.system
        except psutil.Error:
            pass
    return total


def nats_server_cpu() -> float | None:
    """CPU seconds of the local ``nats-server`` (shared with anything else using it)."""
    for p in psutil.process_iter(["name"]):
        if p.info["name"] == "nats-server":
            try:
                c = p.cpu_times()
                return c.user + c.system
            except psutil.Error:
                return None
    return None


def _remove(name: str) -> None:
    from catalog.jetstream import Bus, NatsLink

    link = NatsLink(Bus(NATS_URL, name))
    try:
        link.remove()
    finally:
        link.close()


# -- the figures of a side -------------------------------------------------------------------
def _side(probe, driver: dict, t_start: float, t_end: float, warmup: float,
          cpu: dict[str, float], wall_s: float, audit: dict, midnight: float,
          streams_s: float) -> dict[str, Any]:
    """A side's figures; ``cpu``: CPU seconds of its processes in the window and from the
    window's start until drained."""
    from .ingest import sustained_rate

    sustained = sustained_rate(probe.timeline, t_start + warmup, t_end)
    return {
        **driver,
        "archived": audit["values"],
        "lost": driver["offered"] - audit["values"],
        "doubled_rows": audit["doubled_rows"],
        "split_rows": audit["split_rows"],
        "archived_rows": audit["rows"],
        "sustained_values_per_s": None if sustained is None else round(sustained, 1),
        "freshness": probe.fresh.summary(),
        "freshness_warmup": probe.fresh_warm.summary(),
        "persistence_lag": probe.persist.summary(),
        "persistence_lag_warmup": probe.persist_warm.summary(),
        "cpu_s": round(cpu["window"], 2),
        "cores_used": round(cpu["window"] / max(wall_s, 1e-9), 2),
        "cpu_s_until_drained": round(cpu["until_drained"], 2),
        "values_per_cpu_s": (round(audit["values"] / cpu["until_drained"], 1)
                             if cpu["until_drained"] > 0 else None),
        "stream_creation_s": round(streams_s, 2),
        "midnight": {**midnight_lag(probe, midnight), **audit["midnight"]},
    }


def midnight_lag(probe, midnight: float) -> dict[str, Any]:
    """The largest persistence lag of the rows stamped around ``midnight``, and by 5 s."""
    lo, hi = midnight + AROUND_MIDNIGHT[0], midnight + AROUND_MIDNIGHT[1]
    secs = {s - math.floor(midnight): lag for s, lag in probe.persist_by_second.items()}
    pending = probe.unarchived()
    around = [lag for s, lag in probe.persist_by_second.items() if lo <= s < hi]
    unarchived = int(((pending >= lo) & (pending < hi)).sum())
    by5: dict[str, float] = {}
    for s, lag in sorted(secs.items()):
        if -30 <= s < 90:
            b = str(5 * (s // 5))
            by5[b] = round(max(lag, by5.get(b, 0.0)), 2)
    return {"lag_max_s": round(max(around), 2) if around and not unarchived else None,
            "rows_unarchived_around_midnight": unarchived,
            "lag_max_s_by_5s": by5}


def audit_archive(catalog_db: Path, tables_db: Path, m: int, since: float, until: float,
                  midnight: float) -> dict[str, Any]:
    """What the SQLite archive holds of the rows stamped in ``[since, until]``.

    ``values``: distinct (stream, attribute, upstream time); ``doubled_rows``: rows of a
    run's stream archived more than once (the same ``seq_num``); ``split_rows``: rows whose
    last attribute's upstream time another row of the stream has too (a flush that found a
    round of the driver's puts half done, the rest stalled longer than the buffer's
    ``HOLD``: the rest is in the next row, nothing doubled); ``midnight``: the day runs
    holding the rows stamped after ``midnight``.
    """
    from .ingest import attributes

    attrs = attributes(m)
    next_day = dt.datetime.fromtimestamp(midnight, _zone()).date().isoformat()
    con = sqlite3.connect(f"file:{tables_db}?mode=ro", uri=True, timeout=60)
    try:
        con.execute("ATTACH DATABASE ? AS cat", (f"file:{catalog_db}?mode=ro",))
        con.execute(
            "CREATE TEMP TABLE ds AS SELECT json_extract(d.parameters, '$.dataset_id') AS id,"
            " s.key AS stream, r.key AS run, json_extract(r.metadata, '$.start.day') AS day"
            " FROM cat.data_sources d JOIN cat.nodes t ON t.id = d.node_id"
            " JOIN cat.nodes s ON s.id = t.parent JOIN cat.nodes r ON r.id = s.parent")
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        rows = values = distinct_rows = distinct_seq = 0
        after: dict[str, int] = {}
        last = f'"ts_{attrs[-1]}"'
        for table in tables:
            cols = {r[1] for r in con.execute(f'PRAGMA table_info("{table}")')}
            if not all(f"ts_{a}" in cols for a in attrs):
                continue
            src = (f'FROM "{table}" x JOIN temp.ds ON ds.id = x._dataset_id'
                   f" WHERE x.{last} BETWEEN ? AND ?")
            rows += con.execute(f"SELECT count(*) {src}", (since, until)).fetchone()[0]
            distinct_rows += con.execute(
                f"SELECT count(*) FROM (SELECT DISTINCT ds.stream, x.{last} {src})",
                (since, until)).fetchone()[0]
            distinct_seq += con.execute(
                f"SELECT count(*) FROM (SELECT DISTINCT ds.run, ds.stream, x.seq_num {src})",
                (since, until)).fetchone()[0]
            for a in attrs:
                values += con.execute(
                    f'SELECT count(*) FROM (SELECT DISTINCT ds.stream, x."ts_{a}" {src})',
                    (since, until)).fetchone()[0]
            for day, count in con.execute(f"SELECT ds.day, count(*) {src} GROUP BY ds.day",
                                          (midnight, until)):
                after[day] = after.get(day, 0) + count
    finally:
        con.close()
    rows_after = sum(after.values())
    return {"rows": rows, "values": values, "doubled_rows": rows - distinct_seq,
            "split_rows": rows - distinct_rows,
            "midnight": {"next_day": next_day, "rows_after_by_day": after,
                         "next_day_holds_rows": rows_after > 0
                         and after.get(next_day, 0) == rows_after}}

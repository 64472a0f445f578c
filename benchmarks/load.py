"""Load: the service ingesting while clients hammer ``latest`` and ``day`` over loopback.

The real service with N ``generic`` sim objects x M attributes, driven at R values/s by the
ingest driver (:mod:`benchmarks.ingest`). Two clients, each a process of its own with its own
keep-alive connection, loop without pause: one asks
``GET /api/v1/metadata/latest/<random object>``, the other reads a random object's whole day
through the Tiled Python client (``Archive.day``). The same clients run for ``idle`` seconds
before the load (the reference, same server) and the HTTP p99 under load is reported
against it.
Readings are counted as in the ingest figure: offered puts against distinct archived values.
"""

from __future__ import annotations

import datetime as dt
import multiprocessing
import random
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from .common import API_KEY, emit, note, quantiles_ms
from .ingest import WardenRun, object_names

HEADERS = {"Authorization": f"Apikey {API_KEY}"}


class Clients:
    """The two hammering clients, each in a process of its own (as real clients are: in the
    service's process they would take its GIL, and their waits would show as the server's).

    :meth:`run` collects latencies until ``seconds`` pass or ``stop`` is set.
    """

    def __init__(self, url: str, n: int):
        self.url, self.n = url, n

    def run(self, seconds: float | None, stop: threading.Event | None = None
            ) -> dict[str, list[float]]:
        stop = stop or threading.Event()
        ctx = multiprocessing.get_context("spawn")
        halt = ctx.Event()
        pipes = {kind: ctx.Pipe(duplex=False) for kind in ("latest", "day")}
        procs = [ctx.Process(target=_client, args=(kind, self.url, self.n, halt, pipes[kind][1]),
                             daemon=True) for kind in pipes]
        for p in procs:
            p.start()
        stop.wait(seconds)
        halt.set()
        answers = {kind: pipes[kind][0].recv() for kind in pipes}
        for p in procs:
            p.join(timeout=30)
        errors = [e for times, errs in answers.values() for e in errs]
        if errors:
            raise RuntimeError(f"{len(errors)} failed requests, first: {errors[0]}")
        return {kind: times for kind, (times, _) in answers.items()}


def _client(kind: str, url: str, n: int, halt, pipe) -> None:
    """One client process: ask without pause until ``halt``; send (latencies, errors)."""
    names = object_names(n)
    times: list[float] = []
    errors: list[str] = []
    if kind == "latest":
        with httpx.Client(headers=HEADERS, trust_env=False) as client:
            while not halt.is_set():
                name = random.choice(names)
                t0 = time.perf_counter()
                r = client.get(f"{url}/api/v1/metadata/latest/{name}")
                times.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    errors.append(f"latest {name}: {r.status_code}")
    else:
        from tiled.client import from_uri

        from catalog.query import Archive

        archive = Archive(from_uri(url, api_key=API_KEY))
        today = dt.datetime.now(dt.UTC).date().isoformat()
        while not halt.is_set():
            name = random.choice(names)
            t0 = time.perf_counter()
            try:
                archive.day(name, today)
            except Exception as err:  # noqa: BLE001 - counted, reported
                errors.append(f"day {name}: {err!r}")
            times.append(time.perf_counter() - t0)
    pipe.send((times, errors))


def run_load(n: int, m: int, rate: float, seconds: float, idle: float,
             workdir: Path) -> dict[str, Any]:
    run = WardenRun(workdir, n, m)
    run.start()
    clients = Clients(run.url, n)
    note(f"load: idle clients for {idle} s")
    run.drive(rate, 2.0)  # every object holds a reading and has a table
    run.service.writer.join(timeout=60)
    idle_times = clients.run(idle)
    note(f"load: {n * m * rate:,.0f} values/s for {seconds} s with the clients hammering")
    stop = threading.Event()
    hammer: dict[str, dict[str, list[float]]] = {}
    t = threading.Thread(target=lambda: hammer.setdefault("t", clients.run(None, stop)))
    t.start()
    driver = run.drive(rate, seconds)
    stop.set()
    t.join()
    fin = run.finish(drain_timeout=max(60.0, seconds))
    counted = run.count()
    load_times = hammer["t"]
    out: dict[str, Any] = {
        "objects": n, "attributes": m,
        **driver.summary(),
        "archived": counted["values"], "lost": driver.offered - counted["values"],
        "archived_per_s_incl_drain": round(
            counted["values"] / max(1e-9, driver.t_end - driver.t_start + fin["drain_s"]), 1),
        "persistence_lag": run.latest.persist.summary(),
        "freshness": run.latest.fresh.summary(),
        **fin,
    }
    for kind in ("latest", "day"):
        a, b = quantiles_ms(idle_times[kind]), quantiles_ms(load_times[kind])
        out[f"{kind}_idle"], out[f"{kind}_load"] = a, b
        out[f"{kind}_p99_load_over_idle"] = round(b["p99_ms"] / a["p99_ms"], 2)
    run.close(fin["drained"])
    return out


def figure_load(quick: bool, objects: int | None = None, duration: float | None = None,
                rate: float | None = None) -> dict[str, Any]:
    n = objects or (100 if quick else 1_000)
    m = 5
    seconds = duration or (20.0 if quick else 600.0)
    per_object = (rate or (5_000.0 if quick else 20_000.0)) / (n * m)  # rounds/s per object
    with tempfile.TemporaryDirectory(prefix="warden-bench-load-") as tmp:
        result = run_load(n, m, per_object, seconds, idle=10.0 if quick else 30.0,
                          workdir=Path(tmp))
    return emit("load", quick=quick, **result)

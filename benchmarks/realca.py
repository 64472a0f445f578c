"""Real Channel Access: ``warden sim-ioc`` (a caproto IOC, subprocess, loopback) with ``--extra N``
synthetic objects of ``--extra-attrs M`` scalars, every one changing each ``--update-period P``
(N*M/P values/s offered). Two clients, each in its own subprocess (Channel Access settings are
in their environment before anything imports ophyd), one after the other against the same IOC:

* **ceiling**: pyepics subscriptions that only count (what this IOC delivers on this machine);
* **warden**: the real service (``generic`` objects, ``source: epics``, ``mode: monitor``) with
  its Tiled server on SQLite; values archived with an upstream time inside the window.

``python -m benchmarks.realca count|warden --objects N --attrs M --duration S`` is the child.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from .common import API_KEY, emit, free_port, note


class IOC:
    def __init__(self, port: int, n: int, m: int, period: float):
        self.cmd = [sys.executable, "-m", "warden", "sim-ioc", "--port", str(port),
                    "--extra", str(n), "--extra-attrs", str(m), "--update-period", str(period)]
        self.proc: subprocess.Popen | None = None

    def start(self, env: dict) -> None:
        self.proc = subprocess.Popen(self.cmd, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        line = self.proc.stdout.readline()
        if "serving" not in line:
            raise RuntimeError(f"sim-ioc did not start: {line}")
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()
        self.ps = psutil.Process(self.proc.pid)

    def cpu(self) -> float:
        c = self.ps.cpu_times()
        return c.user + c.system

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _child(side: str, n: int, m: int, duration: float, env: dict, ioc: IOC) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.realca", side, "--objects", str(n), "--attrs",
           str(m), "--duration", str(duration)]
    note(f"ca: {side} side, {n} objects x {m} attributes, {duration} s")
    cpu0, t0 = ioc.cpu(), time.time()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True,
                         timeout=duration + 300 + n / 5)
    ioc_cpu = (ioc.cpu() - cpu0) / (time.time() - t0)
    lines = [x for x in out.stdout.splitlines() if x.startswith("{")]
    if not lines:
        raise RuntimeError(f"ca {side} child failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    result = json.loads(lines[-1])
    result["ioc_cpu_percent_of_one_core"] = round(100 * ioc_cpu, 1)
    return result


def figure_ca(quick: bool, objects: int | None = None, duration: float | None = None,
              m: int = 5) -> list[dict]:
    n = objects or (20 if quick else 200)
    period = 0.5
    duration = duration or (3.0 if quick else 60.0)
    port = free_port()
    env = {**os.environ, "EPICS_CA_ADDR_LIST": f"127.0.0.1:{port}",
           "EPICS_CA_AUTO_ADDR_LIST": "NO", "EPICS_CA_SERVER_PORT": str(port),
           "EPICS_CA_CONN_TMO": "5", "PYTHONUNBUFFERED": "1"}
    ioc = IOC(port, n, m, period)
    ioc.start(env)
    try:
        time.sleep(0.5)
        ceiling = _child("count", n, m, duration, env, ioc)
        warden = _child("warden", n, m, duration, env, ioc)
    finally:
        ioc.stop()
    offered = n * m / period
    ratio = warden["values_per_s"] / ceiling["values_per_s"] if ceiling["values_per_s"] else None
    return [emit(
        "real_ca", quick=quick, objects=n, attributes=m, update_period_s=period,
        offered_by_ioc_per_s=offered, window_s=duration, ceiling_pyepics=ceiling, warden=warden,
        ratios={"warden_vs_pyepics_ceiling": None if ratio is None else round(ratio, 3),
                "pyepics_vs_offered": round(ceiling["values_per_s"] / offered, 3)},
    )]


# -- the children ----------------------------------------------------------------------------
def _count(n: int, m: int, duration: float) -> dict:
    import epics

    window = [0.0, 0.0]
    counted = [0, 0]  # in window, all
    lock = threading.Lock()

    def cb(value=None, timestamp=None, **kw):
        with lock:
            counted[1] += 1
            if window[0] <= (timestamp or 0) <= window[1]:
                counted[0] += 1

    names = [f"syn{i:05d}:a{k}" for i in range(n) for k in range(m)]
    t_connect = time.perf_counter()
    pvs = [epics.PV(name, callback=cb, auto_monitor=True) for name in names]
    deadline = time.monotonic() + 60 + n / 10
    while not all(pv.connected for pv in pvs):
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    connected = sum(pv.connected for pv in pvs)
    connect_s = time.perf_counter() - t_connect
    time.sleep(1.0)
    t0 = time.time()
    window[:] = [t0, t0 + duration]
    cpu0 = psutil.Process().cpu_times()
    time.sleep(duration + 1.0)  # the last updates of the window arrive a little after it
    cpu1 = psutil.Process().cpu_times()
    return {"values_in_window": counted[0], "values_per_s": round(counted[0] / duration, 1),
            "pvs": len(names), "connected": connected, "connect_s": round(connect_s, 2),
            "cpu_percent_of_one_core": round(100 * ((cpu1.user + cpu1.system)
                                                    - (cpu0.user + cpu0.system))
                                             / (duration + 1), 1)}


def _warden(n: int, m: int, duration: float) -> dict:
    from warden.config import WardenConfig
    from warden.service import WardenService

    from .common import ProcessStats, children_of, count_archived
    from .ingest import attributes, instrument_latest

    tmp = Path(tempfile.mkdtemp(prefix="bench-ca-"))
    names = [f"syn{i:05d}" for i in range(n)]
    config = WardenConfig.model_validate({
        "archive": f"sqlite:///{tmp / 'archive.db'}", "timezone": "UTC",
        "serve": {"host": "127.0.0.1", "port": 0},
        "objects": [{"name": o, "type": "generic", "source": "epics", "prefix": f"{o}:",
                     "mode": "monitor", "attributes": attributes(m)} for o in names],
    })
    service = WardenService(config, api_key=API_KEY, port=0)
    latest = instrument_latest(service, m)
    t_connect = time.perf_counter()
    service.start()
    latest.listen(service)
    plan = threading.Thread(target=service.run, name="warden-plan", daemon=True)
    plan.start()
    deadline = time.monotonic() + 60 + n / 10
    while not all(service.connections.state.get(o) for o in names):
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    connected = sum(bool(service.connections.state.get(o)) for o in names)
    connect_s = time.perf_counter() - t_connect
    time.sleep(1.0)
    t0 = time.time()
    latest.since = latest.warm_until = t0  # time every row stamped inside the window
    stats = ProcessStats(children_of(service))
    time.sleep(duration)
    t1 = time.time()
    proc = stats.report()
    time.sleep(1.0)
    service.stop()
    plan.join(timeout=300)
    drained = service.writer.join(300)
    latest.stop_settling()
    counted = count_archived(tmp / "archive.tables.db", attributes(m), t0, t1)
    return {"values_in_window": counted["values"], "rows_in_window": counted["rows"],
            "values_per_s": round(counted["values"] / duration, 1),
            "objects": n, "connected": connected, "connect_s": round(connect_s, 2),
            "drained": drained, "writer_errors": service.writer.errors,
            "freshness": latest.fresh.summary(), "persistence_lag": latest.persist.summary(),
            "process": proc}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("side", choices=["count", "warden"])
    p.add_argument("--objects", type=int, required=True)
    p.add_argument("--attrs", type=int, default=5)
    p.add_argument("--duration", type=float, default=10.0)
    a = p.parse_args()
    fn = _count if a.side == "count" else _warden
    print(json.dumps(fn(a.objects, a.attrs, a.duration)), flush=True)
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()

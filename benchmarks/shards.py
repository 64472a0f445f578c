"""Shards: one process against K shards over NATS JetStream, on real Channel Access.

One ``warden sim-ioc`` (``--extra N`` objects of M scalars, each changing every 0.5 s) feeds,
one after the other:

* **single**: the one-process service (``benchmarks.realca``'s warden child: spool, writer
  process, SQLite);
* **shards**: ``warden archive`` (writer and Tiled server) and K ``warden run --shard i/K``
  processes, NATS JetStream between them (``WARDEN_BENCH_NATS_URL``, default
  ``nats://127.0.0.1:4222``), the same SQLite archive layout.

Both count the values archived with an upstream time inside the window
(:func:`benchmarks.common.count_archived`). ``python -m benchmarks.shards [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from .common import API_KEY, count_archived, emit, free_port, note
from .realca import IOC, _child

NATS_URL = os.environ.get("WARDEN_BENCH_NATS_URL", "nats://127.0.0.1:4222")
PERIOD = 0.5


def figure_shards(quick: bool, objects: int | None = None, duration: float | None = None,
                  m: int = 5, k: int = 2) -> list[dict]:
    n = objects or (50 if quick else 1_000)
    duration = duration or (10.0 if quick else 60.0)
    port = free_port()
    env = {**os.environ, "EPICS_CA_ADDR_LIST": f"127.0.0.1:{port}",
           "EPICS_CA_AUTO_ADDR_LIST": "NO", "EPICS_CA_SERVER_PORT": str(port),
           "EPICS_CA_CONN_TMO": "5", "PYTHONUNBUFFERED": "1", "WARDEN_API_KEY": API_KEY}
    ioc = IOC(port, n, m, PERIOD)
    ioc.start(env)
    try:
        time.sleep(0.5)
        single = _child("warden", n, m, duration, env, ioc)
        sharded = _sharded(n, m, k, duration, env)
    finally:
        ioc.stop()
    ratio = sharded["values_per_s"] / single["values_per_s"] if single["values_per_s"] else None
    return [emit("shards", quick=quick, objects=n, attributes=m, shards=k,
                 offered_by_ioc_per_s=n * m / PERIOD, window_s=duration,
                 single={k_: single[k_] for k_ in ("values_per_s", "connected", "drained")},
                 sharded=sharded,
                 ratios={"shards_vs_single": None if ratio is None else round(ratio, 3)})]


def _sharded(n: int, m: int, k: int, duration: float, env: dict) -> dict:
    from catalog.query import Archive

    from .ingest import attributes

    tmp = Path(tempfile.mkdtemp(prefix="bench-shards-"))
    name = f"bench{secrets.token_hex(4)}"
    names = [f"syn{i:05d}" for i in range(n)]
    path = tmp / "warden.yaml"
    path.write_text(yaml.safe_dump({
        "archive": f"sqlite:///{tmp / 'archive.db'}", "timezone": "UTC",
        "serve": {"host": "127.0.0.1", "port": 0}, "shards": k,
        "nats": {"url": NATS_URL, "name": name},
        "objects": [{"name": o, "type": "generic", "source": "epics", "prefix": f"{o}:",
                     "mode": "monitor", "attributes": attributes(m)} for o in names],
    }))
    note(f"shards: {k} shards, {n} objects x {m} attributes, {duration} s")
    log = (tmp / "host.log").open("w")
    host = subprocess.Popen([sys.executable, "-m", "warden", "archive", str(path)], env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    shards: list[subprocess.Popen] = []
    try:
        url = _url(tmp / "host.log", host)
        shards = [subprocess.Popen([sys.executable, "-m", "warden", "run", str(path),
                                    "--shard", f"{i}/{k}"], env=env, stdout=log,
                                   stderr=subprocess.STDOUT) for i in range(k)]
        archive = Archive.from_uri(url, api_key=API_KEY)
        t_connect = time.perf_counter()
        deadline = time.monotonic() + 120 + n / 5
        connected = 0
        while time.monotonic() < deadline:
            connected = sum(bool(archive.latest(o)["connected"]) for o in names)
            if connected == n:
                break
            time.sleep(2.0)
        connect_s = time.perf_counter() - t_connect
        time.sleep(1.0)
        t0 = time.time()
        time.sleep(duration)
        t1 = time.time()
        time.sleep(1.0)
        for proc in shards:
            proc.send_signal(signal.SIGTERM)
        for proc in shards:
            proc.wait(300)
        drained = _drained(name, timeout=300)
        counted = count_archived(tmp / "archive.tables.db", attributes(m), t0, t1)
    finally:
        for proc in [*shards, host]:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(60)
        log.close()
        asyncio.run(_remove(name))
    return {"values_in_window": counted["values"], "rows_in_window": counted["rows"],
            "values_per_s": round(counted["values"] / duration, 1), "connected": connected,
            "connect_s": round(connect_s, 2), "drained": drained}


def _url(log: Path, proc: subprocess.Popen, timeout: float = 300.0) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for line in log.read_text().splitlines():
            if line.startswith("warden: serving") and " at http" in line:
                return line.split(" at ")[1].split()[0]
        if proc.poll() is not None:
            raise RuntimeError(f"warden archive did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    raise RuntimeError("warden archive did not print its URL")


def _drained(name: str, timeout: float) -> bool:
    """Whether the writer acknowledged everything the shards published, within ``timeout``."""
    import nats

    async def pending() -> int:
        nc = await nats.connect(NATS_URL)
        try:
            info = await nc.jetstream().consumer_info(f"{name}-docs", f"{name}-archive")
            return info.num_pending + info.num_ack_pending
        finally:
            await nc.close()

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if asyncio.run(pending()) == 0:
            return True
        time.sleep(2.0)
    return False


async def _remove(name: str) -> None:
    import nats

    nc = await nats.connect(NATS_URL)
    js = nc.jetstream()
    for stream in (f"{name}-docs", *(f"KV_{name}-{b}" for b in ("latest", "days", "runs"))):
        try:
            await js.delete_stream(stream)
        except Exception:  # noqa: BLE001 - not made
            pass
    await nc.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--objects", type=int, default=None)
    p.add_argument("--duration", type=float, default=None)
    p.add_argument("--shards", type=int, default=2)
    args = p.parse_args()
    figure_shards(args.quick, args.objects, args.duration, k=args.shards)


if __name__ == "__main__":
    main()

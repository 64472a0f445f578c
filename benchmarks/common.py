"""Helpers shared by the figures: JSON output, latency histograms, process and disk stats."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import psutil

API_KEY = "benchkey0123456789"


def emit(figure: str, **fields: Any) -> dict[str, Any]:
    """Print one figure as one JSON line on stdout (the harness collects these)."""
    doc = {"figure": figure, **fields}
    print(json.dumps(_jsonable(doc)), flush=True)
    return doc


def note(text: str) -> None:
    """Progress for humans, on stderr."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float):
        return round(value, 6) if np.isfinite(value) else None
    return value


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LatencyHistogram:
    """Latencies in 1 ms bins up to ``cap`` seconds (fixed memory; thread-safe enough for one
    writer thread). ``add`` takes an array of latencies in seconds and a weight per sample."""

    def __init__(self, cap: float = 900.0):
        self.cap_ms = int(cap * 1000)
        self.counts = np.zeros(self.cap_ms + 1, dtype=np.int64)
        self.max = 0.0

    def add(self, seconds: np.ndarray, weight: int = 1) -> None:
        if not len(seconds):
            return
        self.max = max(self.max, float(seconds.max()))
        idx = np.clip((seconds * 1000.0).astype(np.int64), 0, self.cap_ms)
        np.add.at(self.counts, idx, weight)

    @property
    def n(self) -> int:
        return int(self.counts.sum())

    def quantile(self, q: float) -> float | None:
        total = self.counts.sum()
        if not total:
            return None
        cum = np.cumsum(self.counts)
        return float(np.searchsorted(cum, q * total) + 1) / 1000.0  # upper edge of the bin

    def summary(self) -> dict[str, Any]:
        return {
            "p50_s": self.quantile(0.5),
            "p99_s": self.quantile(0.99),
            "max_s": round(self.max, 4) if self.n else None,
            "samples": self.n,
        }


def quantiles_ms(samples: Iterable[float]) -> dict[str, float]:
    """p50/p90/p99/max in milliseconds of samples in seconds."""
    a = np.asarray(list(samples), dtype=float) * 1000.0
    return {
        "p50_ms": float(np.percentile(a, 50)),
        "p90_ms": float(np.percentile(a, 90)),
        "p99_ms": float(np.percentile(a, 99)),
        "max_ms": float(a.max()),
        "n": int(len(a)),
    }


class ProcessStats:
    """CPU seconds (process and per thread, by thread name) and RSS of this process, plus
    those of the service's child processes (:func:`children_of`)."""

    def __init__(self, children: dict[str, int | None] | None = None):
        self.proc = psutil.Process()
        self.children = {name: psutil.Process(pid) for name, pid in (children or {}).items()
                         if pid}
        self.t0 = time.perf_counter()
        self.cpu0 = self._cpu()
        self.children_cpu0 = {name: self._cpu(p) for name, p in self.children.items()}
        self.threads0 = self._threads()

    def _cpu(self, proc: psutil.Process | None = None) -> float:
        c = (proc or self.proc).cpu_times()
        return c.user + c.system

    def _threads(self) -> dict[str, float]:
        names = {t.native_id: t.name for t in threading.enumerate()}
        out: dict[str, float] = {}
        for t in self.proc.threads():
            name = names.get(t.id, "other")
            out[name] = out.get(name, 0.0) + t.user_time + t.system_time
        return out

    def rss_mb(self) -> float:
        """RSS of this process and the service's children together."""
        rss = self.proc.memory_info().rss
        for child in self.children.values():
            rss += child.memory_info().rss
        return rss / 2**20

    def report(self) -> dict[str, Any]:
        wall = time.perf_counter() - self.t0
        cpu = self._cpu() - self.cpu0
        now = self._threads()
        threads = {k: round(v - self.threads0.get(k, 0.0), 2) for k, v in now.items()}
        threads = {k: v for k, v in sorted(threads.items(), key=lambda kv: -kv[1]) if v > 0.05}
        out = {
            "wall_s": round(wall, 2),
            "cpu_s": round(cpu, 2),
            "cpu_percent_of_one_core": round(100 * cpu / wall, 1) if wall else None,
            "cpu_s_by_thread": threads,
            "rss_mb": round(self.rss_mb(), 1),
        }
        for name, child in self.children.items():
            child_cpu = self._cpu(child) - self.children_cpu0[name]
            out[f"{name}_process"] = {
                "cpu_s": round(child_cpu, 2),
                "cpu_percent_of_one_core": round(100 * child_cpu / wall, 1) if wall else None,
                "rss_mb": round(child.memory_info().rss / 2**20, 1),
            }
        return out


def children_of(service) -> dict[str, int | None]:
    """The pids of a running service's server and writer processes (None: on a thread)."""
    return {"server": getattr(service.server, "pid", None),
            "writer": getattr(service.writer, "pid", None)}


def disk_bytes(*paths: Path) -> int:
    """Bytes on disk (allocated blocks) of files and directory trees."""
    total = 0
    for p in paths:
        p = Path(p)
        if p.is_file():
            total += p.stat().st_blocks * 512
        elif p.is_dir():
            for f in p.rglob("*"):
                if f.is_file():
                    total += f.stat().st_blocks * 512
    return total


def sqlite_files(db: Path) -> list[Path]:
    """A SQLite file with its -wal and -shm companions, those that exist."""
    return [q for q in (db, Path(f"{db}-wal"), Path(f"{db}-shm")) if q.exists()]


def count_archived(tables_db: Path, attrs: list[str], since: float,
                   until: float = float("inf")) -> dict[str, int]:
    """Count what the archive holds, straight from its SQLite tables file.

    ``rows``: rows of every table that has the ``ts_<attr>`` columns, with an upstream time
    in ``[since, until]``; ``values``: distinct ``(stream, attribute, upstream time)``
    triples, i.e. the offered values that made it (a value written twice counts once).
    """
    for attempt in range(5):  # a writer still draining may be mid-transaction
        try:
            return _count_archived(tables_db, attrs, since, until)
        except sqlite3.DatabaseError:
            if attempt == 4:
                raise
            time.sleep(2.0)
    raise AssertionError("unreachable")


def _count_archived(tables_db: Path, attrs: list[str], since: float,
                    until: float) -> dict[str, int]:
    con = sqlite3.connect(f"file:{tables_db}?mode=ro", uri=True, timeout=60)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        rows = values = 0
        for table in tables:
            cols = {r[1] for r in con.execute(f'PRAGMA table_info("{table}")')}
            if not all(f"ts_{a}" in cols for a in attrs):
                continue
            rows += con.execute(
                f'SELECT count(*) FROM "{table}" WHERE "ts_{attrs[-1]}" BETWEEN ? AND ?',
                (since, until),
            ).fetchone()[0]
            for a in attrs:
                values += con.execute(
                    f'SELECT count(*) FROM (SELECT DISTINCT _dataset_id, "ts_{a}" FROM "{table}"'
                    f' WHERE "ts_{a}" BETWEEN ? AND ?)',
                    (since, until),
                ).fetchone()[0]
        return {"rows": rows, "values": values}
    finally:
        con.close()


def count_all_rows(tables_db: Path) -> int:
    """Rows of every table in a SQLite file (the naive pipeline: one table per signal)."""
    con = sqlite3.connect(f"file:{tables_db}?mode=ro", uri=True, timeout=60)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        total = 0
        for table in tables:
            cols = {r[1] for r in con.execute(f'PRAGMA table_info("{table}")')}
            if "seq_num" in cols:
                total += con.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
        return total
    finally:
        con.close()


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "mem_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "python": sys.version.split()[0],
    }

"""Archive write throughput of every backend, side by side in one run.

``python -m benchmarks.backends [--objects M] [--pages N] [--rows R] [--attrs K] [--rounds 2]``

Each backend gets a fresh archive and the same documents: one run, M object streams of K
scalar attributes (and, with ``--array``, one 120-value array attribute), then N flushes of one
event page of R rows per object — M x N appends — written through the backend's own sink (as
the service does, behind its queue): Tiled's HTTP write path for SQLite and PostgreSQL,
suitcase-mongo's ``insert_many`` for MongoDB. Rounds alternate the backends so a noisy machine
hurts them alike; the figure is the median round. One JSON line per backend on stdout, with
its ratio to SQLite (the default archive).

PostgreSQL: ``--postgres URI`` (a maintenance database; default the loopback server) — a
database ``warden_bench_<random>`` is made and dropped. MongoDB: mongomock always (in memory,
so no network and no disk: an optimistic figure), and a real server with ``--mongo URI`` or
``WARDEN_TEST_MONGO_URI``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

from event_model import compose_run

from catalog.backends import drop_mock, open_backend
from catalog.migrate import served
from catalog.uri import ArchiveURI

DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"


def documents(objects: int, pages: int, rows: int, attrs: int, array: bool):
    """(name, doc) of one run as the plan emits it, made before the clock starts."""
    bundle = compose_run(metadata={"day": "2001-11-06", "objects": [f"obj{i}" for i in
                                                                     range(objects)]})
    docs = [("start", bundle.start_doc)]
    keys = {f"a{k}": {"source": "bench", "dtype": "number", "shape": [], "dtype_numpy": "<f8"}
            for k in range(attrs)}
    if array:
        keys["bunches"] = {"source": "bench", "dtype": "array", "shape": [120],
                           "dtype_numpy": "<f8"}
    streams = []
    for i in range(objects):
        desc = bundle.compose_descriptor(name=f"obj{i}", data_keys=keys,
                                         object_keys={f"obj{i}": list(keys)})
        docs.append(("descriptor", desc.descriptor_doc))
        streams.append(desc)
    t0 = 1_004_999_000.0
    for p in range(pages):
        for i, desc in enumerate(streams):
            ts = [t0 + p + r / rows for r in range(rows)]
            data = {k: [float(i + p + r) for r in range(rows)] for k in keys if k != "bunches"}
            if array:
                data["bunches"] = [[float(b) for b in range(120)] for _ in range(rows)]
            docs.append(("event_page", desc.compose_event_page(
                data=data, timestamps={k: ts for k in keys},
                seq_num=list(range(p * rows + 1, p * rows + rows + 1)), time=ts)))
    docs.append(("stop", bundle.compose_stop()))
    return docs


async def _pg(admin: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextlib.contextmanager
def fresh(kind: str, tmp: Path, postgres: str, mongo: str | None):
    name = f"warden_bench_{secrets.token_hex(4)}"
    if kind == "sqlite":
        yield f"sqlite:///{tmp / name / 'archive.db'}"
    elif kind == "postgresql":
        asyncio.run(_pg(postgres, f'CREATE DATABASE "{name}"'))
        try:
            yield ArchiveURI.parse(postgres).with_database(name)
        finally:
            asyncio.run(_pg(postgres, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    elif kind == "mongomock":
        uri = f"mongomock://{name}/bench"
        try:
            yield uri
        finally:
            drop_mock(uri)
    else:
        import pymongo

        try:
            yield ArchiveURI.parse(mongo).with_database(name)
        finally:
            with pymongo.MongoClient(mongo) as client:
                client.drop_database(name)


def measure(kind: str, docs, tmp: Path, postgres: str, mongo: str | None) -> float:
    """Seconds to write ``docs`` through a fresh archive's sink (server start excluded)."""
    with fresh(kind, tmp, postgres, mongo) as uri:
        # arrays of one archive in a directory of its own: the rounds write the same run uid
        backend = open_backend(uri, data_dir=tmp / f"{kind}-{secrets.token_hex(4)}-arrays")
        try:
            with served(backend) as (url, key):
                sink = backend.sink(url, key)
                t0 = time.perf_counter()
                for name, doc in docs:
                    sink(name, doc)
                return time.perf_counter() - t0
        finally:
            backend.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.backends", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--objects", type=int, default=10)
    p.add_argument("--pages", type=int, default=10, help="flushes (event pages per object)")
    p.add_argument("--rows", type=int, default=50, help="rows per event page")
    p.add_argument("--attrs", type=int, default=4, help="scalar attributes per object")
    p.add_argument("--array", action="store_true", help="add a 120-value array attribute")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--postgres", default=os.environ.get("WARDEN_TEST_POSTGRES_URI",
                                                        DEFAULT_POSTGRES))
    p.add_argument("--mongo", default=os.environ.get("WARDEN_TEST_MONGO_URI"))
    args = p.parse_args(argv)

    kinds = ["sqlite", "postgresql", "mongomock"] + (["mongodb"] if args.mongo else [])
    docs = documents(args.objects, args.pages, args.rows, args.attrs, args.array)
    values = args.objects * args.pages * args.rows * (args.attrs + args.array)
    seconds: dict[str, list[float]] = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory(prefix="warden-bench-") as tmp:
        for r in range(args.rounds):
            for kind in kinds if r % 2 == 0 else reversed(kinds):
                seconds[kind].append(measure(kind, docs, Path(tmp), args.postgres, args.mongo))
                print(f"[bench] round {r + 1} {kind}: {seconds[kind][-1]:.2f} s",
                      file=sys.stderr, flush=True)
    reference = statistics.median(seconds["sqlite"])
    for kind in kinds:
        median = statistics.median(seconds[kind])
        where = {"postgresql": ArchiveURI.parse(args.postgres).redacted(),
                 "mongodb": ArchiveURI.parse(args.mongo).redacted() if args.mongo else ""}
        print(json.dumps({
            "figure": "backend-write",
            "backend": kind,
            "server": where.get(kind, "in process"),
            "objects": args.objects, "pages": args.pages, "rows": args.rows,
            "attributes": args.attrs + args.array, "array": args.array,
            "appends": args.objects * args.pages,
            "values": values,
            "seconds": round(median, 3),
            "values_per_s": round(values / median),
            "ms_per_append": round(1000 * median / (args.objects * args.pages), 2),
            "vs_sqlite": round(reference / median, 2),
            "rounds": [round(s, 3) for s in seconds[kind]],
        }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m benchmarks [NAME ...] [--quick]``: run figures, print one JSON line per figure.

Each figure runs in a child process of its own (a clean RSS, its own Channel Access
environment, no threads left over from another figure); its JSON lines are echoed here and
written to ``benchmarks/results/<YYYY-MM-DD>.json`` (``-quick.json`` for ``--quick``; figures
already in that file from another run of the same day are kept unless measured again at the
same size).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

FIGURES = ["ingest", "latest", "day", "retrieval", "memory", "storage", "ca", "shards"]
EXTRA = ["load"]  # by name only: the reliability load run (10 minutes at full size)
ALIASES = {"day-read": "day", "day_read": "day", "real-ca": "ca", "realca": "ca"}
RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("names", nargs="*", metavar="NAME",
                   help=f"figures to run (default all): {', '.join(FIGURES)}")
    p.add_argument("--quick", action="store_true", help="small sizes, seconds each (< 2 min)")
    p.add_argument("--results-dir", type=Path, default=RESULTS)
    p.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")],
                   help="ingest: comma-separated N (default 100,1000,10000; quick 100)")
    p.add_argument("--duration", type=float, help="ingest: warden seconds per N")
    p.add_argument("--naive-duration", type=float, help="ingest: naive pipeline seconds per N")
    p.add_argument("--values", type=int, help="memory/storage: values to archive")
    p.add_argument("--objects", type=int, help="latest: objects configured (default 1000)")
    p.add_argument("--rows", type=int, help="day, retrieval: rows in the day (default 864000)")
    p.add_argument("--ca-objects", type=int, help="ca: synthetic IOC objects")
    p.add_argument("--ca-duration", type=float, help="ca: seconds per side")
    p.add_argument("--shard-sizes", type=lambda s: [int(x) for x in s.split(",")],
                   help="shards: comma-separated N (default 1000,10000; quick 50)")
    p.add_argument("--shard-duration", type=float, help="shards: window seconds per side")
    p.add_argument("--midnight-lead", type=float,
                   help="shards: clock seconds from the window's start to midnight")
    p.add_argument("--load-duration", type=float, help="load: seconds of ingest under clients")
    p.add_argument("--load-objects", type=int, help="load: objects (default 1000; quick 100)")
    p.add_argument("--load-rate", type=float,
                   help="load: values/s offered in all (default 20000; quick 5000)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--no-storage", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    names = [ALIASES.get(n, n) for n in args.names] or list(FIGURES)
    for n in names:
        if n not in FIGURES + EXTRA:
            p.error(f"unknown figure {n!r} (known: {', '.join(FIGURES + EXTRA)})")
    if args.child:
        return _child(names[0], args)

    if "memory" in names and "storage" in names:
        names.remove("storage")  # the memory run measures the bytes on disk of its archive
        with_storage = True
    else:
        with_storage = False
    figures: list[dict] = []
    started = time.time()
    failed = []
    jobs: list[tuple[str, list[str]]] = []
    passed = _passthrough(sys.argv[1:] if argv is None else argv)
    for name in names:
        extra = ["--no-storage"] if name == "memory" and not with_storage else []
        if name == "ingest":  # one process per N: a backlog left by one never slows the next
            sizes = args.sizes or ([100] if args.quick else [100, 1_000, 10_000])
            base = [a for i, a in enumerate(passed)
                    if a != "--sizes" and (i == 0 or passed[i - 1] != "--sizes")]
            jobs += [(name, [*base, "--sizes", str(n)]) for n in sizes]
        else:
            jobs.append((name, [*passed, *extra]))
    # the full set runs one figure at a time; --quick (a check of shape and losses, not of
    # speed) runs the ingest and shards children beside the others to stay within two minutes
    beside = ("ingest", "shards")
    lanes = ([[j for j in jobs if j[0] in beside], [j for j in jobs if j[0] not in beside]]
             if args.quick else [jobs])
    lock = threading.Lock()

    def lane(lane_jobs):
        for name, options in lane_jobs:
            if not _run_child(name, options, figures, lock):
                failed.append(name)

    threads = [threading.Thread(target=lane, args=(jl,)) for jl in lanes if jl]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _write_results(args.results_dir, figures, args.quick, time.time() - started)
    return 1 if failed else 0


def _run_child(name: str, options: list[str], figures: list[dict], lock) -> bool:
    cmd = [sys.executable, "-m", "benchmarks", name, "--child", *options]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env,
                            cwd=Path(__file__).resolve().parent.parent)
    for line in proc.stdout:
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        doc["elapsed_s"] = round(time.time() - t0, 1)
        with lock:
            figures.append(doc)
            print(json.dumps(doc), flush=True)
    if proc.wait() != 0:
        print(f"benchmarks: {name} exited with {proc.returncode}", file=sys.stderr)
        return False
    return True


def _passthrough(argv: list[str]) -> list[str]:
    """The options of this command line, without the figure names."""
    out, skip = [], False
    takes_value = {"--results-dir", "--sizes", "--duration", "--naive-duration", "--values",
                   "--objects", "--rows", "--ca-objects", "--ca-duration", "--load-duration",
                   "--load-objects", "--load-rate", "--shard-sizes", "--shard-duration",
                   "--midnight-lead"}
    for a in argv:
        if skip:
            out.append(a)
            skip = False
        elif a.startswith("--"):
            out.append(a)
            skip = a in takes_value
    return out


def _child(name: str, args) -> int:
    if name == "ca":  # Channel Access needs its environment before anything imports ophyd
        from .realca import figure_ca

        figure_ca(args.quick, objects=args.ca_objects, duration=args.ca_duration)
        return 0
    if name == "ingest":
        from .ingest import figure_ingest

        figure_ingest(args.quick, sizes=args.sizes, duration=args.duration,
                      naive_duration=args.naive_duration)
    elif name == "memory":
        from .ingest import figure_memory

        figure_memory(args.quick, values=args.values,
                      with_storage=not args.no_storage)
    elif name == "storage":
        from .ingest import figure_storage

        figure_storage(args.quick, values=args.values)
    elif name == "latest":
        from .latest import figure_latest

        figure_latest(args.quick, objects=args.objects)
    elif name == "load":
        from .load import figure_load

        figure_load(args.quick, objects=args.load_objects, duration=args.load_duration,
                    rate=args.load_rate)
    elif name == "retrieval":
        from .retrieval import figure_retrieval

        figure_retrieval(args.quick, rows=args.rows)
    elif name == "shards":
        from .shards import figure_shards

        figure_shards(args.quick, sizes=args.shard_sizes, duration=args.shard_duration,
                      lead=args.midnight_lead)
    elif name == "day":
        from .dayread import figure_day

        figure_day(args.quick, rows=args.rows)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # daemon threads (a writer still draining, a server) must not hold us


def _which(figure: dict) -> tuple:
    """A figure and its size (``ingest --sizes 10000`` replaces N = 10,000 only)."""
    return tuple(figure.get(k) for k in ("figure", "N", "objects", "ingest_load_values_per_s"))


def _write_results(directory: Path, figures: list[dict], quick: bool, wall: float) -> Path:
    from .common import machine

    directory.mkdir(parents=True, exist_ok=True)
    # a --quick run never replaces the figures of a full run of the same day
    path = directory / f"{dt.date.today().isoformat()}{'-quick' if quick else ''}.json"
    old: list[dict] = []
    if path.exists():
        try:
            old = json.loads(path.read_text()).get("figures", [])
        except ValueError:
            old = []
    measured = {_which(f) for f in figures}
    kept = [f for f in old if _which(f) not in measured]
    doc = {
        "written": dt.datetime.now().isoformat(timespec="seconds"),
        "quick": quick,
        "wall_s": round(wall, 1),
        "machine": machine(),
        "figures": kept + figures,
    }
    path.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"benchmarks: results in {path}", file=sys.stderr)
    return path


if __name__ == "__main__":
    sys.exit(main())

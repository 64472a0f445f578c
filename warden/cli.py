"""The ``warden`` command line.

Exit codes: 0 success, 1 a runtime failure (server unreachable, ...), 2 bad input (a bad
config file, an unknown object, a malformed date, a bad argument, a wrong API key, a file
that exists), always with one line naming what was wrong, never a traceback; 130 when
interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

DEFAULT_SERVER = "http://127.0.0.1:8000"


class UsageError(ValueError):
    """A command asked to do what it must not (overwrite a file without ``--force``, ...)."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    from catalog.query import ApiKeyError, QueryError
    from catalog.uri import ArchiveURIError

    from .config import ConfigError

    try:
        return args.func(args) or 0
    except ApiKeyError as err:
        hint = "check" if os.environ.get("WARDEN_API_KEY") else "set"
        print(f"warden {args.command}: {err}; {hint} WARDEN_API_KEY", file=sys.stderr)
        return 2
    except (ConfigError, QueryError, UsageError, ArchiveURIError) as err:
        print(f"warden {args.command}: {err}", file=sys.stderr)
        return 2
    except ConnectionError as err:
        print(f"warden {args.command}: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"warden {args.command}: interrupted", file=sys.stderr)
        return 130


# -- commands ---------------------------------------------------------------------------------
def cmd_check_config(args) -> int:
    from .config import load_config

    print(f"{args.file}: OK: {load_config(args.file).summary()}")
    return 0


def cmd_sim_ioc(args) -> int:
    from warden_devices.ioc import all_pvnames, make_ioc, serve

    ioc = make_ioc(args.update_period, args.extra, args.extra_attrs, args.fill_length, args.prefix)
    if args.list_pvs:
        print("\n".join(all_pvnames(ioc)))
        return 0
    interfaces = tuple(args.interface or ["127.0.0.1"])
    print(
        f"warden sim-ioc: serving {len(all_pvnames(ioc))} PVs on "
        f"{','.join(interfaces)} port {args.port}",
        flush=True,
    )
    serve(ioc, port=args.port, interfaces=interfaces)
    return 0


def cmd_run(args) -> int:
    from .config import load_config
    from .service import WardenService

    config = load_config(args.config)
    if args.shard is not None or config.shards > 1:  # scale-out: warden.shards
        return _run_sharded(args, config)
    service = WardenService(config, public=args.public, port=args.port)
    url = service.start()
    _run_until_signalled(service, f"warden: serving {len(config.objects)} objects at {url} "
                                  f"({'public reads' if args.public else 'API key required'})")
    return 0


# -- scale-out (warden.shards) -------------------------------------------------------------
def _run_sharded(args, config) -> int:
    from .config import ConfigError
    from .shards import LocalShards, Shard, parse_shard

    if args.shard is None:
        deployment = LocalShards(config, args.config, public=args.public, port=args.port)
        url = deployment.start()
        _run_until_signalled(deployment, (
            f"warden: serving {len(config.objects)} objects in {config.shards} shards at "
            f"{url} ({'public reads' if args.public else 'API key required'})"))
        return 0
    try:
        i, k = parse_shard(args.shard)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if k != config.shards:
        raise ConfigError(f"--shard: the config has shards: {config.shards}, not {k}")
    shard = Shard(config, i)
    shard.start()
    _run_until_signalled(shard, f"warden: shard {i}/{k} watching "
                                f"{len(shard.service.config.objects)} objects, publishing to "
                                f"{config.nats.url}")
    return 0


def cmd_archive(args) -> int:
    from .config import load_config
    from .shards import ArchiveHost

    config = load_config(args.config)
    host = ArchiveHost(config, public=args.public, port=args.port, serve_only=args.serve_only)
    url = host.start()
    role = "serving" if args.serve_only else "serving and writing"
    _run_until_signalled(host, f"warden: {role} the archive of {config.shards} shards at {url}")
    return 0
# -- end scale-out ------------------------------------------------------------------------


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(args.data_dir, args.port, args.duration, args.update_period)


def cmd_latest(args) -> int:
    entry = _archive(args).latest(args.object)
    if args.format == "json":
        print(json.dumps(entry, indent=2))
        return 0
    state = "connected" if entry["connected"] else "DISCONNECTED"
    print(f"{entry['object']}  {state}  {_when(entry['time'])}")
    for attr, item in entry["attributes"].items():
        print(f"  {attr:<20} {_short(item['value']):<40} {_when(item['timestamp'])}")
    return 0


def cmd_day(args) -> int:
    df = _archive(args).day(args.object, args.date, bin=args.bin, agg=args.agg)
    if args.format == "csv":
        _flat_arrays(df).to_csv(sys.stdout, index=False)
    elif args.format == "json":
        print(df.to_json(orient="records", date_format="iso"))
    elif not len(df):
        print(f"no readings of {args.object} on {args.date}")
    else:
        print(_table(df))
        print(f"{len(df)} rows; --format csv or json for every value")
    return 0


def _table(df, edge: int = 20) -> str:
    """The first and last ``edge`` rows (all of a short day), every attribute shown."""
    import pandas as pd

    if len(df) <= 3 * edge:
        return _summarised(df).to_string(index=False)
    lines = _summarised(pd.concat([df.head(edge), df.tail(edge)])).to_string(index=False)
    lines = lines.splitlines()
    return "\n".join([*lines[: edge + 1], "...", *lines[edge + 1 :]])


def _summarised(df):
    """The day's table for a terminal: local times, an array as ``[120] mean 3.2``."""
    out = df.copy()
    out["time"] = df["time"].dt.strftime("%H:%M:%S.%f").str[:-3]
    for col in _array_columns(df):
        out[col] = [_array_summary(v) for v in df[col]]
    return out


def _array_summary(value) -> str:
    import numpy as np

    if value is None or (np.ndim(value) == 0 and value != value):  # missing
        return "-"
    a = np.asarray(value, dtype=float).ravel()
    finite = a[np.isfinite(a)]
    return f"[{a.size}] mean {finite.mean():.4g}" if finite.size else f"[{a.size}]"


def _flat_arrays(df):
    """One column per array element, ``bunchIntensity[0]`` ... (a shorter row's extra
    elements empty)."""
    import numpy as np
    import pandas as pd

    arrays = _array_columns(df)
    if not arrays:
        return df
    parts = []
    for col in df.columns:
        if col not in arrays:
            parts.append(df[[col]])
            continue
        rows = [np.ravel(v) if v is not None else np.empty(0) for v in df[col]]
        width = max((len(r) for r in rows), default=0)
        if all(len(r) == width for r in rows):
            block = np.stack(rows) if rows else np.empty((0, width))
        else:
            block = np.full((len(rows), width), np.nan)
            for i, r in enumerate(rows):
                block[i, : len(r)] = r
        parts.append(pd.DataFrame(block, columns=[f"{col}[{j}]" for j in range(width)],
                                  index=df.index))
    return pd.concat(parts, axis=1)


def _array_columns(df) -> list[str]:
    import numpy as np

    return [c for c in df.columns if df[c].dtype == object
            and any(isinstance(v, np.ndarray | list | tuple) for v in df[c].head(50))]


def cmd_export_ascii(args) -> int:
    from catalog.ascii import day_file_name, export_day
    from catalog.query import parse_day

    parse_day(args.date)
    out = None
    if args.output != "-":
        out = Path(args.output or _with_object(day_file_name(args.prefix, args.date), args.object))
        _refuse_to_overwrite(out, args.force)
    archive = _archive(args)
    if args.object is not None:  # a stream of that day may be an object no longer configured
        if args.object not in archive.objects() + archive.streams(args.date):
            from catalog.query import UnknownObjectError

            raise UnknownObjectError(f"unknown object {args.object!r}")
    text = export_day(archive, args.date, object=args.object, zone=archive.zone)
    if out is None:
        sys.stdout.write(text)
    else:
        _write_new(out, text, args.force)
        print(f"{out}: {text.count(chr(10))} lines")
    return 0


def _with_object(name: str, obj: str | None) -> str:
    """``rhicdata.Nov062001.dat`` -> ``rhicdata.Nov062001.yi2-wcm3.dat`` for one object."""
    if obj is None:
        return name
    stem, ext = name.rsplit(".", 1)
    return f"{stem}.{obj}.{ext}"


def _refuse_to_overwrite(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise UsageError(f"{path} exists; --force to overwrite it")
    if not path.parent.is_dir():
        raise UsageError(f"{path.parent}: no such directory")


def _write_new(path: Path, text: str, force: bool) -> None:
    """Write ``text`` to ``path`` whole or not at all; never replace a file unless ``force``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    tmp.write_text(text, encoding="utf-8")
    try:
        if force:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails if path exists (appeared since the check)
            except FileExistsError:
                raise UsageError(f"{path} exists; --force to overwrite it") from None
    finally:
        tmp.unlink(missing_ok=True)


def cmd_plot(args) -> int:
    from catalog.plot import disconnected_intervals, not_recording_intervals, render_day_png
    from catalog.query import parse_day

    archive = _archive(args)
    path = render_day_png(archive, args.object, args.date, args.attrs or None,
                          args.output, args.width, args.height)
    print(f"{path}: {args.width}x{args.height} PNG of {args.object} on {args.date}")
    day = parse_day(args.date)
    gaps = [("not recording", g) for g in not_recording_intervals(archive, day)]
    gaps += [("disconnected", g) for g in disconnected_intervals(archive, args.object, day)]
    for what, (t0, t1) in sorted(gaps, key=lambda g: g[1][0]):
        print(f"  {what:<14} {t0:%H:%M:%S} to {t1:%H:%M:%S}")
    return 0


def cmd_migrate(args) -> int:
    from catalog.migrate import migrate

    summary = migrate(args.src, args.dst, day=args.day, src_data_dir=args.src_data_dir,
                      dst_data_dir=args.dst_data_dir, progress=lambda line: print(line, flush=True))
    print("\n".join(summary.lines()))
    return 0


def cmd_objects(args) -> int:
    print("\n".join(_archive(args).objects()))
    return 0


def cmd_days(args) -> int:
    print("\n".join(_archive(args).days()))
    return 0


def cmd_status(args) -> int:
    archive = _archive(args)
    now = time.time()
    print(f"{'object':<16} {'state':<13} {'rows':>7} {'rows/min':>9} {'last update':>12} "
          f"{'archive lag':>12}")
    for name in archive.objects():
        e = archive.latest(name)
        state = "connected" if e["connected"] else "DISCONNECTED"
        age = f"{now - e['time']:.1f} s ago" if e["time"] else "never"
        rate = "-"
        if e["since"] and e["time"] and e["time"] > e["since"]:
            rate = f"{60 * (e['rows'] - 1) / (e['time'] - e['since']):.1f}"
        lag = "-"
        if e["time"] and e.get("archived_time"):
            lag = f"{max(0.0, e['time'] - e['archived_time']):.1f} s"
        print(f"{name:<16} {state:<13} {e['rows']:>7} {rate:>9} {age:>12} {lag:>12}")
    r = _control(args, "GET")
    if r.status_code == 200 and r.json():
        print()
        _print_plugins(r.json())
    return 0


def cmd_plugins(args) -> int:
    if args.action != "list" and not args.name:
        from catalog.query import QueryError

        raise QueryError(f"plugins {args.action}: name the plugin")
    path = "" if args.action == "list" else f"/{args.name}/{args.action}"
    r = _control(args, "GET" if args.action == "list" else "POST", path)
    if r.status_code in (401, 403):
        from catalog.query import ApiKeyError

        if os.environ.get("WARDEN_API_KEY"):
            raise ApiKeyError(f"the warden server at {args.server} refused the API key")
        raise ApiKeyError(f"the warden server at {args.server} requires an API key")
    if r.status_code >= 400:
        try:
            detail = r.json().get("detail", r.text)
        except ValueError:
            detail = r.reason_phrase
        print(f"warden plugins: {r.status_code} {detail}", file=sys.stderr)
        return 2
    _print_plugins(r.json() if isinstance(r.json(), list) else [r.json()])
    return 0


def _control(args, method: str, path: str = ""):
    """A request to the service's control API (``/api/v1/warden/plugins``)."""
    import httpx

    key = os.environ.get("WARDEN_API_KEY")
    headers = {"Authorization": f"Apikey {key}"} if key else {}
    url = f"{args.server.rstrip('/')}/api/v1/warden/plugins{path}"
    try:
        return httpx.request(method, url, headers=headers, timeout=10.0)
    except httpx.TransportError as err:
        raise ConnectionError(f"cannot reach the warden server at {args.server}: {err}") from None


def _print_plugins(rows: list[dict]) -> None:
    print(f"{'plugin':<16} {'state':<9} {'interval':>8} {'runs':>6} {'errors':>6} "
          f"{'overruns':>8}  last error")
    for p in rows:
        print(f"{p['name']:<16} {p['state']:<9} {p['interval']:>8} {p['runs']:>6} "
              f"{p['errors']:>6} {p['overruns']:>8}  {p['last_error']}")


# -- helpers ----------------------------------------------------------------------------------
def _archive(args):
    import httpx

    from catalog.query import Archive

    try:
        return Archive.from_uri(args.server, api_key=os.environ.get("WARDEN_API_KEY"))
    except httpx.TransportError as err:
        raise ConnectionError(f"cannot reach the warden server at {args.server}: {err}") from None


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def _short(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:36] + " ..."


def _run_until_signalled(service, ready: str, duration: float | None = None,
                         on_abort: Callable[[], object] | None = None) -> None:
    """Print ``ready``, then run the service in this thread until SIGINT or SIGTERM (or
    ``duration`` seconds).

    The first signal closes the day's run and writes what is queued. A second one ends the
    process at once (exit code 130), after ``on_abort``: the server and writer processes end
    when they find the service gone, and the spool keeps what was not written for the next
    start.
    """
    def stop_now(signum, frame):
        print("warden: stopped at once; the spool keeps what was not written",
              file=sys.stderr, flush=True)
        if on_abort is not None:
            on_abort()
        sys.stdout.flush()
        os._exit(130)

    def stop(signum, frame):
        print("warden: stopping; again to stop at once", file=sys.stderr, flush=True)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, stop_now)
        service.stop()

    from .processes import tune_gc

    tune_gc()
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    print(ready, flush=True)  # once a signal stops the service cleanly
    timer = threading.Timer(duration, service.stop) if duration is not None else None
    if timer is not None:
        timer.daemon = True
        timer.start()
    try:
        service.run()
    finally:
        if timer is not None:
            timer.cancel()
        try:
            service.close()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="warden",
        description="Beamline Warden: monitor, archive "
        "and serve accelerator control-system values.",
    )
    sub = p.add_subparsers(dest="command")

    c = sub.add_parser("check-config", help="validate a config file")
    c.add_argument("file")
    c.set_defaults(func=cmd_check_config)

    c = sub.add_parser("sim-ioc", help="run the simulated RHIC upstream (Channel Access)")
    c.add_argument("--port", type=int, default=5064, help="CA server port (default 5064)")
    c.add_argument(
        "--interface",
        action="append",
        default=None,
        help="address to serve on (default 127.0.0.1; repeatable)",
    )
    c.add_argument(
        "--update-period",
        type=_positive,
        default=4.0,
        help="seconds between model updates (default 4)",
    )
    c.add_argument(
        "--fill-length",
        type=_positive,
        default=1200.0,
        help="seconds from one injection to the next (default 1200)",
    )
    c.add_argument("--prefix", default="", help="put before every PV name (default none)")
    c.add_argument("--extra", type=int, default=0, help="synthetic objects syn00000: ...")
    c.add_argument("--extra-attrs", type=int, default=4, help="attributes per synthetic object")
    c.add_argument("--list-pvs", action="store_true", help="print the PV names and exit")
    c.set_defaults(func=cmd_sim_ioc)

    c = sub.add_parser("run", help="run the service on a config file")
    c.add_argument("config")
    c.add_argument("--public", action="store_true", help="let clients read without the key")
    c.add_argument("--port", type=int, default=None, help="override serve.port")
    c.add_argument("--shard", default=None, metavar="i/K",
                   help="run shard i of K only (config: shards, nats)")
    c.set_defaults(func=cmd_run)

    c = sub.add_parser("archive", help="serve the shards' archive and latest; write the archive")
    c.add_argument("config")
    c.add_argument("--public", action="store_true", help="let clients read without the key")
    c.add_argument("--port", type=int, default=None, help="override serve.port")
    c.add_argument("--serve-only", action="store_true",
                   help="a Tiled server replica: serve, do not write")
    c.set_defaults(func=cmd_archive)

    c = sub.add_parser("demo", help="simulated IOC + service + Tiled server, in one command")
    c.add_argument("--data-dir", default="warden-data")
    c.add_argument("--port", type=int, default=8000)
    c.add_argument("--duration", type=_positive, default=None, help="stop after S seconds")
    c.add_argument(
        "--update-period",
        type=_positive,
        default=2.0,
        help="seconds between simulated beam updates (default 2)",
    )
    c.set_defaults(func=cmd_demo)

    c = sub.add_parser("migrate", help="copy archived runs from one archive to another")
    c.add_argument("src", metavar="SRC_URI")
    c.add_argument("dst", metavar="DST_URI")
    c.add_argument("--day", default=None, help="YYYY-MM-DD (default: every day)")
    c.add_argument("--src-data-dir", default=None, help="arrays folder of a postgresql source")
    c.add_argument("--dst-data-dir", default=None, help="arrays folder of a postgresql target")
    c.set_defaults(func=cmd_migrate)

    c = sub.add_parser("plot", help="render a day's time series to a PNG")
    c.add_argument("object")
    c.add_argument("date", help="YYYY-MM-DD")
    c.add_argument("attrs", nargs="*", help="attributes (default: every scalar attribute)")
    c.add_argument("-o", "--output", required=True, help="the PNG file to write")
    c.add_argument("--width", type=int, default=1200, help="pixels (default 1200)")
    c.add_argument("--height", type=int, default=700, help="pixels (default 700)")
    c.add_argument("--server", default=DEFAULT_SERVER, help=f"default {DEFAULT_SERVER}")
    c.set_defaults(func=cmd_plot)

    c = sub.add_parser("export-ascii", help="regenerate a day's RHIC-style ASCII file")
    c.add_argument("date", help="YYYY-MM-DD")
    c.add_argument("--object", default=None, help="only this object's lines")
    c.add_argument("--prefix", default="rhicdata", help="file name prefix (default rhicdata)")
    c.add_argument("-o", "--output", default=None,
                   help="file to write (default <prefix>.<Mon><DD><YYYY>.dat, or "
                        "<prefix>.<Mon><DD><YYYY>.<object>.dat with --object; - for stdout)")
    c.add_argument("--force", action="store_true", help="overwrite the file if it exists")
    c.add_argument("--server", default=DEFAULT_SERVER, help=f"default {DEFAULT_SERVER}")
    c.set_defaults(func=cmd_export_ascii)

    c = sub.add_parser("plugins", help="list plugins, or start/stop one in the running service")
    c.add_argument("action", nargs="?", choices=["list", "start", "stop"], default="list")
    c.add_argument("name", nargs="?")
    c.add_argument("--server", default=DEFAULT_SERVER, help=f"default {DEFAULT_SERVER}")
    c.set_defaults(func=cmd_plugins)

    for name, func, helptext in (
        ("latest", cmd_latest, "newest reading of an object"),
        ("day", cmd_day, "an object's readings on one day"),
        ("objects", cmd_objects, "configured objects"),
        ("days", cmd_days, "archived days"),
        ("status", cmd_status, "per object: connected, rows, last update, archive lag"),
    ):
        c = sub.add_parser(name, help=helptext)
        if name in ("latest", "day"):
            c.add_argument("object")
        if name == "day":
            c.add_argument("date", help="YYYY-MM-DD")
            c.add_argument("--format", choices=["table", "csv", "json"], default="table")
            c.add_argument("--bin", type=_bin, default=None,
                           help="reduce into bins of this width (60, 60s, 5min, 1h)")
            from catalog.reduce import AGGREGATES

            c.add_argument("--agg", choices=AGGREGATES, default="mean",
                           help="what each bin holds (default mean)")
        if name == "latest":
            c.add_argument("--format", choices=["table", "json"], default="table")
        c.add_argument("--server", default=DEFAULT_SERVER, help=f"default {DEFAULT_SERVER}")
        c.set_defaults(func=func)
    return p


def _bin(text: str) -> str:
    from catalog.reduce import BinError, bin_seconds

    try:
        bin_seconds(text)
    except BinError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, not {text}")
    return value


if __name__ == "__main__":
    sys.exit(main())

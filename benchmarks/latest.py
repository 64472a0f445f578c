"""Latest: ``GET /api/v1/metadata/latest/<object>`` over real HTTP (httpx, keep-alive).

The real service with N ``generic`` sim objects (every one holding a reading) answers through
its own route (``catalog.latest.latest_route``, ahead of Tiled's middleware and routes); side by
side, interleaved request by request: the same request with an ``Origin`` header (which the
fast path leaves to Tiled's middleware stack: what the route costs in Tiled's router), ``GET
/healthz`` of the same server (the floor of Tiled's middleware stack), the same object through
Tiled's own metadata route on the same server (``?via=tiled``: a query parameter the plain
route leaves to Tiled, which ignores it; what ``latest`` cost before the plain route), and the
same entries as *static* metadata of a plain Tiled ``MapAdapter`` tree, served in the
benchmark's process (the service's server has its own) by a second app with the same
authentication (what a Tiled node costs when nothing is computed). Then every object's latest
at once, by paging ``/api/v1/search/latest`` (300 per page, Tiled's maximum), beside the same
on the static tree.
"""

from __future__ import annotations

import random
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from .common import API_KEY, emit, note, quantiles_ms
from .ingest import WardenRun, object_names

HEADERS = {"Authorization": f"Apikey {API_KEY}"}


def _static_server(entries: dict[str, dict]):
    from tiled.adapters.mapping import MapAdapter
    from tiled.config import Authentication
    from tiled.server.app import build_app

    from catalog.server import TiledServer

    tree = MapAdapter({"static": MapAdapter(
        {name: MapAdapter({}, metadata=md) for name, md in entries.items()},
        metadata={"description": "static copy of latest"},
    )})
    app = build_app(tree, authentication=Authentication(single_user_api_key=API_KEY,
                                                        allow_anonymous_access=False))
    server = TiledServer(app)
    server.start()
    return server


def _timed_get(client: httpx.Client, url: str, headers: dict | None = None) -> float:
    t0 = time.perf_counter()
    r = client.get(url, headers=headers)
    dt = time.perf_counter() - t0
    r.raise_for_status()
    return dt


def _check_same_body(client: httpx.Client, base: str, sbase: str, name: str,
                     idle: bool) -> None:
    """The plain route answers what Tiled's route answers for the node, else the figure would
    compare different work. Idle, the entry is also that of the static copy; under ingest the
    entry moves between requests, so only its keys are compared."""
    url = f"{base}/api/v1/metadata/latest/{name}"
    plain = client.get(url).json()
    stack = client.get(url, headers={"Origin": "http://127.0.0.1"}).json()
    tiled = client.get(f"{url}?via=tiled").json()
    static = client.get(f"{sbase}/api/v1/metadata/static/{name}").json()
    md = [d["data"]["attributes"].pop("metadata") for d in (plain, stack, tiled, static)]
    if not plain == stack == tiled:
        raise AssertionError(f"plain route {plain} / {stack} != Tiled's route {tiled}")
    if idle and not md[0] == md[1] == md[2] == {**md[3], "archived_time": md[0]["archived_time"]}:
        raise AssertionError(f"latest {md[:3]} != static {md[3]}")
    if not set(md[0]) == set(md[1]) == set(md[2]):
        raise AssertionError(f"latest {md[:3]} differ")


def _fetch_all(client: httpx.Client, base: str, node: str, n: int) -> tuple[float, int]:
    """Seconds to page through every child of ``node`` with its metadata; items received."""
    t0 = time.perf_counter()
    got = 0
    url: str | None = f"{base}/api/v1/search/{node}?page[offset]=0&page[limit]=300"
    while url:
        r = client.get(url)
        r.raise_for_status()
        body = r.json()
        got += len(body["data"])
        url = body["links"].get("next")
    return time.perf_counter() - t0, got


def _fill(service, m: int) -> None:
    """Give every object a reading and a connection, in the buffers the plan fills."""
    now = time.time()
    for i, buf in enumerate(service.buffers):
        service.connections.record(buf.name, True, now)
        for k in range(m):
            buf.add(f"a{k}", i + 0.001 * k, now)
    service.publisher.publish()  # (the server reads the copy of latest)


def measure(n: int, requests: int, m: int = 5, load: float | None = None) -> dict:
    """Idle: the service's server and latest store, filled as the plan would fill it, no plan
    running. Under ``load``: the plan running and our driver offering ``load`` values/s."""
    with tempfile.TemporaryDirectory(prefix=f"bench-latest-{n}-") as tmp:
        run = WardenRun(Path(tmp), n, m)
        run.start(plan=bool(load))
        names = object_names(n)
        loader = None
        if load:  # the real plan and writer at work while the server answers
            from .ingest import Driver

            loader = Driver(run.service.devices, m, load / (n * m), duration=3600)
            loader.start()
            time.sleep(15)
        else:
            _fill(run.service, m)
        assert all(run.service.latest.get(o)["rows"] >= 1 for o in names)
        entries = {o: run.service.latest.get(o) for o in names}
        static = _static_server(entries)
        base, sbase = run.url, static.url
        rng = random.Random(0)
        lat, stack, health, tiled, stat = [], [], [], [], []
        origin = {"Origin": "http://127.0.0.1"}
        with httpx.Client(headers=HEADERS, trust_env=False, timeout=30) as client:
            for _ in range(50):  # warm up connections and caches
                o = rng.choice(names)
                client.get(f"{base}/api/v1/metadata/latest/{o}")
                client.get(f"{base}/api/v1/metadata/latest/{o}", headers=origin)
                client.get(f"{base}/api/v1/metadata/latest/{o}?via=tiled")
                client.get(f"{sbase}/api/v1/metadata/static/{o}")
            _check_same_body(client, base, sbase, names[0], idle=not load)
            for _ in range(requests):
                o = rng.choice(names)
                lat.append(_timed_get(client, f"{base}/api/v1/metadata/latest/{o}"))
                stack.append(_timed_get(client, f"{base}/api/v1/metadata/latest/{o}", origin))
                health.append(_timed_get(client, f"{base}/healthz"))
                tiled.append(_timed_get(client, f"{base}/api/v1/metadata/latest/{o}?via=tiled"))
                stat.append(_timed_get(client, f"{sbase}/api/v1/metadata/static/{o}"))
            all_l, all_s, got = [], [], 0
            for _ in range(3):
                t, got = _fetch_all(client, base, "latest", n)
                all_l.append(t)
                all_s.append(_fetch_all(client, sbase, "static", n)[0])
        if loader is not None:
            loader.halt()
            loader.join()
        static.stop()
        drained = True  # idle: nothing was ever queued for the writer
        if run.plan is not None:
            drained = run.finish(drain_timeout=5).get("drained", False)
        run.close(drained)  # (the writer too, before its directory goes)
    out = {
        "objects": n,
        "ingest_load_values_per_s": load or 0,
        "latest": quantiles_ms(lat),
        "latest_route_behind_tiled_middleware": quantiles_ms(stack),
        "healthz_same_server": quantiles_ms(health),
        "tiled_route_same_node": quantiles_ms(tiled),
        "static_mapadapter_node": quantiles_ms(stat),
        "all_latest_s": round(statistics.median(all_l), 4),
        "all_static_s": round(statistics.median(all_s), 4),
        "all_latest_items": got,
    }
    out["ratios"] = {
        "latest_p99_vs_healthz_p99": round(out["latest"]["p99_ms"]
                                           / out["healthz_same_server"]["p99_ms"], 2),
        "latest_p99_vs_behind_middleware_p99": round(
            out["latest"]["p99_ms"] / out["latest_route_behind_tiled_middleware"]["p99_ms"], 2),
        "latest_p99_vs_tiled_route_p99": round(out["latest"]["p99_ms"]
                                               / out["tiled_route_same_node"]["p99_ms"], 2),
        "latest_p99_vs_static_p99": round(out["latest"]["p99_ms"]
                                          / out["static_mapadapter_node"]["p99_ms"], 2),
        "all_latest_vs_all_static": round(out["all_latest_s"] / out["all_static_s"], 2),
    }
    out["targets"] = {"latest_p99_le_5ms": out["latest"]["p99_ms"] <= 5.0}
    return out


def figure_latest(quick: bool, objects: int | None = None) -> list[dict]:
    cases = [(objects or 1_000, None)] if quick or objects else [
        (1_000, None), (10_000, None), (1_000, 5_000.0)]
    out = []
    for n, load in cases:
        note(f"latest: {n} objects" + (f", under {load:,.0f} values/s of ingest" if load else ""))
        out.append(emit("latest", quick=quick, **measure(n, 200 if quick else 2_000, load=load)))
    return out

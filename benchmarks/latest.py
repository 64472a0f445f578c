"""Latest: ``GET /api/v1/metadata/latest/<object>`` over real HTTP (httpx, keep-alive).

The real service with N ``generic`` sim objects (every one holding a reading) answers; side by
side, interleaved request by request: ``GET /healthz`` of the same server (the floor of its
HTTP stack) and the same entries as *static* metadata of a plain Tiled ``MapAdapter`` tree,
served in the same process by a second app with the same authentication (what a Tiled node
costs when nothing is computed). Then every object's latest at once, by paging
``/api/v1/search/latest`` (300 per page, Tiled's maximum), beside the same on the static tree.
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


def _timed_get(client: httpx.Client, url: str) -> float:
    t0 = time.perf_counter()
    r = client.get(url)
    dt = time.perf_counter() - t0
    r.raise_for_status()
    return dt


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


def _fill(store, names: list[str], m: int) -> None:
    """Give every object a reading, with the documents the RunEngine would send."""
    now = time.time()
    store("start", {"uid": "bench", "objects": names})
    store("descriptor", {"uid": "d-connection", "name": "connection"})
    store("event_page", {"descriptor": "d-connection", "seq_num": [1] * len(names),
                         "data": {"object": names, "connected": [True] * len(names)},
                         "timestamps": {"object": [now] * len(names),
                                        "connected": [now] * len(names)}})
    for i, o in enumerate(names):
        store("descriptor", {"uid": f"d-{o}", "name": o})
        store("event_page", {"descriptor": f"d-{o}", "seq_num": [1],
                             "data": {f"a{k}": [i + 0.001 * k] for k in range(m)},
                             "timestamps": {f"a{k}": [now] for k in range(m)}})


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
            _fill(run.service.latest, names, m)
        assert all(run.service.latest.get(o)["rows"] >= 1 for o in names)
        entries = {o: run.service.latest.get(o) for o in names}
        static = _static_server(entries)
        base, sbase = run.url, static.url
        rng = random.Random(0)
        lat, health, stat = [], [], []
        with httpx.Client(headers=HEADERS, trust_env=False, timeout=30) as client:
            for _ in range(50):  # warm up connections and caches
                o = rng.choice(names)
                client.get(f"{base}/api/v1/metadata/latest/{o}")
                client.get(f"{sbase}/api/v1/metadata/static/{o}")
            for _ in range(requests):
                o = rng.choice(names)
                lat.append(_timed_get(client, f"{base}/api/v1/metadata/latest/{o}"))
                health.append(_timed_get(client, f"{base}/healthz"))
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
        if run.plan is not None:
            run.finish(drain_timeout=5)
        run.close(False)
    out = {
        "objects": n,
        "ingest_load_values_per_s": load or 0,
        "latest": quantiles_ms(lat),
        "healthz_same_server": quantiles_ms(health),
        "static_mapadapter_node": quantiles_ms(stat),
        "all_latest_s": round(statistics.median(all_l), 4),
        "all_static_s": round(statistics.median(all_s), 4),
        "all_latest_items": got,
    }
    out["ratios"] = {
        "latest_p99_vs_healthz_p99": round(out["latest"]["p99_ms"]
                                           / out["healthz_same_server"]["p99_ms"], 2),
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

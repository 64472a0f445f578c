"""Retrieval: one object's full day (10 Hz, 864,000 rows, 5 attributes) through the Archiver
Appliance API (:mod:`catalog.retrieval`) of the service's server process, beside
``catalog.query.Archive.day`` of the same day from the same server, in the same run.

* ``getData.json`` of one attribute (the PV ``yi2-wcm3:a0``): the request and ``orjson``
  parsing the answer, as a client does; ``getData.raw`` (PB/HTTP): the request only;
* ``mean_60(yi2-wcm3:a0)``: the day in 1,440 bins, computed in the server, parsed;
* ``Archive.day`` (all 5 attributes, the Tiled client) and ``Archive.day(bin="60s")``.

Then the run is compacted into Parquet (:mod:`catalog.compact`, as every closed day is kept)
and ``getData.json`` and ``mean_60`` are timed again on the closed day.

The day is written as in :mod:`benchmarks.dayread` (its ``_write_day``).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import orjson

from .common import API_KEY, emit, note
from .dayread import DAY, OBJECT, _write_day


def _timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def figure_retrieval(quick: bool, rows: int | None = None, m: int = 5) -> list[dict]:
    from tiled.client import from_uri

    from catalog.latest import LatestPublisher, LatestStore
    from catalog.query import Archive
    from catalog.server import TiledServer, sql_catalog, warden_app
    from warden.server_process import ServerProcess, ServerSpec

    rows = rows or (43_200 if quick else 864_000)
    repeats = 3 if quick else 5
    with tempfile.TemporaryDirectory(prefix="bench-retrieval-") as tmp:
        tmp = Path(tmp)
        uri = f"sqlite:///{tmp / 'archive.db'}"
        server = TiledServer(warden_app(sql_catalog(uri), LatestStore([OBJECT]), "UTC", API_KEY))
        url = server.start()
        note(f"retrieval: writing {rows:,} rows x {m} attributes through TiledRunSink")
        _write_day(from_uri(url, api_key=API_KEY)["archive"], rows, m, 10_000)
        publisher = LatestPublisher(LatestStore([OBJECT]), tmp / "latest.db")
        process = ServerProcess(ServerSpec(
            archive=uri, data_dir=None, latest_file=str(tmp / "latest.db"), objects=[OBJECT],
            zone="UTC", api_key=API_KEY, public=False, host="127.0.0.1", port=0, log_dir=None,
        ), runner=None)
        base = process.start()
        archive = Archive.from_uri(base, api_key=API_KEY, zone=ZoneInfo("UTC"))
        client = httpx.Client(base_url=f"{base}/retrieval/data", timeout=120, trust_env=False,
                              headers={"Authorization": f"Apikey {API_KEY}",
                                       "accept-encoding": "identity"})
        span = {"from": f"{DAY}T00:00:00Z", "to": f"{DAY}T23:59:59.999Z"}
        pv = f"{OBJECT}:a0"

        def get(path: str, pv: str, parse: bool = True):
            r = client.get(path, params={"pv": pv, **span})
            r.raise_for_status()
            return orjson.loads(r.content) if parse else r.content

        times: dict[str, list[float]] = {k: [] for k in (
            "archive_day", "getdata_json", "getdata_raw", "mean_60", "archive_day_bin_60s")}
        counts: dict[str, int] = {}
        for _ in range(repeats):  # interleaved, side by side
            s, df = _timed(lambda: archive.day(OBJECT, DAY))
            times["archive_day"].append(s)
            counts["archive_day"] = len(df)
            s, body = _timed(lambda: get("/getData.json", pv))
            times["getdata_json"].append(s)
            counts["getdata_json"] = len(body[0]["data"])
            s, raw = _timed(lambda: get("/getData.raw", pv, parse=False))
            times["getdata_raw"].append(s)
            counts["getdata_raw_bytes"] = len(raw)
            s, body = _timed(lambda: get("/getData.json", f"mean_60({pv})"))
            times["mean_60"].append(s)
            counts["mean_60"] = len(body[0]["data"])
            s, df = _timed(lambda: archive.day(OBJECT, DAY, bin="60s", agg="mean"))
            times["archive_day_bin_60s"].append(s)
            counts["archive_day_bin_60s"] = len(df)
        closed = _closed_day(tmp, repeats, get, pv)
        client.close()
        process.stop()
        publisher.stop()
        server.stop()
    med = {k: round(statistics.median(v), 3) for k, v in times.items()}
    return [emit(
        "retrieval", quick=quick, rows=rows, attributes=m, counts=counts,
        seconds={k: {"median": med[k], "all": [round(x, 3) for x in v]}
                 for k, v in times.items()},
        closed_day_parquet=closed,
        ratios={"getdata_json_vs_archive_day": round(med["getdata_json"] / med["archive_day"], 2)},
        targets={"getdata_json_le_2x_archive_day": med["getdata_json"] <= 2 * med["archive_day"],
                 "mean_60_le_0.3s": med["mean_60"] <= 0.3,
                 "applies": rows >= 864_000},
    )]


def _closed_day(tmp: Path, repeats: int, get, pv: str) -> dict:
    from catalog.compact import Compactor

    Compactor(tmp / "archive.db", grace=0).run()
    json_s, mean_s = [], []
    for _ in range(repeats):
        s, body = _timed(lambda: get("/getData.json", pv))
        json_s.append(s)
        rows = len(body[0]["data"])
        s, body = _timed(lambda: get("/getData.json", f"mean_60({pv})"))
        mean_s.append(s)
        bins = len(body[0]["data"])
    return {"getdata_json_s": round(statistics.median(json_s), 3), "rows": rows,
            "mean_60_s": round(statistics.median(mean_s), 3), "bins": bins}

"""Day read: one object's full day (10 Hz, 864,000 rows, 5 attributes) through
``catalog.query.Archive.day`` (Tiled Python client over HTTP) from the service's server process
(as ``warden run`` serves it), beside reading the same rows straight from the SQLite tables file
(``sqlite3``, and ADBC into Arrow): the ceiling. Also from a server on a thread of the client's
own process (what this figure measured until 2026-12-02: the two share one interpreter lock).
Then the same day once its closed run is compacted into Parquet (:mod:`catalog.compact`), as
every day before today is kept, beside pyarrow reading the file.

The day is written fast, directly through :class:`catalog.writer.TiledRunSink`: a start
document with ``day``, one descriptor, event pages of 10,000 rows, a stop.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np

from .common import API_KEY, emit, note

DAY = "2001-11-06"
OBJECT = "yi2-wcm3"


def _write_day(root, rows: int, m: int, page: int) -> float:
    from event_model import compose_run

    from catalog.writer import TiledRunSink

    zone = ZoneInfo("UTC")
    t0 = dt.datetime.fromisoformat(DAY).replace(tzinfo=zone).timestamp()
    sink = TiledRunSink(root)
    bundle = compose_run(time=t0, metadata={"plan_name": "monitor_day", "day": DAY,
                                            "objects": [OBJECT], "timezone": "UTC"})
    sink("start", bundle.start_doc)
    keys = {f"a{k}": {"source": f"PV:{OBJECT}:a{k}", "dtype": "number", "shape": [],
                      "dtype_numpy": "<f8"} for k in range(m)}
    desc = bundle.compose_descriptor(name=OBJECT, data_keys=keys)
    sink("descriptor", desc.descriptor_doc)
    rng = np.random.default_rng(0)
    step = 86_400 / rows
    start = time.perf_counter()
    for first in range(0, rows, page):
        k = min(page, rows - first)
        ts = (t0 + step * np.arange(first, first + k)).tolist()
        data = {a: rng.normal(16.0, 0.1, k).tolist() for a in keys}
        doc = desc.compose_event_page(data=data, timestamps={a: ts for a in keys},
                                      seq_num=list(range(first + 1, first + k + 1)),
                                      time=ts, validate=False)
        sink("event_page", doc)
    sink("stop", bundle.compose_stop())
    return time.perf_counter() - start


def _sqlite_read(tables_db: Path, m: int) -> tuple[float, int]:
    cols = ", ".join(["seq_num", "time", *(f"a{k}" for k in range(m)),
                      *(f"ts_a{k}" for k in range(m))])
    t0 = time.perf_counter()
    import pandas as pd

    con = sqlite3.connect(tables_db)
    table = _table_of(con)
    ds = con.execute(f'SELECT DISTINCT _dataset_id FROM "{table}"').fetchone()[0]
    cur = con.execute(f'SELECT {cols} FROM "{table}" WHERE _dataset_id=? '
                      "ORDER BY _partition_id, rowid", (ds,))
    df = pd.DataFrame(cur.fetchall(), columns=[d[0] for d in cur.description])
    con.close()
    return time.perf_counter() - t0, len(df)


def _adbc_read(tables_db: Path, m: int) -> tuple[float, int] | None:
    try:
        from adbc_driver_sqlite import dbapi
    except ImportError:
        return None
    cols = ", ".join(["seq_num", "time", *(f"a{k}" for k in range(m)),
                      *(f"ts_a{k}" for k in range(m))])
    with sqlite3.connect(tables_db) as con:
        table = _table_of(con)
    t0 = time.perf_counter()
    with dbapi.connect(str(tables_db)) as con, con.cursor() as cur:
        cur.execute(f'SELECT {cols} FROM "{table}" WHERE _dataset_id=1')
        df = cur.fetch_arrow_table().to_pandas()
    return time.perf_counter() - t0, len(df)


def _table_of(con) -> str:
    for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type='table'"):
        cols = {r[1] for r in con.execute(f'PRAGMA table_info("{name}")')}
        if "ts_a0" in cols:
            return name
    raise RuntimeError("no table of the day found")


def figure_day(quick: bool, rows: int | None = None, m: int = 5) -> list[dict]:
    from tiled.client import from_uri

    from catalog.latest import LatestPublisher, LatestStore
    from catalog.query import Archive
    from catalog.server import TiledServer, sql_catalog, warden_app
    from warden.server_process import ServerProcess, ServerSpec

    rows = rows or (43_200 if quick else 864_000)
    repeats = 5
    with tempfile.TemporaryDirectory(prefix="bench-day-") as tmp:
        tmp = Path(tmp)
        uri = f"sqlite:///{tmp / 'archive.db'}"
        catalog = sql_catalog(uri)
        app = warden_app(catalog, LatestStore([OBJECT]), "UTC", API_KEY)
        server = TiledServer(app)
        url = server.start()
        note(f"day: writing {rows:,} rows x {m} attributes through TiledRunSink")
        write_s = _write_day(from_uri(url, api_key=API_KEY)["archive"], rows, m, 10_000)
        publisher = LatestPublisher(LatestStore([OBJECT]), tmp / "latest.db")
        process = ServerProcess(ServerSpec(
            archive=uri, data_dir=None, latest_file=str(tmp / "latest.db"), objects=[OBJECT],
            zone="UTC", api_key=API_KEY, public=False, host="127.0.0.1", port=0, log_dir=None,
        ), runner=None)
        archive = Archive.from_uri(process.start(), api_key=API_KEY, zone=ZoneInfo("UTC"))
        same = Archive.from_uri(url, api_key=API_KEY, zone=ZoneInfo("UTC"))
        tiled_s, same_s, sqlite_s, adbc_s, n_rows = [], [], [], [], []
        for _ in range(repeats):  # interleaved, side by side
            t0 = time.perf_counter()
            df = archive.day(OBJECT, DAY)
            tiled_s.append(time.perf_counter() - t0)
            n_rows.append(len(df))
            t0 = time.perf_counter()
            same.day(OBJECT, DAY)
            same_s.append(time.perf_counter() - t0)
            s, n_sql = _sqlite_read(tmp / "archive.tables.db", m)
            sqlite_s.append(s)
            a = _adbc_read(tmp / "archive.tables.db", m)
            if a:
                adbc_s.append(a[0])
        fresh_client_s = _fresh_client_day(process.url)
        closed = _closed_day(archive, tmp, repeats)
        process.stop()
        publisher.stop()
        server.stop()
    day_s = statistics.median(tiled_s)
    ceiling = min(statistics.median(sqlite_s), statistics.median(adbc_s) if adbc_s else 1e9)
    return [emit(
        "day_read", quick=quick, rows=rows, attributes=m, rows_read=n_rows[-1],
        rows_sqlite=n_sql, write_s=round(write_s, 2),
        write_rows_per_s=round(rows / write_s, 0),
        archive_day_s={"median": round(day_s, 3), "all": [round(x, 3) for x in tiled_s]},
        archive_day_server_in_client_process_s={
            "median": round(statistics.median(same_s), 3), "all": [round(x, 3) for x in same_s]},
        archive_day_fresh_client_s=round(fresh_client_s, 3),
        sqlite3_s={"median": round(statistics.median(sqlite_s), 3)},
        adbc_arrow_s={"median": round(statistics.median(adbc_s), 3)} if adbc_s else None,
        closed_day_parquet=closed,
        ratios={"archive_day_vs_storage_ceiling": round(day_s / ceiling, 2),
                "closed_day_vs_parquet_ceiling": closed["ratio_to_ceiling"],
                "closed_day_vs_rows_day": round(closed["archive_day_s"]["median"] / day_s, 2)},
        targets={"day_read_le_1s": day_s <= 1.0 and n_rows[-1] == rows,
                 "applies": rows >= 864_000},
    )]


def _closed_day(archive, tmp: Path, repeats: int) -> dict:
    """The same day once its run is compacted into Parquet (every day but today is), read
    through the same server process, beside pyarrow reading the file (its ceiling)."""
    import pyarrow.parquet as pq

    from catalog.compact import Compactor

    t0 = time.perf_counter()
    report = Compactor(tmp / "archive.db", grace=0).run()
    compact_s = time.perf_counter() - t0
    (path,) = (tmp / "archive.data").rglob("*.parquet")
    read_s, ceiling_s = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        df = archive.day(OBJECT, DAY)
        read_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        pq.read_table(path).to_pandas()
        ceiling_s.append(time.perf_counter() - t0)
    day_s = statistics.median(read_s)
    return {"compaction_s": round(compact_s, 2), "rows_compacted": report.rows,
            "rows_read": len(df), "parquet_bytes": report.parquet_bytes,
            "archive_day_s": {"median": round(day_s, 3), "all": [round(x, 3) for x in read_s]},
            "pyarrow_read_s": {"median": round(statistics.median(ceiling_s), 3)},
            "ratio_to_ceiling": round(day_s / statistics.median(ceiling_s), 2)}


def _fresh_client_day(url: str) -> float:
    """``Archive.from_uri`` + ``day``: what a new user session pays (connection, metadata)."""
    from catalog.query import Archive

    t0 = time.perf_counter()
    Archive.from_uri(url, api_key=API_KEY, zone=ZoneInfo("UTC")).day(OBJECT, DAY)
    return time.perf_counter() - t0

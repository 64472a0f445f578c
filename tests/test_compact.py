"""Closed runs move from the row tables into Parquet files and read the same (catalog.compact).

Real parts: the service on the sim source with its writer process and Tiled server process,
the SQLite archive on disk, Tiled's server answering the reads from the Parquet files.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import threading
from zoneinfo import ZoneInfo

import adbc_driver_sqlite.dbapi
import pandas as pd
import pyarrow.parquet as pq
from conftest import run_service, sim_config, wait_for

from catalog import compact
from catalog.compact import Compactor
from catalog.tiled_internals import PARQUET, SQL_TABLE

ZONE = ZoneInfo("America/New_York")
OBJECTS = ["yi2-wcm3", "ring-yellow"]


def sources(tmp_path) -> dict[str, int]:
    """Data sources of tables in the catalog, by mimetype."""
    with sqlite3.connect(tmp_path / "archive.db") as db:
        rows = db.execute("SELECT mimetype, count(*) FROM data_sources "
                          "WHERE structure_family = 'table' GROUP BY mimetype").fetchall()
    return dict(rows)


def sql_rows(tmp_path) -> int:
    """Rows in every table of the tables file."""
    with adbc_driver_sqlite.dbapi.connect(str(tmp_path / "archive.tables.db")) as db:
        with db.cursor() as cursor:
            cursor.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                           "AND name LIKE 'table_%'")
            names = [n for (n,) in cursor.fetchall()]
            total = 0
            for name in names:
                cursor.execute(f'SELECT count(*) FROM "{name}"')
                total += cursor.fetchone()[0]
    return total


def pragma(tmp_path, name: str) -> int:
    with adbc_driver_sqlite.dbapi.connect(str(tmp_path / "archive.tables.db")) as db:
        with db.cursor() as cursor:
            cursor.execute(f"PRAGMA {name}")
            return cursor.fetchone()[0]


def free_pages(tmp_path) -> None:
    """Leave a megabyte of free pages in the tables file."""
    with adbc_driver_sqlite.dbapi.connect(str(tmp_path / "archive.tables.db")) as db:
        with db.cursor() as cursor:
            cursor.execute("CREATE TABLE filler (b)")
            cursor.execute("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n "
                           "WHERE i < 1000) INSERT INTO filler SELECT randomblob(1000) FROM n")
            cursor.execute("DROP TABLE filler")
        db.commit()


def everything(archive) -> dict[str, pd.DataFrame]:
    """What a user reads back: every object's every day, the connections, a range across
    midnight, and each run's streams through the stock bluesky-tiled-plugins client."""
    out = {f"{obj} {day}": archive.day(obj, day) for day in archive.days() for obj in OBJECTS}
    out["connections"] = archive.connections("yi2-wcm3", "2001-11-06")
    out["range"] = archive.range("yi2-wcm3", "2001-11-06T23:59:50", "2001-11-07T00:00:10")
    for run in archive.catalog.values():  # BlueskyRun
        for obj in OBJECTS:
            frame = run[obj].read().to_dataframe()  # its column order varies: sorted here
            out[f"{obj} run {run.start['day']}"] = frame[sorted(frame.columns)]
    return out


def test_closed_runs_move_into_parquet_and_read_the_same(tmp_path, monkeypatch):
    monkeypatch.setattr(compact, "ROW_GROUP", 7)  # files of several row groups
    start = dt.datetime(2001, 11, 6, 23, 59, 56, tzinfo=ZONE)
    with run_service(sim_config(tmp_path), start, seconds=8, compact_grace=None) as archive:
        before = everything(archive)
        rows = sql_rows(tmp_path)
        assert sources(tmp_path) == {SQL_TABLE: 6}  # 2 runs x (2 objects + connection)
        compactor = Compactor(tmp_path / "archive.db", grace=0)
        report = compactor.run()  # while the server serves the archive
        assert (report.tables, report.rows, report.deleted, report.errors) == (6, rows, rows, [])
        assert sources(tmp_path) == {PARQUET: 6}
        assert sql_rows(tmp_path) == 0 and compactor.pending() == 0
        after = everything(archive)
    assert before.keys() == after.keys()
    for key, frame in before.items():
        assert len(frame) or key == "range", key
        pd.testing.assert_frame_equal(frame, after[key], obj=key)
    assert len(before["range"]) >= 4  # both sides of midnight
    files = list((tmp_path / "archive.data").rglob("*.parquet"))
    assert sum(pq.read_metadata(f).num_rows for f in files) == rows
    assert max(pq.read_metadata(f).num_row_groups for f in files) > 1
    assert pragma(tmp_path, "auto_vacuum") == 2  # incremental: the pages the rows held
    assert pragma(tmp_path, "freelist_count") == 0  # went back to the disk
    assert compactor.run().tables == 0  # nothing left to do


def test_the_service_compacts_a_run_once_it_is_closed_never_while_open(tmp_path):
    seen = {}

    def while_running(service):  # the run is open: its rows stay where the writer appends
        seen["report"] = Compactor(tmp_path / "archive.db", grace=0).run()
        seen["sources"] = sources(tmp_path)

    start = dt.datetime(2001, 11, 6, 10, 0, tzinfo=ZONE)
    with run_service(sim_config(tmp_path), start, seconds=6, compact_grace=0,
                     during=while_running) as archive:
        assert seen["report"].tables == 0 and PARQUET not in seen["sources"]
        # the writer process compacts the run once its stop document is written
        wait_for(lambda: sources(tmp_path) == {PARQUET: 3}, timeout=60)
        wait_for(lambda: sql_rows(tmp_path) == 0, timeout=60)
        df = archive.day("yi2-wcm3", "2001-11-06")
        assert len(df) == archive.latest("yi2-wcm3")["rows"] >= 8
        assert df["time"].is_monotonic_increasing


def test_an_interrupted_compaction_loses_nothing_and_the_next_one_finishes(tmp_path):
    start = dt.datetime(2001, 11, 6, 10, 0, tzinfo=ZONE)
    with run_service(sim_config(tmp_path), start, seconds=3, compact_grace=None) as archive:
        before = archive.day("yi2-wcm3", "2001-11-06")
        rows = sql_rows(tmp_path)

        class CrashAfterOneSwitch(Compactor):
            """Dies after writing a second file, before switching it; never deletes."""

            def _switch(self, catalog, table, n):
                if self.switched:
                    raise OSError("killed")
                self.switched += 1
                super()._switch(catalog, table, n)

            def _delete_rows(self, catalog, tables):
                return 0

        first = CrashAfterOneSwitch(tmp_path / "archive.db", grace=0)
        first.switched = 0
        report = first.run()
        assert report.tables == 1 and len(report.errors) == 2
        assert sources(tmp_path) == {PARQUET: 1, SQL_TABLE: 2}
        assert sql_rows(tmp_path) == rows  # nothing deleted: rows of the switched one remain
        pd.testing.assert_frame_equal(archive.day("yi2-wcm3", "2001-11-06"), before)

        second = Compactor(tmp_path / "archive.db", grace=0)
        assert second.pending() == 3  # two tables to move, one table's rows to delete
        report = second.run()
        assert (report.tables, report.deleted) == (2, rows)
        assert sources(tmp_path) == {PARQUET: 3} and sql_rows(tmp_path) == 0
        pd.testing.assert_frame_equal(archive.day("yi2-wcm3", "2001-11-06"), before)
        with sqlite3.connect(tmp_path / "archive.db") as db:
            marks = [json.loads(p)["compacted"] for (p,) in
                     db.execute("SELECT properties FROM data_sources WHERE mimetype = ?",
                                (PARQUET,))]
        assert all(m["deleted"] for m in marks) and sum(m["rows"] for m in marks) == rows


class LockedTables:
    """Another writer in the middle of a transaction on the tables file (as the archive
    writer is, a batch at a time), committing after ``seconds`` (None: at ``release``).
    ADBC's SQLite, as the writer's: two copies of SQLite in one process do not see each
    other's locks."""

    def __init__(self, tmp_path, seconds: float | None = None):
        self.db = adbc_driver_sqlite.dbapi.connect(str(tmp_path / "archive.tables.db"))
        with self.db.cursor() as cursor:  # a commit after the compactor's snapshot
            cursor.execute("CREATE TABLE IF NOT EXISTS other_writer (x)")
            cursor.execute("INSERT INTO other_writer VALUES (1)")
        self.timer = threading.Timer(seconds, self.release) if seconds is not None else None
        if self.timer:
            self.timer.start()

    def release(self) -> None:
        self.db.commit()
        self.db.close()


def test_a_busy_tables_file_waits_its_turn_or_is_left_for_the_next_pass(tmp_path, monkeypatch):
    start = dt.datetime(2001, 11, 6, 10, 0, tzinfo=ZONE)
    with run_service(sim_config(tmp_path), start, seconds=3, compact_grace=None) as archive:
        before = archive.day("yi2-wcm3", "2001-11-06")
        rows = sql_rows(tmp_path)
        monkeypatch.setattr(compact, "BUSY_TIMEOUT_MS", 300)

        # held past the compactor's patience: the tables move, their rows stay for later
        locked = LockedTables(tmp_path)
        report = Compactor(tmp_path / "archive.db", grace=0).run()
        locked.release()
        assert (report.tables, report.deleted, report.errors) == (3, 0, [])
        assert sql_rows(tmp_path) == rows
        pd.testing.assert_frame_equal(archive.day("yi2-wcm3", "2001-11-06"), before)

        # the next pass deletes them; the pages go back while a writer holds the file for
        # less than the compactor waits (it takes its turn, rather than failing at once)
        class KeepPages(Compactor):
            def _give_back_pages(self, tables):
                pass

        assert KeepPages(tmp_path / "archive.db", grace=0).run().deleted == rows
        free_pages(tmp_path)  # (a few seconds' rows fill a page or two: they free none)
        assert pragma(tmp_path, "freelist_count") > 200
        compactor = Compactor(tmp_path / "archive.db", grace=0)
        monkeypatch.setattr(compact, "BUSY_TIMEOUT_MS", 5000)
        with compactor._tables() as tables:
            locked = LockedTables(tmp_path, seconds=0.5)
            compactor._give_back_pages(tables)
            locked.timer.join()
        assert pragma(tmp_path, "freelist_count") == 0 and sql_rows(tmp_path) == 0
        assert compactor.pending() == 0
        pd.testing.assert_frame_equal(archive.day("yi2-wcm3", "2001-11-06"), before)

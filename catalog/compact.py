"""Closed runs of a SQLite archive, moved from the row tables into Parquet files.

The open day is appended, row by row, to Tiled's SQL tables (``archive.tables.db``): about
23 bytes per scalar value, since SQLite stores every value and every upstream timestamp as
8 bytes plus a header. Once a run is closed (its stop document is in the archive) nothing is
appended to it again, so each of its tables is written to one Parquet file under
``archive.data/<run>/<stream>/internal/`` (zstd; floats byte-stream split, ``seq_num`` delta
coded: about 10 bytes per value for noise-like float64, far less for real signals). Tiled's
catalog then points the table's node at that file (the structure is unchanged; the warden's
server reads it with ``catalog.parquet``, a stock Tiled server with its own adapter; stock
clients read the same frame), and the rows are deleted from the tables file, which gives the
pages back to the disk. The EPICS Archiver Appliance
does the same from its short-term to its long-term store.

Each step can be interrupted (crash, kill) without losing anything:

1. the file is written beside its final name, synced, renamed, and its row count checked;
2. one catalog transaction switches the data source (a crash before it leaves the rows in
   use and the file is written again next time);
3. after ``grace`` seconds (reads that began on the rows finish), the rows are deleted; the
   data source records where they were (``properties["compacted"]``) until they are gone,
   so a later pass deletes what an interrupted one did not.

Only SQLite archives are compacted (PostgreSQL stores the same rows; its tables are left as
they are). The catalog file is opened with Python's ``sqlite3`` and the tables file with ADBC
only, as everywhere else in the warden (one SQLite copy per file per process).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from . import tiled_internals
from .tiled_internals import SourceTable
from .uri import ArchiveURI

log = logging.getLogger(__name__)

DELETE_CHUNK = 20_000  # rows per delete transaction: the writer waits at most ~0.1 s
VACUUM_CHUNK = 2_000  # pages given back to the disk per transaction (8 MB)
ROW_GROUP = 1_048_576  # rows per Parquet row group (pyarrow's default), read a group at a time
BUSY_TIMEOUT_MS = 30_000  # how long a step waits for the writer's transaction
MARK = "compacted"  # the data source property that says where a table's rows were


@dataclass
class Report:
    """What a compaction pass did."""

    tables: int = 0  # tables moved into Parquet files
    rows: int = 0  # rows they held
    deleted: int = 0  # rows deleted from the tables file
    parquet_bytes: int = 0
    errors: list[str] = field(default_factory=list)


class Compactor:
    """Compact the closed runs of the SQLite archive ``archive.db`` (beside it:
    ``archive.tables.db`` and ``archive.data/``)."""

    def __init__(self, archive: str | Path, grace: float = 60.0):
        archive = Path(archive)
        self.catalog = archive
        self.tables = archive.with_suffix(".tables.db")
        self.data_dir = archive.with_suffix(".data")
        self.grace = grace
        self.stopping = threading.Event()  # set: stop between steps (nothing is lost)

    @classmethod
    def for_uri(cls, uri: str | ArchiveURI, grace: float = 60.0) -> Compactor | None:
        """The compactor of a ``sqlite:///`` archive; None for other archives."""
        if isinstance(uri, str):
            uri = ArchiveURI.parse(uri)
        return cls(uri.path, grace=grace) if uri.scheme == "sqlite" else None

    def run(self) -> Report:
        """Move every closed run's tables into Parquet, then delete their rows."""
        report = Report()
        with self._catalog() as catalog, self._tables() as tables:
            for table in self.closed_tables(catalog):
                if self.stopping.is_set():
                    break
                try:
                    n, size = self._write_parquet(tables, table)
                    self._switch(catalog, table, n)
                except Exception as err:  # noqa: BLE001 - one bad table must not stop the rest
                    log.exception("could not compact %s/%s", table.run, "/".join(table.path))
                    report.errors.append(f"{table.run}/{'/'.join(table.path)}: {err}")
                    continue
                report.tables += 1
                report.rows += n
                report.parquet_bytes += size
            if report.tables and self.stopping.wait(self.grace):
                return report
            report.deleted = self._delete_rows(catalog, tables)
            if report.deleted:
                self._give_back_pages(tables)
        return report

    def pending(self) -> int:
        """Tables of closed runs still in SQL, plus compacted tables whose rows remain."""
        with self._catalog() as catalog:
            return (len(self.closed_tables(catalog))
                    + len(tiled_internals.compacted_sources(catalog, MARK)))

    # -- the steps -------------------------------------------------------------------------
    def closed_tables(self, catalog: sqlite3.Connection) -> list[SourceTable]:
        """The SQL tables of runs whose stop document is written."""
        return tiled_internals.closed_run_tables(catalog)

    def parquet_path(self, table: SourceTable) -> Path:
        """Where a table's file goes (Tiled's own layout for a Parquet table node)."""
        return tiled_internals.parquet_partition_path(self.data_dir, [table.run, *table.path])

    def _write_parquet(self, tables, table: SourceTable) -> tuple[int, int]:
        """Write the table's rows to its file (a row group at a time: bounded memory);
        return (rows, bytes)."""
        path = self.parquet_path(table)
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_suffix(".parquet.part")
        rows = 0
        with pq.ParquetWriter(part, table.schema, **parquet_options(table.schema)) as out:
            groups = tiled_internals.read_rows(tables, table.location, table.schema, ROW_GROUP)
            for group in groups:
                out.write_table(group, row_group_size=ROW_GROUP)
                rows += len(group)
        with open(part, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(part, path)
        _fsync_dir(path.parent)
        written = pq.read_metadata(path).num_rows
        if written != rows:
            raise RuntimeError(f"{path} holds {written} rows, not {rows}")
        return rows, path.stat().st_size

    def _switch(self, catalog: sqlite3.Connection, table: SourceTable, rows: int) -> None:
        """Point the table's data source at its file, in one transaction; its properties
        say where the rows were until they are deleted."""
        name, dataset = table.location
        compacted = {"table_name": name, "dataset_id": dataset, "rows": rows, "deleted": False}
        tiled_internals.point_at_parquet(catalog, table.data_source, self.parquet_path(table),
                                         {MARK: compacted})

    def _delete_rows(self, catalog: sqlite3.Connection, tables) -> int:
        """Delete the rows of compacted tables, a chunk per transaction; each table is marked
        done as soon as its rows are gone (a failed one is tried again at the next pass)."""
        import adbc_driver_manager

        deleted = 0
        for source, compacted in tiled_internals.compacted_sources(catalog, MARK):
            where = tiled_internals.TableLocation(compacted["table_name"],
                                                  int(compacted["dataset_id"]))
            try:
                while True:
                    if self.stopping.is_set():
                        return deleted
                    n = tiled_internals.delete_rows(tables, where, DELETE_CHUNK)
                    deleted += n
                    if n < DELETE_CHUNK:
                        break
            except adbc_driver_manager.Error as err:
                tables.rollback()
                if "no such table" not in str(err):  # (a table gone holds no rows)
                    log.warning("could not delete the compacted rows of %s: %s",
                                where.table_name, err)
                    continue
            tiled_internals.set_properties(catalog, source,
                                           {MARK: {**compacted, "deleted": True}})
        return deleted

    def _give_back_pages(self, tables) -> None:
        """Shrink the tables file by its free pages (a file without incremental vacuum keeps
        them, for the next days' rows), then its write-ahead log, which the deletes filled
        (it keeps its largest size otherwise).

        Each step is a transaction of its own, so it waits its turn behind the writer's; a
        busy file is left for the next pass."""
        import adbc_driver_manager

        try:
            free = _pragma(tables, "freelist_count")
            while free and not self.stopping.is_set():
                _pragma(tables, f"incremental_vacuum({VACUUM_CHUNK})")
                after = _pragma(tables, "freelist_count")
                if after == free:  # auto_vacuum is off in this file
                    break
                free = after
            # TRUNCATE holds the write lock while it waits for readers on older snapshots:
            # a short wait, else the log is truncated at a later pass
            _pragma(tables, "busy_timeout = 200")
            try:
                _pragma(tables, "wal_checkpoint(TRUNCATE)")
            finally:
                _pragma(tables, f"busy_timeout = {BUSY_TIMEOUT_MS}")
        except adbc_driver_manager.Error as err:
            tables.rollback()
            log.info("tables file busy (%s): its free pages go back at the next pass", err)

    # -- connections -----------------------------------------------------------------------
    @contextlib.contextmanager
    def _catalog(self):
        db = sqlite3.connect(self.catalog, timeout=30)
        try:
            yield db
        finally:
            db.close()

    @contextlib.contextmanager
    def _tables(self):
        import adbc_driver_sqlite.dbapi

        db = adbc_driver_sqlite.dbapi.connect(str(self.tables))
        try:
            _pragma(db, f"busy_timeout = {BUSY_TIMEOUT_MS}")  # wait for the writer's commits
            yield db
        finally:
            db.close()


class CompactorThread:
    """Run :meth:`Compactor.run` on a thread of its own whenever :meth:`wake` is called (the
    archive writer wakes it once it has caught up at start, then when a run is closed)."""

    def __init__(self, compactor: Compactor):
        self.compactor = compactor
        self.started = False  # woken at least once
        self.reports: list[Report] = []
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="archive-compactor",
                                        daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self.started = True
        self._wake.set()

    def _loop(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self.compactor.stopping.is_set():
                return
            try:
                report = self.compactor.run()
            except Exception:  # noqa: BLE001 - the archive goes on; the next stop retries
                log.exception("archive compaction failed")
                continue
            if report.tables or report.deleted:
                log.info("compacted %d tables (%d rows, %d bytes of Parquet); deleted %d rows",
                         report.tables, report.rows, report.parquet_bytes, report.deleted)
            self.reports.append(report)

    def close(self, timeout: float = 30.0) -> None:
        """Stop at the next step (what is half done is finished by the next start)."""
        self.compactor.stopping.set()
        self._wake.set()
        self._thread.join(timeout)


def parquet_options(schema: pa.Schema) -> dict:
    """Encodings for a stream's table: byte-stream split floats (their exponent and high
    mantissa bytes compress; noise-like float64 10 bytes a value instead of 12), delta coded
    ``seq_num``, dictionaries for the rest (strings, fill numbers), zstd."""
    floats = [f.name for f in schema if pa.types.is_floating(f.type)]
    encoding = {name: "BYTE_STREAM_SPLIT" for name in floats}
    if "seq_num" in schema.names:
        encoding["seq_num"] = "DELTA_BINARY_PACKED"
    return {"compression": "zstd", "compression_level": 3,
            "use_dictionary": [n for n in schema.names if n not in encoding],
            "column_encoding": encoding}


def _pragma(db, statement: str):
    """Run ``PRAGMA statement`` in a transaction of its own; its first value (or None)."""
    with db.cursor() as cursor:
        cursor.execute(f"PRAGMA {statement}")
        row = cursor.fetchone()
    db.commit()
    return row[0] if row else None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


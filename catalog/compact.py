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
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

SQL_TABLE = "application/x-tiled-sql-table"
PARQUET = "application/x-parquet"
DELETE_CHUNK = 20_000  # rows per delete transaction: the writer waits at most ~0.1 s
VACUUM_CHUNK = 2_000  # pages given back to the disk per transaction (8 MB)
ROW_GROUP = 1_048_576  # rows per Parquet row group (pyarrow's default), read a group at a time
BUSY_TIMEOUT_MS = 30_000  # how long a step waits for the writer's transaction


@dataclass
class Table:
    """One closed run's table still in the SQL storage."""

    data_source: int
    run: str
    path: list[str]  # node keys below the run: [stream, "internal"]
    table_name: str
    dataset_id: int
    schema: pa.Schema


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
    def for_uri(cls, uri: str, grace: float = 60.0) -> Compactor | None:
        """The compactor of a ``sqlite:///`` archive URI; None for other archives."""
        if not uri.startswith("sqlite:"):
            return None
        return cls(Path(uri.split("://", 1)[1][1:]).resolve(), grace=grace)

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
            return len(self.closed_tables(catalog)) + len(_to_delete(catalog))

    # -- the steps -------------------------------------------------------------------------
    def closed_tables(self, catalog: sqlite3.Connection) -> list[Table]:
        """The SQL tables of runs whose stop document is written."""
        from tiled.structures.table import TableStructure

        rows = catalog.execute(  # from the SQL tables (few: the open day's, and these)
            """
            SELECT ds.id, run.id, run.key, ds.parameters, s.structure, ds.node_id
            FROM data_sources AS ds
            JOIN nodes_closure AS c ON c.descendant = ds.node_id AND c.depth > 0
            JOIN nodes AS run ON run.id = c.ancestor
            JOIN structures AS s ON s.id = ds.structure_id
            WHERE ds.mimetype = ?
              AND run.parent = (SELECT id FROM nodes WHERE parent IS NULL)
              AND json_extract(run.metadata, '$.stop') IS NOT NULL
            ORDER BY ds.id
            """, (SQL_TABLE,)).fetchall()
        out = []
        for source, run_id, run, parameters, structure, node in rows:
            parameters = json.loads(parameters)
            schema = TableStructure.from_json(json.loads(structure)).arrow_schema_decoded
            out.append(Table(source, run, _keys_below(catalog, node, run_id),
                             parameters["table_name"], int(parameters["dataset_id"]), schema))
        return out

    def parquet_path(self, table: Table) -> Path:
        """Where a table's file goes (Tiled's own layout for a Parquet table node)."""
        return self.data_dir.joinpath(table.run, *table.path, "partition-0.parquet")

    def _write_parquet(self, tables, table: Table) -> tuple[int, int]:
        """Write the table's rows to its file (a row group at a time: bounded memory);
        return (rows, bytes)."""
        path = self.parquet_path(table)
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_suffix(".parquet.part")
        rows = 0
        with pq.ParquetWriter(part, table.schema, **parquet_options(table.schema)) as out:
            for group in _read_rows(tables, table):
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

    def _switch(self, catalog: sqlite3.Connection, table: Table, rows: int) -> None:
        """Point the table's data source at its file, in one transaction."""
        from tiled.utils import ensure_uri

        uri = ensure_uri(str(self.parquet_path(table)))
        size = self.parquet_path(table).stat().st_size
        compacted = {"table_name": table.table_name, "dataset_id": table.dataset_id,
                     "rows": rows, "deleted": False}
        with catalog:  # BEGIN ... COMMIT (ROLLBACK on error)
            asset = catalog.execute(
                "INSERT INTO assets (data_uri, is_directory, size) VALUES (?, 0, ?)",
                (uri, size)).lastrowid
            catalog.execute("DELETE FROM data_source_asset_association "
                            "WHERE data_source_id = ?", (table.data_source,))
            catalog.execute(
                "INSERT INTO data_source_asset_association "
                "(data_source_id, asset_id, parameter, num) VALUES (?, ?, 'data_uris', 0)",
                (table.data_source, asset))
            switched = catalog.execute(
                "UPDATE data_sources SET mimetype = ?, parameters = '{}', properties = ?, "
                "management = 'immutable' WHERE id = ? AND mimetype = ?",
                (PARQUET, json.dumps({"compacted": compacted}), table.data_source, SQL_TABLE))
            if switched.rowcount != 1:  # switched by another pass meanwhile: undo ours
                raise RuntimeError(f"data source {table.data_source} is no longer SQL")

    def _delete_rows(self, catalog: sqlite3.Connection, tables) -> int:
        """Delete the rows of compacted tables, a chunk per transaction; each table is marked
        done as soon as its rows are gone (a failed one is tried again at the next pass)."""
        import adbc_driver_manager

        deleted = 0
        for source, compacted in _to_delete(catalog):
            name, dataset = compacted["table_name"], int(compacted["dataset_id"])
            try:
                while True:
                    if self.stopping.is_set():
                        return deleted
                    with tables.cursor() as cursor:
                        cursor.execute(
                            f'DELETE FROM "{name}" WHERE rowid IN (SELECT rowid FROM "{name}" '
                            f"WHERE _dataset_id = {dataset} LIMIT {DELETE_CHUNK})")
                        cursor.execute("SELECT changes()")  # (ADBC's rowcount is -1)
                        n = cursor.fetchone()[0]
                    tables.commit()
                    deleted += n
                    if n < DELETE_CHUNK:
                        break
            except adbc_driver_manager.Error as err:
                tables.rollback()
                if "no such table" not in str(err):  # (a table gone holds no rows)
                    log.warning("could not delete the compacted rows of %s: %s", name, err)
                    continue
            with catalog:
                catalog.execute("UPDATE data_sources SET properties = ? WHERE id = ?",
                                (json.dumps({"compacted": {**compacted, "deleted": True}}),
                                 source))
        return deleted

    def _give_back_pages(self, tables) -> None:
        """Shrink the tables file by its free pages (an archive made before compaction
        existed has no incremental vacuum: its free pages are reused by the next days), then
        its write-ahead log, which the deletes filled (it keeps its largest size otherwise).

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


def _read_rows(tables, table: Table) -> Iterator[pa.Table]:
    """The table's rows in the order written, as Tiled reads them (same names and types),
    ``ROW_GROUP`` rows at a time."""
    names = table.schema.names
    columns = ", ".join(f'"{n.lower()}"' for n in names)
    try:
        with tables.cursor() as cursor:
            cursor.execute(f'SELECT {columns} FROM "{table.table_name}" '
                           f"WHERE _dataset_id = {table.dataset_id} "
                           "ORDER BY _partition_id, rowid")
            batches, n = [], 0
            for batch in cursor.fetch_record_batch():
                batches.append(batch)
                n += batch.num_rows
                if n >= ROW_GROUP:
                    yield _as_schema(batches, table.schema)
                    batches, n = [], 0
            if batches:
                yield _as_schema(batches, table.schema)
    finally:
        tables.rollback()  # end the read transaction, whatever happened: the writer may
        # checkpoint the write-ahead log past it


def _as_schema(batches: list[pa.RecordBatch], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_batches(batches).rename_columns(schema.names).cast(schema)


def _pragma(db, statement: str):
    """Run ``PRAGMA statement`` in a transaction of its own; its first value (or None)."""
    with db.cursor() as cursor:
        cursor.execute(f"PRAGMA {statement}")
        row = cursor.fetchone()
    db.commit()
    return row[0] if row else None


def _to_delete(catalog: sqlite3.Connection) -> list[tuple[int, dict]]:
    rows = catalog.execute(
        "SELECT id, json_extract(properties, '$.compacted') FROM data_sources "
        "WHERE mimetype = ? AND json_extract(properties, '$.compacted.deleted') = 0",
        (PARQUET,)).fetchall()
    return [(source, json.loads(compacted)) for source, compacted in rows]


def _keys_below(catalog: sqlite3.Connection, node: int, run: int) -> list[str]:
    """The node keys from below the run (node id ``run``) down to ``node``."""
    keys = []
    while node != run:
        key, node = catalog.execute("SELECT key, parent FROM nodes WHERE id = ?",
                                    (node,)).fetchone()
        keys.append(key)
    return keys[::-1]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


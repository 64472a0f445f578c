"""Rows straight into the SQL storage of Tiled's appendable tables.

Tiled's ``append_partition`` over HTTP costs about 60 ms a call (authentication, a catalog
lookup of every path segment, then one ADBC ingest); at 1,000 objects a flush is a minute of
requests. The archive writer appends the rows itself, as Tiled's
``SQLAdapter.append_partition`` does (:func:`catalog.tiled_internals.append_rows`), a batch
of streams per commit and the rows of a batch kept in one SQL table in one ingest, and
creates the streams of a batch in one catalog transaction
(:func:`catalog.tiled_internals.create_streams`; two requests a stream through Tiled cost
about 65 ms). Tiled reads them back as its own.
"""

from __future__ import annotations

import threading

import numpy as np
import pyarrow as pa

from .tiled_internals import NewStream, TableLocation, append_rows, create_streams, table_location
from .uri import ArchiveURI


class DirectTables:
    """One ADBC connection to the tables storage of a SQLite or PostgreSQL archive."""

    location = staticmethod(table_location)  # where a table node's rows are

    def __init__(self, archive: ArchiveURI):
        self.archive = archive
        self._conn = None
        self._pending = False  # appends not committed yet
        self._rows: dict[str, list[_Rows]] = {}  # by SQL table, then by schema
        self._lock = threading.Lock()

    def append(self, where: TableLocation, schema: pa.Schema, columns: dict[str, list]) -> None:
        """Append rows to partition 0 of the node at ``where``: ``columns`` holds the values
        of every column of the node's ``schema`` (lists or arrays of one length).

        The rows are visible (and durable) at the next :meth:`commit`. Until then they wait
        here as the values given: the rows of every node kept in the same SQL table become
        one Arrow table and one ingest, and all one commit, which is what lets a writer keep
        up with thousands of streams of a row or two a batch (SQLite: 0.7 ms an append
        committed alone, 0.08 ms an append in a batch; an Arrow table made per append costs
        more than the ingest of the batch's rows of all of them).
        """
        values = {name: _listed(columns[name]) for name in schema.names}
        with self._lock:
            groups = self._rows.setdefault(where.table_name, [])
            group = next((g for g in groups if g.schema.equals(schema)), None)
            if group is None:
                group = _Rows(schema)
                groups.append(group)
            group.add(where.dataset_id, values)

    def _ingest(self) -> None:
        """Write the rows waiting, one ingest per SQL table (and Arrow schema: a node's
        rows all have its own, nodes of one SQL table almost always the same)."""
        rows, self._rows = self._rows, {}
        if not rows:
            return
        conn = self._connect()
        try:
            with conn.cursor() as cursor:
                for table_name, groups in rows.items():
                    for group in groups:
                        append_rows(cursor, table_name, group.table(), group.dataset_ids)
        except Exception:
            self._close()  # rolls back; a fresh connection next time
            raise
        self._pending = True

    def create_streams(self, run_key: str, run_metadata: dict, run_specs: list[dict],
                       streams: list[NewStream], take_over: str | None = None
                       ) -> dict[str, TableLocation]:
        """Have the run and its ``streams`` in the catalog, in one transaction (see
        :func:`catalog.tiled_internals.create_streams`); the appends so far are committed
        first."""
        with self._lock:
            self._ingest()
            conn = self._connect()
            if self._pending:
                conn.commit()
                self._pending = False
            try:
                return create_streams(self.archive, conn, run_key, run_metadata, run_specs,
                                      streams, take_over)
            except Exception:
                self._close()
                raise

    def commit(self) -> None:
        """Make the appends so far visible; call it before anything else writes the archive
        (Tiled creating a table takes the same SQLite write lock)."""
        with self._lock:
            self._ingest()
            if not self._pending:
                return
            try:
                self._conn.commit()
            except Exception:
                self._close()  # the batch is rolled back: the writer asks what landed
                raise
            self._pending = False

    def rollback(self) -> None:
        """Drop the appends not committed (after a failed write the writer asks the archive
        what it holds, which does not count them, and writes them again)."""
        with self._lock:
            self._rows = {}
            if self._pending:
                self._close()

    def _connect(self):
        if self._conn is None:
            if self.archive.scheme == "sqlite":
                import adbc_driver_sqlite.dbapi

                self._conn = adbc_driver_sqlite.dbapi.connect(str(self.archive.tables_path))
                with self._conn.cursor() as cursor:  # wait for Tiled's own writes (new tables)
                    cursor.execute("PRAGMA busy_timeout = 10000")
            else:
                import adbc_driver_postgresql.dbapi

                self._conn = adbc_driver_postgresql.dbapi.connect(self.archive.dsn)
        return self._conn

    def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001 - a broken connection may not close cleanly
                pass
            self._conn = None
            self._pending = False
            self._rows = {}

    def close(self) -> None:
        with self._lock:
            self._close()


class _Rows:
    """Rows of one schema waiting for the ingest: each column's values, one list, and the
    dataset id of every row."""

    def __init__(self, schema: pa.Schema):
        self.schema = schema
        self.columns: dict[str, list] = {name: [] for name in schema.names}
        self.dataset_ids: list[int] = []

    def add(self, dataset_id: int, values: dict[str, list]) -> None:
        for name, column in self.columns.items():
            column.extend(values[name])
        self.dataset_ids.extend([dataset_id] * len(values[self.schema.names[0]]))

    def table(self) -> pa.Table:
        return pa.Table.from_pydict(self.columns, schema=self.schema)


def _listed(values):
    """A column's values as a sequence Arrow takes (an array's as Python values)."""
    return values.tolist() if isinstance(values, np.ndarray) else values

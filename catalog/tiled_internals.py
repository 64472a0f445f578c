"""What the warden does with Tiled below its public API, all in one place.

Elsewhere the warden uses Tiled as any application would: its clients, its adapters,
``build_app`` and ``tiled.catalog.from_uri``. This module holds the rest, written for the
Tiled versions ``pyproject.toml`` pins (``tests/test_tiled_internals.py`` fails when the
installed Tiled's catalog schema is not the one it was written for):

- the storage of appendable tables, as ``SQLAdapter.append_partition`` writes it: rows
  appended to, read from and deleted from it directly (:func:`append_rows`,
  :func:`read_rows`, :func:`delete_rows`), and where a table node keeps them
  (:func:`table_location`);
- the SQL of Tiled's catalog tables (``nodes``, ``data_sources``, ``assets`` ...) that
  compaction reads and writes (:func:`closed_run_tables`, :func:`point_at_parquet`,
  :func:`compacted_sources`, :func:`set_properties`);
- creating the catalog's schema in this process (:func:`init_catalog`, what
  ``tiled catalog init`` does) and telling whether it is there (:func:`catalog_initialized`);
- the app's settings override (:func:`settle_settings_override`);
- the body of Tiled's metadata route for a leaf-less node (:func:`node_metadata_body`), and
  the pieces of Tiled's server a route answering ahead of Tiled's needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import sqlite3
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import msgpack
import numpy as np
import pyarrow as pa

from .uri import ArchiveURI

# The alembic revision of the catalog schema this module reads and writes.
ALEMBIC_HEAD = "917dbbcfc4b1"

SQL_TABLE = "application/x-tiled-sql-table"  # mimetype of a table kept in the SQL storage
PARQUET = "application/x-parquet"  # ... of one kept in Parquet files

# Every table and column of Tiled's catalog that the statements below read or write.
CATALOG_COLUMNS: dict[str, set[str]] = {
    "alembic_version": {"version_num"},
    "nodes": {"id", "key", "parent", "metadata"},
    "nodes_closure": {"ancestor", "descendant", "depth"},
    "structures": {"id", "structure"},
    "data_sources": {"id", "node_id", "structure_id", "mimetype", "parameters", "properties",
                     "management"},
    "assets": {"id", "data_uri", "is_directory", "size"},
    "data_source_asset_association": {"data_source_id", "asset_id", "parameter", "num"},
}
# The columns Tiled puts ahead of a table's own in its SQL storage (names in lower case).
ROW_COLUMNS = ("_dataset_id", "_partition_id")

# Tiled's server, imported when first asked for (the archive writer needs none of it: 2 s of
# imports): what a route answering ahead of Tiled's needs to answer as Tiled does.
_SERVER_NAMES = {
    "API_KEY_COOKIE_NAME": "tiled.server.utils",  # the cookie Tiled keeps an API key in
    "current_principal": "tiled.server.app",  # the principal Tiled's access log shows
    "get_base_url": "tiled.server.utils",
    "LOGGING_CONFIG": "tiled.server.logging_config",  # uvicorn's logging, as Tiled sets it
    "NoEntry": "tiled.server.core",  # what a catalog adapter raises for a missing key
    "resolve_media_type": "tiled.server.core",  # JSON or msgpack, as the request asks
    "SingleUserPrincipal": "tiled.utils",  # who a single-user API key is
}


# -- the SQL storage of appendable tables ------------------------------------------------------
class TableLocation(NamedTuple):
    """Where the rows of an appendable table node are: one SQL table holds the rows of every
    node of the same schema, each node's under its own dataset id."""

    table_name: str
    dataset_id: int


def table_location(node) -> TableLocation:
    """The location of an appendable table node (a Tiled client): from the answer that
    created it when it holds that, else asked of the server."""
    sources = node.item["attributes"].get("data_sources") or []
    if len(sources) == 1 and "table_name" in (sources[0].get("parameters") or {}):
        parameters = sources[0]["parameters"]
    else:
        (source,) = node.data_sources()
        parameters = source.parameters
    return TableLocation(parameters["table_name"], int(parameters["dataset_id"]))


def append_rows(cursor, where: TableLocation, table: pa.Table, partition: int = 0) -> None:
    """Append ``table`` (the node's schema) to ``partition`` of the node at ``where``, as
    ``SQLAdapter.append_partition`` does, with an ADBC ``cursor`` of the storage; the caller
    commits."""
    n = len(table)
    table = table.add_column(0, pa.field("_partition_id", pa.int16()),
                             [np.full(n, partition, np.int16)])
    table = table.add_column(0, pa.field("_dataset_id", pa.int32()),
                             [np.full(n, where.dataset_id, np.int32)])
    table = table.rename_columns([c.lower() for c in table.column_names])
    cursor.adbc_ingest(where.table_name, table, mode="append")


def read_rows(conn, where: TableLocation, schema: pa.Schema, chunk: int) -> Iterator[pa.Table]:
    """The node's rows in the order written, as Tiled reads them (``schema``'s names and
    types), about ``chunk`` rows at a time, from an ADBC connection to the storage. The read
    transaction ends with the iteration, however it ends."""
    columns = ", ".join(f'"{n.lower()}"' for n in schema.names)
    try:
        with conn.cursor() as cursor:
            cursor.execute(f'SELECT {columns} FROM "{where.table_name}" '
                           f"WHERE _dataset_id = {int(where.dataset_id)} "
                           "ORDER BY _partition_id, rowid")
            batches, n = [], 0
            for batch in cursor.fetch_record_batch():
                batches.append(batch)
                n += batch.num_rows
                if n >= chunk:
                    yield _as_schema(batches, schema)
                    batches, n = [], 0
            if batches:
                yield _as_schema(batches, schema)
    finally:
        conn.rollback()  # (a writer may checkpoint the write-ahead log past an open read)


def delete_rows(conn, where: TableLocation, limit: int) -> int:
    """Delete up to ``limit`` rows of the node at ``where`` from SQLite storage and commit;
    return how many (fewer than ``limit``: none are left)."""
    name, dataset = where.table_name, int(where.dataset_id)
    with conn.cursor() as cursor:
        cursor.execute(f'DELETE FROM "{name}" WHERE rowid IN (SELECT rowid FROM "{name}" '
                       f"WHERE _dataset_id = {dataset} LIMIT {int(limit)})")
        cursor.execute("SELECT changes()")  # (ADBC's rowcount is -1)
        n = cursor.fetchone()[0]
    conn.commit()
    return n


def _as_schema(batches: list[pa.RecordBatch], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_batches(batches).rename_columns(schema.names).cast(schema)


# -- the catalog (SQLite), for compaction ------------------------------------------------------
@dataclass
class SourceTable:
    """A table node of a run whose rows are in the SQL storage."""

    data_source: int  # its data source's id
    run: str  # the run's key
    path: list[str]  # node keys below the run
    location: TableLocation
    schema: pa.Schema


def closed_run_tables(catalog: sqlite3.Connection) -> list[SourceTable]:
    """The tables in SQL storage of the runs whose stop document is written (the run's node
    metadata holds ``stop``, as bluesky-tiled-plugins' writer puts it)."""
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
        where = TableLocation(parameters["table_name"], int(parameters["dataset_id"]))
        out.append(SourceTable(source, run, _keys_below(catalog, node, run_id), where, schema))
    return out


def parquet_partition_path(data_dir: Path, keys: list[str], partition: int = 0) -> Path:
    """Where Tiled puts a partition of the Parquet table node at ``keys`` (from the root)."""
    return Path(data_dir).joinpath(*keys, f"partition-{partition}.parquet")


def point_at_parquet(catalog: sqlite3.Connection, data_source: int, path: Path,
                     properties: dict[str, Any]) -> None:
    """In one transaction, make the SQL table ``data_source`` the Parquet file ``path``
    (same structure, one partition), with ``properties``. Raise ``RuntimeError`` (nothing
    changed) when the data source is no longer a SQL table."""
    from tiled.utils import ensure_uri

    size = Path(path).stat().st_size
    with catalog:  # BEGIN ... COMMIT (ROLLBACK on error)
        asset = catalog.execute(
            "INSERT INTO assets (data_uri, is_directory, size) VALUES (?, 0, ?)",
            (ensure_uri(str(path)), size)).lastrowid
        catalog.execute("DELETE FROM data_source_asset_association "
                        "WHERE data_source_id = ?", (data_source,))
        catalog.execute(
            "INSERT INTO data_source_asset_association "
            "(data_source_id, asset_id, parameter, num) VALUES (?, ?, 'data_uris', 0)",
            (data_source, asset))
        switched = catalog.execute(
            "UPDATE data_sources SET mimetype = ?, parameters = '{}', properties = ?, "
            "management = 'immutable' WHERE id = ? AND mimetype = ?",
            (PARQUET, json.dumps(properties), data_source, SQL_TABLE))
        if switched.rowcount != 1:  # switched by another pass meanwhile: undo ours
            raise RuntimeError(f"data source {data_source} is no longer SQL")


def asset_paths(data_uris: str | list[str]) -> list[Path]:
    """The files of a data source's assets (Tiled's ``file://`` URIs, one per partition)."""
    from tiled.utils import path_from_uri

    return [path_from_uri(uri) for uri in ([data_uris] if isinstance(data_uris, str)
                                           else data_uris)]


def compacted_sources(catalog: sqlite3.Connection, key: str) -> list[tuple[int, dict]]:
    """(id, ``properties[key]``) of the Parquet data sources whose
    ``properties[key]["deleted"]`` is false."""
    rows = catalog.execute(
        "SELECT id, json_extract(properties, ?) FROM data_sources "
        "WHERE mimetype = ? AND json_extract(properties, ?) = 0",
        (f"$.{key}", PARQUET, f"$.{key}.deleted")).fetchall()
    return [(source, json.loads(value)) for source, value in rows]


def set_properties(catalog: sqlite3.Connection, data_source: int,
                   properties: dict[str, Any]) -> None:
    with catalog:
        catalog.execute("UPDATE data_sources SET properties = ? WHERE id = ?",
                        (json.dumps(properties), data_source))


def _keys_below(catalog: sqlite3.Connection, node: int, top: int) -> list[str]:
    """The node keys from below node ``top`` down to ``node``."""
    keys = []
    while node != top:
        key, node = catalog.execute("SELECT key, parent FROM nodes WHERE id = ?",
                                    (node,)).fetchone()
        keys.append(key)
    return keys[::-1]


# -- the catalog's schema ---------------------------------------------------------------------
def init_catalog(uri: ArchiveURI) -> None:
    """Create Tiled's catalog schema in the archive's database, as ``tiled catalog init``
    does.

    Tiled's own ``init_if_not_exists`` runs that command in a new Python process (3-6 s,
    most of it imports); this does its two steps in this process, on a thread of their own
    (both run event loops of their own): create the tables, stamp the alembic revision.
    """
    from sqlalchemy.ext.asyncio import create_async_engine
    from tiled.alembic_utils import stamp_head
    from tiled.catalog.alembic_constants import ALEMBIC_DIR, ALEMBIC_INI_TEMPLATE_PATH
    from tiled.catalog.core import initialize_database
    from tiled.utils import ensure_specified_sql_driver

    url = ensure_specified_sql_driver(uri.catalog)

    async def create_tables() -> None:
        engine = create_async_engine(url)
        try:
            await initialize_database(engine)
        finally:
            await engine.dispose()

    failed: list[BaseException] = []

    def init() -> None:
        try:
            asyncio.run(create_tables())
            stamp_head(ALEMBIC_INI_TEMPLATE_PATH, ALEMBIC_DIR, url)
        except BaseException as err:  # noqa: BLE001 - raised again in the caller's thread
            failed.append(err)

    thread = threading.Thread(target=init, name="warden-catalog-init")
    thread.start()
    thread.join()
    if failed:
        raise failed[0]


def catalog_initialized(uri: ArchiveURI) -> bool:
    """Whether the archive's database has Tiled's catalog schema (a restart skips
    :func:`init_catalog`); False also when it cannot be asked (Tiled then says why)."""
    query = "SELECT count(*) FROM alembic_version"
    try:
        if uri.scheme == "sqlite":
            if not uri.path.exists():
                return False
            with contextlib.closing(sqlite3.connect(f"file:{uri.path}?mode=ro", uri=True)) as db:
                return db.execute(query).fetchone()[0] > 0
        import asyncpg

        async def count() -> int:
            conn = await asyncpg.connect(uri.dsn, timeout=10)
            try:
                return await conn.fetchval(query)
            finally:
                await conn.close()

        return asyncio.run(count()) > 0
    except Exception:  # noqa: BLE001 - no table, no file, no server: let Tiled say why
        return False


# -- the app ------------------------------------------------------------------------------------
class _StartupOverrides(dict):
    """An app's ``dependency_overrides`` that FastAPI's request handling does not see."""

    def __bool__(self) -> bool:
        return False


def settle_settings_override(app) -> None:
    """Apply Tiled's settings override once, and keep FastAPI from rebuilding every route's
    dependencies on every request because of it.

    Tiled's ``build_app`` overrides its ``get_settings`` dependency with a cached function
    that writes the app's settings into the one cached ``Settings`` object and returns that
    object. While an app has any override, FastAPI rebuilds the dependency tree of each
    request (``inspect.signature`` of every dependency, several dozen per Tiled route):
    about half of a metadata request's time (15 ms -> 7 ms; stream creation 27 -> 19 ms a
    container; benchmarks/README.md). Once the override has run, ``get_settings()`` returns
    the very object it would, so requests call ``get_settings`` itself; Tiled's startup and
    shutdown hooks, which look the override up by key, still find it.
    """
    from tiled.server.settings import get_settings

    app.dependency_overrides[get_settings]()  # (what Tiled's startup hook does first)
    app.dependency_overrides = _StartupOverrides(app.dependency_overrides)


_SORTING = [{"key": "_", "direction": 1}]  # a MapAdapter's default: the given order


def node_metadata_body(request, path: list[str], metadata: dict[str, Any]
                       ) -> tuple[bytes, str, str]:
    """(body, media type, ETag) of Tiled's ``GET /api/v1/metadata/<path>`` for a leaf-less
    ``MapAdapter`` node with ``metadata``, as ``request`` asks for it (JSON or msgpack).

    The body is Tiled's, byte for byte; the ETag is the body's MD5 (Tiled's is that of the
    content's ``str``: as good a tag, and dearer).
    """
    from tiled.links import links_for_node
    from tiled.server.core import resolve_media_type
    from tiled.server.utils import get_base_url
    from tiled.structures.core import StructureFamily
    from tiled.utils import safe_json_dump

    path_str = "/".join(path)
    links = links_for_node(StructureFamily.container, None, get_base_url(request), path_str)
    content = {
        "data": {
            "id": path[-1],
            "attributes": {
                "ancestors": list(path[:-1]),
                "structure_family": "container",
                "specs": [],
                "metadata": metadata,
                "structure": {"contents": None, "count": 0},
                "access_tags": None,
                "sorting": _SORTING,
                "data_sources": None,
            },
            "links": {"self": links["self"], "search": links["search"],
                      "search_deep": links["search_deep"], "full": links["full"]},
            "meta": None,
        },
        "error": None,
        "links": None,
        "meta": {},
    }
    if resolve_media_type(request) == "application/x-msgpack":
        body = msgpack.packb(content, default=msgpack_default, datetime=True)
        media_type = "application/x-msgpack"
    else:
        body = safe_json_dump(content)  # Tiled's: orjson, numpy, NaN as null
        media_type = "application/json"
    return body, media_type, hashlib.md5(body, usedforsecurity=False).hexdigest()


def msgpack_default(obj: Any) -> Any:
    """What Tiled's msgpack responses do with what msgpack can't pack."""
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(obj, numpy.generic | numpy.ndarray):
        return obj.item() if numpy.isscalar(obj) else obj.tolist()
    if isinstance(obj, uuid.UUID):
        return str(obj)
    return obj


def __getattr__(name: str) -> Any:
    if name in _SERVER_NAMES:
        import importlib

        return getattr(importlib.import_module(_SERVER_NAMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

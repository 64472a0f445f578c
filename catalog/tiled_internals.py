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
- many stream nodes and their tables created in one catalog transaction, as Tiled's
  ``create_node`` would create them one by one (:func:`create_streams`), and a prepared run
  node taken over by the run it was prepared for;
- creating the catalog's schema in this process (:func:`init_catalog`, what
  ``tiled catalog init`` does) and telling whether it is there (:func:`catalog_initialized`);
- the app's settings override (:func:`settle_settings_override`);
- the body of Tiled's metadata route for a leaf-less node (:func:`node_metadata_body`), and
  the pieces of Tiled's server a route answering ahead of Tiled's needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
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


def append_rows(cursor, table_name: str, table: pa.Table, dataset_ids: list[int],
                partition: int = 0) -> None:
    """Append ``table`` (rows of several nodes whose rows the SQL table ``table_name``
    keeps; ``dataset_ids``: each row's node) in one ingest, with an ADBC ``cursor`` of the
    storage: what ``SQLAdapter.append_partition`` does for each node (its rows in their
    order, after those it has); the caller commits."""
    n = len(table)
    table = table.add_column(0, pa.field("_partition_id", pa.int16()),
                             [np.full(n, partition, np.int16)])
    table = table.add_column(0, pa.field("_dataset_id", pa.int32()),
                             [np.asarray(dataset_ids, np.int32)])
    table = table.rename_columns([c.lower() for c in table.column_names])
    cursor.adbc_ingest(table_name, table, mode="append")


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


# -- streams in bulk ---------------------------------------------------------------------------
@dataclass
class NewStream:
    """A stream node to have, with its appendable ``internal`` table (see
    :func:`create_streams`)."""

    key: str
    metadata: dict[str, Any]
    specs: list[dict[str, Any]]
    schema: pa.Schema  # of the internal table
    table_metadata: dict[str, Any]


def create_streams(uri: ArchiveURI, tables, run_key: str, run_metadata: dict[str, Any],
                   run_specs: list[dict[str, Any]], streams: list[NewStream],
                   take_over: str | None = None) -> dict[str, TableLocation]:
    """Have the run node ``run_key`` and each of ``streams`` below it, each stream with its
    ``internal`` table, in one transaction of the catalog; return where the rows of each
    stream's table go, for the streams created and those prepared (below).

    What Tiled's ``create_node`` does for a container, then for an appendable SQL table, for
    every node, in bulk: the storage tables and dataset ids first, with ``tables`` (an ADBC
    connection to the table storage, committed here), then the nodes, structures, data
    sources and asset links. A stream that exists is left as it is, unless its metadata holds
    ``prepared``: then it takes the given metadata (its table is made again if the schema
    differs). ``take_over``: the key of a prepared run node that becomes ``run_key`` (its
    metadata replaced) when no node ``run_key`` exists.
    """
    from tiled.structures.table import TableStructure

    plans, of_schema = {}, {}  # (streams of one schema share its structure and table)
    structure_ids: dict[str, str] = {}  # SQL table name -> its structure's id
    for stream in streams:
        if stream.schema not in of_schema:
            structure = dataclasses.asdict(TableStructure.from_schema(stream.schema))
            name = "table_" + hashlib.md5(structure["arrow_schema"].encode()).hexdigest()
            of_schema[stream.schema] = (structure, name.lower())
            structure_ids[name.lower()] = _structure_id(structure)
        plans[stream.key] = (stream, *of_schema[stream.schema])
    ids = iter(_dataset_ids(uri, tables, plans.values(), len(streams)))

    async def write() -> dict[str, TableLocation]:
        from sqlalchemy.ext.asyncio import create_async_engine

        engine = create_async_engine(_catalog_url(uri))
        try:
            async with engine.begin() as conn:
                return await _create_in_catalog(conn, uri, run_key, run_metadata, run_specs,
                                                plans, structure_ids, ids, take_over)
        finally:
            await engine.dispose()

    return _run_async(write)


def _dataset_ids(uri: ArchiveURI, tables, plans, n: int) -> list[int]:
    """Make the storage tables ``plans`` need, as ``SQLAdapter.init_storage`` does, and
    take ``n`` dataset ids of the storage's counter; commit."""
    from tiled.adapters.sql import arrow_schema_to_create_table

    dialect = "sqlite" if uri.scheme == "sqlite" else "postgresql"
    made = set()
    with tables.cursor() as cursor:
        for stream, _, name in plans:
            if name in made:
                continue
            schema = stream.schema.insert(0, pa.field("_partition_id", pa.int16()))
            schema = schema.insert(0, pa.field("_dataset_id", pa.int32()))
            cursor.execute(arrow_schema_to_create_table(schema, name, dialect))
            cursor.execute("CREATE INDEX IF NOT EXISTS dataset_and_partition_index "
                           f'ON "{name}"(_dataset_id, _partition_id)')
            made.add(name)
        if dialect == "sqlite":
            cursor.execute("CREATE TABLE IF NOT EXISTS _dataset_id_counter "
                           "(value INTEGER NOT NULL)")
            cursor.execute("INSERT INTO _dataset_id_counter (value) "
                           "SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM _dataset_id_counter)")
            cursor.execute(f"UPDATE _dataset_id_counter SET value = value + {int(n)} "
                           "RETURNING value")
            (last,) = cursor.fetchone()
            ids = list(range(last - n + 1, last + 1))
        else:
            cursor.execute("CREATE SEQUENCE IF NOT EXISTS _dataset_id_counter")
            cursor.execute(f"SELECT nextval('_dataset_id_counter') FROM "
                           f"generate_series(1, {int(n)})")
            ids = [row[0] for row in cursor.fetchall()]
    tables.commit()
    return ids


async def _create_in_catalog(conn, uri, run_key, run_metadata, run_specs, plans,
                             structure_ids, ids, take_over) -> dict[str, TableLocation]:
    from sqlalchemy import bindparam, select, update
    from tiled.catalog import orm
    from tiled.structures.core import StructureFamily
    from tiled.structures.data_source import Management

    nodes = orm.Node.__table__
    root = (await conn.execute(select(nodes.c.id).where(nodes.c.parent.is_(None)))).scalar_one()
    run = await _child_id(conn, root, run_key)
    if run is None and take_over is not None:
        run = await _child_id(conn, root, take_over)
        if run is not None:
            await conn.execute(update(nodes).where(nodes.c.id == run).values(
                key=run_key, metadata=run_metadata))
    if run is None:
        run = (await conn.execute(nodes.insert().returning(nodes.c.id).values(
            key=run_key, parent=root, structure_family=StructureFamily.container,
            metadata=run_metadata, specs=run_specs))).scalar_one()

    children = dict((await conn.execute(
        select(nodes.c.key, nodes.c.id).where(nodes.c.parent == run))).all())
    have = {}  # key -> (node, prepared?) of the streams asked for that exist
    asked = [key for key in plans if key in children]
    prepared_day = nodes.c.metadata["prepared"].as_string()  # (not each metadata decoded)
    for part in range(0, len(asked), 1000):
        have.update({key: (node, day is not None) for node, key, day in (await conn.execute(
            select(nodes.c.id, nodes.c.key, prepared_day).where(
                nodes.c.parent == run, nodes.c.key.in_(asked[part:part + 1000]))))})
    new = [key for key in plans if key not in have]
    if new:
        await conn.execute(nodes.insert(), [
            {"key": key, "parent": run, "structure_family": StructureFamily.container,
             "metadata": plans[key][0].metadata, "specs": plans[key][0].specs} for key in new])
        made = set(new)
        have.update({key: (node, False) for node, key in (await conn.execute(
            select(nodes.c.id, nodes.c.key).where(nodes.c.parent == run))) if key in made})
    prepared = [key for key in plans if have[key][1]]

    if prepared:
        await conn.execute(update(nodes).where(nodes.c.id == bindparam("b_node")).values(
            metadata=bindparam("b_metadata")),
            [{"b_node": have[key][0], "b_metadata": plans[key][0].metadata}
             for key in prepared])
    tables_for, locations = list(new), {}
    made = await _tables_of(conn, [have[key][0] for key in prepared])
    for key in prepared:
        table, made_id, parameters = made.get(have[key][0], (None, None, None))
        if made_id == structure_ids[plans[key][2]]:
            locations[key] = TableLocation(parameters["table_name"],
                                           int(parameters["dataset_id"]))
            continue
        if table is not None:
            await _delete_leaf(conn, table)
        tables_for.append(key)

    if tables_for:
        rows = [{"key": "internal", "parent": have[key][0],
                 "structure_family": StructureFamily.table,
                 "metadata": plans[key][0].table_metadata, "specs": []} for key in tables_for]
        await conn.execute(nodes.insert(), rows)
        table_nodes = dict((await conn.execute(select(nodes.c.parent, nodes.c.id).where(
            nodes.c.key == "internal",
            nodes.c.parent.in_(select(nodes.c.id).where(nodes.c.parent == run))))).all())
        insert = _insert_for(conn)
        await conn.execute(insert(orm.Structure.__table__).on_conflict_do_nothing(
            index_elements=["id"]), [{"id": structure_ids[plans[key][2]],
                                     "structure": plans[key][1]} for key in tables_for])
        sources = []
        for key in tables_for:
            stream, structure, name = plans[key]
            where = locations[key] = TableLocation(name, next(ids))
            sources.append({
                "node_id": table_nodes[have[key][0]], "structure_id": structure_ids[name],
                "mimetype": SQL_TABLE, "management": Management.writable,
                "structure_family": StructureFamily.table, "properties": {},
                "parameters": {"table_name": name, "dataset_id": where.dataset_id}})
        await conn.execute(orm.DataSource.__table__.insert(), sources)
        source_of = {table: source for table, source in (await conn.execute(
            select(orm.DataSource.__table__.c.node_id, orm.DataSource.__table__.c.id).where(
                orm.DataSource.__table__.c.node_id.in_(
                    select(nodes.c.id).where(nodes.c.parent.in_(
                        select(nodes.c.id).where(nodes.c.parent == run)))))))}
        asset = await _storage_asset(conn, uri)
        await conn.execute(orm.DataSourceAssetAssociation.__table__.insert(), [
            {"data_source_id": source_of[table_nodes[have[key][0]]], "asset_id": asset,
             "parameter": "data_uri", "num": None} for key in tables_for])
    return locations


async def _tables_of(conn, streams: list[int]) -> dict[int, tuple[int, str | None, dict | None]]:
    """The ``internal`` table of each of the stream nodes ``streams``: stream node ->
    (table node, its data source's structure id and parameters, None if it has none)."""
    from sqlalchemy import select
    from tiled.catalog import orm

    nodes, sources = orm.Node.__table__, orm.DataSource.__table__
    out = {}
    for part in range(0, len(streams), 1000):
        rows = await conn.execute(
            select(nodes.c.parent, nodes.c.id, sources.c.structure_id, sources.c.parameters)
            .select_from(nodes.outerjoin(sources, sources.c.node_id == nodes.c.id))
            .where(nodes.c.key == "internal", nodes.c.parent.in_(streams[part:part + 1000])))
        out.update({stream: (table, structure, parameters)
                    for stream, table, structure, parameters in rows})
    return out


async def _child_id(conn, parent: int, key: str) -> int | None:
    from sqlalchemy import select
    from tiled.catalog import orm

    nodes = orm.Node.__table__
    return (await conn.execute(select(nodes.c.id).where(
        nodes.c.parent == parent, nodes.c.key == key))).scalar_one_or_none()


async def _delete_leaf(conn, node: int) -> None:
    """Delete a node without children, its data sources and their asset links (SQLite does
    not cascade: Tiled does not turn its foreign keys on)."""
    from sqlalchemy import delete, select
    from tiled.catalog import orm

    sources = orm.DataSource.__table__
    links = orm.DataSourceAssetAssociation.__table__
    closure = orm.NodesClosure.__table__
    mine = select(sources.c.id).where(sources.c.node_id == node).scalar_subquery()
    await conn.execute(delete(links).where(links.c.data_source_id.in_(mine)))
    await conn.execute(delete(sources).where(sources.c.node_id == node))
    await conn.execute(delete(closure).where(closure.c.descendant == node))
    await conn.execute(delete(orm.Node.__table__).where(orm.Node.__table__.c.id == node))


def _structure_id(structure: dict[str, Any]) -> str:
    from tiled.catalog.utils import compute_structure_id

    return compute_structure_id(structure)


def _insert_for(conn):
    if conn.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        from sqlalchemy.dialects.postgresql import insert
    return insert


async def _storage_asset(conn, uri: ArchiveURI) -> int:
    """The asset row of the table storage, as ``SQLAdapter.init_storage`` names it."""
    from sqlalchemy import select
    from tiled.catalog import orm
    from tiled.storage import (
        parse_storage,
        strip_connection_parameters,
        strip_storage_uri_query_on_write,
    )

    data_uri = parse_storage(uri.tables).uri
    if strip_storage_uri_query_on_write():
        data_uri = strip_connection_parameters(data_uri)
    assets = orm.Asset.__table__
    found = (await conn.execute(select(assets.c.id).where(
        assets.c.data_uri == data_uri))).scalar_one_or_none()
    if found is not None:
        return found
    return (await conn.execute(assets.insert().returning(assets.c.id).values(
        data_uri=data_uri, is_directory=False))).scalar_one()


def _catalog_url(uri: ArchiveURI) -> str:
    from tiled.utils import ensure_specified_sql_driver

    return ensure_specified_sql_driver(uri.catalog)


def _run_async(make) -> Any:
    """``asyncio.run(make())`` on a thread of its own (the caller's may run a loop)."""
    return _on_own_thread(lambda: asyncio.run(make()))


def _on_own_thread(call) -> Any:
    """``call()`` on a thread of its own, which may run an event loop; its result or error."""
    out: list[Any] = []
    failed: list[BaseException] = []

    def run() -> None:
        try:
            out.append(call())
        except BaseException as err:  # noqa: BLE001 - raised again in the caller's thread
            failed.append(err)

    thread = threading.Thread(target=run, name="warden-catalog")
    thread.start()
    thread.join()
    if failed:
        raise failed[0]
    return out[0]


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

    def init() -> None:
        asyncio.run(create_tables())
        stamp_head(ALEMBIC_INI_TEMPLATE_PATH, ALEMBIC_DIR, url)

    _on_own_thread(init)


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

"""What ``catalog.tiled_internals`` relies on, checked against the installed Tiled.

These fail when a Tiled release changes what the warden reads and writes below Tiled's
public API: the catalog schema's revision, the catalog's tables and columns, the layout of
appendable tables, the body of the metadata route. The app is Tiled's own (``build_app``),
on the warden's catalog, read through Tiled's own client. PostgreSQL too when
``WARDEN_TEST_POSTGRES_URI`` is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import secrets
import sqlite3
from pathlib import Path

import msgpack
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from starlette.responses import Response
from starlette.routing import Route
from tiled.adapters.mapping import MapAdapter
from tiled.catalog.alembic_constants import ALEMBIC_DIR
from tiled.client import from_context
from tiled.client.context import Context
from tiled.config import Authentication
from tiled.server.app import build_app

from catalog import tiled_internals
from catalog.direct import DirectTables
from catalog.server import sql_catalog
from catalog.uri import ArchiveURI

ROOT = Path(__file__).resolve().parent.parent
POSTGRES = os.environ.get("WARDEN_TEST_POSTGRES_URI")
KEY = "internals0123456789"
SCHEMA = pa.schema([("time", pa.float64()), ("seq_num", pa.int64()), ("wcmBeam", pa.float64()),
                    ("ts_wcmBeam", pa.float64()), ("fillNumber", pa.int64()),
                    ("species", pa.string())])


def page(start: int, n: int) -> pa.Table:
    """``n`` rows of a stream's table, mixed-case names as the warden's attributes have."""
    i = np.arange(start, start + n)
    return pa.table({"time": 1e9 + i * 0.1, "seq_num": i + 1, "wcmBeam": np.sin(i) * 16.0,
                     "ts_wcmBeam": 1e9 + i * 0.1 - 0.01, "fillNumber": 34000 + i // 7,
                     "species": ["Au" if k % 3 else "p" for k in i]}, schema=SCHEMA)


@pytest.fixture(params=["sqlite", "postgresql"])
def archive(request, tmp_path):
    """A URI of an empty archive (a database of its own on PostgreSQL), dropped afterwards."""
    if request.param == "sqlite":
        yield ArchiveURI.parse(f"sqlite:///{tmp_path / 'archive.db'}")
        return
    if not POSTGRES:
        pytest.skip("WARDEN_TEST_POSTGRES_URI is not set")
    admin = ArchiveURI.parse(POSTGRES)
    name = f"warden_internals_{secrets.token_hex(4)}"
    _postgres(admin, f'CREATE DATABASE "{name}"')
    try:
        yield ArchiveURI.parse(admin.with_database(name))
    finally:
        _postgres(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _postgres(admin: ArchiveURI, sql: str):
    import asyncpg

    async def run():
        conn = await asyncpg.connect(admin.dsn, timeout=10)
        try:
            return await conn.fetch(sql)
        finally:
            await conn.close()

    return asyncio.run(run())


@contextlib.contextmanager
def tiled_client(tree):
    """Tiled's client of Tiled's app serving ``tree`` (in process, over its HTTP API)."""
    app = build_app(tree, authentication=Authentication(single_user_api_key=KEY))
    with Context.from_app(app) as context:
        yield from_context(context), context


def catalog_columns(archive: ArchiveURI) -> dict[str, set[str]]:
    """Tables and their columns in the archive's catalog database."""
    if archive.scheme == "sqlite":
        with contextlib.closing(sqlite3.connect(archive.path)) as db:
            tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master "
                                                "WHERE type = 'table'")]
            return {t: {row[1] for row in db.execute(f'PRAGMA table_info("{t}")')}
                    for t in tables}
    columns: dict[str, set[str]] = {}
    for row in _postgres(archive, "SELECT table_name, column_name FROM "
                                  "information_schema.columns WHERE table_schema = 'public'"):
        columns.setdefault(row["table_name"], set()).add(row["column_name"])
    return columns


def catalog_revision(archive: ArchiveURI) -> list[str]:
    query = "SELECT version_num FROM alembic_version"
    if archive.scheme == "sqlite":
        with contextlib.closing(sqlite3.connect(archive.path)) as db:
            return [v for (v,) in db.execute(query)]
    return [row["version_num"] for row in _postgres(archive, query)]


def test_the_installed_tiled_has_the_catalog_schema_we_are_written_for():
    config = Config()
    config.set_main_option("script_location", ALEMBIC_DIR)
    assert ScriptDirectory.from_config(config).get_heads() == [tiled_internals.ALEMBIC_HEAD]


def test_a_fresh_catalog_has_every_table_and_column_we_use(archive):
    assert not tiled_internals.catalog_initialized(archive)
    sql_catalog(archive)
    assert tiled_internals.catalog_initialized(archive)
    assert catalog_revision(archive) == [tiled_internals.ALEMBIC_HEAD]
    found = catalog_columns(archive)
    missing = {table: sorted(columns - found.get(table, set()))
               for table, columns in tiled_internals.CATALOG_COLUMNS.items()
               if columns - found.get(table, set())}
    assert missing == {}


def test_rows_appended_directly_read_back_as_rows_appended_through_tiled(archive):
    pages = [page(0, 5), page(5, 1), page(6, 1000)]
    with tiled_client(sql_catalog(archive)) as (client, _):
        through = client.create_appendable_table(SCHEMA, key="through-tiled")
        direct = client.create_appendable_table(SCHEMA, key="direct")
        for rows in pages:
            through.append_partition(0, rows)
        tables = DirectTables(archive)
        where = DirectTables.location(direct)
        try:
            for rows in pages:
                tables.append(where, rows.schema, rows.to_pydict())
                tables.commit()
        finally:
            tables.close()
        # the very table Tiled appends to, the direct rows under their own node's dataset
        assert where.table_name == tiled_internals.table_location(through).table_name
        assert where.dataset_id != tiled_internals.table_location(through).dataset_id

        expected = pa.concat_tables(pages).to_pandas()
        by_tiled = through.read()
        pd.testing.assert_frame_equal(by_tiled, expected, check_dtype=False)  # (str's NA)
        pd.testing.assert_frame_equal(direct.read(), by_tiled)
        columns = ["wcmBeam", "species"]  # (in the order Tiled answers them, for both nodes)
        pd.testing.assert_frame_equal(direct.read(columns), through.read(columns))
        np.testing.assert_array_equal(direct["fillNumber"].read(),
                                      by_tiled["fillNumber"].to_numpy())


def test_rows_of_several_nodes_appended_in_one_commit_read_back_each_in_its_order(archive):
    with tiled_client(sql_catalog(archive)) as (client, _):
        nodes = [client.create_appendable_table(SCHEMA, key=f"stream{i}") for i in range(3)]
        wheres = [DirectTables.location(node) for node in nodes]
        assert len({w.table_name for w in wheres}) == 1  # one SQL table holds all three
        sent: dict[int, list[pa.Table]] = {0: [], 1: [], 2: []}
        tables = DirectTables(archive)
        try:
            for k, (i, start, n) in enumerate([(0, 0, 3), (1, 0, 1), (0, 3, 2), (2, 0, 4),
                                               (1, 1, 2), (0, 5, 1)]):
                rows = page(start + 100 * i, n)
                sent[i].append(rows)
                tables.append(wheres[i], rows.schema, rows.to_pydict())
                if k == 3:
                    tables.commit()  # (what came before lands; the rest waits)
            assert nodes[1].read()["seq_num"].tolist() == [101]
            tables.commit()
        finally:
            tables.close()
        for i, node in enumerate(nodes):
            expected = pa.concat_tables(sent[i]).to_pandas()
            pd.testing.assert_frame_equal(node.read(), expected, check_dtype=False)


def test_rows_read_and_deleted_in_the_storage_are_tiled_s(tmp_path):
    archive = ArchiveURI.parse(f"sqlite:///{tmp_path / 'archive.db'}")
    import adbc_driver_sqlite.dbapi

    with tiled_client(sql_catalog(archive)) as (client, _):
        node = client.create_appendable_table(SCHEMA, key="t")
        node.append_partition(0, page(0, 30))
        where = tiled_internals.table_location(node)
        with contextlib.closing(adbc_driver_sqlite.dbapi.connect(str(archive.tables_path))) as db:
            chunks = list(tiled_internals.read_rows(db, where, SCHEMA, chunk=1))
            assert pa.concat_tables(chunks).equals(page(0, 30))
            assert tiled_internals.delete_rows(db, where, limit=20) == 20
            assert tiled_internals.delete_rows(db, where, limit=20) == 10
        assert len(node.read()) == 0


TILED_RUN, BULK_RUN, TOMORROW = (f"{n}0000000-0000-4000-8000-000000000000" for n in "abc")
RUN_SPECS = [{"name": "BlueskyRun", "version": "3.0"}]
STREAM_SPECS = [{"name": "BlueskyEventStream", "version": "3.0"},
                {"name": "composite", "version": None}]
OTHER = pa.schema([("time", pa.float64()), ("seq_num", pa.int64()), ("a0", pa.float64())])


def node_as_served(node) -> dict:
    """What Tiled's client is told of a node, without what differs from node to node."""
    attributes = {k: v for k, v in node.item["attributes"].items()
                  if k not in ("ancestors", "data_sources", "structure")}
    sources = []
    for source in node.data_sources() or []:
        parameters = {k: v for k, v in source.parameters.items() if k != "dataset_id"}
        assets = [(a.data_uri, a.parameter, a.num, a.is_directory) for a in source.assets]
        sources.append((source.mimetype, source.management, source.structure_family,
                        source.properties, parameters, dataclasses.asdict(source.structure)
                        if dataclasses.is_dataclass(source.structure) else source.structure,
                        assets))
    return {"attributes": attributes, "sources": sources}


def test_streams_created_in_bulk_are_served_as_streams_created_through_tiled(archive):
    from tiled.structures.core import Spec

    run_md = {"start": {"uid": "r", "day": "2001-11-06"}}  # (the same for both)
    stream_md = {"data_keys": {"wcmBeam": {"dtype": "number"}}, "uid": "d1"}
    table_md = {"wcmBeam": {"dtype": "number", "source": "sim"}}
    with tiled_client(sql_catalog(archive)) as (client, _):
        run = client.create_container(key=TILED_RUN, metadata=run_md,
                                      specs=[Spec("BlueskyRun", version="3.0")])
        stream = run.create_container(key="yi2-wcm3", metadata=stream_md, specs=[
            Spec("BlueskyEventStream", version="3.0"), Spec("composite")])
        stream.create_appendable_table(SCHEMA, key="internal", metadata=table_md)

        tables = DirectTables(archive)
        try:
            wanted = [tiled_internals.NewStream(name, stream_md, STREAM_SPECS, SCHEMA, table_md)
                      for name in ("yi2-wcm3", "bo2-wcm1")]
            made = tiled_internals.create_streams(archive, tables._connect(), BULK_RUN, run_md,
                                                  RUN_SPECS, wanted)
            assert sorted(made) == ["bo2-wcm1", "yi2-wcm3"]
            again = tiled_internals.create_streams(archive, tables._connect(), BULK_RUN, run_md,
                                                   RUN_SPECS, wanted)
            assert again == {}  # there already: left as they are
            for rows in (page(0, 5), page(5, 7)):
                tables.append(made["yi2-wcm3"], rows.schema, rows.to_pydict())
            tables.commit()

            for path in ([], ["yi2-wcm3"], ["yi2-wcm3", "internal"]):
                ours, tileds = client[BULK_RUN], client[TILED_RUN]
                for key in path:  # (a composite stream hides its table)
                    ours, tileds = ours.base[key], tileds.base[key]
                assert node_as_served(ours) == node_as_served(tileds)
            assert sorted(client[BULK_RUN]) == ["bo2-wcm1", "yi2-wcm3"]
            internal = client[BULK_RUN]["yi2-wcm3"].base["internal"]
            assert made["yi2-wcm3"] == DirectTables.location(internal)
            pd.testing.assert_frame_equal(internal.read(),
                                          pa.concat_tables([page(0, 5), page(5, 7)]).to_pandas(),
                                          check_dtype=False)
            assert len(client[BULK_RUN]["bo2-wcm1"].base["internal"].read()) == 0

            # tomorrow prepared under a key of its own, then taken over by its run
            prepared = {**stream_md, "prepared": "2001-11-07"}
            ahead = tiled_internals.create_streams(
                archive, tables._connect(), "prepared-2001-11-07", {"prepared": "2001-11-07"},
                RUN_SPECS, [tiled_internals.NewStream(n, prepared, STREAM_SPECS, SCHEMA, table_md)
                            for n in ("yi2-wcm3", "bo2-wcm1")])
            tomorrow = {"start": {"uid": TOMORROW, "day": "2001-11-07"}}
            taken = tiled_internals.create_streams(
                archive, tables._connect(), TOMORROW, tomorrow, RUN_SPECS,
                [tiled_internals.NewStream("yi2-wcm3", stream_md, STREAM_SPECS, SCHEMA, table_md),
                 tiled_internals.NewStream("bo2-wcm1", stream_md, STREAM_SPECS, OTHER, {})],
                take_over="prepared-2001-11-07")
            assert "prepared-2001-11-07" not in list(client)
            assert client[TOMORROW].metadata == tomorrow
            assert taken["yi2-wcm3"] == ahead["yi2-wcm3"]  # the table prepared is kept
            assert taken["bo2-wcm1"] != ahead["bo2-wcm1"]  # another schema: made again
            for name in ("yi2-wcm3", "bo2-wcm1"):
                assert client[TOMORROW][name].metadata == stream_md
                assert DirectTables.location(client[TOMORROW][name].base["internal"]) == taken[name]
            tables.append(taken["bo2-wcm1"], OTHER, {"time": [1.0], "seq_num": [1], "a0": [2.5]})
            tables.commit()
            assert client[TOMORROW]["bo2-wcm1"].base["internal"].read()["a0"].tolist() == [2.5]
        finally:
            tables.close()


def test_the_metadata_body_of_a_leafless_node_is_tiled_s():
    metadata = {"object": "yi2-wcm3", "connected": True, "time": 1_004_000_002.5,
                "attributes": {"wcmBeam": {"value": 16.4228, "timestamp": 1_004_000_002.5},
                               "bunches": {"value": [0.5, None, 2.5], "timestamp": 1e9},
                               "species": {"value": "Au", "timestamp": None}}}
    tree = MapAdapter({"latest": MapAdapter({"yi2-wcm3": MapAdapter({}, metadata=metadata)})})

    async def ours(request):
        body, media_type, etag = tiled_internals.node_metadata_body(
            request, ["latest", request.path_params["name"]], metadata)
        return Response(body, media_type=media_type, headers={"ETag": etag})

    with tiled_client(tree) as (client, context):
        context.http_client.app.router.routes.insert(
            0, Route("/api/v1/metadata/ours/{name}", ours))
        for accept in ("application/json", "application/x-msgpack", "*/*"):
            headers = {"Accept": accept}
            tiled = context.http_client.get("/api/v1/metadata/latest/yi2-wcm3", headers=headers)
            mine = context.http_client.get("/api/v1/metadata/ours/yi2-wcm3", headers=headers)
            assert tiled.status_code == mine.status_code == 200
            assert mine.headers["content-type"] == tiled.headers["content-type"]
            assert mine.content == tiled.content  # byte for byte
        body = msgpack.unpackb(mine.content) if "msgpack" in accept else mine.json()
        assert body["data"]["attributes"]["metadata"] == metadata
        assert client["latest"]["yi2-wcm3"].metadata == metadata


# Tiled's modules below its public API (clients, queries, adapters, structures, config,
# build_app, tiled.catalog.from_uri), and the imports of them still outside tiled_internals
# (file, module): the latest route's, and the server's logging config.
PRIVATE = re.compile(r"^\s*(?:from|import) (tiled\.(?:server\.(?!app\b)\w+|catalog\.\w+|"
                     r"alembic_utils|links|utils|storage|serialization)\b)", re.MULTILINE)
NOT_YET: set[tuple[str, str]] = set()


def test_only_tiled_internals_imports_tiled_s_insides():
    found = {(str(path.relative_to(ROOT)), module)
             for folder in ("catalog", "warden", "plans", "warden_devices")
             for path in sorted((ROOT / folder).rglob("*.py"))
             if path.name != "tiled_internals.py"
             for module in PRIVATE.findall(path.read_text())}
    assert found - NOT_YET == set()

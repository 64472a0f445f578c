"""Archive backends: what the ``archive`` URI of the config opens.

=====================================  =========================================================
``sqlite:///dir/archive.db``           Tiled SQL catalog on SQLite: run metadata in the file,
                                       tables in ``archive.tables.db``, arrays as zarr in
                                       ``archive.data/``
``postgresql://user@host:port/db``     Tiled SQL catalog *and* its tables in PostgreSQL; arrays
                                       as zarr under ``data_dir`` (a directory every server sees)
``mongodb://host:port/db``             databroker's normalized MongoDB layout (one document per
                                       run start, descriptor, event, stop), written by
                                       suitcase-mongo and served by databroker's ``MongoAdapter``
``mongomock://name/db``                the same layout in memory (tests, demos): every backend
                                       opened on one URI in one process shares the data
=====================================  =========================================================

Every backend has the same two faces, so the service never asks which one it has:

>>> backend = open_backend("postgresql://postgres@127.0.0.1:5432/warden")
>>> app = warden_app(backend.tree, ...)           # serve backend.tree at /archive
>>> write = backend.sink(server_url, api_key)     # (name, doc) -> None, put behind SpooledWriter

Readers never see the difference either: :class:`catalog.query.Archive` answers the same
frames over Tiled whatever is behind ``/archive``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from event_model import DocumentRouter

from .uri import ArchiveURI

Sink = Callable[[str, dict], None]

# A run still being written is re-read from MongoDB after this long (databroker's default
# is 2 s): about one flush interval, so what was written is soon queryable.
MONGO_PARTIAL_RUN_TTL = 0.5


class ArchiveUnavailable(ConnectionError):
    """The archive named by the URI cannot be opened (server down, no such database, ...)."""


class Backend(Protocol):
    """One archive: the Tiled adapter to serve at ``/archive`` and a way to write into it."""

    kind: str  # "sqlite" | "postgresql" | "mongodb"
    uri: ArchiveURI
    tree: Any  # the adapter served at /archive (may carry startup_tasks / shutdown_tasks)
    data_dir: Path | None  # where the backend keeps files on this machine (logs may go here)

    def sink(self, url: str, api_key: str) -> Sink:
        """The ``(name, doc)`` callable that writes documents (the service puts it behind
        :class:`~catalog.writer.SpooledWriter`).

        ``url`` and ``api_key`` are those of the Tiled server that serves :attr:`tree`;
        a backend that writes to its database directly ignores them.
        """

    def describe(self) -> str:
        """One line for people: which database, where (no password)."""

    def close(self) -> None:
        """Release connections (after the server and the writer have stopped)."""


def open_backend(uri: str | ArchiveURI, data_dir: str | Path | None = None,
                 init: bool = True) -> Backend:
    """Open the archive named by ``uri`` (creating its schema when ``init``).

    ``data_dir`` is where a PostgreSQL archive keeps its large arrays (default
    ``./warden-data/<db>.data``); the other backends ignore it.
    Raise :class:`ArchiveUnavailable` when the database cannot be reached,
    :class:`~catalog.uri.ArchiveURIError` for a URI that names no archive.
    """
    uri = ArchiveURI.parse(uri) if isinstance(uri, str) else uri
    if uri.scheme in ("sqlite", "postgresql"):
        return SQLBackend(uri, data_dir=data_dir, init=init)
    return MongoBackend(uri, init=init)


# -- Tiled SQL catalog: SQLite, PostgreSQL ------------------------------------------------------
@dataclass
class SQLBackend:
    """A Tiled SQL catalog (``CatalogOfBlueskyRuns`` 3.0), written through Tiled's HTTP API."""

    uri: ArchiveURI
    data_dir: Path | None = None
    init: bool = True
    kind: str = field(init=False)
    tree: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        from .server import sql_catalog

        self.kind = self.uri.scheme
        if self.kind == "sqlite":
            if not self.init and not self.uri.path.exists():
                raise ArchiveUnavailable(f"cannot open the archive {self.uri}: no such file")
            self.data_dir = self.uri.path.parent
        else:
            self.data_dir = Path(self.data_dir or self.uri.data_dir).resolve()
            _check_postgres(self.uri)
        self.tree = sql_catalog(self.uri, init=self.init, data_dir=self.data_dir)

    def sink(self, url: str, api_key: str) -> Sink:
        from tiled.client import from_uri

        from .direct import DirectTables
        from .writer import TiledRunSink

        return TiledRunSink(from_uri(url, api_key=api_key)["archive"], DirectTables(self.uri))

    def describe(self) -> str:
        if self.kind == "sqlite":
            return f"{self.uri.path} (SQLite)"
        return f"{self.uri} (PostgreSQL; arrays in {self.data_dir})"

    def close(self) -> None:
        pass  # the catalog's engines are disposed by the server's shutdown tasks


def _check_postgres(uri: ArchiveURI) -> None:
    """Fail early, and clearly, when the server or the database is not there."""
    import asyncio
    import concurrent.futures

    import asyncpg

    async def ping() -> None:
        conn = await asyncpg.connect(uri.dsn, timeout=10)
        await conn.close()

    try:  # on a thread of its own: the caller may be running an event loop (Jupyter)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, ping()).result()
    except (TimeoutError, OSError, asyncpg.PostgresError) as err:
        raise ArchiveUnavailable(f"cannot open the archive {uri}: {err}") from None


# -- MongoDB, databroker's normalized layout ----------------------------------------------------
_MOCK_CLIENTS: dict[str, Any] = {}
_MOCK_LOCK = threading.Lock()


def mongo_database(uri: ArchiveURI):
    """The pymongo (or, for ``mongomock://``, the process-wide mongomock) database of ``uri``."""
    if uri.scheme == "mongomock":
        import mongomock

        with _MOCK_LOCK:
            client = _MOCK_CLIENTS.setdefault(uri.host, mongomock.MongoClient())
        return client[uri.database]
    import pymongo
    import pymongo.errors

    client = pymongo.MongoClient(uri.text, serverSelectionTimeoutMS=10_000, tz_aware=False)
    try:
        client.admin.command("ping")
    except pymongo.errors.PyMongoError as err:
        client.close()
        raise ArchiveUnavailable(f"cannot open the archive {uri}: {err}") from None
    return client.get_database(uri.database)


def drop_mock(uri: str | ArchiveURI) -> None:
    """Forget a ``mongomock://`` server (tests)."""
    uri = ArchiveURI.parse(uri) if isinstance(uri, str) else uri
    with _MOCK_LOCK:
        _MOCK_CLIENTS.pop(uri.host, None)


@dataclass
class MongoBackend:
    """databroker's normalized MongoDB layout: served by ``MongoAdapter``, written by
    suitcase-mongo's ``Serializer`` straight into the database (one ``insert_many`` of events
    per event page), both on one client."""

    uri: ArchiveURI
    init: bool = True
    kind: str = field(default="mongodb", init=False)
    data_dir: Path | None = field(default=None, init=False)
    tree: Any = field(init=False, repr=False)
    database: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        import cachetools
        from databroker.mongo_normalized import MongoAdapter

        self.database = mongo_database(self.uri)
        # databroker's indexes (unique uids, run start time, text search); mongomock checks a
        # unique index by scanning the collection, so in memory there are none
        if self.init and self.uri.scheme != "mongomock":
            self.serializer().create_indexes()
        self.tree = MongoAdapter(
            metadatastore_db=self.database,
            asset_registry_db=self.database,
            handler_registry={},  # the warden writes no external (file-backed) data
            root_map={},
            transforms=None,
            cache_of_complete_bluesky_runs=cachetools.TTLCache(ttl=60, maxsize=100),
            cache_of_partial_bluesky_runs=cachetools.TTLCache(
                ttl=MONGO_PARTIAL_RUN_TTL, maxsize=100
            ),
            validate_shape=validate_shape,
        )

    def serializer(self):
        from suitcase.mongo_normalized import Serializer

        return Serializer(self.database, self.database)

    def sink(self, url: str = "", api_key: str = "") -> Sink:
        return MongoRunSink(self.serializer(), self.database)

    def describe(self) -> str:
        if self.uri.scheme == "mongomock":
            return f"{self.uri} (mongomock, in memory)"
        return f"{self.uri} (MongoDB)"

    def has_run(self, uid: str) -> tuple[bool, bool]:
        """(the run start is stored, its stop is stored)"""
        start = self.database["run_start"].find_one({"uid": uid}, {"_id": 1}) is not None
        stop = self.database["run_stop"].find_one({"run_start": uid}, {"_id": 1}) is not None
        return start, stop

    def delete_run(self, uid: str) -> None:
        """Remove every document of one run (an incomplete copy, before copying it again)."""
        db = self.database
        descriptors = [d["uid"] for d in db["event_descriptor"].find({"run_start": uid})]
        db["event"].delete_many({"descriptor": {"$in": descriptors}})
        db["event_descriptor"].delete_many({"run_start": uid})
        db["run_stop"].delete_many({"run_start": uid})
        db["run_start"].delete_many({"uid": uid})

    def close(self) -> None:
        if self.uri.scheme != "mongomock":
            self.database.client.close()


class MongoRunSink(DocumentRouter):
    """suitcase-mongo's serializer, made safe to write the same documents again (the spool
    replays them): documents whose uid is stored are skipped. Events are checked only for
    streams this sink did not start, or after a failed write (:meth:`resync`)."""

    def __init__(self, serializer, database):
        super().__init__()
        self.serializer, self.db = serializer, database
        self._known: set[str] = set()  # descriptor uids whose stored events we know

    def start(self, doc: dict) -> None:
        if not self._stored("run_start", "uid", doc):
            self.serializer("start", doc)

    def descriptor(self, doc: dict) -> None:
        if not self._stored("event_descriptor", "uid", doc):
            self._known.add(doc["uid"])
            self.serializer("descriptor", doc)

    def event_page(self, doc: dict) -> None:
        if doc["descriptor"] not in self._known:
            stored = {e["uid"] for e in self.db["event"].find({"uid": {"$in": doc["uid"]}},
                                                                  {"uid": 1})}
            if stored:
                keep = np.array([u not in stored for u in doc["uid"]])
                if not keep.any():
                    return
                from .writer import rows_where

                doc = rows_where(doc, keep)
        self.serializer("event_page", doc)
        self._known.add(doc["descriptor"])

    def stop(self, doc: dict) -> None:
        if not self._stored("run_stop", "run_start", doc):
            self.serializer("stop", doc)

    def resync(self) -> None:
        self._known.clear()

    def _stored(self, collection: str, key: str, doc: dict) -> bool:
        return self.db[collection].find_one({key: doc[key]}, {"_id": 1}) is not None


def validate_shape(key: str, data: np.ndarray, expected_shape: tuple, uid=None) -> np.ndarray:
    """databroker's shape check, except for timestamps of array data keys.

    databroker 2.0 checks every column of an event stream against the data key's shape, also
    the ``timestamps`` columns, whose values are scalars whatever the data's shape: reading
    the timestamp of an array attribute would fail. A scalar is passed through unchanged.
    """
    from databroker.mongo_normalized import default_validate_shape

    if data.ndim == 0 and len(expected_shape) > 0:
        return data
    return default_validate_shape(key, data, expected_shape, uid=uid)

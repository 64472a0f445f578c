"""The newest reading of every object, kept in memory and served as the Tiled node ``latest``.

:class:`LatestStore` reads the monitoring plan's buffers as updates arrive, so ``latest``
never touches history and does not wait for a flush. ``GET /api/v1/metadata/latest/<object>``
answers with :meth:`LatestStore.get`, through :func:`latest_route`: a plain route placed ahead
of Tiled's, which answers the same body as Tiled's metadata route for that node in a fraction
of its time (issue 4). Listing and search (``/api/v1/search/latest``) stay Tiled's node.

When the server runs in a process of its own (:mod:`warden.server_process`), the service's
:class:`LatestPublisher` copies the entries that changed into a small SQLite file every 0.1 s
and the server reads them with :class:`SharedLatest`, which answers as the store does.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import secrets
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import msgpack
import numpy as np
import packaging.version
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match, Route
from tiled.adapters.mapping import MapAdapter
from tiled.links import links_for_node
from tiled.server.app import current_principal
from tiled.server.core import resolve_media_type
from tiled.server.utils import get_base_url
from tiled.structures.core import StructureFamily
from tiled.utils import SingleUserPrincipal, safe_json_dump

if TYPE_CHECKING:
    from plans.buffer import ConnectionLog, ObjectBuffer


class LatestStore:
    """Newest value and upstream timestamp of every attribute of every object.

    Values are read from the monitoring plan's buffers (:meth:`follow`) as they arrive, not
    from the event pages the plan emits at each flush: ``latest`` is as fresh as the upstream
    updates (issue 4: the pages came up to a flush interval and a flush later). Connection
    states are read from the :class:`~plans.buffer.ConnectionLog` the same way. As a document
    callback the store only learns each stream's descriptor, to tell which object the archive
    writer's reports (:meth:`archived`) are about. An object with no buffer followed shows an
    empty entry.

    Reads may come from any thread. An entry is built when it is asked for and something has
    changed since the last one (:meth:`mark`), then kept; a published entry is never changed,
    so :meth:`get` copies nothing but its top level, whatever the size of the values.
    """

    def __init__(self, objects: list[str]):
        self._objects = dict.fromkeys(objects)  # (a dict: ordered, and quick to look in)
        self._buffers: dict[str, ObjectBuffer] = {}
        self._connections: ConnectionLog | None = None
        self._built: dict[str, tuple[tuple, dict[str, Any]]] = {}  # name -> (mark, entry)
        self._archived: dict[str, float] = {}  # newest upstream time written to the archive
        self._streams: dict[str, str] = {}  # descriptor uid -> stream name
        # what changed() has seen: values received per followed buffer, connection changes,
        # and the objects whose archived time moved since (under _touch)
        self._followed: list[ObjectBuffer] = []
        self._seen_updates: list[int] = []
        self._seen_connections = -1
        self._touched: set[str] = set(self._objects)
        self._touch = threading.Lock()

    def follow(self, buffers: Iterable[ObjectBuffer], connections: ConnectionLog) -> None:
        """Show what ``buffers`` receive and the connection states ``connections`` records."""
        self._buffers.update({buf.name: buf for buf in buffers if buf.name in self._objects})
        self._connections = connections
        self._followed = list(self._buffers.values())
        self._seen_updates = [-1] * len(self._followed)
        self._seen_connections = -1

    @property
    def objects(self) -> list[str]:
        return list(self._objects)

    def mark(self, name: str) -> tuple:
        """Changes whenever :meth:`get` of ``name`` would answer differently; raise
        ``KeyError`` for an unknown object."""
        if name not in self._objects:
            raise KeyError(name)
        buf = self._buffers.get(name)
        state = self._connections.state if self._connections is not None else {}
        return (buf.updates if buf is not None else 0, bool(state.get(name, False)),
                self._archived.get(name))

    def changed(self) -> list[str]:
        """The objects whose entry may differ from when this was last called (all of them the
        first time), for one caller: the publisher. Cheaper than :meth:`mark` of every object
        (at 10,000 objects, ten passes a second spent a third of a core on that alone)."""
        with self._touch:
            names, self._touched = self._touched, set()
        connections = self._connections
        if connections is not None and connections.changes != self._seen_connections:
            self._seen_connections = connections.changes  # rare: look at every object
            names.update(self._objects)
        seen = self._seen_updates
        for i, buf in enumerate(self._followed):
            if buf.updates != seen[i]:
                seen[i] = buf.updates
                names.add(buf.name)
        return list(names)

    def get(self, name: str) -> dict[str, Any]:
        """The latest entry of ``name``; raise ``KeyError`` for an unknown object.

        ``time`` is the newest upstream timestamp, ``rows`` the readings since ``since`` (the
        upstream time of the first of them) and ``archived_time`` the newest upstream timestamp
        already in the archive. The entry's values are shared, not copied: do not change them.
        """
        mark = self.mark(name)
        built = self._built.get(name)
        if built is not None and built[0] == mark:
            return {**built[1]}
        updates, connected, archived_time = mark
        buf = self._buffers.get(name)
        current, rows, since = buf.newest() if buf is not None else ({}, 0, None)
        attrs, newest = {}, None
        for attr, (value, ts) in current.items():
            attrs[attr] = {"value": _json(value), "timestamp": ts}
            if newest is None or ts > newest:
                newest = ts
        entry = {
            "object": name,
            "connected": connected,
            "time": newest,
            "rows": rows,
            "since": since,
            "attributes": attrs,
            "archived_time": archived_time,
        }
        self._built[name] = (mark, entry)
        return {**entry}

    def archived(self, name: str, doc: dict) -> None:
        """Note a document the archive writer has written (its ``on_written`` hook, told
        :func:`catalog.writer.written_summary`)."""
        stream = self._streams.get(doc.get("descriptor", ""))
        if name == "event_page" and stream in self._objects and doc["newest"]:
            self._archived[stream] = max(doc["newest"])
            with self._touch:
                self._touched.add(stream)

    def __call__(self, name: str, doc: dict) -> None:
        """Document callback: learn each stream's descriptor."""
        if name == "descriptor":
            self._streams[doc["uid"]] = doc["name"]


# Rows written by one INSERT. sqlite3 lets go of the interpreter lock for every statement it
# steps (``executemany``: every row), and getting it back behind a busy thread (the upstream
# callbacks') takes up to the switch interval, 5 ms: one statement per 400 rows, not one per row.
ROWS_PER_INSERT = 400  # (800 parameters: under SQLite's oldest limit, 999)


class LatestPublisher:
    """Copies the entries of ``store`` that changed into the SQLite file ``path``, every
    ``interval`` seconds, on a thread of its own; :class:`SharedLatest` reads them.

    An entry that changed is one whose :meth:`LatestStore.mark` moved since the last copy
    (a value received, the connection or ``archived_time``), among those
    :meth:`LatestStore.changed` names. ``on_published(entries, t)``, if given, hears what
    each pass wrote.
    """

    def __init__(self, store: LatestStore, path: Path, interval: float = 0.1,
                 on_published: Callable[[dict[str, dict], float], None] | None = None):
        self.store, self.path, self.interval = store, Path(path), interval
        self.on_published = on_published
        self._db = _latest_db(self.path)
        self._db.execute("CREATE TABLE IF NOT EXISTS latest (name TEXT PRIMARY KEY, entry BLOB)")
        with self._db:  # a previous run's entries are not the latest
            self._db.execute("DELETE FROM latest")
        self._sent: dict[str, tuple] = {}
        self._turn = threading.Lock()  # one pass at a time on the one connection
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="latest-publisher", daemon=True)
        self.publish()  # every object has its row before any reader looks

    def start(self) -> LatestPublisher:
        self._thread.start()
        return self

    def publish(self) -> list[str]:
        """Write the entries that changed since the last call; return their names (safe from
        any thread: passes take turns)."""
        with self._turn:
            return self._publish()

    def _publish(self) -> list[str]:
        entries, marks = {}, {}
        for name in self.store.changed():
            mark = self.store.mark(name)
            if self._sent.get(name) != mark:
                marks[name] = mark
                entries[name] = self.store.get(name)
        if entries:
            rows = [(name, msgpack.packb(entry, default=_msgpack_default))
                    for name, entry in entries.items()]
            with self._db:
                for i in range(0, len(rows), ROWS_PER_INSERT):
                    chunk = rows[i:i + ROWS_PER_INSERT]
                    self._db.execute("INSERT OR REPLACE INTO latest VALUES "
                                     + ",".join(["(?, ?)"] * len(chunk)),
                                     [x for row in chunk for x in row])
            self._sent.update(marks)
            if self.on_published is not None:
                self.on_published(entries, time.time())
        return list(entries)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.publish()
            except Exception:  # noqa: BLE001 - keep publishing; the next pass tries again
                logging.getLogger(__name__).exception("latest: could not publish")

    def stop(self) -> None:
        """Stop the thread after one last pass."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self.publish()
        self._db.close()


class SharedLatest:
    """``latest`` as a :class:`LatestPublisher` left it in ``path``: the store's ``objects``
    and :meth:`get`, for the server's process (one connection per thread)."""

    def __init__(self, path: Path, objects: list[str]):
        self.path = Path(path)
        self.objects = list(objects)
        self._local = threading.local()

    def get(self, name: str) -> dict[str, Any]:
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = _latest_db(self.path)
        row = db.execute("SELECT entry FROM latest WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise KeyError(name)
        return msgpack.unpackb(row[0])


def _latest_db(path: Path) -> sqlite3.Connection:
    """The file of shared ``latest``: WAL (readers never wait for the publisher), no fsync (it
    holds nothing the archive does not)."""
    db = sqlite3.connect(path, check_same_thread=False, timeout=10)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")
    return db


def _json(value: Any) -> Any:
    """A value as documents carry it (numpy arrays as lists, numpy scalars as Python's), but
    NaN and infinities, which are not JSON, as None. (``plans.buffer._plain`` does the first
    part for pages; importing it would load ophyd into the server's process.)"""
    if type(value) is not float:
        if isinstance(value, np.ndarray):
            return value.tolist()
        if not isinstance(value, np.generic):
            return value
        value = value.item()
        if not isinstance(value, float):
            return value
    return value if math.isfinite(value) else None


class ObjectLatestAdapter(MapAdapter):
    """A leaf-less node whose metadata is the object's latest entry, read at request time."""

    def __init__(self, store: LatestStore, name: str):
        self._store = store
        self._name = name
        super().__init__({})

    def metadata(self) -> dict[str, Any]:
        return self._store.get(self._name)


def latest_tree(store: LatestStore, timezone: str) -> MapAdapter:
    """The ``latest`` node: one child per object; its metadata names the facility zone."""
    return MapAdapter(
        {name: ObjectLatestAdapter(store, name) for name in store.objects},
        metadata={"description": "newest reading of every object", "timezone": timezone},
    )


# -- GET /api/v1/metadata/latest/<object>, without Tiled's per-request machinery ---------------
#
# Tiled's metadata route costs several times /healthz for this node (dependency injection,
# pydantic models of the resource, ``str`` of the content for its ETag). The route below gives
# the same body from a template: the test suite compares it with Tiled's own answer. It takes
# the requests Tiled's route would answer with that body (no query parameter but ``api_key``;
# no key, or an ``Apikey`` one); any other request (``fields=``, ``select_metadata=``,
# ``Bearer`` tokens, clients older than Tiled 0.2.19, which expect ``access_blob``) does not
# match it and goes on to Tiled's route.
#
# In the router, it still pays Tiled's middleware (five ``BaseHTTPMiddleware`` layers and
# more), as /healthz does: p50 2.3 ms, p99 5-6 ms on 2 cores (``python -m benchmarks latest``).
# :class:`LatestFastPath` hands the same route the requests that need none of that middleware,
# ahead of it: p50 1.2 ms, p99 3.4 ms; Tiled's route was p50 11 ms, p99 22 ms in the same run.

LATEST_PATH = "/api/v1/metadata/latest"
API_KEY_COOKIE = "tiled_api_key"  # tiled.server.utils.API_KEY_COOKIE_NAME
_ACCESS_TAGS_ADDED_IN = packaging.version.Version("0.2.19")  # older clients: access_blob
_SORTING = [{"key": "_", "direction": 1}]  # a MapAdapter's default: the given order


@functools.lru_cache(maxsize=64)
def _old_tiled_client(user_agent: bytes) -> bool:
    """A ``python-tiled/<version>`` client Tiled answers in an older dialect (or can't parse)."""
    try:
        version = packaging.version.Version(user_agent.decode("latin-1").partition("/")[2])
    except (packaging.version.InvalidVersion, UnicodeDecodeError):
        return True
    return packaging.version.Version(version.base_version) < _ACCESS_TAGS_ADDED_IN


def _plain_request(scope) -> bool:
    """Whether Tiled's metadata route would answer this request with the plain body."""
    query = scope.get("query_string", b"")
    if query and any(k != "api_key" for k, _ in parse_qsl(query.decode("latin-1"), True)):
        return False
    for key, value in scope["headers"]:
        if key == b"authorization":
            if value and value.split(b" ", 1)[0].lower() != b"apikey":
                return False  # a token, or a malformed header: Tiled says what it makes of it
        elif key == b"user-agent" and value.startswith(b"python-tiled/"):
            if _old_tiled_client(value):
                return False
    return True


class _PlainLatestRoute(Route):
    """Matches only the requests :func:`_plain_request` accepts; the rest go on to Tiled."""

    def matches(self, scope):
        match, child_scope = super().matches(scope)
        if match is Match.FULL and not _plain_request(scope):
            return Match.NONE, {}
        return match, child_scope


def _msgpack_default(obj: Any) -> Any:
    """What Tiled's msgpack responses do with what msgpack can't pack."""
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(obj, numpy.generic | numpy.ndarray):
        return obj.item() if numpy.isscalar(obj) else obj.tolist()
    if isinstance(obj, uuid.UUID):
        return str(obj)
    return obj


def _given_key(request: Request) -> str | None:
    """The API key as Tiled finds it: ``?api_key=``, else ``Authorization: Apikey``, else the
    ``tiled_api_key`` cookie; empty counts as none."""
    key = request.query_params.get("api_key")
    if not key:
        header = request.headers.get("authorization", "")
        key = header.partition(" ")[2].strip() if header else ""  # only "Apikey" gets here
    return key or request.cookies.get(API_KEY_COOKIE) or None


def latest_route(
    store: LatestStore, names: Iterable[str], api_key: str, public: bool = False
) -> Route:
    """``GET /api/v1/metadata/latest/{name}``: the body, status and auth of Tiled's metadata
    route for the ``latest`` node's child ``name`` (see :func:`latest_tree`), for an app built
    with Tiled's single-user ``api_key`` (reads without it when ``public``).

    Insert it ahead of Tiled's routes (``app.router.routes.insert(0, ...)``).
    """
    served = frozenset(names)  # the children of the Tiled node, no more
    key_bytes = api_key.encode()

    def unauthorized(detail: str, headers: dict | None = None) -> Response:
        return JSONResponse({"detail": detail}, status_code=401, headers=headers)

    async def latest_entry(request: Request) -> Response:
        # Authentication as Tiled's single-user mode does it: a key given must be right (even
        # on a public server); no key reads only on a public server.
        given = _given_key(request)
        if given is not None:
            if "api_key" in request.query_params and request.cookies.get(API_KEY_COOKIE) != given:
                cookies = getattr(request.state, "cookies_to_set", None)  # Tiled's move_api_key
                if cookies is not None:
                    cookies.append({"key": API_KEY_COOKIE, "value": given})
            if not secrets.compare_digest(given.encode(), key_bytes):
                return unauthorized("Invalid API key")
            request.state.principal = SingleUserPrincipal  # for Tiled's access log
            current_principal.set(SingleUserPrincipal)  # (the same, ahead of its middleware)
        else:
            current_principal.set(None)
        if given is None and not public:
            return unauthorized(
                "Not enough permissions. Requires scopes ['read:metadata']. "
                "Request had scopes []",
                {"WWW-Authenticate": 'Bearer scope="read:metadata"',
                 "X-Tiled-Root": get_base_url(request)},
            )
        name = request.path_params["name"]
        if name not in served:
            return JSONResponse(
                {"detail": f"No such entry: {['latest', name]}: "
                           f"no object {name!r} is configured"},
                status_code=404,
            )
        base_url = get_base_url(request)
        path = f"latest/{name}"
        links = links_for_node(StructureFamily.container, None, base_url, path)
        content = {
            "data": {
                "id": name,
                "attributes": {
                    "ancestors": ["latest"],
                    "structure_family": "container",
                    "specs": [],
                    "metadata": store.get(name),
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
            body = msgpack.packb(content, default=_msgpack_default, datetime=True)
            media_type = "application/x-msgpack"
        else:
            body = safe_json_dump(content)  # Tiled's: orjson, numpy, NaN as null
            media_type = "application/json"
        etag = hashlib.md5(body, usedforsecurity=False).hexdigest()
        if request.headers.get("if-none-match", "") == etag:
            return Response(status_code=304, headers={"ETag": etag})
        return Response(body, media_type=media_type, headers={"ETag": etag})

    route = _PlainLatestRoute(f"{LATEST_PATH}/{{name}}", latest_entry, methods=["GET"],
                              name="latest entry", include_in_schema=False)
    route.methods.discard("HEAD")  # as Tiled's route: GET only
    return route


class LatestFastPath:
    """ASGI layer that answers the ``latest`` route's requests ahead of Tiled's middleware.

    Put it just inside Tiled's ``CorrelationIdMiddleware`` (the request id and its log
    context stay). It takes the requests :func:`latest_route` takes but for those that want
    something of the middleware it skips: a browser's (an ``Origin`` header: CORS) and any
    with a query string (``?api_key=``: Tiled moves the key into a cookie). Its answers are
    not compressed (a few kB), carry no ``Server-Timing`` and set no CSRF cookie (only
    Tiled's writes check one); everything else goes on down the stack, to the same route in
    the router or to Tiled's.
    """

    def __init__(self, app, route: Route):
        self.app = app
        self.route = route

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and not scope.get("query_string"):
            if not any(key == b"origin" for key, _ in scope["headers"]):
                match, child_scope = self.route.matches(scope)
                if match is Match.FULL:
                    await self.route.handle({**scope, **child_scope}, receive, send)
                    return
        await self.app(scope, receive, send)


def read_only_routes() -> list[Route]:
    """405 for every write to ``/latest`` and below: it shows what the warden reads upstream.

    (Tiled answers a POST there with a 500, as its read-only ``MapAdapter`` cannot create
    nodes; insert these ahead of Tiled's routes.)
    """

    async def refuse(request: Request) -> Response:
        return JSONResponse({"detail": "latest is read-only: it shows what the warden reads "
                                       "upstream"}, status_code=405)

    methods = ["POST", "PUT", "PATCH", "DELETE"]
    return [Route(f"/api/v1/{kind}/latest{{rest:path}}", refuse, methods=methods)
            for kind in ("metadata", "register")]

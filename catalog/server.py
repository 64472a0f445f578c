"""The Tiled server of the warden: ``/archive`` (catalog of day runs) and ``/latest``."""

from __future__ import annotations

import contextlib
import copy
import logging
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote

import httpx
import uvicorn
from starlette.middleware import Middleware
from tiled.adapters.mapping import MapAdapter
from tiled.catalog import from_uri as catalog_from_uri
from tiled.config import Authentication
from tiled.server.app import build_app

from .latest import Latest, LatestFastPath, latest_route, latest_tree, read_only_routes
from .parquet import ParquetTable
from .tiled_internals import (
    LOGGING_CONFIG,
    PARQUET,
    catalog_initialized,
    init_catalog,
    settle_settings_override,
)
from .uri import ArchiveURI, ArchiveURIError

log = logging.getLogger(__name__)


def sql_catalog(archive: str | ArchiveURI, init: bool = True,
                data_dir: str | Path | None = None):
    """Open (and create) the Tiled SQL catalog of an ``sqlite://`` or ``postgresql://`` archive.

    For ``sqlite:///dir/archive.db`` the catalog is that file; tables go to
    ``dir/archive.tables.db`` and large arrays under ``dir/archive.data/``.

    For ``postgresql://user@host:port/db`` the catalog *and* the tables live in that database
    (``init`` creates Tiled's catalog schema in it, as ``tiled catalog init`` does; the
    database itself must exist); large arrays go under ``data_dir`` (default
    ``./warden-data/<db>.data``), which every server of the archive must see.
    """
    uri = ArchiveURI.parse(archive) if isinstance(archive, str) else archive
    specs = [{"name": "CatalogOfBlueskyRuns", "version": "3.0"}]
    if uri.scheme == "sqlite":
        uri.path.parent.mkdir(parents=True, exist_ok=True)
        data_dir = uri.data_dir
        data_dir.mkdir(exist_ok=True)
        _write_ahead_log(uri.tables_path)
    elif uri.scheme == "postgresql":
        data_dir = Path(data_dir or uri.data_dir).resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
    else:
        raise ArchiveURIError(f"a {uri.scheme}:// archive is not a Tiled SQL catalog")
    if init and not catalog_initialized(uri):
        init_catalog(uri)
    return catalog_from_uri(uri.catalog, writable_storage=[data_dir, uri.tables], specs=specs,
                            adapters_by_mimetype={PARQUET: ParquetTable})  # compacted days


def _write_ahead_log(path: Path) -> None:
    """Put the SQLite tables database in WAL mode (it stays so), so a client reading a day
    never blocks the archive writer (in the default mode a long read fails writes with
    "database is locked"). A new file also gets incremental vacuum, so that the pages of the
    rows compaction moves into Parquet go back to the disk (:mod:`catalog.compact`).

    Through ADBC, as Tiled and the writer open it: a process must not open one SQLite file
    with two copies of SQLite (Python's and ADBC's). Closing the file in one drops the
    other's POSIX locks, and the last ADBC connection to close then thinks it is alone and
    deletes the WAL under the others ("disk I/O error").
    """
    import adbc_driver_sqlite.dbapi

    with contextlib.closing(adbc_driver_sqlite.dbapi.connect(str(path), autocommit=True)) as db:
        with db.cursor() as cursor:
            cursor.execute("PRAGMA auto_vacuum=INCREMENTAL")  # no effect once tables exist
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.fetchall()


def warden_app(
    catalog, store: Latest, timezone: str, api_key: str, public: bool = False, routers=()
):
    """A Tiled app serving ``/archive`` and ``/latest``; reads need the key unless ``public``.

    ``store`` is the service's :class:`~catalog.latest.LatestStore` or, in the server's
    process, its :class:`~catalog.latest.SharedLatest`. ``routers`` are extra FastAPI routers
    mounted on the same app.
    ``GET /api/v1/metadata/latest/<object>`` is answered by :func:`catalog.latest.latest_route`
    (same body and auth as Tiled's route, a fraction of the time), placed ahead of Tiled's
    routes and, for the requests that need none of Tiled's middleware, ahead of that too
    (:class:`catalog.latest.LatestFastPath`). The ``latest`` node, its listing and search
    are Tiled's.
    """
    latest = latest_tree(store, timezone)
    app = build_app(
        MapAdapter({"archive": catalog, "latest": latest}),
        authentication=Authentication(single_user_api_key=api_key, allow_anonymous_access=public),
        tasks={
            "startup": list(getattr(catalog, "startup_tasks", [])),
            "shutdown": list(getattr(catalog, "shutdown_tasks", [])),
        },
        include_routers=list(routers),
    )
    settle_settings_override(app)
    app.router.routes[:0] = read_only_routes()
    if api_key:  # (without one, Tiled makes up its own key: leave it all to Tiled)
        route = latest_route(store, latest.keys(), api_key, public)
        app.router.routes.insert(0, route)
        outer = [m.cls.__name__ for m in app.user_middleware]  # outermost first
        at = outer.index("CorrelationIdMiddleware") + 1 if "CorrelationIdMiddleware" in outer else 0
        app.user_middleware.insert(at, Middleware(LatestFastPath, route=route))
    return app


_KEY_IN_QUERY = re.compile(r"(?i)(api_key=)[^&#\s\"']+")


class RedactKeys(logging.Filter):
    """Log lines show ``api_key=***``, never a key sent as a query parameter."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if record.name == "uvicorn.access" and isinstance(args, tuple) and len(args) == 5:
            path = unquote(str(args[2]))  # as Tiled's access formatter shows it
            redacted = _KEY_IN_QUERY.sub(r"\1***", path)
            if redacted != path:  # (the formatter unquotes it again)
                record.args = (*args[:2], redacted.replace("%", "%25"), *args[3:])
        else:
            message = record.getMessage()
            redacted = _KEY_IN_QUERY.sub(r"\1***", message)
            if redacted != message:
                record.msg, record.args = redacted, None
        return True


class _ThreadedServer(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # the service owns the signals
        pass


class Server(Protocol):
    """A running server of the warden's app: :class:`TiledServer` (a thread) or the service's
    server process (``warden.server_process.ServerProcess``)."""

    url: str

    def start(self) -> str:
        """Start serving; return the base URL once it answers."""

    def stop(self) -> None:
        """Stop serving."""


class TiledServer:
    """Serve an app with uvicorn on a background thread (``with`` or ``start``/``stop``)."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_dir: Path | None = None):
        log_config = copy.deepcopy(LOGGING_CONFIG)
        log_config["filters"]["redact_keys"] = {"()": RedactKeys}
        for handler in log_config["handlers"].values():
            handler.setdefault("filters", []).append("redact_keys")
        if log_dir is not None:  # one line per request in access.log, rotated at 50 MB
            for handler, name in (("access", "access.log"), ("default", "server.log")):
                cfg = log_config["handlers"][handler]
                cfg.pop("stream", None)
                cfg.update({"class": "logging.handlers.RotatingFileHandler",
                            "filename": str(log_dir / name), "maxBytes": 50_000_000,
                            "backupCount": 4})
                fmt = log_config["formatters"][cfg["formatter"]]  # plain text, with the time
                fmt.update(use_colors=False, format="%(asctime)s " + fmt["format"])
        self._server = _ThreadedServer(
            uvicorn.Config(
                app,
                host=host,
                port=port,
                loop="asyncio",
                log_config=log_config,
                access_log=log_dir is not None,
                log_level="warning",
                timeout_graceful_shutdown=2,  # (a web page's event stream never ends itself)
            )
        )
        if log_dir is not None:  # uvicorn sets both loggers to log_level: requests are INFO
            logging.getLogger("uvicorn.access").setLevel(logging.INFO)
        self._thread: threading.Thread | None = None
        self.url = ""

    def start(self, timeout: float = 30.0) -> str:
        """Start serving; return the base URL once the app answers ``/healthz``."""
        self._thread = threading.Thread(target=self._server.run, name="tiled-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the Tiled server did not start (is the port free?)")
            time.sleep(0.05)
        host, port = self._server.servers[0].sockets[0].getsockname()[:2]
        host = f"[{host}]" if ":" in host else host
        self.url = f"http://{host}:{port}"
        with httpx.Client(trust_env=False) as client:
            while client.get(f"{self.url}/healthz").status_code != 200:
                if time.monotonic() > deadline:
                    raise RuntimeError("the Tiled server did not become ready")
                time.sleep(0.05)
        return self.url

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)

    @contextlib.contextmanager
    def running(self) -> Iterator[str]:
        url = self.start()
        try:
            yield url
        finally:
            self.stop()

"""The warden's Tiled server in a process of its own.

A request in the service's process would wait for the interpreter lock that the monitoring
plan and the devices' callbacks hold most of the time, so the server runs in a child
(started by :mod:`warden.processes`), which only reads:

* it opens the same archive and serves it at ``/archive`` (the archive writer creates new
  nodes through its HTTP API);
* it serves ``latest`` from the shared file (:class:`catalog.latest.SharedLatest`: the
  service's entries and the writer's archived times);
* it forwards plugin start/stop and the plugin list to the service over a pipe.

The child ends when the service says so, or when the service is gone (its end of the pipe
closes, even on ``kill -9``).
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import threading
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from fastapi import HTTPException

from catalog.backends import open_backend
from catalog.latest import Latest, SharedLatest
from catalog.retrieval import retrieval_router
from catalog.server import TiledServer, warden_app
from catalog.ui import mount_ui

from .control import control_router
from .processes import child_context, start_child, tune_gc

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerSpec:
    """What the child needs to serve the service's archive (all of it picklable)."""

    archive: str  # the archive URI, opened again in the child
    data_dir: str | None  # a PostgreSQL archive's array directory
    latest_file: str  # the shared latest file (catalog.latest.shared)
    objects: list[str]
    zone: str
    api_key: str
    public: bool
    host: str
    port: int
    log_dir: str | None  # server.log and access.log
    plugins: list[str] = field(default_factory=list)  # configured plugins (start/stop)
    discovered: list[str] = field(default_factory=list)  # plugins found, configured or not


class ServerProcess:
    """The child serving ``spec``; ``runner`` answers its plugin requests. A
    :class:`catalog.server.Server`, as :class:`catalog.server.TiledServer` is."""

    def __init__(self, spec: ServerSpec, runner):
        self.spec, self.runner = spec, runner
        self.url = ""
        self._process: multiprocessing.process.BaseProcess | None = None
        self._life: Connection | None = None
        self._control: Connection | None = None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def start(self, timeout: float = 120.0) -> str:
        """Start the child; return its base URL once it answers ``/healthz``."""
        ctx = child_context()
        self._life, child_life = ctx.Pipe()
        self._control, child_control = ctx.Pipe()
        self._process, value = start_child(
            serve, (self.spec, child_life, child_control), "warden-server", self._life,
            (child_life, child_control), "the server process", timeout)
        self.url = value
        threading.Thread(target=self._answer, name="warden-control", daemon=True).start()
        return self.url

    def _answer(self) -> None:
        """Answer the child's plugin requests until it is gone."""
        while True:
            try:
                op, args = self._control.recv()
            except (EOFError, OSError):
                return
            try:
                if op == "status":
                    answer = ("ok", self.runner.status())
                else:  # "enable"
                    answer = ("ok", self.runner.enable(*args))
            except Exception as err:  # noqa: BLE001 - the child answers the client with it
                log.exception("plugin request %s%r failed", op, args)
                answer = ("error", f"{type(err).__name__}: {err}")
            try:
                self._control.send(answer)
            except (BrokenPipeError, OSError):
                return

    def stop(self, timeout: float = 15.0) -> None:
        """Ask the child to stop; kill it if it has not after ``timeout`` seconds."""
        if self._process is None:
            return
        try:
            self._life.send("stop")
        except (BrokenPipeError, OSError):
            pass
        self._process.join(timeout)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._life.close()
        self._control.close()
        self._process = None


class RemoteRunner:
    """The plugin runner as the child sees it: the configured names, and the service's
    :meth:`status` and :meth:`enable` over the control pipe."""

    def __init__(self, conn: Connection, names: list[str]):
        self.states = frozenset(names)
        self._conn = conn
        self._lock = threading.Lock()  # one request on the pipe at a time

    def _call(self, op: str, *args) -> Any:
        with self._lock:
            self._conn.send((op, args))
            kind, value = self._conn.recv()
        if kind == "error":
            raise HTTPException(status_code=500, detail=value)
        return value

    def status(self) -> list[dict]:
        return self._call("status")

    def enable(self, name: str, enabled: bool) -> dict:
        return self._call("enable", name, enabled)


def service_server(tree, latest: Latest, runner, spec: ServerSpec) -> TiledServer:
    """The service's Tiled server (not started): ``/archive`` from ``tree``, ``/latest`` from
    ``latest``, plugin control through ``runner``; host, port, keys and logs from ``spec``."""
    router = control_router(runner, spec.api_key, spec.public, spec.discovered)
    app = warden_app(tree, latest, spec.zone, spec.api_key, spec.public, routers=[router])
    app.include_router(retrieval_router(tree, latest, spec.zone, spec.api_key, spec.public))
    mount_ui(app, latest, spec.zone, spec.api_key, spec.public)  # the web page, /warden/
    log_dir = Path(spec.log_dir) if spec.log_dir else None
    return TiledServer(app, host=spec.host, port=spec.port, log_dir=log_dir)


def serve(spec: ServerSpec, life: Connection, control: Connection) -> None:
    """The child's main: serve until the parent says ``stop`` or is gone."""
    # Ctrl-C and SIGTERM (systemd sends it to the whole group) are the service's to handle:
    # it drains its writer through this server, then stops it
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    server = backend = None
    try:
        backend = open_backend(spec.archive, data_dir=spec.data_dir, init=False)
        server = service_server(backend.tree, SharedLatest(Path(spec.latest_file), spec.objects),
                                RemoteRunner(control, spec.plugins), spec)
        life.send(("url", server.start()))
        tune_gc()
    except Exception as err:  # noqa: BLE001 - the parent raises it
        life.send(("error", f"the Tiled server did not start: {type(err).__name__}: {err}"))
        return
    try:
        life.recv()  # "stop", or EOFError when the service is gone
    except (EOFError, OSError):
        pass
    finally:
        server.stop()
        backend.close()

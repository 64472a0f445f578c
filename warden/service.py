"""The warden service: devices, the monitoring plan, the archive writer and the Tiled server.

Three processes, one way: service -> spool -> writer; the server only reads.

* The service's: the RunEngine runs the monitoring plan (the caller's thread), ophyd/pyepics
  deliver updates on theirs, every document goes to the spool, and
  :class:`~catalog.latest.LatestPublisher` copies ``latest`` into the shared file ten times
  a second.
* The writer's (:mod:`warden.writer_process`): it drains the spool into the archive on the
  other core, and records in the shared file what it has archived.
* The server's (:mod:`warden.server_process`): uvicorn serves ``/archive`` and ``/latest``
  (from the shared file), so that no request waits for the service's interpreter lock.

So the archive must be one that other processes can open: not ``mongomock://``.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from bluesky import RunEngine

from catalog.ascii import AsciiDayWriter
from catalog.backends import Backend, open_backend
from catalog.latest import LatestPublisher, LatestStore, SharedLatest
from catalog.uri import ArchiveURI
from plans.buffer import ConnectionLog, ObjectBuffer
from plans.clock import Clock
from plans.exchange import Exchange
from plans.monitor import monitor_objects
from warden_devices.build import build_derived, build_device, build_source, build_target
from warden_devices.reconnect import ReconnectWatch, channels_of
from warden_devices.repeater import ensure_repeater
from warden_devices.sim import SimUpstream

from .config import IN_MEMORY, ConfigError, WardenConfig
from .plugins.runner import PluginRunner, PluginState, discover
from .writer_process import WriterProcess, WriterSpec

if TYPE_CHECKING:  # (the server's and the client's imports: not a shard's)
    from catalog.query import Archive
    from catalog.server import Server

log = logging.getLogger(__name__)


def api_key_from_env() -> str:
    """``WARDEN_API_KEY``, or a fresh random key for this process."""
    key = os.environ.get("WARDEN_API_KEY") or secrets.token_hex(16)
    if not key.isalnum() or not key.isascii():
        raise ConfigError("WARDEN_API_KEY: must be ASCII letters and digits only "
                          "(try: openssl rand -hex 32)")
    return key


class WardenService:
    """Everything ``warden run`` runs, startable and stoppable from Python.

    Parameters
    ----------
    config
        The validated configuration.
    clock
        Time source (default: the system clock in the configured zone).
    api_key
        Key for writes, and for reads unless ``public``.
    public
        Let clients read without a key.
    port
        Override ``serve.port`` (0 picks a free port).
    backend
        An archive already open (tests share one); default: open ``config.archive``.

    Raises
    ------
    ConfigError
        For an archive only this process could open (``mongomock://``).
    """

    def __init__(
        self,
        config: WardenConfig,
        clock: Clock | None = None,
        api_key: str | None = None,
        public: bool = False,
        port: int | None = None,
        backend: Backend | None = None,
    ):
        archive = backend.uri if backend is not None else ArchiveURI.parse(config.archive)
        if archive.scheme == "mongomock":
            raise ConfigError(f"archive: {IN_MEMORY}")
        self.config = config
        self.backend = backend  # opened from config.archive at start() unless given
        self._own_backend = backend is None
        self.clock = clock or Clock(config.zone)
        self.api_key = api_key or api_key_from_env()
        self.public = public
        self.port = config.serve.port if port is None else port
        self.stop_event = threading.Event()
        self.url = ""
        self.devices = [
            build_device(o.name, o.type, o.pv_prefix, o.source, o.attribute_suffixes)
            for o in config.objects
        ]
        self.connections = ConnectionLog(self.clock.time)
        modes = {o.name: o.mode for o in config.objects}
        self.buffers = [
            ObjectBuffer(dev, modes[dev.name] == "monitor", self.connections)
            for dev in self.devices
        ]
        self.periods = {o.name: (o.period, o.offset) for o in config.objects if o.mode == "scan"}
        self.exchanges = [
            Exchange(build_source(e.source, e.protocol), build_target(e.target, e.protocol),
                     e.period, e.source, e.target)
            for e in config.exchange
        ]
        sim_devices = [
            d for d, o in zip(self.devices, config.objects, strict=True) if o.source == "sim"
        ]
        self.sim = SimUpstream(sim_devices, time=self.clock.time) if sim_devices else None
        self.plugins = self._plugin_states(config)
        self.runner = PluginRunner(self.plugins, self.latest_entry, self.clock.time,
                                   config.plugin_threads, config.plugin_tick)
        self.devices += [s.device for s in self.plugins]
        self.buffers += [ObjectBuffer(s.device, True, self.connections) for s in self.plugins]
        self.latest = LatestStore([d.name for d in self.devices])
        self.latest.follow(self.buffers, self.connections)
        # more (name, doc) callbacks for run()'s RunEngine, after the writer's
        self.callbacks: list[Callable[[str, dict], None]] = []
        self.server: Server | None = None
        self.publisher: LatestPublisher | None = None
        self._latest_dir: str | None = None
        self.writer: WriterProcess | None = None
        self.reconnect: ReconnectWatch | None = None
        self.engine: RunEngine | None = None  # the RunEngine of run()
        # closed runs move into Parquet; their rows outlive the switch this long (None: off)
        self.compact_grace: float | None = 60.0
        self.ascii = (
            AsciiDayWriter(config.ascii.directory, config.ascii.prefix, config.zone)
            if config.ascii else None
        )

    # -- life cycle --------------------------------------------------------------------------
    def start(self) -> str:
        """Open the archive and start serving it; return the server's base URL."""
        if self.backend is None:
            self.backend = open_backend(self.config.archive)
        uses_ca = [o for o in self.config.objects if o.source == "epics"] + [
            e for e in self.config.exchange if e.protocol == "epics"]
        if uses_ca:
            ensure_repeater()  # libca hears of a restarted IOC from its beacons
            signals = self.devices + [s for ex in self.exchanges for s in (ex.source, ex.target)]
            self.reconnect = ReconnectWatch(channels_of(signals)).start()  # within a second
        try:
            self.url = self._start_server()
            self.writer = self._start_writer()
        except BaseException:
            self._stop_server()
            raise
        return self.url

    def _start_server(self) -> str:
        """Publish ``latest`` to the shared file and start the server's process on it."""
        from .server_process import ServerProcess, ServerSpec

        self._latest_dir = tempfile.mkdtemp(prefix="warden-latest-")
        self.publisher = LatestPublisher(self.latest, self.latest_file).start()
        log_dir = self.backend.data_dir  # server.log and access.log beside the archive
        self.server = ServerProcess(ServerSpec(
            archive=self.backend.uri,
            data_dir=str(self.backend.data_dir) if self.backend.data_dir else None,
            latest_file=str(self.latest_file),
            objects=self.latest.objects,
            zone=self.config.zone.key,
            api_key=self.api_key,
            public=self.public,
            host=self.config.serve.host,
            port=self.port,
            log_dir=str(log_dir) if log_dir else None,
            plugins=list(self.runner.states),
            discovered=list(self.discovered),
        ), self.runner)
        return self.server.start()

    def _start_writer(self) -> WriterProcess:
        """The archive writer's process, on the spool and the shared file."""
        data_dir = str(self.backend.data_dir) if self.backend.data_dir else None
        return WriterProcess(WriterSpec(
            self.backend.uri, data_dir, self.url, self.api_key, str(self.spool_dir),
            latest_file=str(self.latest_file), compact_grace=self.compact_grace))

    @property
    def latest_file(self) -> Path:
        """The shared ``latest`` file (while the service is started)."""
        if self._latest_dir is None:
            raise RuntimeError("the service is not started")
        return Path(self._latest_dir) / "latest.db"

    def served_latest(self) -> SharedLatest:
        """``latest`` as the server answers it (with ``archived_time``)."""
        return SharedLatest(self.latest_file, self.latest.objects)

    def _stop_server(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self.publisher is not None:
            self.publisher.stop()
            self.publisher = None
        if self._latest_dir is not None:
            shutil.rmtree(self._latest_dir, ignore_errors=True)
            self._latest_dir = None

    @property
    def spool_dir(self) -> Path:
        """``spool`` from the config, else ``spool/`` beside the archive."""
        if self.config.spool is not None:
            return self.config.spool
        return Path(self.backend.data_dir or "warden-data") / "spool"

    def run(self) -> None:
        """Run the monitoring plan until :meth:`stop` (blocks the calling thread)."""
        if self.sim is not None:
            self.sim.start()
        self.runner.start()
        RE = self.engine = RunEngine({}, context_managers=[])
        RE.subscribe(self.writer)
        if self.ascii is not None:  # in emission order, so `export-ascii` matches the file
            RE.subscribe(self.ascii)
        for callback in self.callbacks:
            RE.subscribe(callback)
        RE(self.plan())

    def plan(self):
        """The monitoring plan of this service (run it with any RunEngine)."""
        return monitor_objects(
            self.buffers,
            self.connections,
            self.periods,
            clock=self.clock,
            flush_interval=self.config.flush_interval,
            stop=self.stop_event,
            md={"timezone": self.config.zone.key},
            exchanges=self.exchanges,
        )

    def stop(self) -> None:
        """Ask the plan to close its run and return (safe from any thread)."""
        self.stop_event.set()

    def close(self) -> None:
        """Write what is queued, then stop the server and the simulated upstream."""
        self.runner.stop()
        if self.reconnect is not None:
            self.reconnect.stop()
        if self.writer is not None:
            self.writer.close()
        if self.ascii is not None:
            self.ascii.close()
        self._stop_server()
        if self.backend is not None and self._own_backend:
            self.backend.close()
        if self.sim is not None:
            self.sim.stop()
        for dev in self.devices:
            dev.destroy()
        for ex in self.exchanges:
            ex.source.destroy()
            ex.target.destroy()

    def latest_entry(self, name: str) -> dict:
        """The latest entry of an object, as the store holds it (what plugins read)."""
        return self.latest.get(name)

    def _plugin_states(self, config: WardenConfig) -> list[PluginState]:
        """Instantiate the configured plugins, each with its derived device."""
        found = self.discovered = discover(config.plugin_dir)
        states = []
        for i, entry in enumerate(config.plugins):
            if entry.name not in found:
                raise ConfigError(f"plugins[{i}].name: unknown plugin {entry.name!r} "
                                  f"(found: {', '.join(sorted(found)) or 'none'})")
            plugin = found[entry.name]()
            device = build_derived(entry.name, list(plugin.outputs))
            states.append(PluginState(
                plugin,
                entry.interval or plugin.interval,
                plugin.offset if entry.offset is None else entry.offset,
                publish=_publisher(device),
                device=device,
            ))
        return states

    def archive(self) -> Archive:
        """Query helper on this service's own server."""
        from catalog.query import Archive

        return Archive.from_uri(self.url, api_key=self.api_key, zone=self.config.zone)


def _publisher(device):
    """Put a plugin's outputs into its derived device, stamped with the plugin's time."""

    def publish(outputs: dict, t: float) -> None:
        for attr, value in outputs.items():
            getattr(device, attr).put(value, timestamp=t)

    return publish

"""Scale-out: the objects split across shards, one archive, one day run per day.

With ``shards: K`` and ``nats: {url}`` in the config, the warden runs as

* K **shards** (``warden run CONFIG --shard i/K``, on any hosts): each watches the objects
  whose name hashes to it (:func:`shard_of`: CRC-32 of the name modulo K, so an object stays
  on its shard whatever else is added or removed), runs its own monitoring plan, publishes
  every document to JetStream (:class:`catalog.jetstream.DocumentPublisher`) and its
  ``latest`` entries to the deployment's key-value bucket;
* one **archive host** (``warden archive CONFIG``): the Tiled server (``/archive`` from the
  archive, ``/latest`` from the bucket, every object of every shard) and the archive writer,
  which consumes the stream with acknowledgements (:class:`catalog.jetstream.JetStreamWriter`);
  more Tiled servers (``warden archive CONFIG --serve-only``) read the same archive and bucket.

``warden run CONFIG`` with ``shards: K`` runs all of it on one host: the archive host in its
own process and the K shards as child processes, each started again when it ends unasked
(:class:`LocalShards`, :class:`RestartPolicy`).

**One day run.** Each shard's plan opens its own run at its own midnight. The shard renames
it before publishing (:class:`SharedDayRuns`): the run's uid is derived from the deployment,
the day, K and a generation, ``uuid5(deployment/day/K/g)``, so every shard's start is the
same run and each shard adds only its own streams; the writer creates the run at the first
start and ignores the others. The generation is the number of times this shard opened this
day before (a create-once key in the ``<name>-days`` bucket): a shard restarted within the
day gets generation 1 and opens a second run of the day, as a restarted single service
does. It must: its streams start again at ``seq_num`` 1, which the writer would take as rows
the archive already holds. Shards restarted at once (``warden run`` again) meet again in
generation 1. Changing K opens other runs (the objects move between shards).

Each shard's ``connection`` stream is named ``connection-shard<i>`` (two shards' logs cannot
share one stream, for the same reason). Exchanges and plugins run on shard 0; the ASCII day
file is not written by shards (``warden export-ascii`` makes it from the archive). The run's
stop is written once every shard that opened the run has stopped
(:class:`catalog.jetstream.SharedRunSink`); a run a shard opened and never stopped (killed)
stays open. The archive host's writer compacts the closed runs of a SQLite archive into
Parquet as the one-process writer does (:mod:`catalog.compact`, :class:`CompactAfterStops`).
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bluesky import RunEngine

from catalog.backends import open_backend
from catalog.compact import Compactor, CompactorThread
from catalog.jetstream import (
    Bus,
    DocumentPublisher,
    JetStreamWriter,
    LatestKV,
    LatestKVPublisher,
    NatsLink,
    SharedRunSink,
    open_generation,
)
from plans.clock import Clock
from plans.monitor import monitor_objects
from warden_devices.reconnect import ReconnectWatch, channels_of
from warden_devices.repeater import ensure_repeater

from .config import ConfigError, WardenConfig
from .service import WardenService, api_key_from_env

log = logging.getLogger(__name__)
NAMESPACE = uuid.UUID("6f1c2d0e-3b7a-4c59-9a51-8d0f4e2b7c11")  # of the day runs' uids


def shard_of(name: str, shards: int) -> int:
    """The shard that watches object ``name``: stable across processes, hosts and versions."""
    return zlib.crc32(name.encode()) % shards


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/K"`` as ``(i, K)``; ``ValueError`` naming what is wrong."""
    try:
        i, k = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard: expected i/K (e.g. 0/2), got {text!r}") from None
    if not 0 <= i < k:
        raise ValueError(f"--shard: i must be 0 to K-1, got {text!r}")
    return i, k


def shard_config(config: WardenConfig, shard: int, shards: int) -> WardenConfig:
    """The part of ``config`` shard ``shard`` of ``shards`` runs."""
    if config.nats is None:
        raise ConfigError("nats: a shard needs nats: {url: nats://host:4222}")
    if shards != config.shards:
        raise ConfigError(f"--shard: the config has shards: {config.shards}, not {shards}")
    objects = [o for o in config.objects if shard_of(o.name, shards) == shard]
    if not objects:
        raise ConfigError(f"--shard: shard {shard}/{shards} has no objects")
    return config.model_copy(update={
        "objects": objects,
        "exchange": config.exchange if shard == 0 else [],
        "plugins": config.plugins if shard == 0 else [],
        "ascii": None,
    })


def served_names(config: WardenConfig) -> list[str]:
    """Every object and plugin of every shard: what ``latest`` serves."""
    return [o.name for o in config.objects] + [p.name for p in config.plugins]


class SharedDayRuns:
    """A ``(name, doc)`` callback in front of ``target``: every start gets the day run's uid
    (see the module), descriptors and stops follow it."""

    def __init__(self, target: Callable[[str, dict], None], generation: Callable[[str], int],
                 deployment: str, shards: int):
        self.target, self.generation = target, generation
        self.deployment, self.shards = deployment, shards
        self._uids: dict[str, str] = {}

    def day_run(self, day: str) -> str:
        g = self.generation(day)
        return str(uuid.uuid5(NAMESPACE, f"{self.deployment}/{day}/{self.shards}/{g}"))

    def __call__(self, name: str, doc: dict) -> None:
        if name == "start":
            uid = self._uids[doc["uid"]] = self.day_run(doc["day"])
            doc = {**doc, "uid": uid}
        elif name in ("descriptor", "stop"):
            doc = {**doc, "run_start": self._uids.get(doc["run_start"], doc["run_start"])}
        self.target(name, doc)


class Shard:
    """One shard: its objects' devices and plan (a :class:`WardenService` of its part of the
    config, whose server and writer are not started), publishing to JetStream."""

    def __init__(self, config: WardenConfig, shard: int, api_key: str | None = None,
                 clock: Clock | None = None):
        self.config, self.shard = config, shard
        self.service = WardenService(shard_config(config, shard, config.shards), clock=clock,
                                     api_key=api_key or "shard")
        self.service.connections.name = f"connection-shard{shard}"
        self.link: NatsLink | None = None
        self.publisher: DocumentPublisher | None = None
        self.latest: LatestKVPublisher | None = None

    def start(self) -> None:
        """Connect to NATS and upstream."""
        svc = self.service
        bus = Bus(self.config.nats.url, self.config.nats.name)
        self.link = NatsLink(bus)
        self.link.ensure_stream()
        self.publisher = DocumentPublisher(self.link, self.shard)
        self.latest = LatestKVPublisher(svc.latest, self.link).start()
        if any(o.source == "epics" for o in svc.config.objects) or any(
                e.protocol == "epics" for e in svc.config.exchange):
            ensure_repeater()
            signals = svc.devices + [s for ex in svc.exchanges for s in (ex.source, ex.target)]
            svc.reconnect = ReconnectWatch(channels_of(signals)).start()

    def run(self) -> None:
        """Run the shard's monitoring plan until :meth:`stop`."""
        svc = self.service
        if svc.sim is not None:
            svc.sim.start()
        svc.runner.start()
        RE = svc.engine = RunEngine({}, context_managers=[])
        RE.subscribe(SharedDayRuns(
            self.publisher, lambda day: open_generation(self.link, day, self.shard,
                                                        self.config.shards),
            self.config.nats.name, self.config.shards))
        plan = monitor_objects(
            svc.buffers, svc.connections, svc.periods, clock=svc.clock,
            flush_interval=self.config.flush_interval, stop=svc.stop_event,
            md={"timezone": self.config.zone.key, "objects": served_names(self.config),
                "shards": self.config.shards},
            exchanges=svc.exchanges)
        RE(plan)

    def stop(self) -> None:
        self.service.stop()

    def close(self) -> None:
        """Publish what is queued, then disconnect."""
        if self.publisher is not None and not self.publisher.close():
            log.error("shard %d: NATS did not take every document", self.shard)
        if self.latest is not None:
            self.latest.stop()
        self.service.close()
        if self.link is not None:
            self.link.close()


class _NoPlugins:
    """The plugin runner an archive host's server answers for (plugins run on shard 0)."""

    states = frozenset()

    def status(self) -> list[dict]:
        return []


class CompactAfterStops:
    """The archive writer's ``on_acked``: wakes a :class:`catalog.compact.CompactorThread`
    once the messages the stream held at start (a writer before may have written them
    without acknowledging them: they come again) are acknowledged, then whenever a batch
    with a stop is. A run's stop comes after everything of the run in the stream, so once it
    is acknowledged nothing comes to the run again (a shard whose start comes later opens the
    run again: :class:`catalog.jetstream.SharedRunSink`), and its tables can move."""

    def __init__(self, compacting: CompactorThread, replayed_until: int):
        self.compacting, self.replayed_until = compacting, replayed_until
        if replayed_until == 0:  # nothing to write again
            compacting.wake()

    def __call__(self, names: list[str], seq: int) -> None:
        if seq >= self.replayed_until and (not self.compacting.started or "stop" in names):
            self.compacting.wake()


class ArchiveHost:
    """The Tiled server (archive and shared ``latest``) and, unless ``serve_only``, the
    archive writer consuming the deployment's stream, which compacts the closed runs of a
    SQLite archive (:mod:`catalog.compact`; ``compact_grace``: seconds between a table's
    switch to Parquet and deleting its rows, None: no compaction)."""

    def __init__(self, config: WardenConfig, api_key: str | None = None, public: bool = False,
                 port: int | None = None, serve_only: bool = False,
                 compact_grace: float | None = 60.0):
        if config.nats is None:
            raise ConfigError("nats: the archive host needs nats: {url: nats://host:4222}")
        self.config, self.public, self.serve_only = config, public, serve_only
        self.api_key = api_key or api_key_from_env()
        self.port = config.serve.port if port is None else port
        self.compact_grace = compact_grace
        self.stop_event = threading.Event()
        self.backend = self.link = self.server = self.latest = self.writer = None
        self.compacting: CompactorThread | None = None
        self.url = ""

    def start(self) -> str:
        """Open the archive, serve it, start writing; return the server's URL."""
        from .server_process import ServerSpec, service_server  # (Tiled's server: not a shard's)

        self.backend = open_backend(self.config.archive)
        self.link = NatsLink(Bus(self.config.nats.url, self.config.nats.name))
        self.link.ensure_stream()
        names = served_names(self.config)
        self.latest = LatestKV(self.link, names)
        data_dir = str(self.backend.data_dir) if self.backend.data_dir else None
        spec = ServerSpec(archive=self.backend.uri, data_dir=data_dir, latest_file=None,
                          objects=names, zone=self.config.zone.key, api_key=self.api_key,
                          public=self.public, host=self.config.serve.host, port=self.port,
                          log_dir=data_dir, plugins=[], discovered=[])
        self.server = service_server(self.backend.tree, self.latest, _NoPlugins(), spec)
        self.url = self.server.start()
        if not self.serve_only:
            sink = SharedRunSink(self.backend.sink(self.url, self.api_key))
            self.writer = JetStreamWriter(sink, self.link, on_acked=self._compaction())
        return self.url

    def _compaction(self) -> CompactAfterStops | None:
        """Start compacting, if the archive is compacted (SQLite) and ``compact_grace`` set."""
        compactor = (None if self.compact_grace is None
                     else Compactor.for_uri(self.config.archive, grace=self.compact_grace))
        if compactor is None:
            return None
        self.compacting = CompactorThread(compactor)
        info = self.link.call(self.link.js.stream_info(self.link.bus.stream))
        return CompactAfterStops(self.compacting,
                                 info.state.last_seq if info.state.messages else 0)

    def run(self) -> None:
        self.stop_event.wait()

    def stop(self) -> None:
        self.stop_event.set()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.compacting is not None:
            self.compacting.close()
        if self.latest is not None:
            self.latest.close()
        if self.server is not None:
            self.server.stop()
        if self.link is not None:
            self.link.close()
        if self.backend is not None:
            self.backend.close()


@dataclass(frozen=True)
class RestartPolicy:
    """When :class:`LocalShards` starts a shard again that ended: after ``first`` seconds,
    doubled for each end in a row that came less than ``healthy`` seconds after its start, at
    most ``most`` seconds (a shard that cannot start is tried again once a minute, never
    given up)."""

    first: float = 1.0
    most: float = 60.0
    healthy: float = 60.0

    def delay(self, ran: float, previous: float | None) -> float:
        """Seconds to wait before the next start of a shard that ran ``ran`` seconds; the
        delay before its last start was ``previous`` (None: it had not been restarted)."""
        if previous is None or ran >= self.healthy:
            return self.first
        return min(max(previous * 2, self.first), self.most)


class LocalShards:
    """``warden run`` with ``shards: K``: the archive host in this process, the K shards as
    child processes (``warden run CONFIG --shard i/K``).

    A shard that ends unasked (killed, crashed, stopped by hand) is started again after a
    delay (:class:`RestartPolicy`: 1 s, doubled for each end in a row within a minute of its
    start, at most a minute), each time logged as an error with its exit code; it is never
    given up: the other shards and the archive go on, and a shard that could not start
    (NATS away, a bad config file) comes back once the cause is fixed. The shard started
    again opens the next generation of the day run (:func:`catalog.jetstream.open_generation`).
    ``clock``: monotonic seconds, for the time a shard ran; ``compact_grace``: the archive
    host's (:class:`ArchiveHost`).
    """

    def __init__(self, config: WardenConfig, config_path: str | Path, public: bool = False,
                 port: int | None = None, restarts: RestartPolicy = RestartPolicy(),
                 clock: Callable[[], float] = time.monotonic,
                 compact_grace: float | None = 60.0):
        self.config, self.config_path = config, str(config_path)
        self.host = ArchiveHost(config, public=public, port=port, compact_grace=compact_grace)
        self.policy, self.clock = restarts, clock
        self.children: list[subprocess.Popen] = []
        self.restarts = 0  # shards started again
        self._closing = threading.Event()
        self._life = threading.Lock()  # a shard starts, or the deployment closes: not both
        self._watchers: list[threading.Thread] = []

    def start(self) -> str:
        url = self.host.start()
        for i in range(self.config.shards):
            self.children.append(self._spawn(i))
            self._watchers.append(threading.Thread(target=self._watch, args=(i,),
                                                   name=f"shard-{i}-watch", daemon=True))
            self._watchers[-1].start()
        return url

    def _spawn(self, i: int) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "warden", "run", self.config_path,
                                 "--shard", f"{i}/{self.config.shards}"])

    def _watch(self, i: int) -> None:
        """Start shard ``i`` again whenever it ends, until the deployment closes."""
        delay = None
        while True:
            started = self.clock()
            code = self.children[i].wait()
            if self._closing.is_set():
                return
            delay = self.policy.delay(self.clock() - started, delay)
            log.error("shard %d/%d ended (exit code %s); starting it again in %.1f s",
                      i, self.config.shards, code, delay)
            if self._closing.wait(delay):
                return
            with self._life:
                if self._closing.is_set():
                    return
                self.children[i] = self._spawn(i)
                self.restarts += 1

    def run(self) -> None:
        self.host.run()

    def stop(self) -> None:
        self.host.stop()

    def stop_shards(self, timeout: float = 60.0) -> None:
        """Stop the shards for good (their runs get their stops) and write what they sent;
        the server goes on serving the archive."""
        with self._life:
            self._closing.set()
        for child in self.children:
            if child.poll() is None:
                child.send_signal(signal.SIGINT)
        for child in self.children:
            try:
                child.wait(timeout)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        for watcher in self._watchers:
            watcher.join(timeout)
        if self.host.writer is not None and not self.host.writer.join(timeout):
            log.warning("the archive writer did not catch up; the rest stays in JetStream")

    def close(self, timeout: float = 60.0) -> None:
        """Stop the shards, write what they sent, stop."""
        self.stop_shards(timeout)
        self.host.close()

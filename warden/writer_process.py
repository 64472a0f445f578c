"""The archive writer in a process of its own.

In the service's process the writer would share one interpreter lock with the monitoring
plan and the devices' callbacks, and get its share last; so it runs in a child (started by
:mod:`warden.processes`) on the other core. The spool is the boundary between them:

* the service appends every document to the spool (:class:`catalog.spool.Spool`);
* the child reads the spool's files (:class:`catalog.spool.SpoolReader`), writes the archive
  through :class:`catalog.writer.SpooledWriter` and deletes what is written;
* after each committed batch the child records each object's newest archived timestamp in
  the shared ``latest`` file (:class:`catalog.latest.ArchivedTimes`), and reports its
  position and counters to the service.

The child ends when the service says so or is gone (its end of the pipe closes, even on
``kill -9``). If the child is killed or crashes, the service starts another, which goes on
from the spool (what the first had not reported is written again, without being counted
twice); if it stops on a bug, it is not started again (it would stop on the same document)
and the spool keeps the rest. A child takes ``writer.lock`` in the spool first, so a child of
a killed service finishes its batch before the next one begins.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import signal
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from catalog.backends import open_backend
from catalog.compact import Compactor, CompactorThread
from catalog.latest import ArchivedTimes
from catalog.spool import Position, Spool, SpoolReader
from catalog.writer import SpooledWriter

from .processes import child_context, start_child, tune_gc

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WriterSpec:
    """What the child needs to write the service's archive (all of it picklable)."""

    archive: str  # the archive URI, opened again in the child
    data_dir: str | None  # a PostgreSQL archive's array directory
    url: str  # the service's Tiled server (new runs, streams and arrays go through it)
    api_key: str
    spool: str
    latest_file: str | None = None  # the shared latest file: archived times go there
    compact_grace: float | None = 60.0  # closed runs: seconds between their switch to
    # Parquet and deleting their rows (catalog.compact); None: no compaction


class WriterProcess:
    """The service's archive writer: a ``(name, doc)`` callback that appends to the spool,
    while a child process writes the spool to the archive (:class:`catalog.writer.SpooledWriter`);
    with its position (:meth:`join`, :attr:`backlog`) and counters as the child reports them."""

    def __init__(self, spec: WriterSpec, start_timeout: float = 120.0):
        self.spec = spec
        self.spool = Spool(spec.spool)  # the service appends; the child reads
        self.errors = 0  # documents the archive refused
        self.written = 0  # rows of event pages written
        self.outages = 0  # times the archive became unreachable
        self.unavailable_since: float | None = None
        self.last_error = ""
        self.restarts = 0  # children started again after one was killed or crashed
        self._position = self.spool.first()
        self._done = threading.Condition()
        self._life = threading.Lock()  # a child starts, or the writer closes: not both
        self._closing = threading.Event()
        self._failed = False  # the child stopped on a bug (not restarted: it would again)
        self._counted = {"errors": 0, "written": 0, "outages": 0}  # by the children before
        self._process = self._commands = None
        try:
            self._start_child(start_timeout)
        except BaseException:
            self.spool.close()
            raise
        self._receiver = threading.Thread(target=self._receive, name="archive-writer-reports",
                                          daemon=True)
        self._receiver.start()

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def __call__(self, name: str, doc: dict) -> None:
        self.spool.append(name, doc)

    def _start_child(self, timeout: float, replayed_until: Position | None = None) -> None:
        ctx = child_context()
        commands, self._commands = ctx.Pipe(duplex=False)
        self._reports, reports = ctx.Pipe(duplex=False)
        self._started = time.monotonic()
        self._process, _ = start_child(
            write, (self.spec, commands, reports, replayed_until), "warden-writer",
            self._reports, (commands, reports), "the archive writer process", timeout)

    def _receive(self) -> None:
        """Take the child's reports; start another child if one ends unasked."""
        delay = 1.0
        while True:
            try:
                report = self._reports.recv()
            except (EOFError, OSError):
                if self._closing.is_set() or self._failed or not self._restart(delay):
                    break
                delay = 1.0 if time.monotonic() - self._started > 60 else min(delay * 2, 60.0)
                continue
            with self._done:
                self._update(report)
                self._done.notify_all()
        with self._done:
            self._done.notify_all()

    def _update(self, report: dict[str, Any]) -> None:
        self._position = report["position"]
        for key, base in self._counted.items():
            setattr(self, key, base + report[key])
        self.unavailable_since = report["unavailable_since"]
        self.last_error = report["last_error"] or self.last_error
        if report["failed"]:
            self._failed = True
            log.error("the archive writer stopped (%s); what is not written stays in the "
                      "spool %s for the next start", self.last_error, self.spool.directory)

    def _restart(self, delay: float) -> bool:
        """Start another child after ``delay`` seconds; False if the writer is closing."""
        self._process.join(timeout=5)
        code = self._process.exitcode
        log.error("the archive writer process ended (exit code %s); starting another in "
                  "%.0f s", code, delay)
        with self._done:
            self._counted = {k: getattr(self, k) for k in self._counted}
            self.last_error = f"the archive writer process ended (exit code {code})"
            position = self._position
        if self._closing.wait(delay):
            return False
        with self._life:
            if self._closing.is_set():
                return False
            try:
                self._start_child(timeout=120.0, replayed_until=position)
                self.restarts += 1
            except RuntimeError as err:
                log.error("%s", err)
        return True

    # -- waiting and closing ---------------------------------------------------------------
    def join(self, timeout: float | None = None) -> bool:
        """Wait until every document given so far is in the archive; False on timeout or if
        the writer stopped on a bug first."""
        end = self.spool.end
        with self._done:
            self._done.wait_for(lambda: self._position >= end or self._failed, timeout)
            return self._position >= end

    @property
    def backlog(self) -> int:
        """Bytes in the spool not yet in the archive."""
        with self._done:
            position = self._position
        return self.spool.pending_bytes(position)

    def close(self, timeout: float = 30.0) -> None:
        """Write what is spooled, for up to ``timeout`` seconds while the archive is away;
        then stop the child. What is not written stays in the spool for the next start."""
        if self._closing.is_set():
            return
        if not self.join(timeout):
            log.warning("archive unreachable at close: %d bytes stay in the spool %s",
                        self.backlog, self.spool.directory)
        with self._life:
            self._closing.set()
            try:
                self._commands.send("stop")
            except (BrokenPipeError, OSError):
                pass
            self._process.join(60)
            if self._process.is_alive():
                self._process.kill()
                self._process.join()
        self._receiver.join()
        self._commands.close()
        self.spool.close(drained=self._position >= self.spool.end)


def write(spec: WriterSpec, commands: Connection, reports: Connection,
          replayed_until: Position | None = None) -> None:
    """The child's main: write the spool to the archive until told to stop or orphaned.
    ``replayed_until``: where the child before this one had got to (see SpooledWriter)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the service stops us once it has drained
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    lock = open(Path(spec.spool) / "writer.lock", "w")  # noqa: SIM115 - held until exit
    fcntl.flock(lock, fcntl.LOCK_EX)  # a killed service's writer finishes its batch first
    try:
        backend = open_backend(spec.archive, data_dir=spec.data_dir, init=False)
        sink = backend.sink(spec.url, spec.api_key)
    except Exception as err:  # noqa: BLE001 - the service raises it
        reports.send(("error", f"the archive writer did not start: {type(err).__name__}: "
                               f"{err}"))
        return
    reports.send(("ready", None))
    tune_gc()
    archived = ArchivedTimes(Path(spec.latest_file)) if spec.latest_file else None
    closed_run = False  # a stop document was written since the last report
    compactor = (None if spec.compact_grace is None
                 else Compactor.for_uri(spec.archive, grace=spec.compact_grace))
    compacting = CompactorThread(compactor) if compactor else None

    def on_committed(docs: list[tuple[str, dict]]) -> None:
        nonlocal closed_run
        closed_run = closed_run or any(name == "stop" for name, _ in docs)
        if archived is not None:
            try:
                archived(docs)
            except Exception:  # noqa: BLE001 - latest's archived_time waits; the archive not
                log.exception("could not record the archived times in %s", archived.path)

    def on_progress(writer: SpooledWriter) -> None:
        nonlocal closed_run
        reports.send({
            "position": writer.position, "written": writer.written, "errors": writer.errors,
            "outages": writer.outages, "unavailable_since": writer.unavailable_since,
            "last_error": writer.last_error,
            "failed": not writer.is_alive() and not stopping,
        })
        # Compact once what a child before this one had written is written again, then
        # whenever a run closes: the service knows it is written, so no later child writes
        # into it again, and its tables can move into Parquet.
        if compacting and (replayed_until is None or writer.position >= replayed_until):
            if not compacting.started or closed_run:
                compacting.wake()
        closed_run = False

    stopping = False
    writer = SpooledWriter(sink, SpoolReader(spec.spool), on_committed,
                           on_progress=on_progress, replayed_until=replayed_until)
    try:
        while writer.is_alive() and not commands.poll(0.5):
            pass  # "stop", or the service gone (EOF: poll returns True)
        stopping = writer.is_alive()
    finally:
        writer.abandon()
        if compacting:
            compacting.close()
        backend.close()
        if archived is not None:
            archived.close()
        with contextlib.suppress(OSError):  # the last counters (and error), if anyone listens
            on_progress(writer)

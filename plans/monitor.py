"""The monitoring plan: watch every object, one run per archive day, one stream per object.

Each day's run is opened shortly before its midnight (``OPEN_AHEAD``), beside the day that
ends, and the streams of that day are declared in it then: at midnight the plan and the
archive only take rows, however many streams there are.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
from bluesky.utils import Msg, MsgGenerator

from .buffer import HOLD, ConnectionLog, ObjectBuffer
from .clock import Clock
from .exchange import Exchange, ExchangeLog, exchange_once
from .patches import (
    cached_protocol_checks,
    descriptors_validated_once,
    light_page_validation,
)

log = logging.getLogger(__name__)
STOP_CHECK = 0.5  # real seconds between two looks at the stop request
OPEN_AHEAD = 30.0  # clock seconds before midnight to open the next day's run


@dataclass
class ScanGroup:
    """Scan objects sharing a period and offset: triggered and read together."""

    period: float
    offset: float
    buffers: list[ObjectBuffer] = field(default_factory=list)
    next_due: float = math.inf

    def start(self, t: float) -> None:
        """First read ``offset`` seconds after ``t``."""
        self.next_due = t + self.offset

    def advance(self, t: float) -> None:
        """Next read one period on, skipping the periods missed before ``t``."""
        self.next_due += self.period * max(1, math.floor((t - self.next_due) / self.period) + 1)


def scan_groups(
    buffers: Sequence[ObjectBuffer], periods: dict[str, tuple[float, float]]
) -> list[ScanGroup]:
    """Group scan-mode buffers by ``(period, offset)``."""
    groups: dict[tuple[float, float], ScanGroup] = {}
    for buf in buffers:
        if not buf.monitor:
            period, offset = periods[buf.name]
            groups.setdefault((period, offset), ScanGroup(period, offset)).buffers.append(buf)
    return list(groups.values())


def read_group(group: ScanGroup) -> MsgGenerator[None]:
    """Trigger every connected device of ``group`` together, then read each into its buffer.

    A device that is disconnected is skipped (its disconnect is already on record); one that
    fails to read is skipped too, so one bad object never stops the others.
    """
    live = [buf for buf in group.buffers if buf.connected]
    tag = f"scan-{group.period}-{group.offset}"
    for buf in live:  # the messages of bps.trigger and bps.read, per object (see flush)
        yield Msg("trigger", buf.device, group=tag)
    yield from bps.wait(group=tag)
    for buf in live:
        try:
            reading = yield Msg("read", buf.device)
        except Exception as err:  # noqa: BLE001 - a failed read is recorded as a disconnect
            log.warning("reading %s failed: %r", buf.name, err)
            buf.connections.record(buf.name, False)
            continue
        buf.add_reading(reading)


@dataclass
class DayRun:
    """An archive day's run: its RunEngine run key (the ISO day, so that two days' runs can
    be open at once), the clock time it ends and the streams declared in it."""

    day: dt.date
    midnight: float
    declared: set[str] = field(default_factory=set)

    @property
    def key(self) -> str:
        return self.day.isoformat()


def open_day(day: dt.date, midnight: float, objects: list[str], md: dict) -> MsgGenerator[DayRun]:
    """Open ``day``'s run, which ends at ``midnight``."""
    run = DayRun(day, midnight)
    yield Msg("open_run", None, run=run.key,
              **{"plan_name": "monitor_day", "day": run.key, "objects": objects, **md})
    return run


def flush(collectables: Sequence, run: DayRun) -> MsgGenerator[None]:
    """Collect every buffer or log that holds rows, as one event page per stream of ``run``."""
    for obj in collectables:
        if not obj.pending():
            continue
        # the messages of bps.declare_stream and bps.collect, without their @plan wrapper:
        # that formats the call stack on every call (for a "never iterated" warning), 28% of
        # the RunEngine's time at 1,000 objects flushed twice a second, a quarter of a new
        # day's first flush. The same per object in read_group (trigger, read); stubs called
        # once per flush or period are used as they are.
        if obj.name not in run.declared:
            yield from declare(obj, run)
        yield Msg("collect", obj, stream=False, return_payload=False, name=obj.name,
                  run=run.key)


def declare(obj, run: DayRun) -> MsgGenerator[None]:
    """Declare ``obj``'s stream in ``run`` (its descriptor)."""
    yield Msg("declare_stream", None, obj, name=obj.name, collect=True, run=run.key)
    run.declared.add(obj.name)


def declare_ahead(collectables: Sequence, run: DayRun, tomorrow: DayRun, now: float,
                  step: float) -> MsgGenerator[None]:
    """Declare in ``tomorrow`` a share of the streams of ``run`` it lacks: the rest split
    evenly over the flushes left before midnight, one each ``step`` clock seconds."""
    todo = [obj for obj in collectables
            if obj.name in run.declared and obj.name not in tomorrow.declared]
    flushes_left = (run.midnight - now) / step - 1  # the last one before midnight takes all
    for obj in todo[:math.ceil(len(todo) / max(1.0, flushes_left))]:
        yield from declare(obj, tomorrow)


def monitor_day(
    run: DayRun,
    buffers: Sequence[ObjectBuffer],
    groups: Sequence[ScanGroup],
    connections: ConnectionLog,
    clock: Clock,
    flush_interval: float,
    stop: threading.Event,
    md: dict,
    exchanges: Sequence[Exchange] = (),
    exchange_log: ExchangeLog | None = None,
) -> MsgGenerator[DayRun | None]:
    """Watch until ``run``'s midnight or until ``stop`` is set, then close ``run``.

    From ``OPEN_AHEAD`` clock seconds before midnight the next day's run is open too, and
    the streams of this one are declared in it, a share each flush (``declare_ahead``), so
    that a new day's first flush, and the archive at midnight, only take rows. Returns the
    next day's run (None if it was not opened, or if stopped: then it is closed too).
    """
    midnight = run.midnight
    logs = [connections] if exchange_log is None else [connections, exchange_log]
    collectables = [*logs, *buffers]
    objects = [buf.name for buf in buffers]
    tomorrow: DayRun | None = None
    for buf in buffers:
        buf.cutoff = midnight  # a row stamped after it waits for tomorrow's run
        connections.record(buf.name, buf.connected, force=True)
    next_flush = clock.time() + flush_interval
    while not stop.is_set():
        now = clock.time()
        if now >= midnight:
            break
        if tomorrow is None and now >= midnight - OPEN_AHEAD:
            tomorrow = yield from open_day(clock.day(midnight), clock.next_midnight(midnight),
                                           objects, md)
        for group in groups:
            if now >= group.next_due:
                yield from read_group(group)
                group.advance(now)
        for ex in exchanges:
            if now >= ex.next_due:
                yield from exchange_once(ex, exchange_log)
                ex.next_due += ex.period * max(1, (now - ex.next_due) // ex.period + 1)
        if now >= next_flush:
            yield from flush(collectables, run)
            if tomorrow is not None:  # the step: clock time since the last flush
                yield from declare_ahead(collectables, run, tomorrow, now,
                                         now - next_flush + flush_interval)
            next_flush = now + flush_interval
        due = [g.next_due for g in groups] + [ex.next_due for ex in exchanges]
        wake = min([next_flush, midnight, now + STOP_CHECK * clock.rate, *due])
        yield from bps.sleep(clock.real_seconds(wake - clock.time()))
    closing = not stop.is_set()  # at midnight, readings stamped after it wait for tomorrow
    for buf in buffers:  # stopped: nothing after the last page joins the run (closed)
        buf.cutoff, buf.hold = (midnight if closing else math.inf), 0.0
        buf.closed = not closing
    yield from flush(collectables, run)
    for buf in buffers:
        buf.cutoff, buf.hold = math.inf, HOLD
    yield Msg("close_run", None, run=run.key, exit_status=None, reason=None)
    if tomorrow is not None and not closing:  # (its day not begun: no row, a stop)
        yield Msg("close_run", None, run=tomorrow.key, exit_status="abort",
                  reason="stopped before the run's day began")
        return None
    return tomorrow


def monitor_objects(
    buffers: Sequence[ObjectBuffer],
    connections: ConnectionLog,
    periods: dict[str, tuple[float, float]],
    clock: Clock | None = None,
    flush_interval: float = 0.5,
    stop: threading.Event | None = None,
    md: dict | None = None,
    exchanges: Sequence[Exchange] = (),
) -> MsgGenerator[None]:
    """Watch objects until ``stop`` is set: one run per archive day, one stream per object.

    Parameters
    ----------
    buffers
        One :class:`ObjectBuffer` per object; monitor-mode buffers subscribe when staged.
    connections
        Collects connection changes into the ``connection`` stream.
    periods
        ``{object: (period, offset)}`` of the scan-mode objects, in clock seconds.
    clock
        Source of time, archive day and midnight (injectable for tests).
    flush_interval
        Clock seconds between two collections of the buffers.
    stop
        Set it (from any thread) to close the current run and end the plan.
    md
        Extra metadata for every run's start document.
    exchanges
        Write-backs upstream, each recorded in the ``exchange`` stream.
    """
    clock = clock or Clock()
    stop = stop or threading.Event()
    groups = scan_groups(buffers, periods)
    exchange_log = ExchangeLog(clock.time) if exchanges else None

    @bpp.stage_decorator(buffers)
    def inner():
        for group in groups:
            group.start(clock.time())
        for ex in exchanges:
            ex.next_due = clock.time()
        run = None
        while not stop.is_set():
            if run is None:  # (the first day, or the next one was not opened ahead)
                run = yield from open_day(clock.day(), clock.next_midnight(),
                                          [buf.name for buf in buffers], md or {})
            run = yield from monitor_day(run, buffers, groups, connections, clock,
                                         flush_interval, stop, md or {}, exchanges,
                                         exchange_log)

    # Not rewindable: the RunEngine would keep every message since the last checkpoint, to
    # replay them after a pause, and this plan has no checkpoint (replaying a collect would
    # archive nothing again): 5 MB per million values archived (benchmarks/README.md, memory).
    # The library patches of plans.patches, while it runs.
    with light_page_validation(), descriptors_validated_once(), cached_protocol_checks():
        return (yield from bpp.rewindable_wrapper(inner(), False))

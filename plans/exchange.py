"""Exchange: write chosen local values back upstream when they change.

Every ``period`` the plan reads an exchange's ``source``; when the value differs from the last
value written, it moves the ``target`` to it with ``bps.mv``. Each write, accepted or not, is a
row of the ``exchange`` stream; a failed write is retried at the next period and never stops
monitoring. Only targets built from the config exist, so nothing else can be written.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import bluesky.plan_stubs as bps
from bluesky.utils import MsgGenerator
from ophyd import Signal

from .buffer import data_key

log = logging.getLogger(__name__)

_NOTHING = object()


@dataclass
class Exchange:
    """One configured write-back: ``source`` → ``target`` every ``period`` seconds."""

    source: Signal
    target: Signal
    period: float
    source_name: str
    target_name: str
    next_due: float = math.inf
    last_written: Any = field(default=_NOTHING, repr=False)

    def changed(self, value: Any) -> bool:
        return self.last_written is _NOTHING or str(value) != str(self.last_written)


class ExchangeLog:
    """Writes made upstream, collected as the ``exchange`` stream."""

    name = "exchange"
    parent = None

    def __init__(self, time: Callable[[], float]):
        self.time = time
        self._lock = threading.Lock()
        self._rows: list[tuple[str, str, str, bool, str, float]] = []

    def record(self, ex: Exchange, value: Any, accepted: bool, message: str = "") -> None:
        with self._lock:
            self._rows.append(
                (ex.source_name, ex.target_name, str(value), accepted, message, self.time())
            )

    def pending(self) -> int:
        return len(self._rows)

    def describe_collect(self) -> dict[str, dict]:
        keys = {k: data_key("warden", "text") for k in ("source", "target", "value", "message")}
        return {**keys, "accepted": data_key("warden", True)}

    def collect_pages(self) -> Iterator[dict]:
        with self._lock:
            rows, self._rows = self._rows, []
        if rows:
            names = ("source", "target", "value", "accepted", "message")
            ts = [r[5] for r in rows]
            yield {
                "data": {n: [r[i] for r in rows] for i, n in enumerate(names)},
                "timestamps": {n: ts for n in names},
            }


def exchange_once(ex: Exchange, log_: ExchangeLog, timeout: float = 5.0) -> MsgGenerator[None]:
    """Read the source; if it changed since the last write, move the target and record it."""
    try:
        value = yield from bps.rd(ex.source)
    except Exception as err:  # noqa: BLE001 - a disconnected source waits for the next period
        log.warning("exchange: reading %s failed: %r", ex.source_name, err)
        return
    if not ex.changed(value):
        return
    try:
        yield from bps.mv(ex.target, value, timeout=timeout)
        readback = yield from bps.rd(ex.target)  # an IOC can complete a put it refused
    except Exception as err:  # noqa: BLE001 - disconnected or timed out: retried next period
        log.warning("exchange: writing %r to %s failed: %r", value, ex.target_name, err)
        log_.record(ex, value, False, repr(err)[:200])
        return
    if str(readback) != str(value):
        log.warning("exchange: %s refused %r (reads %r)", ex.target_name, value, readback)
        log_.record(ex, value, False, f"refused: target reads {readback!r}")
        return
    ex.last_written = value
    log_.record(ex, value, True)

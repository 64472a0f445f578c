"""Buffers between upstream updates and the RunEngine.

An :class:`ObjectBuffer` keeps one object's readings between two flushes. Subscription
callbacks (monitor mode) and the plan's own reads (scan mode) add rows; the plan hands the
buffer to ``bps.collect``, which drains it into one event page of the object's stream.
A :class:`ConnectionLog` does the same for connection changes of all objects.

Both are bluesky ``Collectable`` objects (``describe_collect`` / ``collect_pages``) and
``Stageable`` (``stage`` subscribes, ``unstage`` unsubscribes).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from ophyd import Device

Row = dict[str, tuple[Any, float]]  # {attribute: (value, upstream timestamp)}
HOLD = 0.05  # s: updates of one upstream timestamp arrive as separate callbacks


def data_key(source: str, value: Any) -> dict[str, Any]:
    """An event-model data key describing ``value``."""
    if isinstance(value, np.ndarray | list | tuple):
        arr = np.asarray(value)
        return {
            "source": source,
            "dtype": "array",
            "shape": list(arr.shape),
            "dtype_numpy": arr.dtype.str,
        }
    if isinstance(value, bool | np.bool_):
        return {"source": source, "dtype": "boolean", "shape": []}
    if isinstance(value, int | np.integer):
        return {"source": source, "dtype": "integer", "shape": [], "dtype_numpy": "<i8"}
    if isinstance(value, float | np.floating):
        return {"source": source, "dtype": "number", "shape": [], "dtype_numpy": "<f8"}
    return {"source": source, "dtype": "string", "shape": []}


class ConnectionLog:
    """Connection changes of all objects, collected as the ``connection`` stream."""

    name = "connection"
    parent = None

    def __init__(self, time: Callable[[], float]):
        self.time = time
        self._lock = threading.Lock()
        self._rows: list[tuple[str, bool, float]] = []
        self.state: dict[str, bool] = {}
        self.changes = 0  # times a state changed (readers of ``state`` compare it)

    def record(
        self, obj: str, connected: bool, t: float | None = None, force: bool = False
    ) -> None:
        """Note that ``obj`` became (dis)connected at clock time ``t`` (default now)."""
        with self._lock:
            changed = self.state.get(obj) != connected
            if not (changed or force):
                return
            self.changes += changed
            self.state[obj] = connected
            self._rows.append((obj, connected, self.time() if t is None else t))

    def pending(self) -> int:
        return len(self._rows)

    def describe_collect(self) -> dict[str, dict]:
        return {
            "object": data_key("warden", "name"),
            "connected": data_key("warden", True),
        }

    def collect_pages(self) -> Iterator[dict]:
        with self._lock:
            rows, self._rows = self._rows, []
        if rows:
            ts = [t for _, _, t in rows]
            yield {
                "data": {"object": [r[0] for r in rows], "connected": [r[1] for r in rows]},
                "timestamps": {"object": ts, "connected": ts},
            }


class ObjectBuffer:
    """One object's readings between flushes.

    Parameters
    ----------
    device
        The object's Ophyd device; its components are the attributes.
    monitor
        Subscribe to value changes (``mode: monitor``); otherwise the plan adds its reads.
    connections
        Where connection changes are recorded.
    """

    parent = None

    def __init__(self, device: Device, monitor: bool, connections: ConnectionLog):
        self.device = device
        self.name = device.name
        self.monitor = monitor
        self.connections = connections
        self.attributes: list[str] = list(device.component_names)
        self._signals = {attr: getattr(device, attr) for attr in self.attributes}
        self._attr_of = {sig.name: attr for attr, sig in self._signals.items()}
        self._lock = threading.Lock()
        self._current: Row = {}
        self._rows: list[tuple[float, Row]] = []
        self._tokens: list[tuple[Any, int]] = []
        self.updates = 0  # values received since start
        self.rows_made = 0  # rows made since start (what ``latest`` counts)
        self.first_row: float | None = None  # upstream time of the first of them
        self.cutoff = math.inf  # the plan sets it to the midnight that ends its run
        self.hold = HOLD  # seconds the newest row waits for the rest of its timestamp
        self._sig_connected: dict[Any, bool] = {}
        self._last_add = 0.0
        # set by the plan's last flush when it stops: an update after the last page is not in
        # the run, so it must not show in ``latest`` either (staging clears it)
        self.closed = False

    # -- Stageable ---------------------------------------------------------------------------
    def stage(self) -> list[ObjectBuffer]:
        self.closed = False
        for attr, sig in self._signals.items():
            self._tokens.append((sig, sig.subscribe(self._on_meta, event_type=sig.SUB_META)))
            if self.monitor:
                cb = self._value_callback(attr)
                self._tokens.append((sig, sig.subscribe(cb, event_type=sig.SUB_VALUE)))
        self.connections.record(self.name, self.connected, force=True)
        return [self]

    def unstage(self) -> list[ObjectBuffer]:
        for sig, token in self._tokens:
            sig.unsubscribe(token)
        self._tokens.clear()
        return [self]

    @property
    def connected(self) -> bool:
        return all(sig.connected for sig in self._signals.values())

    def _on_meta(self, *args, obj=None, connected=None, **kwargs) -> None:
        if connected is None or self._sig_connected.get(obj) == connected:
            return  # simulated signals repeat their metadata on every put
        self._sig_connected[obj] = connected
        self.connections.record(self.name, self.connected)

    def _value_callback(self, attr: str) -> Callable[..., None]:
        def on_value(*args, value=None, timestamp=None, **kwargs) -> None:
            if value is not None:
                self.add(attr, value, timestamp)

        return on_value

    # -- filling -----------------------------------------------------------------------------
    def add(self, attr: str, value: Any, timestamp: float) -> None:
        """Add one updated attribute (monitor mode).

        Updates of several attributes with the same upstream timestamp share one row; a row is
        made only once every attribute has a value, so every row is complete.
        """
        with self._lock:
            if self.closed or attr in self._current and self._current[attr][1] == timestamp:
                return  # stopped, or the same sample delivered again (e.g. on subscribing)
            self.updates += 1
            self._current[attr] = (value, timestamp)
            if len(self._current) < len(self.attributes):
                return
            if self._rows and self._rows[-1][0] == timestamp:
                self._rows[-1][1][attr] = (value, timestamp)
            else:
                self._rows.append((timestamp, dict(self._current)))
                self._counted(timestamp)
            self._last_add = time.monotonic()

    def add_reading(self, reading: dict[str, dict[str, Any]]) -> None:
        """Add the result of reading the whole device (scan mode) as one row."""
        row = {
            self._attr_of[k]: (r["value"], r["timestamp"])
            for k, r in reading.items()
            if k in self._attr_of
        }
        if len(row) < len(self.attributes):
            return
        with self._lock:
            if self.closed:
                return
            self.updates += len(row)
            self._current.update(row)
            t = max(ts for _, ts in row.values())
            self._rows.append((t, row))
            self._counted(t)

    def _counted(self, t: float) -> None:
        self.rows_made += 1
        if self.first_row is None:
            self.first_row = t

    def newest(self) -> tuple[Row, int, float | None]:
        """What ``latest`` shows: the newest value of every attribute received (as received:
        not copied, do not change them), the rows made since start and the upstream time of
        the first."""
        with self._lock:
            return dict(self._current), self.rows_made, self.first_row

    def pending(self) -> int:
        return len(self._rows)

    # -- Collectable -------------------------------------------------------------------------
    def describe_collect(self) -> dict[str, dict]:
        """Data keys from the values held, with the units and precision that each signal
        describes (served by the IOC, or declared for simulated and Tango objects)."""
        with self._lock:
            current = dict(self._current)
        return {
            attr: {**data_key(f"PV:{self.device.prefix}{attr}", current[attr][0]),
                   **_display(self._signals[attr])}
            for attr in self.attributes
        }

    def collect_pages(self) -> Iterator[dict]:
        """Drain the rows stamped before ``cutoff`` (the end of the day's run)."""
        with self._lock:
            keep = [r for r in self._rows if r[0] >= self.cutoff]
            rows = [r for r in self._rows if r[0] < self.cutoff] if keep else self._rows
            if rows and not keep and time.monotonic() - self._last_add < self.hold:
                keep = [rows.pop()]  # its other attributes may be a few callbacks away
            self._rows = keep
        if not rows:
            return
        data = {attr: [_plain(row[attr][0]) for _, row in rows] for attr in self.attributes}
        stamps = {attr: [row[attr][1] for _, row in rows] for attr in self.attributes}
        yield {"data": data, "timestamps": stamps}


def _display(signal: Any) -> dict[str, Any]:
    """``units`` (if any) and ``precision`` (if known) of ``signal``'s description."""
    try:
        desc = signal.describe()[signal.name]
    except Exception:  # noqa: BLE001 - disconnected since its last value: no display info
        return {}
    out = {"units": desc.get("units"), "precision": desc.get("precision")}
    return {k: v for k, v in out.items() if v not in (None, "")}


def _plain(value: Any) -> Any:
    """Arrays as lists, numpy scalars as Python scalars: what documents carry."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value

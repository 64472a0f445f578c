"""The newest reading of every object, read from the monitoring plan's buffers as it arrives.

:class:`LatestStore` follows any :class:`Source` (an object's buffer: its name, a count of the
values it received and :meth:`Source.newest`) and one :class:`Connections` log (each object's
state and a count of changes), so ``latest`` never touches history and does not wait for a
flush. :class:`Latest` is what serving needs of it, and of
:class:`~catalog.latest.shared.SharedLatest`, its copy in another process.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import numpy as np

Row = Mapping[str, tuple[Any, float]]  # {attribute: (value, upstream timestamp)}


class Source(Protocol):
    """One object's readings as the store follows them (``plans.buffer.ObjectBuffer``)."""

    name: str
    updates: int  # values received so far: changes whenever newest() does

    def newest(self) -> tuple[Row, int, float | None]:
        """The newest value of every attribute, the rows made and the first row's time."""


class Connections(Protocol):
    """Connection states of all objects (``plans.buffer.ConnectionLog``)."""

    state: Mapping[str, bool]
    changes: int  # times a state changed


class Latest(Protocol):
    """What serves ``latest``: the configured objects and each one's entry."""

    @property
    def objects(self) -> list[str]: ...

    def get(self, name: str) -> dict[str, Any]:
        """The entry of ``name``; raise ``KeyError`` for an unknown object."""


class LatestStore:
    """Newest value and upstream timestamp of every attribute of every object.

    Values are read from the followed sources (:meth:`follow`) as they arrive, not from the
    event pages the plan emits at each flush, so ``latest`` is as fresh as the upstream
    updates. An object with no source followed shows an empty entry. ``archived_time`` is
    left None here: the archive writer records it in the shared file
    (:mod:`catalog.latest.shared`), whose reader fills it in.

    Reads may come from any thread. An entry is built when it is asked for and something has
    changed since the last one (:meth:`mark`), then kept; a published entry is never changed,
    so :meth:`get` copies nothing but its top level, whatever the size of the values.
    """

    def __init__(self, objects: list[str]):
        self._objects = dict.fromkeys(objects)  # (a dict: ordered, and quick to look in)
        self._sources: dict[str, Source] = {}
        self._connections: Connections | None = None
        self._built: dict[str, tuple[tuple, dict[str, Any]]] = {}  # name -> (mark, entry)
        # what changed() has seen: values received per followed source, connection changes
        self._followed: list[Source] = []
        self._seen_updates: list[int] = []
        self._seen_connections = -1
        self._first = True

    def follow(self, sources: Iterable[Source], connections: Connections) -> None:
        """Show what ``sources`` receive and the connection states ``connections`` records."""
        self._sources.update({src.name: src for src in sources if src.name in self._objects})
        self._connections = connections
        self._followed = list(self._sources.values())
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
        src = self._sources.get(name)
        state = self._connections.state if self._connections is not None else {}
        return (src.updates if src is not None else 0, bool(state.get(name, False)))

    def changed(self) -> list[str]:
        """The objects whose entry may differ from when this was last called (all of them the
        first time), for one caller: the publisher. Cheaper than :meth:`mark` of every object
        (at 10,000 objects, ten passes a second spent a third of a core on that alone)."""
        names: set[str] = set()
        if self._first:
            self._first = False
            names.update(self._objects)
        connections = self._connections
        if connections is not None and connections.changes != self._seen_connections:
            self._seen_connections = connections.changes  # rare: look at every object
            names.update(self._objects)
        seen = self._seen_updates
        for i, src in enumerate(self._followed):
            if src.updates != seen[i]:
                seen[i] = src.updates
                names.add(src.name)
        return list(names)

    def get(self, name: str) -> dict[str, Any]:
        """The latest entry of ``name``; raise ``KeyError`` for an unknown object.

        ``time`` is the newest upstream timestamp, ``rows`` the readings since ``since`` (the
        upstream time of the first of them) and ``archived_time`` the newest upstream timestamp
        already in the archive, ``archived_rows`` the rows of the day's run archived (None and 0
        here; see the class). The entry's values are shared, not copied: do not change them.
        """
        mark = self.mark(name)
        built = self._built.get(name)
        if built is not None and built[0] == mark:
            return {**built[1]}
        src = self._sources.get(name)
        current, rows, since = src.newest() if src is not None else ({}, 0, None)
        attrs, newest = {}, None
        for attr, (value, ts) in current.items():
            attrs[attr] = {"value": _json(value), "timestamp": ts}
            if newest is None or ts > newest:
                newest = ts
        entry = {
            "object": name,
            "connected": mark[1],
            "time": newest,
            "rows": rows,
            "since": since,
            "attributes": attrs,
            "archived_time": None,
            "archived_rows": 0,
        }
        self._built[name] = (mark, entry)
        return {**entry}


def _json(value: Any) -> Any:
    """A value as documents carry it (numpy arrays as lists, numpy scalars as Python's), but
    NaN and infinities, which are not JSON, as None."""
    if type(value) is not float:
        if isinstance(value, np.ndarray):
            return value.tolist()
        if not isinstance(value, np.generic):
            return value
        value = value.item()
        if not isinstance(value, float):
            return value
    return value if math.isfinite(value) else None

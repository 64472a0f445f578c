"""The newest reading of every object, kept in memory and served as the Tiled node ``latest``.

:class:`LatestStore` is a document callback: it follows the same event pages the archive
receives, so ``latest`` never touches history. ``GET /api/v1/metadata/latest/<object>``
answers with :meth:`LatestStore.get`.
"""

from __future__ import annotations

import math
from typing import Any

from tiled.adapters.mapping import MapAdapter

CONNECTION_STREAM = "connection"


class LatestStore:
    """Newest value and upstream timestamp of every attribute of every object."""

    def __init__(self, objects: list[str] | None = None):
        self._latest: dict[str, dict[str, Any]] = {}
        self._archived: dict[str, float] = {}  # newest upstream time written to the archive
        self._streams: dict[str, str] = {}  # descriptor uid -> stream name
        for name in objects or []:
            self._ensure(name)

    def _ensure(self, name: str) -> dict[str, Any]:
        if name not in self._latest:
            self._latest[name] = {
                "object": name,
                "connected": False,
                "time": None,
                "rows": 0,
                "since": None,
                "attributes": {},
            }
        return self._latest[name]

    @property
    def objects(self) -> list[str]:
        return list(self._latest)

    def get(self, name: str) -> dict[str, Any]:
        """The latest entry of ``name``; raise ``KeyError`` for an unknown object.

        ``time`` is the newest upstream timestamp, ``rows`` the readings since ``since`` (the
        upstream time of the first of them) and ``archived_time`` the newest upstream timestamp
        already in the archive.
        """
        return {**self._latest[name], "archived_time": self._archived.get(name)}

    def archived(self, name: str, doc: dict) -> None:
        """Note a document the archive writer has written (its ``on_written`` hook)."""
        stream = self._streams.get(doc.get("descriptor", ""))
        if name == "event_page" and stream in self._latest:
            self._archived[stream] = max(max(ts) for ts in doc["timestamps"].values())

    # -- document callback -------------------------------------------------------------------
    def __call__(self, name: str, doc: dict) -> None:
        if name == "start":
            for obj in doc.get("objects", []):
                self._ensure(obj)
        elif name == "descriptor":
            self._streams[doc["uid"]] = doc["name"]
        elif name == "event_page":
            stream = self._streams.get(doc["descriptor"])
            if stream == CONNECTION_STREAM:
                self._connections(doc)
            elif stream is not None:
                self._readings(stream, doc)

    def _readings(self, obj: str, page: dict) -> None:
        old = self._ensure(obj)
        attrs = dict(old["attributes"])
        for key, values in page["data"].items():
            attrs[key] = {"value": _json(values[-1]), "timestamp": page["timestamps"][key][-1]}
        newest = max((a["timestamp"] for a in attrs.values()), default=None)
        rows = old["rows"] + len(page["seq_num"])
        since = old["since"] or min(min(ts) for ts in page["timestamps"].values())
        self._latest[obj] = {**old, "time": newest, "rows": rows, "since": since,
                             "attributes": attrs}

    def _connections(self, page: dict) -> None:
        for obj, connected in zip(page["data"]["object"], page["data"]["connected"], strict=True):
            self._latest[obj] = {**self._ensure(obj), "connected": bool(connected)}


def _json(value: Any) -> Any:
    """NaN and infinities are not JSON: send them as None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


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

"""What a plugin is: a small agent that derives values from the latest readings.

A plugin declares ``name``, ``interval`` and ``offset`` (seconds), the ``inputs`` (object names)
it reads and the ``outputs`` (attribute names) it produces, and implements ``compute``. It may
keep state on ``self`` between calls. Its outputs become a derived device named after the
plugin, archived, served by ``latest`` and queried by day like any upstream object.

>>> class Doubler(Plugin):
...     name, interval, offset = "doubler", 5.0, 1.0
...     inputs, outputs = ["yi2-wcm3"], ["twice"]
...     def compute(self, latest, now):
...         return {"twice": 2 * latest["yi2-wcm3"]["attributes"]["wcmBeam"]["value"]}
"""

from __future__ import annotations

from typing import Any

Latest = dict[str, dict[str, Any]]  # {object: the object's `latest` entry}


class Plugin:
    """Base class of plugins; subclass it and set the class attributes."""

    name: str = ""
    interval: float = 10.0
    offset: float = 0.0
    inputs: list[str] = []
    outputs: list[str] = []

    def compute(self, latest: Latest, now: float) -> dict[str, float] | None:
        """Return ``{output: value}`` from the inputs' latest entries, or None for no update."""
        raise NotImplementedError


def value(latest: Latest, obj: str, attr: str) -> tuple[Any, float] | None:
    """``(value, upstream timestamp)`` of ``obj.attr`` in ``latest``, or None if unknown."""
    entry = latest.get(obj, {}).get("attributes", {}).get(attr)
    return None if entry is None else (entry["value"], entry["timestamp"])

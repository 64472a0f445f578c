"""``latest``: the newest reading of every object, kept, shared and served.

* :mod:`.store`: :class:`LatestStore` follows the monitoring plan's buffers (any
  :class:`Source`) and connection log (:class:`Connections`) in the service's process;
  :class:`Latest` is what serving needs of a store.
* :mod:`.shared`: the small SQLite file between processes. The service's
  :class:`LatestPublisher` copies the entries that changed into it every 0.1 s, the archive
  writer's :class:`ArchivedTimes` adds each object's newest archived timestamp after every
  batch, and the server's :class:`SharedLatest` reads both.
* :mod:`.route`: the Tiled node (:func:`latest_tree`), the fast
  ``GET /api/v1/metadata/latest/<object>`` (:func:`latest_route`, :class:`LatestFastPath`)
  and the 405 for writes (:func:`read_only_routes`).
"""

from typing import Any

from .shared import ArchivedTimes, LatestPublisher, SharedLatest
from .store import Connections, Latest, LatestStore, Source

# the route's names come with Tiled's server (2 s of imports), which a shard never needs:
# imported when first asked for
_ROUTE_NAMES = ("LatestFastPath", "ObjectLatestAdapter", "latest_route", "latest_tree",
                "read_only_routes")


def __getattr__(name: str) -> Any:
    if name in _ROUTE_NAMES:
        from . import route

        return getattr(route, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "ArchivedTimes",
    "Connections",
    "Latest",
    "LatestFastPath",
    "LatestPublisher",
    "LatestStore",
    "ObjectLatestAdapter",
    "SharedLatest",
    "Source",
    "latest_route",
    "latest_tree",
    "read_only_routes",
]

"""Archive writers: documents in, a Tiled catalog of Bluesky runs out.

:class:`TiledRunSink` writes the layout that ``bluesky-tiled-plugins`` reads
(``BlueskyRun`` / ``BlueskyEventStream`` 3.0, the same as its ``TiledWriter``): a container
per run keyed by the start uid, a composite container per stream, an appendable ``internal``
table (``seq_num``, ``time``, one column per scalar data key, ``ts_<key>``), and each array
data key as an extendable array node (SQLite tables cannot hold list columns). Unlike
``TiledWriter`` it appends each event page as it arrives, so every flush of the plan is
queryable at once.

:class:`QueuedWriter` puts any sink behind one queue and one thread, so the RunEngine and
subscription threads never wait on the archive.
"""

from __future__ import annotations

import copy
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
from event_model import merge_event_pages
from tiled.structures.core import Spec

log = logging.getLogger(__name__)


class TiledRunSink:
    """Write documents into a Tiled container (the archive root) over its client API."""

    def __init__(self, root):
        self.root = root
        self._runs: dict[str, Any] = {}
        self._streams: dict[str, _Stream] = {}  # by descriptor uid

    def __call__(self, name: str, doc: dict) -> None:
        getattr(self, name, _ignore)(doc)

    def start(self, doc: dict) -> None:
        self._runs[doc["uid"]] = self.root.create_container(
            key=doc["uid"], metadata={"start": doc}, specs=[Spec("BlueskyRun", version="3.0")]
        )

    def descriptor(self, doc: dict) -> None:
        run = self._runs[doc["run_start"]]
        md = {k: v for k, v in doc.items() if k not in {"name", "object_keys", "run_start"}}
        node = run.create_container(
            key=doc["name"],
            metadata=md,
            specs=[Spec("BlueskyEventStream", version="3.0"), Spec("composite")],
        ).base
        self._streams[doc["uid"]] = _Stream(node, doc["data_keys"])

    def event_page(self, doc: dict) -> None:
        self._streams[doc["descriptor"]].append(doc)

    def stop(self, doc: dict) -> None:
        run = self._runs.pop(doc["run_start"])
        run.update_metadata(metadata={"stop": doc}, drop_revision=True)
        for uid in [u for u, s in self._streams.items() if s.node.uri.startswith(run.uri)]:
            del self._streams[uid]


class _Stream:
    """One stream's nodes: the ``internal`` table and its large-array nodes."""

    def __init__(self, node, data_keys: dict[str, dict]):
        self.node = node
        self.data_keys = data_keys
        self.array_keys = [k for k, dk in data_keys.items() if dk["dtype"] == "array"]
        self.table = None
        self.arrays: dict[str, Any] = {}

    def append(self, page: dict) -> None:
        data, stamps = page["data"], page["timestamps"]
        for key in self.array_keys:
            self._append_array(key, np.asarray(data[key]))
        columns: dict[str, Any] = {"seq_num": page["seq_num"], "time": page["time"]}
        columns.update({k: v for k, v in data.items() if k not in self.array_keys})
        columns.update({f"ts_{k}": v for k, v in stamps.items()})
        table = pa.table(columns, schema=self._schema(columns))
        if self.table is None:
            md = {k: v for k, v in self.data_keys.items() if k in columns}
            self.table = self.node.create_appendable_table(
                schema=table.schema, key="internal", metadata=md
            )
        self.table.append_partition(0, table)

    def _schema(self, columns: dict[str, Any]) -> pa.Schema:
        """Column types from the data keys, so a page of whole numbers stays a float column."""
        types = {"number": pa.float64(), "integer": pa.int64(), "boolean": pa.bool_(),
                 "string": pa.string()}
        fields = []
        for name in columns:
            key = name.removeprefix("ts_") if name.startswith("ts_") else name
            if name in ("time",) or name.startswith("ts_") and key in self.data_keys:
                fields.append((name, pa.float64()))
            elif name == "seq_num":
                fields.append((name, pa.int64()))
            else:
                fields.append((name, types.get(self.data_keys[name]["dtype"], pa.string())))
        return pa.schema(fields)

    def _append_array(self, key: str, array: np.ndarray) -> None:
        node = self.arrays.get(key)
        if node is None:
            dims = ("time", *(f"dim_int_{i}" for i in range(1, array.ndim)))
            self.arrays[key] = self.node.write_array(
                array, key=key, metadata=self.data_keys[key], dims=dims
            )
        else:
            node.patch(array, offset=node.shape[:1], extend=True)


def _ignore(doc: dict) -> None:
    return None


class QueuedWriter:
    """A ``(name, doc)`` callback that hands documents to ``sink`` on a thread of its own.

    Documents are copied on arrival, written in order, and a sink error is logged and
    counted without stopping the thread (readings stay in the monitoring service).
    """

    def __init__(
        self,
        sink: Callable[[str, dict], None],
        on_written: Callable[[str, dict], None] | None = None,
        name: str = "archive-writer",
    ):
        self.sink = sink
        self.on_written = on_written
        self.errors = 0
        self.written = 0  # rows of event pages written
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def __call__(self, name: str, doc: dict) -> None:
        self._queue.put((name, copy.deepcopy(doc)))

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while not self._queue.empty():  # take everything queued: one append per stream
                batch.append(self._queue.get_nowait())
            try:
                for name, doc in _merge_pages(batch):
                    if name == "close":
                        return
                    self._write(name, doc)
            finally:
                for _ in batch:
                    self._queue.task_done()

    def _write(self, name: str, doc: dict) -> None:
        try:
            self.sink(name, doc)
        except Exception:  # noqa: BLE001
            self.errors += 1
            log.exception("archive write of %s failed", name)
            return
        if name == "event_page":
            self.written += len(doc["seq_num"])
        if self.on_written is not None:
            self.on_written(name, doc)

    def join(self) -> None:
        """Wait until every queued document is written."""
        self._queue.join()

    @property
    def backlog(self) -> int:
        return self._queue.qsize()

    def close(self) -> None:
        """Write what is queued, then stop the thread."""
        self._queue.put(("close", {}))
        self._thread.join()


def _merge_pages(batch: list[tuple[str, dict]]) -> Iterator[tuple[str, dict]]:
    """Documents in order, with the event pages of each stream between two other documents
    merged into one page."""
    pages: dict[str, list[dict]] = {}
    for name, doc in batch:
        if name == "event_page":
            pages.setdefault(doc["descriptor"], []).append(doc)
            continue
        yield from (("event_page", merge_event_pages(p)) for p in pages.values())
        pages.clear()
        yield name, doc
    yield from (("event_page", merge_event_pages(p)) for p in pages.values())

"""Bluesky documents over NATS JetStream, and ``latest`` in a JetStream key-value bucket.

The transport between the warden's shards and the archive writer (:mod:`warden.shards`).
Everything of one deployment is named after it (``name``, default ``warden``):

* the stream ``<name>-docs`` holds every document, on the subject ``<name>.docs.<shard>``;
  it keeps them on disk until the archive writer has acknowledged them (a work queue);
* the durable consumer ``<name>-archive`` is the archive writer's place in that stream;
* the key-value bucket ``<name>-latest`` holds the newest entry of every object, which every
  Tiled server replica watches;
* the key-value bucket ``<name>-days`` holds which day runs each shard has opened;
* the key-value bucket ``<name>-runs`` keeps every start and descriptor by uid: the stream
  drops what is acknowledged, so a writer started again learns from it the streams of the
  event pages it gets (:meth:`JetStreamWriter._recover`).

The days and runs buckets gain keys every day (a key per shard, a start and a descriptor per
stream), so their keys expire ``KV_EXPIRY`` (30 days) after they were put: longer than a
writer can be away and still find the descriptors of what waits for it in the stream, and
than a day during which a restarted shard must find the generations it opened. A bucket made
without an expiry (by an earlier version) is given it; one whose expiry an operator set is
left as it is.

:class:`DocumentPublisher` publishes in order, many documents to a message (their spool
lines, one after the other, up to the server's largest message; an event page over it as
pages of its rows), each message with a ``Nats-Msg-Id`` made from its shard and its first
document's own uid, and publishes a batch again until JetStream acknowledges it: a message
published twice within the stream's duplicate window is stored once.
:class:`JetStreamWriter` fetches batches, writes them through the sink and acknowledges a
batch only once it is written and committed. A writer killed before its acknowledgement
leaves the batch in the stream; the next writer makes the consumer again
(:meth:`JetStreamWriter._take_over`) and gets it first, in order; the sink skips the rows
the archive holds (:class:`catalog.writer.TiledRunSink`), so nothing is lost or doubled.

bluesky-nats publishes documents to JetStream too, but it is not used: it waits for each
document's acknowledgement on the RunEngine's thread, sets no ``Nats-Msg-Id`` (a document
published again is stored twice), reads with an ordered consumer (no durable place, no
acknowledgement), and its GPL licence does not sit in this BSD project.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import msgpack
import nats
import nats.errors
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError

from .spool import READ_BYTES, decode, encode

log = logging.getLogger(__name__)
DUPLICATE_WINDOW = 600.0  # s: a message published again within this is stored once
KV_EXPIRY = 30 * 86400.0  # s: the days and runs buckets drop a key this long after its put
SHARD_HEADER = "Warden-Shard"


@dataclass(frozen=True)
class Bus:
    """The names of one deployment's stream, consumer and buckets."""

    url: str = "nats://127.0.0.1:4222"
    name: str = "warden"

    @property
    def stream(self) -> str:
        return f"{self.name}-docs"

    def subject(self, shard: int | str = "*") -> str:
        return f"{self.name}.docs.{shard}"

    @property
    def consumer(self) -> str:
        return f"{self.name}-archive"

    @property
    def latest_bucket(self) -> str:
        return f"{self.name}-latest"

    @property
    def days_bucket(self) -> str:
        return f"{self.name}-days"

    @property
    def runs_bucket(self) -> str:
        return f"{self.name}-runs"

    def expiry(self, bucket: str) -> float | None:
        """Seconds a key of ``bucket`` is kept after its put (None: until it is replaced)."""
        return KV_EXPIRY if bucket in (self.days_bucket, self.runs_bucket) else None


class NatsLink:
    """One NATS connection on an asyncio loop of its own thread; :meth:`call` runs a
    coroutine there from any thread."""

    def __init__(self, bus: Bus, connect_timeout: float = 10.0):
        self.bus = bus
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="nats", daemon=True)
        self._thread.start()
        try:
            self.nc = self.call(nats.connect(bus.url, connect_timeout=connect_timeout,
                                             max_reconnect_attempts=-1, allow_reconnect=True),
                                timeout=connect_timeout + 5)
        except Exception as err:
            self._stop_loop()
            raise ConnectionError(f"cannot reach NATS at {bus.url}: {err}") from err
        self.js = self.nc.jetstream()

    def call(self, coro: Coroutine, timeout: float | None = 30.0) -> Any:
        """Run ``coro`` on the link's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def submit(self, coro: Coroutine) -> Any:
        """Start ``coro`` on the link's loop; return its concurrent future."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def ensure_stream(self) -> None:
        """Create the deployment's document stream if it is not there (file storage)."""
        config = StreamConfig(name=self.bus.stream, subjects=[self.bus.subject(">")],
                              retention=RetentionPolicy.WORK_QUEUE, storage=StorageType.FILE,
                              duplicate_window=DUPLICATE_WINDOW)

        async def ensure() -> None:
            try:
                await self.js.stream_info(self.bus.stream)
            except NotFoundError:
                await self.js.add_stream(config)

        self.call(ensure())

    def bucket(self, name: str):
        """The key-value bucket ``name``, created if missing, with its expiry
        (:meth:`Bus.expiry`); a bucket there without an expiry is given it."""
        ttl = self.bus.expiry(name)

        async def get():
            try:
                kv = await self.js.key_value(name)
            except Exception:  # noqa: BLE001 - nats-py raises BucketNotFoundError or NotFound
                return await self.js.create_key_value(bucket=name, history=1, ttl=ttl,
                                                      storage=StorageType.FILE)
            if ttl is not None:
                await self._expire(name, ttl)
            return kv

        return self.call(get())

    async def _expire(self, bucket: str, ttl: float) -> None:
        """Give the bucket's stream ``max_age`` ``ttl`` if it has none (made without one)."""
        info = await self.js.stream_info(f"KV_{bucket}")
        if info.config.max_age:
            return  # (its own, or one an operator set)
        await self.js.update_stream(dataclasses.replace(info.config, max_age=ttl))
        log.info("NATS: keys of the bucket %s now expire %.0f days after their put", bucket,
                 ttl / 86400)

    async def put_many(self, bucket: str, values: dict[str, bytes]) -> None:
        """Put ``values`` (key -> value) into the key-value bucket ``bucket``, without waiting
        for an acknowledgement of each (21.6 us of CPU each, against 1.6 us): the server has
        them all when this returns, or it raises. For ``latest``, which each change puts
        again; not for what must not be lost."""
        subject = f"$KV.{bucket}."
        for key, value in values.items():
            await self.nc.publish(subject + key, value)
        await self.nc.flush(timeout=10)

    def remove(self) -> None:
        """Delete the deployment's document stream and buckets (those that exist)."""
        bus = self.bus
        names = [bus.stream, *(f"KV_{b}" for b in (bus.latest_bucket, bus.days_bucket,
                                                    bus.runs_bucket))]

        async def remove() -> None:
            for name in names:
                try:
                    await self.js.delete_stream(name)
                except NotFoundError:
                    pass

        self.call(remove())

    def close(self) -> None:
        """Flush what is published and disconnect."""
        try:
            self.call(self.nc.close(), timeout=10)
        except Exception:  # noqa: BLE001 - closing anyway
            log.warning("NATS: the connection did not close cleanly")
        self._stop_loop()

    def _stop_loop(self) -> None:
        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            self.call(cancel_all(), timeout=5)
        except Exception:  # noqa: BLE001
            log.warning("NATS: tasks still running at close")
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self.loop.close()


def message_id(name: str, doc: dict, shard: int = 0) -> str:
    """The id of a document of ``shard``: the same for the same document, published again.
    Every shard publishes the day run's start with the same uid: each is a document of its
    own (:class:`SharedRunSink` counts the shards by their starts)."""
    if name == "event_page":
        return f"{shard}:event_page:{doc['uid'][0]}"
    return f"{shard}:{name}:{doc['uid']}"


def documents(data: bytes) -> list[tuple[str, dict]]:
    """The ``(name, doc)`` of every document of a message, in order."""
    return [decode(line) for line in data.split(b"\n") if line]


class DocumentPublisher:
    """A ``(name, doc)`` callback that publishes every document to JetStream, in order.

    Documents wait in a queue; a task of the link's loop takes what is queued (up to
    ``batch``; ``linger`` seconds after the first document of an idle spell), publishes it
    as messages of many documents each (pipelined) and waits for every acknowledgement; a
    batch not acknowledged within ``timeout`` (NATS away) is published again, the same
    messages with the same ids, until it is (the duplicate window stores each once). A
    message per document would cost each shard and the writer a
    JetStream publish, acknowledgement and fetch per event page: 20 us of a shard's CPU each.
    """

    def __init__(self, link: NatsLink, shard: int, batch: int = 20_000, timeout: float = 5.0,
                 linger: float = 0.05):
        self.link, self.linger = link, linger
        self.shard, self.subject = shard, link.bus.subject(shard)
        self.headers = {SHARD_HEADER: str(shard)}
        self.batch, self.timeout = batch, timeout
        self.published = 0  # documents acknowledged by JetStream
        self.retries = 0  # batches published again
        self._given = 0
        self._done = threading.Condition()
        self._runs = link.bucket(link.bus.runs_bucket)  # starts and descriptors, by uid
        self.max_payload = link.nc.max_payload - 4096  # bytes of a message (headers aside)
        self._queue: collections.deque = collections.deque()  # items from any thread
        self._waiting = False  # the pump waits for items (woken once, not per item)
        self._wake: asyncio.Event = link.call(_make_event())
        self._task = link.submit(self._pump())

    def __call__(self, name: str, doc: dict) -> None:
        items = self.items(name, doc)
        with self._done:
            self._given += len(items)
            self._queue.extend(items)
            wake, self._waiting = self._waiting, False
        if wake:
            self.link.loop.call_soon_threadsafe(self._wake.set)

    def items(self, name: str, doc: dict) -> list[tuple[str, bytes, str | None]]:
        """``(id, spool line, runs bucket key)`` of a document: an event page over the
        server's largest message as pages of its rows, in order."""
        payload = encode(name, doc)
        if len(payload) > self.max_payload and name == "event_page" and len(doc["uid"]) > 1:
            return [item for part in split_page(doc) for item in self.items(name, part)]
        if len(payload) > self.max_payload:
            log.error("NATS: a %s document of %d bytes is over the server's limit of %d; "
                      "raise max_payload in nats-server.conf", name, len(payload),
                      self.max_payload)
        kept = doc["uid"] if name in ("start", "descriptor") else None
        return [(message_id(name, doc, self.shard), payload, kept)]

    async def _pump(self) -> None:
        while True:
            with self._done:
                items = [self._queue.popleft()
                         for _ in range(min(self.batch, len(self._queue)))]
                self._waiting = not items
            if not items:
                await self._wake.wait()
                self._wake.clear()
                await asyncio.sleep(self.linger)  # (the rest of a flush's pages)
                continue
            delay = 0.2
            while not await self._publish(items):
                self.retries += 1
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            with self._done:
                self.published += len(items)
                self._done.notify_all()

    def messages(self, items: list[tuple[str, bytes, str | None]]) -> list[tuple[str, bytes]]:
        """``(Nats-Msg-Id, payload)`` of the messages that carry ``items`` in order: the
        same for the same items."""
        groups: list[list[tuple[str, bytes, str | None]]] = []
        size = 0
        for item in items:
            if not groups or size + len(item[1]) > self.max_payload:
                groups.append([])
                size = 0
            groups[-1].append(item)
            size += len(item[1])
        return [(f"{group[0][0]}+{len(group)}", b"".join(payload for _, payload, _ in group))
                for group in groups]

    async def _publish(self, items: list[tuple[str, bytes, str | None]]) -> bool:
        js = self.link.js
        try:
            kept = [self._runs.put(key, payload) for _, payload, key in items if key]
            await asyncio.wait_for(asyncio.gather(*kept), self.timeout)  # before the stream
            acks = [await js.publish_async(self.subject, payload, wait_stall=self.timeout,
                                           headers={**self.headers, "Nats-Msg-Id": mid})
                    for mid, payload in self.messages(items)]
            await asyncio.wait_for(asyncio.gather(*acks), self.timeout)
        except Exception as err:  # noqa: BLE001 - NATS away or slow: the batch again
            log.warning("NATS: %d documents not acknowledged (%r); publishing them again",
                        len(items), err)
            return False
        return True

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every document given so far is acknowledged; False on timeout."""
        with self._done:
            return self._done.wait_for(lambda: self.published >= self._given, timeout)

    def close(self, timeout: float = 30.0) -> bool:
        """Publish what is queued (up to ``timeout`` seconds), then stop."""
        flushed = self.flush(timeout)
        self._task.cancel()
        return flushed


def split_page(page: dict) -> list[dict]:
    """An event page as two pages of its first and last rows."""
    half = len(page["uid"]) // 2

    def rows(part: slice) -> dict:
        out = {**page, "uid": page["uid"][part], "seq_num": page["seq_num"][part],
               "time": page["time"][part],
               "data": {k: v[part] for k, v in page["data"].items()},
               "timestamps": {k: v[part] for k, v in page["timestamps"].items()}}
        if "filled" in page:
            out["filled"] = {k: v[part] for k, v in page["filled"].items()}
        return out

    return [rows(slice(None, half)), rows(slice(half, None))]


async def _make_event() -> asyncio.Event:
    return asyncio.Event()


class JetStreamWriter:
    """Write the deployment's documents from JetStream into ``sink``, on a thread of its own.

    Fetches up to ``batch`` messages (waiting ``wait`` seconds for the first; more when
    behind, :meth:`_fetch`), gives them to the sink in stream order, commits, and
    acknowledges the batch. While the archive cannot be reached the batch is written again
    after a pause, unacknowledged. ``on_acked(names, seq)`` hears every batch acknowledged:
    the names of its documents and the stream sequence of its last message (nothing up to it
    comes to a writer again).
    """

    def __init__(self, sink: Callable[[str, dict], None], link: NatsLink, batch: int = 16,
                 wait: float = 0.5, on_acked: Callable[[list[str], int], None] | None = None):
        self.sink, self.link = sink, link
        self.batch, self.wait = batch, wait
        self.on_acked = on_acked
        self.written = 0  # rows of event pages written (this writer's)
        self.errors = 0  # documents the archive refused
        self.last_error = ""
        link.ensure_stream()
        self._runs = link.bucket(link.bus.runs_bucket)
        link.bucket(link.bus.latest_bucket)
        self._sub = link.call(self._take_over())
        self._names: dict[str, str] = {}  # descriptor uid -> stream name
        self._archived: dict[str, float] = {}  # stream -> newest upstream time written
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._thread = threading.Thread(target=self._run, name="jetstream-writer", daemon=True)
        self._thread.start()

    async def _take_over(self):
        """Become the deployment's writer: the consumer is made again, so that every message
        not acknowledged (a writer killed with a batch in hand) comes again at once, in order.
        One writer per deployment at a time."""
        js, bus = self.link.js, self.link.bus
        try:
            await js.delete_consumer(bus.stream, bus.consumer)
        except NotFoundError:
            pass
        config = ConsumerConfig(durable_name=bus.consumer, ack_policy=AckPolicy.EXPLICIT,
                                deliver_policy=DeliverPolicy.ALL, ack_wait=120.0,
                                max_ack_pending=-1)
        return await js.pull_subscribe(bus.subject(">"), durable=bus.consumer,
                                       stream=bus.stream, config=config)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                messages = self.link.call(self._fetch(), timeout=self.wait + 30)
            except Exception as err:  # noqa: BLE001 - NATS away: try again
                self.last_error = f"{type(err).__name__}: {err}"
                self._stop.wait(1.0)
                continue
            if not messages:
                self._idle.set()
                continue
            self._idle.clear()
            try:
                self._write(messages)
            except Exception as exc:  # a bug, not the archive away: JetStream keeps the rest
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("the archive writer stopped; what it has not written stays in "
                              "the stream %s", self.link.bus.stream)
                return

    async def _fetch(self) -> list:
        """Up to ``batch`` messages; while full batches come (the writer is behind), more at
        once, up to ``READ_BYTES``: one batch then holds many rows of each stream, written in
        one go, as the spool's writer reads when behind."""
        try:
            messages = await self._sub.fetch(self.batch, timeout=self.wait)
        except TimeoutError:
            return []
        size = sum(len(m.data) for m in messages)
        more = messages
        while len(more) == self.batch and size < READ_BYTES:
            try:  # (what the server has: it answers at once)
                more = await self._sub.fetch(self.batch, timeout=0.1)
            except TimeoutError:
                break
            messages += more
            size += sum(len(m.data) for m in more)
        return messages

    def _write(self, messages: list) -> None:
        from .writer import _resync, _unreachable

        docs = [(doc, int((m.headers or {}).get(SHARD_HEADER, 0)))
                for m in messages for doc in documents(m.data)]
        delay = 0.5
        while not self._stop.is_set():
            try:
                self._write_batch(docs)
                self.link.call(_ack(messages))
                self._publish_archived()
                if self.on_acked is not None:
                    self.on_acked([name for (name, _), _ in docs],
                                  messages[-1].metadata.sequence.stream)
                return
            except Exception as exc:  # noqa: BLE001
                if not _unreachable(exc) and not isinstance(exc, TimeoutError | nats.errors.Error):
                    raise
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("archive or NATS unreachable (%s); the batch waits", exc)
                _resync(self.sink)
                self._stop.wait(delay)
                delay = min(delay * 2, 5.0)

    def _write_batch(self, docs: list[tuple[tuple[str, dict], int]]) -> None:
        """Documents in order, with the event pages of each stream between two other
        documents merged into one page (:func:`catalog.writer.merge_pages`); then commit."""
        from .writer import merge_pages

        prepare = getattr(self.sink, "prepare", None)
        if prepare is not None:
            prepare([doc for doc, _ in docs])
        shards = {id(doc): shard for (_, doc), shard in docs}  # (a merged page: 0; unused)
        for name, doc in merge_pages([doc for doc, _ in docs]):
            self._give(name, doc, shards.get(id(doc), 0))
        flush = getattr(self.sink, "flush", None)
        if flush is not None:
            flush()

    def _give(self, name: str, doc: dict, shard: int) -> None:
        from .writer import _unreachable

        try:
            try:
                self._deliver(name, doc, shard)
            except KeyError:  # an event page of a stream this writer has not seen described
                if name != "event_page" or not self._recover(doc["descriptor"]):
                    raise
                self._deliver(name, doc, shard)
        except Exception as exc:  # noqa: BLE001
            if _unreachable(exc):
                raise
            self.errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.exception("the archive refused a %s document from shard %d", name, shard)
            return
        if name == "descriptor":
            self._names[doc["uid"]] = doc["name"]
        elif name == "event_page":
            self.written += len(doc["seq_num"])
            stream = self._names.get(doc["descriptor"])
            if stream is not None and doc["timestamps"]:
                self._archived[stream] = max(max(ts) for ts in doc["timestamps"].values())

    def _deliver(self, name: str, doc: dict, shard: int) -> None:
        if isinstance(self.sink, SharedRunSink):
            self.sink(name, doc, shard)
        else:
            self.sink(name, doc)

    def _recover(self, descriptor: str) -> bool:
        """Give the sink the start and the descriptor of a stream from the runs bucket (a
        writer killed after they were acknowledged); False if the bucket has not got them."""
        try:
            _, desc = decode(self.link.call(self._runs.get(descriptor)).value)
            _, start = decode(self.link.call(self._runs.get(desc["run_start"])).value)
        except KeyNotFoundError:
            return False
        inner = self.sink.sink if isinstance(self.sink, SharedRunSink) else self.sink
        inner("start", start)  # (the run and the stream exist: the sink only looks them up)
        inner("descriptor", desc)
        self._names[desc["uid"]] = desc["name"]
        return True

    def _publish_archived(self) -> None:
        """Put the newest upstream time written of every stream written to into ``latest``'s
        bucket (its ``archived_time``); a failure is logged, the next batch puts it again."""
        archived, self._archived = self._archived, {}
        if not archived:
            return
        values = {latest_key(name, "a"): msgpack.packb(t) for name, t in archived.items()}
        try:
            self.link.call(self.link.put_many(self.link.bus.latest_bucket, values))
        except Exception:  # noqa: BLE001
            log.exception("latest: archived times not published")
            for name, t in archived.items():
                self._archived.setdefault(name, t)

    def pending(self) -> int:
        """Messages in the stream not yet acknowledged by this deployment's writer."""
        info = self.link.call(self.link.js.consumer_info(self.link.bus.stream,
                                                         self.link.bus.consumer))
        return info.num_pending + info.num_ack_pending

    def join(self, timeout: float = 60.0) -> bool:
        """Wait until the stream holds nothing unwritten; False on timeout or if the writer
        stopped on a bug."""
        end = time.monotonic() + timeout
        while time.monotonic() < end and self._thread.is_alive():
            if self._idle.wait(0.5) and self.pending() == 0:
                return True
        return False

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        close_sink = getattr(self.sink, "close", None)
        if close_sink is not None:
            close_sink()


async def _ack(messages: list) -> None:
    """Acknowledge ``messages``: all sent at once, the last one confirmed by the server
    (it handles them in order)."""
    for message in messages[:-1]:
        await message.ack()
    await messages[-1].ack_sync()


class SharedRunSink:
    """In front of a :class:`~catalog.writer.TiledRunSink`: one day run fed by several shards.

    Every shard sends the run's start (the same uid: the first one creates the run, the
    others change nothing) and its own stop. The run's stop is written once every shard that
    started it has stopped, with the number of events of all of them; until then the shards
    still open and the stops received are kept in the run's metadata (``shards_open``,
    ``shard_stops``), so a writer restarted in between goes on where it was. A shard whose
    start comes after the run's stop was written opens the run again (its ``stop`` is null
    until that shard has stopped too), so that the run is not compacted while it is written.
    """

    def __init__(self, sink):
        self.sink = sink

    def __call__(self, name: str, doc: dict, shard: int = 0) -> None:
        if name == "start":
            self.sink(name, doc)
            self._update(doc["uid"], shard, opened=True)
        elif name == "stop":
            self.sink.commit()  # (the rows before the run's metadata changes)
            if self._update(doc["run_start"], shard, opened=False, stop=doc):
                self.sink("stop", self._merged(doc["run_start"], doc))
        else:
            self.sink(name, doc)

    def _update(self, uid: str, shard: int, opened: bool, stop: dict | None = None) -> bool:
        """Note that ``shard`` opened or stopped the run; True when none is open any more."""
        run = self.sink.root[uid]
        md = run.metadata
        shards = set(md.get("shards_open", []))
        stops = dict(md.get("shard_stops", {}))
        update = {}
        if opened:
            if shard in shards or str(shard) in stops:
                return False  # the same start again (a writer restarted)
            shards.add(shard)
            if md.get("stop") is not None:
                update["stop"] = None  # a shard that comes late: the run is open again
        else:
            shards.discard(shard)
            stops[str(shard)] = stop
        run.update_metadata(metadata={**update, "shards_open": sorted(shards),
                                      "shard_stops": stops}, drop_revision=True)
        return not shards

    def _merged(self, uid: str, last: dict) -> dict:
        stops = self.sink.root[uid].metadata.get("shard_stops", {})
        events: dict[str, int] = {}
        for stop in stops.values():
            events.update(stop.get("num_events", {}))
        statuses = [s.get("exit_status", "success") for s in stops.values()]
        status = next((s for s in ("fail", "abort") if s in statuses), "success")
        return {**last, "num_events": events, "exit_status": status,
                "time": max(s["time"] for s in stops.values())}

    def prepare(self, docs) -> None:
        self.sink.prepare(docs)

    def flush(self) -> None:
        self.sink.flush()

    def resync(self) -> None:
        self.sink.resync()

    def close(self) -> None:
        self.sink.close()


# -- latest in a key-value bucket ------------------------------------------------------------------
def latest_key(name: str, kind: str = "o") -> str:
    """An object's key in the bucket: ``o.`` its entry (put by its shard), ``a.`` the newest
    upstream time in the archive (put by the writer). Object names may hold ``:`` and ``+``,
    keys may not: the name is base64-coded."""
    return f"{kind}." + base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")


def empty_entry(name: str) -> dict[str, Any]:
    """What ``latest`` shows of an object no shard has published yet."""
    return {"object": name, "connected": False, "time": None, "rows": 0, "since": None,
            "attributes": {}, "archived_time": None}


class LatestKVPublisher:
    """Put the entries of a ``latest`` store (``changed()``, ``mark(name)``, ``get(name)``)
    that changed into the deployment's bucket every ``interval`` seconds."""

    def __init__(self, store, link: NatsLink, interval: float = 0.1):
        self.store, self.link, self.interval = store, link, interval
        self.kv = link.bucket(link.bus.latest_bucket)
        self._sent: dict[str, tuple] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="latest-kv", daemon=True)

    def start(self) -> LatestKVPublisher:
        self.publish()
        self._thread.start()
        return self

    def publish(self) -> int:
        """Put the entries that changed; return how many."""
        entries = {}
        for name in self.store.changed():
            mark = self.store.mark(name)
            if self._sent.get(name) != mark:
                entries[name] = (mark, self.store.get(name))
        if entries:
            self.link.call(self._put(entries))
        return len(entries)

    async def _put(self, entries: dict[str, tuple[tuple, dict]]) -> None:
        await self.link.put_many(self.link.bus.latest_bucket, {
            latest_key(name): msgpack.packb(entry, default=_plain)
            for name, (_, entry) in entries.items()})
        self._sent.update({name: mark for name, (mark, _) in entries.items()})

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.publish()
            except Exception:  # noqa: BLE001 - the next pass tries again
                log.exception("latest: could not publish to NATS")

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        try:
            self.publish()
        except Exception:  # noqa: BLE001
            log.exception("latest: the last entries were not published")


class LatestKV:
    """``latest`` of every object of every shard, as the bucket holds it: the ``Latest``
    protocol (``objects``, :meth:`get`) for a Tiled server. A task of the link watches the
    bucket and keeps every entry in memory."""

    def __init__(self, link: NatsLink, objects: list[str]):
        self.link = link
        self.objects = list(objects)
        self._known = set(objects)
        self._by_key = {latest_key(name, kind): (name, kind) for name in objects
                        for kind in ("o", "a")}
        self._entries: dict[str, dict] = {}
        self._archived: dict[str, float] = {}
        kv = link.bucket(link.bus.latest_bucket)
        self._watcher = link.call(kv.watchall())
        self._task = link.submit(self._watch())

    async def _watch(self) -> None:
        async for entry in self._watcher:
            if entry is None or entry.value is None:
                continue  # (the end of the initial values)
            name, kind = self._by_key.get(entry.key, (None, None))
            if kind == "o":
                self._entries[name] = msgpack.unpackb(entry.value)
            elif kind == "a":
                self._archived[name] = msgpack.unpackb(entry.value)

    def get(self, name: str) -> dict[str, Any]:
        if name not in self._known:
            raise KeyError(name)
        entry = self._entries.get(name)
        entry = empty_entry(name) if entry is None else {**entry}
        entry["archived_time"] = self._archived.get(name)
        return entry

    def close(self) -> None:
        self._task.cancel()


def _plain(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(f"cannot publish a {type(value).__name__}")


# -- the day runs shards open --------------------------------------------------------------
def open_generation(link: NatsLink, day: str, shard: int, shards: int) -> int:
    """How many times ``shard`` (of ``shards``) opened ``day`` before: 0 the first time.

    Each opening takes the first free key ``<day>.<shards>.<shard>.<g>`` of the days bucket
    (``create`` succeeds for one caller only), so a shard restarted within a day gets the
    next generation, whatever host it restarts on.
    """
    kv = link.bucket(link.bus.days_bucket)

    async def take() -> int:
        g = 0
        while True:
            try:
                await kv.create(f"{day}.{shards}.{shard}.{g}", str(time.time()).encode())
                return g
            except KeyWrongLastSequenceError:
                g += 1

    return link.call(take())

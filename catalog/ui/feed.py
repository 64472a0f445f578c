"""What the page's live table hears: ``latest`` entries that changed, as server-sent events."""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

import orjson


class LatestReader(Protocol):
    """What the feed reads: :class:`catalog.latest.LatestStore` or ``SharedLatest``."""

    objects: list[str]

    def get(self, name: str) -> dict[str, Any]: ...


class LatestFeed:
    """Every entry of ``store``, read at most once per :attr:`period` for all clients; each
    client's stream carries the entries that changed since its last event.

    An event is one JSON object: ``{"t": server time, "entries": {name: entry}}``; the first
    one carries every object. A comment line every ``keepalive`` seconds keeps a quiet stream
    open through proxies.
    """

    def __init__(self, store: LatestReader, interval: float = 0.5, keepalive: float = 15.0):
        self.store, self.interval, self.keepalive = store, interval, keepalive
        self._entries: dict[str, dict] = {}
        self._read_at = -float("inf")
        self._cost = 0.0  # seconds the last reading of every entry took
        self._lock = threading.Lock()

    @property
    def period(self) -> float:
        """Seconds between looks: ``interval``, or more where reading every entry takes
        long (at 10,000 objects, 0.15 s a pass), so that the feed takes at most a fifth of
        the server's time."""
        return max(self.interval, 4 * self._cost)

    def snapshot(self) -> dict[str, dict]:
        """Every entry; one that did not change is the very object the last snapshot held."""
        with self._lock:
            if time.monotonic() - self._read_at >= 0.9 * self.period:
                started, entries = time.monotonic(), {}
                for name in self.store.objects:
                    try:
                        entry = self.store.get(name)
                    except KeyError:  # not published yet
                        continue
                    old = self._entries.get(name)
                    entries[name] = old if old == entry else entry
                self._entries, self._read_at = entries, time.monotonic()
                self._cost = self._read_at - started
            return self._entries

    async def events(self) -> AsyncIterator[str]:
        """The ``text/event-stream`` lines of one client, until it goes away."""
        sent: dict[str, dict] = {}
        quiet_since = time.monotonic()
        while True:
            entries = await asyncio.to_thread(self.snapshot)
            changed = {name: e for name, e in entries.items() if sent.get(name) is not e}
            if changed:
                sent.update(changed)
                data = orjson.dumps({"t": time.time(), "entries": changed}, default=str)
                yield f"data: {data.decode()}\n\n"  # (orjson: NaN as null, as JSON has it)
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= self.keepalive:
                yield f": {time.time():.3f}\n\n"
                quiet_since = time.monotonic()
            await asyncio.sleep(self.period)


class StreamTokens:
    """Short-lived, single-use tokens that open an event stream.

    A browser's ``EventSource`` cannot send an ``Authorization`` header; the page asks for a
    token with its key (a plain request) and opens the stream with ``?token=``. A token read
    from a log is worth nothing: it has been used, or expires after ``ttl`` seconds.
    """

    def __init__(self, ttl: float = 30.0):
        self.ttl = ttl
        self._tokens: dict[str, float] = {}
        self._lock = threading.Lock()

    def issue(self) -> str:
        token = secrets.token_urlsafe(24)
        now = time.monotonic()
        with self._lock:
            self._tokens = {k: t for k, t in self._tokens.items() if t > now}
            self._tokens[token] = now + self.ttl
        return token

    def redeem(self, token: str) -> bool:
        """Whether ``token`` was issued and has not expired; it cannot be used again."""
        with self._lock:
            expires = self._tokens.pop(token, None)
        return expires is not None and expires > time.monotonic()

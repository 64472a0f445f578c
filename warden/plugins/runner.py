"""Discover plugins and run them on a bounded thread pool, each on its interval and offset."""

from __future__ import annotations

import importlib.util
import inspect
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from .base import Plugin

log = logging.getLogger(__name__)
ENTRY_POINT_GROUP = "warden.plugins"


def discover(directory: Path | None = None) -> dict[str, type[Plugin]]:
    """Plugin classes by name: the ``warden.plugins`` entry points, then ``directory/*.py``."""
    found: dict[str, type[Plugin]] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            cls = ep.load()
        except Exception:  # noqa: BLE001 - a broken plugin must not stop the service
            log.exception("plugin entry point %s failed to load", ep.name)
            continue
        found[cls.name or ep.name] = cls
    for path in sorted(Path(directory).glob("*.py")) if directory else []:
        spec = importlib.util.spec_from_file_location(f"warden_plugin_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception:  # noqa: BLE001
            log.exception("plugin file %s failed to load", path)
            continue
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, Plugin) and obj is not Plugin and obj.name:
                found[obj.name] = obj
    return found


@dataclass
class PluginState:
    """One plugin's schedule and record."""

    plugin: Plugin
    interval: float
    offset: float
    publish: Callable[[dict[str, Any], float], None]
    device: Any = None  # the derived device the outputs go to
    enabled: bool = True
    next_due: float = 0.0
    runs: int = 0
    errors: int = 0
    overruns: int = 0
    last_error: str = ""
    last_duration: float = 0.0
    future: Future | None = field(default=None, repr=False)

    def status(self) -> dict[str, Any]:
        running = self.future is not None and not self.future.done()
        return {
            "name": self.plugin.name,
            "state": "running" if running else "enabled" if self.enabled else "stopped",
            "interval": self.interval,
            "offset": self.offset,
            "runs": self.runs,
            "errors": self.errors,
            "overruns": self.overruns,
            "last_error": self.last_error,
            "last_duration": round(self.last_duration, 6),
        }


class PluginRunner:
    """Tick every ``tick`` seconds of ``clock``; start each enabled plugin when it is due.

    A plugin that raises or overruns its interval is logged and counted; the others carry on.
    """

    def __init__(
        self,
        states: list[PluginState],
        latest: Callable[[str], dict],
        time: Callable[[], float],
        num_threads: int = 4,
        tick: float = 0.1,
    ):
        self.states = {s.plugin.name: s for s in states}
        self.latest = latest
        self.time = time
        self.tick = tick
        self._pool = ThreadPoolExecutor(max_workers=num_threads, thread_name_prefix="plugin")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        now = self.time()
        for state in self.states.values():
            state.next_due = now + state.offset
        self._thread = threading.Thread(target=self._loop, name="plugin-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def enable(self, name: str, enabled: bool) -> dict[str, Any]:
        """Start (``True``) or stop a plugin by name; raise KeyError if unknown."""
        state = self.states[name]
        if enabled and not state.enabled:
            state.next_due = self.time()
        state.enabled = enabled
        return state.status()

    def status(self) -> list[dict[str, Any]]:
        return [s.status() for s in self.states.values()]

    def run_due(self, now: float) -> None:
        """Start every enabled plugin due at ``now`` (one tick of the scheduler)."""
        for state in self.states.values():
            if not state.enabled or now < state.next_due:
                continue
            state.next_due += state.interval * max(1, (now - state.next_due) // state.interval + 1)
            if state.future is not None and not state.future.done():
                state.overruns += 1
                log.warning("plugin %s overran its interval (%s s)", state.plugin.name,
                            state.interval)
                continue
            state.future = self._pool.submit(self._run, state, now)

    def _loop(self) -> None:
        while not self._stop.wait(self.tick):
            self.run_due(self.time())

    def _run(self, state: PluginState, now: float) -> None:
        t0 = time.perf_counter()
        try:
            inputs = {name: self.latest(name) for name in state.plugin.inputs}
            out = state.plugin.compute(inputs, now)
            if out:
                state.publish(out, now)
            state.runs += 1
        except Exception as err:  # noqa: BLE001 - counted and shown in `warden status`
            state.errors += 1
            state.last_error = repr(err)[:200]
            log.exception("plugin %s failed", state.plugin.name)
        finally:
            state.last_duration = time.perf_counter() - t0
            if state.last_duration > state.interval:
                state.overruns += 1

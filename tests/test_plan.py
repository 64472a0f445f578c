"""The monitoring plan at midnight: every row goes into the run of the day it is stamped in."""

from __future__ import annotations

import datetime as dt
import threading
import time
from zoneinfo import ZoneInfo

from bluesky import RunEngine

from plans.buffer import ConnectionLog, ObjectBuffer
from plans.clock import Clock
from plans.monitor import monitor_objects
from warden_devices.build import build_device

ZONE = ZoneInfo("America/New_York")
MIDNIGHT = dt.datetime(2001, 11, 7, tzinfo=ZONE).timestamp()


class SteppedClock(Clock):
    """A clock that reads what the test sets (``now``), for a plan that waits in short steps."""

    def __init__(self, now: float):
        super().__init__(ZONE)
        self.now = now

    def time(self) -> float:
        return self.now

    def real_seconds(self, clock_seconds: float) -> float:
        return min(max(clock_seconds, 0.0), 0.02)


def test_a_row_stamped_after_midnight_waits_for_the_next_day_s_run_whatever_the_plan_s_clock():
    """The upstream stamps a value a little after midnight while the plan's clock still reads
    a little before it (clocks differ, callbacks come late): the day's flushes leave it for the
    new day's run."""
    device = build_device("yi2-wcm3", "generic", "yi2-wcm3:", "sim", {"a": "a", "b": "b"})
    for k, attr in enumerate(device.component_names):  # values before the day, as upstream
        getattr(device, attr).sim_put(float(k), timestamp=MIDNIGHT - 10.0)
    buffer = ObjectBuffer(device, True, ConnectionLog(time.time))
    clock = SteppedClock(MIDNIGHT - 2.0)
    stop = threading.Event()
    pages: dict[str, list[float]] = {}  # run day -> upstream times of the rows
    days: dict[str, str] = {}
    streams: dict[str, str] = {}

    def on_document(name, doc):
        if name == "start":
            days[doc["uid"]] = doc["day"]
        elif name == "descriptor" and doc["name"] == "yi2-wcm3":
            streams[doc["uid"]] = days[doc["run_start"]]
        elif name == "event_page" and doc["descriptor"] in streams:
            pages.setdefault(streams[doc["descriptor"]], []).extend(doc["timestamps"]["a"])

    RE = RunEngine({}, context_managers=[])
    RE.subscribe(on_document)
    plan = monitor_objects([buffer], ConnectionLog(clock.time), {}, clock=clock,
                           flush_interval=0.1, stop=stop)
    thread = threading.Thread(target=RE, args=(plan,))
    thread.start()
    try:
        time.sleep(0.3)
        for t in (MIDNIGHT - 1.5, MIDNIGHT + 0.2, MIDNIGHT + 0.4):  # rows of every attribute
            for attr in device.component_names:
                getattr(device, attr).sim_put(t - MIDNIGHT, timestamp=t)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:  # many flushes, the plan's clock before midnight
            clock.now += 0.05 if clock.now < MIDNIGHT - 0.2 else 0.0
            time.sleep(0.02)
        clock.now = MIDNIGHT + 1.0
        time.sleep(0.5)
    finally:
        stop.set()
        thread.join(10)
        device.destroy()
    assert not thread.is_alive()
    assert all(t < MIDNIGHT for t in pages["2001-11-06"])
    assert MIDNIGHT - 1.5 in pages["2001-11-06"]
    assert [t for t in pages["2001-11-07"] if t >= MIDNIGHT] == [MIDNIGHT + 0.2, MIDNIGHT + 0.4]

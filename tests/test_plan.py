"""The monitoring plan at midnight: every row goes into the run of the day it is stamped in,
and the next day's run and streams are there before it."""

from __future__ import annotations

import datetime as dt
import threading
import time
from types import SimpleNamespace
from zoneinfo import ZoneInfo

from bluesky import RunEngine

from plans.buffer import ConnectionLog, ObjectBuffer
from plans.clock import Clock
from plans.monitor import DayRun, declare_ahead, monitor_objects
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


def _run_plan_across(clock: SteppedClock, steps: list[tuple[float, float]], stop_at_end: bool):
    """Run the plan on one object while ``clock`` goes to each ``(clock time, real seconds)``
    of ``steps`` (a value put at each) and on from there for the real seconds, 0.05 s a
    step (a flush each); the documents, in order."""
    device = build_device("yi2-wcm3", "generic", "yi2-wcm3:", "sim", {"a": "a", "b": "b"})
    buffer = ObjectBuffer(device, True, ConnectionLog(time.time))
    docs: list[tuple[str, dict]] = []
    stop = threading.Event()
    RE = RunEngine({}, context_managers=[])
    RE.subscribe(lambda name, doc: docs.append((name, doc)))
    plan = monitor_objects([buffer], ConnectionLog(clock.time), {}, clock=clock,
                           flush_interval=0.1, stop=stop)
    thread = threading.Thread(target=RE, args=(plan,))
    thread.start()
    try:
        for t, wait in steps:
            clock.now = t
            for attr in device.component_names:
                getattr(device, attr).sim_put(t - MIDNIGHT, timestamp=t)
            for _ in range(int(wait / 0.02)):
                time.sleep(0.02)
                clock.now += 0.05
    finally:
        stop.set()
        thread.join(10)
        device.destroy()
    assert not thread.is_alive()
    return docs


def test_the_next_day_s_run_and_streams_are_made_before_midnight_so_midnight_only_takes_rows():
    clock = SteppedClock(MIDNIGHT - 100.0)
    docs = _run_plan_across(clock, [(MIDNIGHT - 100.0, 0.5), (MIDNIGHT - 50.0, 0.5),
                                    (MIDNIGHT - 20.0, 0.5), (MIDNIGHT + 1.0, 0.5)], True)
    starts = {d["uid"]: d["day"] for n, d in docs if n == "start"}
    assert sorted(starts.values()) == ["2001-11-06", "2001-11-07"]
    today, tomorrow = sorted(starts, key=starts.get)
    order = [(n, d.get("run_start") or d.get("uid")) for n, d in docs]
    stopped = order.index(("stop", today))
    opened = order.index(("start", tomorrow))
    # tomorrow opens once the clock is within OPEN_AHEAD (30 s) of midnight, not before:
    # the row stamped 100 s before it went out while the clock read 50 s before
    pages = [(i, ts) for i, (n, d) in enumerate(docs) if n == "event_page"
             for ts in d["timestamps"].get("a", [])]
    assert max(i for i, ts in pages if ts == MIDNIGHT - 100.0) < opened
    described = {d["uid"]: (d["run_start"], d["name"]) for n, d in docs if n == "descriptor"}
    ahead = [i for i, (n, d) in enumerate(docs)
             if n == "descriptor" and d["run_start"] == tomorrow]
    assert {described[docs[i][1]["uid"]][1] for i in ahead} == {"yi2-wcm3", "connection"}
    assert all(opened < i < stopped for i in ahead)  # declared while today's run was open
    assert not [n for n, _ in docs[stopped:] if n == "descriptor"]  # midnight: rows only
    rows = {run: [ts for n, d in docs if n == "event_page"
                  and described[d["descriptor"]] == (run, "yi2-wcm3")
                  for ts in d["timestamps"]["a"]] for run in (today, tomorrow)}
    assert rows[today] == [MIDNIGHT - 100.0, MIDNIGHT - 50.0, MIDNIGHT - 20.0]
    assert rows[tomorrow] == [MIDNIGHT + 1.0]


def test_started_within_the_last_30_s_before_midnight_the_next_day_s_streams_are_still_made_ahead():
    clock = SteppedClock(MIDNIGHT - 10.0)  # tomorrow's run opens at once, before any stream
    docs = _run_plan_across(clock, [(MIDNIGHT - 10.0, 0.5), (MIDNIGHT + 1.0, 0.5)], True)
    starts = {d["uid"]: d["day"] for n, d in docs if n == "start"}
    today, tomorrow = sorted(starts, key=starts.get)
    stopped = [i for i, (n, d) in enumerate(docs) if n == "stop" and d["run_start"] == today]
    ahead = {d["name"] for n, d in docs[:stopped[0]]
             if n == "descriptor" and d["run_start"] == tomorrow}
    assert ahead == {"yi2-wcm3", "connection"}
    assert not [n for n, _ in docs[stopped[0]:] if n == "descriptor"]


def test_each_flush_declares_ahead_the_streams_left_split_over_the_flushes_left_at_their_pace():
    objects = [SimpleNamespace(name=f"obj{i}") for i in range(100)]
    today = DayRun(dt.date(2001, 11, 6), MIDNIGHT, {obj.name for obj in objects[:90]})
    tomorrow = DayRun(dt.date(2001, 11, 7), MIDNIGHT + 86400.0)

    def declared(now: float, step: float) -> list[str]:
        msgs = list(declare_ahead(objects, today, tomorrow, now, step))
        assert {(m.command, m.run) for m in msgs} <= {("declare_stream", "2001-11-07")}
        return [m.args[0].name for m in msgs]

    # flushes 2 s apart (slower than their interval), 10 s left: 4 more, so a quarter of 90
    assert declared(MIDNIGHT - 10.0, 2.0) == [f"obj{i}" for i in range(23)]
    assert len(declared(MIDNIGHT - 8.0, 2.0)) == 23  # 67 left over 3 flushes
    assert declared(MIDNIGHT - 1.0, 2.0) == [f"obj{i}" for i in range(46, 90)]  # the last: all
    assert declared(MIDNIGHT - 0.5, 2.0) == []  # not a stream today has not declared


def test_stopped_before_midnight_the_run_opened_ahead_is_closed_holding_no_row():
    clock = SteppedClock(MIDNIGHT - 100.0)
    docs = _run_plan_across(clock, [(MIDNIGHT - 100.0, 0.5), (MIDNIGHT - 10.0, 0.5)], True)
    starts = {d["uid"]: d["day"] for n, d in docs if n == "start"}
    stops = {d["run_start"]: d for n, d in docs if n == "stop"}
    assert set(stops) == set(starts)  # both closed
    tomorrow = next(uid for uid, day in starts.items() if day == "2001-11-07")
    assert stops[tomorrow]["exit_status"] == "abort"
    assert not any(stops[tomorrow]["num_events"].values())
    today = next(uid for uid, day in starts.items() if day == "2001-11-06")
    assert stops[today]["exit_status"] == "success" and stops[today]["num_events"]["yi2-wcm3"]

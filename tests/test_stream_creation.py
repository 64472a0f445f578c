"""Streams created in bulk: a start's streams in one catalog transaction, and tomorrow's run
prepared ahead of midnight, so neither a start nor a new day waits on creating nodes.

Documents as the monitoring plan writes them (event-model's ``compose_run``, one run per day)
go through :class:`~catalog.writer.TiledRunSink` into Tiled's own app on the warden's SQL
catalog; every request the sink makes to Tiled is counted. PostgreSQL too when
``WARDEN_TEST_POSTGRES_URI`` is set.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from event_model import compose_run
from test_tiled_internals import KEY, archive  # noqa: F401 - the archive fixture
from tiled.client import from_context
from tiled.client.context import Context
from tiled.config import Authentication
from tiled.server.app import build_app

from catalog.direct import DirectTables
from catalog.server import sql_catalog
from catalog.writer import TiledRunSink, prepared_key

ZONE = ZoneInfo("America/New_York")
OBJECTS = [f"bo{i:02d}-wcm" for i in range(12)]
DATA_KEYS = {"wcmBeam": {"dtype": "number", "shape": [], "source": "sim", "units": "10^11 p"},
             "fillNumber": {"dtype": "integer", "shape": [], "source": "sim"},
             "bunches": {"dtype": "array", "shape": [3], "source": "sim"}}


class Day:
    """One day's run of the plan: its start, a stream per object, pages of rows."""

    def __init__(self, day: dt.date):
        self.day = day
        self.bundle = compose_run(metadata={"day": day.isoformat(), "timezone": ZONE.key,
                                            "plan_name": "monitor_day", "objects": OBJECTS})
        self.streams = {name: self.bundle.compose_descriptor(name=name, data_keys=DATA_KEYS)
                        for name in OBJECTS}
        self.seq = 0

    def opening(self) -> list[tuple[str, dict]]:
        return [("start", self.bundle.start_doc)] + [("descriptor", s.descriptor_doc)
                                                      for s in self.streams.values()]

    def pages(self, t0: float, n: int = 3) -> list[tuple[str, dict]]:
        """``n`` rows of every object stamped from ``t0`` on."""
        self.seq += n
        t = t0 + np.arange(n) * 0.5
        seq = list(range(self.seq - n + 1, self.seq + 1))
        out = []
        for i, stream in enumerate(self.streams.values()):
            data = {"wcmBeam": list(np.sin(t) + i), "fillNumber": [34000 + i] * n,
                    "bunches": [[1.0 * s, 2.0, 3.0] for s in seq]}
            out.append(("event_page", stream.compose_event_page(
                data=data, timestamps={k: list(t) for k in DATA_KEYS}, seq_num=seq,
                time=list(t))))
        return out

    def stop(self) -> list[tuple[str, dict]]:
        return [("stop", self.bundle.compose_stop())]


@pytest.fixture
def tiled(archive):  # noqa: F811
    """(sink, client, requests): a TiledRunSink writing into Tiled's app on the archive, and
    the list of every request the sink has made."""
    app = build_app(sql_catalog(archive), authentication=Authentication(single_user_api_key=KEY))
    with Context.from_app(app) as context:
        requests: list[str] = []
        context.http_client.event_hooks["request"].append(
            lambda request: requests.append(f"{request.method} {request.url.path}"))
        client = from_context(context)
        sink = TiledRunSink(client, DirectTables(archive), ahead=600.0, chunk=5)
        try:
            yield sink, client, requests
        finally:
            sink.close()


def write(sink: TiledRunSink, docs: list[tuple[str, dict]]) -> None:
    """What a writer does with a batch: prepare, give each document, commit."""
    sink.prepare(docs)
    for name, doc in docs:
        sink(name, doc)
    sink.flush()


def midnight(day: dt.date) -> float:
    return dt.datetime.combine(day, dt.time(0), ZONE).timestamp()


def test_a_start_creates_its_streams_in_one_go_and_tomorrow_is_ready_before_midnight(tiled):
    sink, client, requests = tiled
    nov6, nov7 = Day(dt.date(2001, 11, 6)), Day(dt.date(2001, 11, 7))
    t_open = midnight(nov7.day) - 3600

    write(sink, nov6.opening() + nov6.pages(t_open))
    creates = [r for r in requests if r.startswith("POST")]
    assert len(creates) == len(OBJECTS)  # each stream's array node; streams, tables: none
    run = client[nov6.bundle.start_doc["uid"]]
    assert sorted(run) == sorted(OBJECTS)
    assert prepared_key("2001-11-07") not in list(client)  # an hour before: not yet

    for k in range(3):  # five minutes before midnight: 12 streams, 5 a batch
        write(sink, nov6.pages(midnight(nov7.day) - 300 + k))
        assert sink.prepared_days == ([] if k < 2 else ["2001-11-07"])
    prepared = client[prepared_key("2001-11-07")]  # (found by its start's uid)
    assert sorted(prepared) == sorted(OBJECTS)
    assert prepared["bo00-wcm"].metadata["prepared"] == "2001-11-07"
    assert "day" not in prepared.start  # no query by day finds it
    assert "2001-11-07" not in [r.start.get("day") for r in client.values()]
    assert [e["value"] for e in client.distinct("start.day")["metadata"]["start.day"]
            if e["value"] is not None] == ["2001-11-06"]

    write(sink, nov6.pages(midnight(nov7.day) - 2) + nov6.stop())
    requests.clear()
    write(sink, nov7.opening() + nov7.pages(midnight(nov7.day)))
    assert len([r for r in requests if r.startswith("POST")]) == len(OBJECTS)  # arrays only
    assert prepared_key("2001-11-07") not in list(client)  # taken over by the day's run
    uid = nov7.bundle.start_doc["uid"]
    run = client[uid]
    assert run.metadata["start"] == nov7.bundle.start_doc
    for name in OBJECTS[:3]:
        descriptor = nov7.streams[name].descriptor_doc
        assert run[name].metadata["uid"] == descriptor["uid"]
        assert "prepared" not in run[name].metadata
    table = run["bo07-wcm"].base["internal"].read()
    assert table["seq_num"].tolist() == [1, 2, 3]
    assert table["fillNumber"].tolist() == [34007] * 3
    assert run["bo07-wcm"].base["bunches"].read()[:, 0].tolist() == [1.0, 2.0, 3.0]
    days = {r.start["day"]: r for r in client.values()}
    assert sorted(days) == ["2001-11-06", "2001-11-07"]
    assert len(days["2001-11-06"]["bo07-wcm"].base["internal"].read()) == 15


def test_written_again_after_a_crash_the_prepared_streams_hold_each_row_once(tiled):
    sink, client, _ = tiled
    nov7 = Day(dt.date(2001, 11, 7))
    docs = nov7.opening() + nov7.pages(midnight(nov7.day))
    write(sink, docs)
    again = TiledRunSink(client, DirectTables(sink.direct.archive))  # a writer started again
    try:
        write(again, docs + nov7.pages(midnight(nov7.day) + 10))
    finally:
        again.close()
    table = client[nov7.bundle.start_doc["uid"]]["bo03-wcm"].base["internal"].read()
    assert table["seq_num"].tolist() == [1, 2, 3, 4, 5, 6]

"""The service end to end: plan, archive, Tiled serving, queries by object and day."""

import contextlib
import datetime as dt
import threading
import time
from zoneinfo import ZoneInfo

import httpx
import numpy as np
import pandas as pd
import pytest
from conftest import API_KEY, caget, run_service, sim_config, wait_for

from catalog.query import Archive
from warden.config import WardenConfig
from warden.service import WardenService
from warden_devices.machine import N_BUCKETS

ZONE = ZoneInfo("America/New_York")
HEADERS = {"Authorization": f"Apikey {API_KEY}"}


# -- a real IOC over CA -> `warden run` (subprocess) -> real Tiled server on SQLite -------------
@pytest.fixture(scope="module")
def archive(warden_server):
    return Archive.from_uri(warden_server["url"], api_key=API_KEY)


def latest_http(url: str, obj: str) -> dict:
    r = httpx.get(f"{url}/api/v1/metadata/latest/{obj}", headers=HEADERS)
    r.raise_for_status()
    return r.json()["data"]["attributes"]["metadata"]


@pytest.mark.parametrize("obj, attr", [("yi2-wcm3", "wcmBeam"), ("bo2-dvm", "dvmBeam"),
                                       ("ring-blue", "fillNumber"), ("yi2-wcm3", "bunchIntensity")])
def test_latest_over_http_matches_caget(warden_server, obj, attr):
    """Same upstream timestamp => same value. ``latest`` shows a reading after the flush that
    archives it, so it is asked until it reaches caget's timestamp; a newer update may come
    first (then caget again)."""
    for _ in range(20):
        value, ts = caget(f"{obj}:{attr}")
        deadline = time.monotonic() + 5
        while True:
            entry = latest_http(warden_server["url"], obj)
            assert entry["connected"] is True
            got = entry["attributes"][attr]
            if got["timestamp"] >= ts - 1e-6 or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        if got["timestamp"] == pytest.approx(ts, abs=1e-6):
            assert got["value"] == pytest.approx(value)
            return
    pytest.fail(f"latest {obj}.{attr} never caught up with caget")


def test_day_returns_rows_for_every_object_in_time_order(warden_server, archive):
    today = dt.datetime.now(ZONE).date().isoformat()
    assert today in archive.days()
    config = warden_server["config"]
    assert archive.objects() == [o["name"] for o in config["objects"] + config["plugins"]]
    for obj in archive.objects():
        wait_for(lambda obj=obj: len(archive.day(obj, today)) >= 2, timeout=20)
        df = archive.day(obj, today)
        assert list(df.columns)[0] == "time"
        assert df["time"].is_monotonic_increasing, obj
        assert str(df["time"].dt.tz) == "America/New_York"


def test_array_attributes_round_trip_as_arrays(warden_server, archive):
    today = dt.datetime.now(ZONE).date().isoformat()
    df = archive.day("yi2-wcm3", today)
    bunches = np.stack(df["bunchIntensity"].to_list())
    assert bunches.shape == (len(df), N_BUCKETS)
    assert bunches.dtype == np.float64
    # the bunches add up to the total current, as the model makes them (1 % noise)
    np.testing.assert_allclose(bunches.sum(axis=1), df["wcmBeam"], rtol=0.02, atol=1e-3)
    scaler = archive.day("phenix-sis", today)
    assert np.stack(scaler["rates"].to_list()).shape[1] == 16


def test_flushes_are_queryable_within_about_a_second(warden_server, archive):
    today = dt.datetime.now(ZONE).date().isoformat()
    newest = archive.latest("yi2-wcm3")["time"]
    seen = []

    def archived() -> bool:
        seen.append(archive.day("yi2-wcm3", today)["time"].iloc[-1].timestamp())
        return seen[-1] >= newest - 1e-3

    wait_for(archived, timeout=3, interval=0.1)
    assert len(seen) <= 4, (newest, seen)


def test_stock_bluesky_tiled_plugins_client_reads_a_run(warden_server):
    from bluesky_tiled_plugins.clients.catalog_of_bluesky_runs import CatalogOfBlueskyRuns
    from tiled.client import from_uri

    catalog = from_uri(warden_server["url"], api_key=API_KEY)["archive"]
    assert isinstance(catalog, CatalogOfBlueskyRuns)
    run = catalog.values().last()
    assert run.start["day"] == dt.datetime.now(ZONE).date().isoformat()
    # today's run is still being written: Tiled refuses a read whose array grew since its
    # shape was fetched (HTTP 500 in tiled 0.2.20), so a stock client may have to read again
    for attempt in range(5):
        try:
            ds = run["yi2-wcm3"].read()
            break
        except httpx.HTTPStatusError:
            if attempt == 4:
                raise
    assert ds["bunchIntensity"].shape[1] == N_BUCKETS
    assert len(ds["wcmBeam"]) >= 1
    v2_run = catalog.v2[run.start["uid"]]
    assert "ring-yellow" in list(v2_run)


def test_reads_need_the_key_and_writes_always_do(warden_server):
    url = warden_server["url"]
    assert httpx.get(f"{url}/api/v1/metadata/latest/yi2-wcm3").status_code == 401
    r = httpx.post(f"{url}/api/v1/metadata/archive", json={"data": {}})
    assert r.status_code in (401, 403, 422)
    assert httpx.get(f"{url}/api/v1/metadata/latest/yi2-wcm3", headers=HEADERS).status_code == 200


def test_cli_queries_the_server(warden_server, capsys):
    from warden.cli import main

    url = warden_server["url"]
    import os

    os.environ["WARDEN_API_KEY"] = API_KEY
    try:
        assert main(["objects", "--server", url]) == 0
        assert "pol-blue" in capsys.readouterr().out
        assert main(["latest", "yi2-wcm3", "--server", url, "--format", "json"]) == 0
        assert '"wcmBeam"' in capsys.readouterr().out
        today = dt.datetime.now(ZONE).date().isoformat()
        assert main(["day", "bo2-dvm", today, "--server", url, "--format", "csv"]) == 0
        csv = capsys.readouterr().out.splitlines()
        assert csv[0] == "time,dvmBeam" and len(csv) >= 3
        assert main(["status", "--server", url]) == 0
        assert "connected" in capsys.readouterr().out
        assert main(["day", "nope", today, "--server", url]) == 2
        assert "unknown object 'nope'" in capsys.readouterr().err
        assert main(["day", "bo2-dvm", "2001-13-01", "--server", url]) == 2
    finally:
        del os.environ["WARDEN_API_KEY"]


# -- in-process service on the sim source, with an injected clock ------------------------------
def test_midnight_rollover_makes_two_runs_and_days_keep_their_rows(tmp_path):
    start = dt.datetime(2001, 11, 6, 23, 59, 57, tzinfo=ZONE)
    with run_service(sim_config(tmp_path), start, seconds=6) as archive:
        check_rollover(archive)


def check_rollover(archive: Archive) -> None:
    runs = list(archive.catalog.values())
    assert sorted(r.start["day"] for r in runs) == ["2001-11-06", "2001-11-07"]
    assert all(r.stop["exit_status"] == "success" for r in runs)
    assert archive.days() == ["2001-11-06", "2001-11-07"]
    midnight = pd.Timestamp(dt.datetime(2001, 11, 7, tzinfo=ZONE))
    before = archive.day("yi2-wcm3", "2001-11-06")
    after = archive.day("yi2-wcm3", "2001-11-07")
    assert len(before) >= 4 and len(after) >= 4
    assert (before["time"] < midnight).all() and (after["time"] >= midnight).all()
    both = archive.range("yi2-wcm3", "2001-11-06T23:59:50", "2001-11-07T00:00:10")
    assert len(both) == len(before) + len(after)
    assert both["time"].is_monotonic_increasing
    assert len(archive.day("ring-yellow", "2001-11-07")) >= 2


def test_restart_within_a_day_merges_both_runs(tmp_path):
    config = sim_config(tmp_path)
    with run_service(config, dt.datetime(2001, 11, 6, 10, 0, tzinfo=ZONE), seconds=3) as first:
        n_first = len(first.day("yi2-wcm3", "2001-11-06"))
    with run_service(config, dt.datetime(2001, 11, 6, 14, 0, tzinfo=ZONE), seconds=3) as second:
        check_restart(second, n_first)


def check_restart(second: Archive, n_first: int) -> None:
    assert [r.start["day"] for r in second.catalog.values()] == ["2001-11-06"] * 2
    df = second.day("yi2-wcm3", "2001-11-06")
    assert len(df) > n_first >= 4
    assert df["time"].is_monotonic_increasing
    hours = df["time"].dt.hour
    assert set(hours) == {10, 14}
    afternoon = second.range("yi2-wcm3", "2001-11-06T12:00", "2001-11-06T15:00")
    assert len(afternoon) == len(df) - n_first
    assert second.latest("yi2-wcm3")["connected"] is True
    conn = second.connections("yi2-wcm3", "2001-11-06")
    assert conn["connected"].all() and len(conn) >= 2



def test_disconnects_and_reconnects_are_recorded_with_their_times(tmp_path):
    from conftest import KILL_PORT, SimIOC, fresh_prefix

    k = fresh_prefix()

    config = WardenConfig.model_validate({
        "archive": f"sqlite:///{tmp_path / 'archive.db'}",
        "timezone": ZONE.key,
        "objects": [
            {"name": "yi2-wcm3", "type": "WcmControl", "prefix": f"{k}yi2-wcm3:",
             "mode": "monitor"},
            {"name": "ring-blue", "type": "ringSpec", "prefix": f"{k}ring-blue:", "period": 1},
        ],
    })
    ioc = SimIOC(KILL_PORT, prefix=k).start()
    service = WardenService(config, port=0)
    service.start()
    runner = threading.Thread(target=service.run)
    runner.start()
    try:
        archive = service.archive()

        def connected() -> bool:
            return all(service.latest.get(o)["connected"] for o in ("yi2-wcm3", "ring-blue"))

        wait_for(connected, timeout=60)
        wait_for(lambda: service.latest.get("ring-blue")["rows"] >= 1, timeout=10)
        ioc.kill()
        lost = wait_for(lambda: not archive.latest("yi2-wcm3")["connected"] and time.time(),
                        timeout=30)
        ioc.start()
        wait_for(connected, timeout=60)
        back = time.time()
        rows_before = service.latest.get("yi2-wcm3")["rows"]
        wait_for(lambda: service.latest.get("yi2-wcm3")["rows"] > rows_before, timeout=10)
    finally:
        service.stop()
        runner.join(timeout=30)
        ioc.kill()
    service.writer.join()
    today = dt.datetime.now(ZONE).date().isoformat()
    with contextlib.closing(service):
        log = archive.connections("yi2-wcm3", today)
        states = log["connected"].tolist()
        changes = [s for i, s in enumerate(states) if i == 0 or s != states[i - 1]]
        assert changes[-3:] == [True, False, True]
        down = log[~log["connected"]]["time"].iloc[-1].timestamp()
        up = log[log["connected"]]["time"].iloc[-1].timestamp()
        assert down <= lost and up <= back + 1 and up > down


def test_public_server_reads_without_key_but_never_writes(tmp_path):
    start = dt.datetime(2001, 11, 6, 12, 0, tzinfo=ZONE)
    with run_service(sim_config(tmp_path), start, seconds=2, public=True) as archive:
        url = archive.root.uri.split("/api/v1")[0]
        r = httpx.get(f"{url}/api/v1/metadata/latest/yi2-wcm3")
        assert r.status_code == 200
        assert r.json()["data"]["attributes"]["metadata"]["attributes"]["wcmBeam"]["value"] > 0
        assert httpx.get(f"{url}/api/v1/search/archive").status_code == 200
        body = {"data": {"metadata": {}, "structure_family": "container", "specs": []}}
        assert httpx.post(f"{url}/api/v1/metadata/archive", json=body).status_code in (401, 403)
        assert len(list(archive.catalog)) == 1


def test_the_run_engine_keeps_no_message_of_the_plan_for_rewinding(tmp_path):
    """The monitoring plan runs for months: the RunEngine must not keep its messages to replay
    them after a pause (it did, every one of them, without a checkpoint)."""
    service = WardenService(sim_config(tmp_path), port=0, api_key=API_KEY)
    service.sim.update_period = 0.05
    service.start()
    seen: list[tuple[bool, int]] = []
    runner = threading.Thread(target=service.run)
    try:
        runner.start()
        wait_for(lambda: service.latest.get("yi2-wcm3")["rows"] > 20, timeout=30)
        engine = service.engine  # the RunEngine running the plan
        for _ in range(5):
            seen.append((engine.rewindable, len(engine._msg_cache or ())))
            time.sleep(0.3)
    finally:
        service.stop()
        runner.join(timeout=30)
        service.close()
    assert all(not rewindable and cached == 0 for rewindable, cached in seen), seen
    assert engine.rewindable  # restored when the plan ends

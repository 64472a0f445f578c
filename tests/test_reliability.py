"""Faults survived, nothing lost: archive outages, a killed service, a killed IOC.

The archive outage puts PostgreSQL behind a loopback proxy that the test cuts; the service's
own Tiled server and its writer both lose the database, as when the server is stopped.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from conftest import API_KEY, KILL_PORT, ZONE, SimIOC, _free_port, fresh_prefix, wait_for
from faults import TcpProxy
from test_backends import _pg, postgres_server  # noqa: F401 - a fixture
from tiled.client import from_uri as tiled_from_uri

from catalog.ascii import day_file_name, export_day, read_day_file
from catalog.backends import open_backend
from catalog.migrate import served
from catalog.query import Archive
from catalog.spool import Spool
from plans.clock import Clock
from warden.config import WardenConfig
from warden.service import WardenService

OUTAGE = float(os.environ.get("WARDEN_TEST_OUTAGE_SECONDS", "60"))


@pytest.fixture
def postgres_behind_proxy(postgres_server, tmp_path):  # noqa: F811
    """A fresh PostgreSQL database reached through a proxy the test can cut."""
    name = f"warden_outage_{os.getpid()}_{int(time.time())}"
    asyncio.run(_pg(f'CREATE DATABASE "{name}"'))
    admin = urlsplit(postgres_server)
    proxy = TcpProxy((admin.hostname, admin.port or 5432))
    netloc = admin.netloc.rsplit(":", 1)[0] if admin.port else admin.netloc
    uri = admin._replace(netloc=f"{netloc}:{proxy.port}", path=f"/{name}").geturl()
    try:
        yield uri, proxy
    finally:
        proxy.cut()
        asyncio.run(_pg(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def outage_config(uri: str, tmp_path: Path) -> WardenConfig:
    return WardenConfig.model_validate({
        "archive": uri,
        "spool": str(tmp_path / "spool"),
        "timezone": ZONE.key,
        "ascii": {"directory": str(tmp_path / "ascii")},
        "objects": [
            {"name": "yi2-wcm3", "type": "WcmControl", "source": "sim", "mode": "monitor"},
            {"name": "ring-yellow", "type": "ringSpec", "source": "sim", "period": 1,
             "offset": 0.2},
        ],
    })


class Running:
    """A service on its own thread, with the sim source updating every 0.25 s."""

    def __init__(self, config: WardenConfig, start: dt.datetime):
        self.clock = Clock(ZONE)
        self.service = WardenService(config, clock=self.clock, port=0, api_key=API_KEY)
        self.service.sim.update_period = 0.25
        self.service.start()
        self.clock.set(start)
        self.thread = threading.Thread(target=self.service.run)
        self.thread.start()

    def rows(self, obj: str = "yi2-wcm3") -> int:
        return self.service.latest.get(obj)["rows"]

    def close(self, timeout: float = 30.0) -> None:
        self.service.stop()
        self.thread.join(timeout=30)
        self.service.writer.close(timeout=timeout)
        self.service.close()


def test_archive_outage_spools_and_replays_exactly_once_across_a_restart(
    postgres_behind_proxy, tmp_path
):
    uri, proxy = postgres_behind_proxy
    config = outage_config(uri, tmp_path)
    day = "2001-11-06"
    first = Running(config, dt.datetime(2001, 11, 6, 10, 0, tzinfo=ZONE))
    try:
        writer = first.service.writer
        wait_for(lambda: writer.written >= 4, timeout=30)

        # 1. the archive goes away while the service runs, and comes back
        proxy.cut()
        rows_at_cut = first.rows()
        wait_for(lambda: writer.unavailable_since is not None, timeout=30)
        time.sleep(OUTAGE)
        assert first.thread.is_alive()  # monitoring went on
        assert first.rows() > rows_at_cut + OUTAGE  # 4 updates/s, all of them kept
        spooled = writer.backlog
        assert spooled > 0 and writer.outages == 1
        proxy.restore()
        back = time.monotonic()
        assert writer.join(timeout=60), writer.last_error
        replayed_in = time.monotonic() - back
        assert writer.unavailable_since is None and writer.errors == 0

        # 2. away again, and the service is stopped before it returns
        proxy.cut()
        wait_for(lambda: writer.unavailable_since is not None, timeout=30)
        time.sleep(5)
    finally:
        first.close(timeout=2)
    left = Spool(tmp_path / "spool")
    assert left.segments() and left.pending_bytes(left.first()) > 0
    left.close()

    proxy.restore()
    second = Running(config, dt.datetime(2001, 11, 6, 14, 0, tzinfo=ZONE))
    try:
        wait_for(lambda: second.rows() >= 8, timeout=30)
    finally:
        second.close()
    assert second.service.writer.errors == 0

    # every reading the plan made is in the archive exactly once: the day file written live
    # by both processes is the one made again from the archive, byte for byte
    path = tmp_path / "ascii" / day_file_name("rhicdata", day)
    with served(open_backend(uri), objects=["yi2-wcm3"]) as (url, key):
        archive = Archive(tiled_from_uri(url, api_key=key), zone=ZONE)
        assert export_day(archive, day).encode() == path.read_bytes()
        df = archive.day("yi2-wcm3", day)
    assert len(df) > 4 * (OUTAGE + 5)  # the outages' readings are there
    assert df["time"].is_monotonic_increasing and not df.duplicated(subset=["time"]).any()
    assert not list((tmp_path / "spool").glob("*.jsonl"))  # all replayed, nothing left
    print(f"\nreliability: {OUTAGE:.0f} s outage spooled {spooled / 1e3:.0f} kB "
          f"({spooled / OUTAGE * 3600 / 1e6:.1f} MB/hour at this rate), "
          f"replayed {replayed_in:.1f} s after the archive returned")


def test_a_connection_dropped_under_a_catalog_statement_is_an_outage_not_a_stop(
    postgres_behind_proxy, tmp_path
):
    """The archive goes away while the writer creates a run's streams in the catalog (the
    connection drops between two statements of one transaction): the writer waits for it,
    as for any outage, and writes the batch once it is back, instead of stopping."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    from catalog.spool import SpoolReader
    from catalog.writer import SpooledWriter

    uri, proxy = postgres_behind_proxy
    url = uri.replace("postgresql://", "postgresql+asyncpg://", 1)
    written: list[str] = []

    class CatalogSink:
        """Creates its batch's run in the catalog first; the first try loses the server."""

        tries = 0

        def prepare(self, docs) -> None:
            self.tries += 1
            asyncio.run(self._create(cut=self.tries == 1))

        async def _create(self, cut: bool) -> None:
            engine = create_async_engine(url)
            try:
                async with engine.begin() as conn:
                    await conn.execute(text("SELECT 1"))
                    if cut:
                        proxy.cut()
                        threading.Timer(1.0, proxy.restore).start()
                    await conn.execute(text("SELECT 2"))
            finally:
                await engine.dispose()

        def __call__(self, name: str, doc: dict) -> None:
            written.append(name)

    spool = Spool(tmp_path / "spool")
    spool.append("start", {"uid": "r1", "time": 1.0})
    writer = SpooledWriter(CatalogSink(), SpoolReader(tmp_path / "spool"), retry=0.2)
    try:
        wait_for(lambda: writer.position == spool.end, timeout=30)  # the batch is done
        assert writer.outages == 1 and writer.unavailable_since is None
        assert written == ["start"]
    finally:
        writer.abandon()
        spool.close()


# -- kill -9 -----------------------------------------------------------------------------------
def test_a_killed_writer_process_is_replaced_and_its_batch_lands_once(tmp_path):
    """The writer is a process of its own: killed mid-stream, another takes its place and goes
    on from the spool; every reading is in the archive exactly once."""
    config = WardenConfig.model_validate({
        "archive": f"sqlite:///{tmp_path / 'archive.db'}",
        "timezone": ZONE.key,
        "flush_interval": 0.2,
        "objects": [{"name": "yi2-wcm3", "type": "WcmControl", "source": "sim",
                     "mode": "monitor"}],
    })
    running = Running(config, dt.datetime(2001, 11, 6, 10, 0, tzinfo=ZONE))
    writer = running.service.writer
    try:
        wait_for(lambda: writer.written >= 10, timeout=30)
        first = writer.pid
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: writer.restarts == 1, timeout=30)
        assert writer.pid != first
        after = writer.written
        wait_for(lambda: writer.written >= after + 10, timeout=30)
    finally:
        running.service.stop()
        running.thread.join(timeout=30)
    assert writer.join(timeout=30)
    try:
        archive = running.service.archive()
        df = archive.day("yi2-wcm3", "2001-11-06")
        connections = archive.connections("yi2-wcm3", "2001-11-06")
    finally:
        running.service.close()
    assert len(df) == running.rows() and len(df) > 10
    assert not df.duplicated(subset=["time"]).any()
    assert "exit code -9" in writer.last_error
    # what the second writer wrote again of the first one's batches is not counted twice
    assert writer.written == len(df) + len(connections)


def writer_lock_free(spool: Path) -> bool:
    """No writer process holds the spool's ``writer.lock``."""
    with open(spool / "writer.lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(f, fcntl.LOCK_UN)
        return True


def answers(url: str) -> bool:
    try:
        httpx.get(f"{url}/healthz", timeout=2)
    except httpx.TransportError:
        return False
    return True


def start_warden(path: Path) -> subprocess.Popen:
    env = {**os.environ, "WARDEN_API_KEY": API_KEY}
    proc = subprocess.Popen([sys.executable, "-m", "warden", "run", str(path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    while not seen or "serving" not in seen[-1]:
        seen.append(proc.stdout.readline())
        assert seen[-1] or proc.poll() is None, "".join(seen)
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    return proc


def test_kill_9_loses_at_most_a_flush_and_the_day_merges_both_runs(tmp_path):
    k = fresh_prefix()
    ioc = SimIOC(KILL_PORT, prefix=k, update_period=0.1).start()  # wcmBeam changes at 10 Hz
    port = _free_port()
    config = {
        "archive": f"sqlite:///{tmp_path / 'archive.db'}",
        "spool": str(tmp_path / "spool"),
        "timezone": ZONE.key,
        "flush_interval": 0.5,
        "serve": {"host": "127.0.0.1", "port": port},
        "ascii": {"directory": str(tmp_path / "ascii")},
        "objects": [
            {"name": "yi2-wcm3", "type": "WcmControl", "prefix": f"{k}yi2-wcm3:",
             "mode": "monitor"},
            {"name": "ring-blue", "type": "ringSpec", "prefix": f"{k}ring-blue:", "period": 1},
        ],
    }
    path = tmp_path / "warden.yaml"
    path.write_text(yaml.safe_dump(config))
    url, auth = f"http://127.0.0.1:{port}", {"Authorization": f"Apikey {API_KEY}"}

    def archived_rows() -> int:
        r = httpx.get(f"{url}/api/v1/metadata/latest/yi2-wcm3", headers=auth)
        return r.json()["data"]["attributes"]["metadata"]["archived_time"] and \
            r.json()["data"]["attributes"]["metadata"]["rows"]

    try:
        proc = start_warden(path)
        wait_for(lambda: (archived_rows() or 0) > 30, timeout=60)
        time.sleep(1.23)  # anywhere in a flush interval
        proc.send_signal(signal.SIGKILL)
        killed = time.time()
        proc.wait()
        wait_for(lambda: not answers(url), timeout=10)  # its server process ends with it
        wait_for(lambda: writer_lock_free(tmp_path / "spool"), timeout=30)  # and its writer
        proc = start_warden(path)  # the spool of the killed process is replayed first
        wait_for(lambda: (archived_rows() or 0) > 20, timeout=60)
        proc.terminate()
        assert proc.wait(timeout=60) == 0
    finally:
        ioc.kill()

    day = dt.datetime.fromtimestamp(killed, ZONE).date().isoformat()
    ascii_path = tmp_path / "ascii" / day_file_name("rhicdata", day)
    assert ascii_path.read_bytes().endswith(b"\n")
    lines = read_day_file(ascii_path, ZONE)  # every line parses: none torn
    with served(open_backend(config["archive"]), objects=["yi2-wcm3", "ring-blue"]) as (u, key):
        archive = Archive(tiled_from_uri(u, api_key=key), zone=ZONE)
        runs = [r for r in archive.catalog.values() if r.start["day"] == day]
        df = archive.day("yi2-wcm3", day)
        exported = export_day(archive, day)
    assert len(runs) == 2  # the killed run (no stop document) and the next
    assert df["time"].is_monotonic_increasing and not df.duplicated(subset=["time"]).any()
    stamps = df["time"].map(lambda t: t.timestamp())
    before, after = stamps[stamps <= killed], stamps[stamps > killed]
    assert len(before) > 30 and len(after) > 20
    lost = killed - before.max()  # readings younger than this never left the process
    assert lost <= config["flush_interval"] + 0.5, lost
    # what the killed process wrote to its day file is all in the archive
    live = collections.Counter(ascii_path.read_text().splitlines())
    assert not live - collections.Counter(exported.splitlines())
    assert len(lines) == sum(live.values())
    print(f"\nreliability: kill -9 lost the last {lost:.2f} s of readings "
          f"(about {lost * 10:.0f} of a 10 Hz object; flush interval 0.5 s)")


# -- upstream faults ---------------------------------------------------------------------------
def test_ioc_down_30_s_is_recorded_and_monitoring_resumes_and_a_dead_object_stops_nothing(
    tmp_path
):
    k = fresh_prefix()
    config = WardenConfig.model_validate({
        "archive": f"sqlite:///{tmp_path / 'archive.db'}",
        "timezone": ZONE.key,
        "objects": [
            {"name": "yi2-wcm3", "type": "WcmControl", "prefix": f"{k}yi2-wcm3:",
             "mode": "monitor"},
            {"name": "ring-blue", "type": "ringSpec", "prefix": f"{k}ring-blue:", "period": 1},
            {"name": "never", "type": "WcmControl", "prefix": "nowhere:yi2-wcm3:",
             "mode": "monitor"},
        ],
    })
    ioc = SimIOC(KILL_PORT, prefix=k, update_period=0.2).start()
    clock = Clock(ZONE)
    service = WardenService(config, clock=clock, port=0, api_key=API_KEY)
    service.start()
    clock.set(dt.datetime(2001, 11, 6, 10, 0, tzinfo=ZONE))  # the archive day is known
    runner = threading.Thread(target=service.run)
    runner.start()
    auth = {"Authorization": f"Apikey {API_KEY}"}

    def latest(name: str) -> dict:
        r = httpx.get(f"{service.url}/api/v1/metadata/latest/{name}", headers=auth)
        return r.json()["data"]["attributes"]["metadata"]

    def rows(name: str) -> int:
        return service.latest.get(name)["rows"]

    try:
        wait_for(lambda: latest("yi2-wcm3")["connected"] and latest("ring-blue")["connected"],
                 timeout=60)
        wait_for(lambda: rows("ring-blue") >= 2, timeout=20)
        killed = time.monotonic()
        ioc.kill()
        wait_for(lambda: not latest("yi2-wcm3")["connected"], timeout=30)
        noticed = time.monotonic()  # the disconnect is recorded by now
        down_rows = {n: rows(n) for n in ("yi2-wcm3", "ring-blue")}
        for _ in range(30):  # the IOC is away for 30 s
            time.sleep(1)
            assert runner.is_alive()
            assert not latest("yi2-wcm3")["connected"] and not latest("ring-blue")["connected"]
        assert {n: rows(n) for n in down_rows} == down_rows  # nothing made up meanwhile
        ioc.start()
        back = time.monotonic()
        wait_for(lambda: rows("yi2-wcm3") > down_rows["yi2-wcm3"]
                 and rows("ring-blue") > down_rows["ring-blue"], timeout=30, interval=0.05)
        resumed = time.monotonic() - back
        # (the connection shows with the next publication of latest, a moment after the rows)
        wait_for(lambda: latest("yi2-wcm3")["connected"] and latest("ring-blue")["connected"],
                 timeout=10)
        never = latest("never")
        assert never["connected"] is False and never["rows"] == 0
    finally:
        service.stop()
        runner.join(timeout=30)
        ioc.kill()
    service.writer.join(timeout=30)
    try:
        archive = service.archive()
        log = archive.connections("yi2-wcm3", "2001-11-06")
        states = log["connected"].tolist()
        changes = [s for i, s in enumerate(states) if i == 0 or s != states[i - 1]]
        assert changes == [True, False, True]
        down = log[~log["connected"]]["time"].iloc[0]
        up = log[log["connected"]]["time"].iloc[-1]
        # recorded away from before `noticed` until after `back`: no longer than the IOC was
        # away, the time monitoring took to resume and a moment to record it
        assert back - noticed <= (up - down).total_seconds() <= back - killed + resumed + 10
        assert len(archive.day("ring-blue", "2001-11-06")) > down_rows["ring-blue"]
        assert archive.day("never", "2001-11-06").empty
    finally:
        service.close()
    print(f"\nreliability: monitoring resumed {resumed:.1f} s after the IOC came back")
    # the service knocks on a lost IOC's port every second and re-creates its channels when it
    # answers (libca alone waits up to 8.2 s for its beacon-anomaly search timer)
    assert resumed <= 5

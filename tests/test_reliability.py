"""Faults survived, nothing lost: archive outages, a killed service, a killed IOC.

The archive outage puts PostgreSQL behind a loopback proxy that the test cuts; the service's
own Tiled server and its writer both lose the database, as when the server is stopped.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conftest import API_KEY, ZONE, wait_for
from faults import TcpProxy
from test_backends import _pg, postgres_server  # noqa: F401 - a fixture
from tiled.client import from_uri as tiled_from_uri

from catalog.ascii import day_file_name, export_day
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

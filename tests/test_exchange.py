"""Exchange (write-back) against the real simulated IOC: changes reach RHIC, the rest stays."""

import datetime as dt
import os
import subprocess
import sys
import threading
from zoneinfo import ZoneInfo

import pytest
from conftest import KILL_PORT, SimIOC, caget, fresh_prefix, wait_for

from warden.config import WardenConfig
from warden.service import WardenService

ZONE = ZoneInfo("America/New_York")
LOCAL, TARGET = "phenix:magnet:status", "rhic:phenix:magnetStatus"


def caput(pvname: str, value: str) -> None:
    """``epics.caput`` in a fresh interpreter, as a PHENIX operator would."""
    code = f"import epics; assert epics.caput({pvname!r}, {value!r}, wait=True, timeout=5)"
    subprocess.run([sys.executable, "-c", code], check=True, env=os.environ.copy(), timeout=30,
                   capture_output=True)


@pytest.fixture()
def service(tmp_path):
    k = fresh_prefix()
    ioc = SimIOC(KILL_PORT, prefix=k).start()
    config = WardenConfig.model_validate({
        "archive": f"sqlite:///{tmp_path / 'archive.db'}",
        "timezone": ZONE.key,
        "objects": [{"name": "yi2-wcm3", "type": "WcmControl", "prefix": f"{k}yi2-wcm3:",
                     "mode": "monitor"}],
        "exchange": [{"source": f"{k}{LOCAL}", "target": f"{k}{TARGET}", "period": 1.0}],
    })
    svc = WardenService(config, port=0)
    svc.start()
    svc.pv = lambda name: f"{k}{name}"  # this IOC's PV names
    runner = threading.Thread(target=svc.run)
    runner.start()
    yield svc
    svc.stop()
    runner.join(timeout=30)
    svc.close()
    ioc.kill()


def exchange_rows(svc):
    svc.writer.join()
    archive = svc.archive()
    if not len(archive.catalog):  # the run's start document is not written yet
        return []
    run = archive.catalog.values().last()
    if "exchange" not in run or "internal" not in run["exchange"].base:
        return []  # no stream yet, or its descriptor without its first page
    table = run["exchange"].base["internal"].read()
    return list(zip(table["value"], table["accepted"], strict=True))


def test_local_change_reaches_rhic_and_unchanged_values_are_not_rewritten(service):
    wait_for(lambda: exchange_rows(service) == [("ON", True)], timeout=40)
    caput(service.pv(LOCAL), "STANDBY")
    # within a period, plus a flush and the time caget takes to start
    wait_for(lambda: caget(service.pv(TARGET))[0] == "STANDBY", timeout=5)
    rows_after = wait_for(lambda: (r := exchange_rows(service)) and r[-1] == ("STANDBY", True)
                          and r, timeout=5)
    n = service.latest.get("yi2-wcm3")["rows"]
    wait_for(lambda: service.latest.get("yi2-wcm3")["rows"] > n + 4, timeout=10)  # > 3 periods
    assert exchange_rows(service) == rows_after == [("ON", True), ("STANDBY", True)]


def test_rejected_put_is_recorded_and_monitoring_continues(service):
    wait_for(lambda: exchange_rows(service), timeout=40)
    caput(service.pv(LOCAL), "MELTED")  # the RHIC side accepts ON, OFF, STANDBY, RAMPING only
    wait_for(lambda: sum(1 for v, ok in exchange_rows(service) if v == "MELTED" and not ok) >= 2,
             timeout=20)  # recorded, and retried at the next period
    assert caget(service.pv(TARGET))[0] == "ON"
    n = service.latest.get("yi2-wcm3")["rows"]
    wait_for(lambda: service.latest.get("yi2-wcm3")["rows"] > n, timeout=5)
    caput(service.pv(LOCAL), "OFF")
    wait_for(lambda: caget(service.pv(TARGET))[0] == "OFF", timeout=10)
    today = dt.datetime.now(ZONE).date().isoformat()
    assert len(service.archive().day("yi2-wcm3", today)) > 0

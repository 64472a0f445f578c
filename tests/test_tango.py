"""Tango upstreams: a real Tango device server (PyTango test context, no database)."""

import datetime as dt
import threading
import time
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from conftest import wait_for

tango = pytest.importorskip("tango")
from tango.server import Device, attribute  # noqa: E402
from tango.test_context import DeviceTestContext  # noqa: E402

from warden.config import WardenConfig  # noqa: E402
from warden.service import WardenService  # noqa: E402
from warden_devices.build import build_device  # noqa: E402

ZONE = ZoneInfo("America/New_York")


class TangoWcm(Device):
    """A wall-current monitor that pushes change events for wcmBeam, not for its bunches."""

    def init_device(self):
        super().init_device()
        self._current = 100.0
        self._status = "ON"
        self._local = "ON"
        self.set_change_event("wcmBeam", True, False)
        self._stop = threading.Event()
        threading.Thread(target=self._decay, daemon=True).start()

    def _decay(self):
        with tango.EnsureOmniThread():
            while not self._stop.wait(0.2):
                self._current *= 0.999
                self.push_change_event("wcmBeam", self._current)

    @attribute(dtype=float)
    def wcmBeam(self):
        return self._current

    @attribute(dtype=(float,), max_dim_x=120)
    def bunchIntensity(self):
        return np.full(120, self._current / 111)

    @attribute(dtype=str, access=tango.AttrWriteType.READ_WRITE)
    def localStatus(self):
        return self._local

    @localStatus.write
    def localStatus(self, value):
        self._local = value

    @attribute(dtype=str, access=tango.AttrWriteType.READ_WRITE)
    def magnetStatus(self):
        return self._status

    @magnetStatus.write
    def magnetStatus(self, value):
        self._status = value


@pytest.fixture()
def tango_device():
    with DeviceTestContext(TangoWcm, process=True) as proxy:
        yield proxy


def test_tango_device_reads_events_and_polls(tango_device):
    name = tango_device.dev_name()
    dev = build_device("yi2-wcm3", "WcmControl", name, source="tango")
    try:
        wait_for(lambda: dev.connected, timeout=10)
        assert isinstance(dev.wcmBeam.get(), float)
        assert dev.bunchIntensity.get().shape == (120,)
        key = dev.wcmBeam.describe()["yi2-wcm3_wcmBeam"]
        assert (key["units"], key["precision"]) == ("10^11 p", 4)  # as declared
        seen = []
        dev.wcmBeam.subscribe(lambda value, **kw: seen.append(value), run=False)
        wait_for(lambda: len(seen) >= 3, timeout=10)  # change events
        assert seen[-1] < seen[0]
    finally:
        dev.destroy()


def test_tango_objects_are_monitored_archived_and_exchanged(tmp_path, tango_device):
    name = tango_device.dev_name()
    config = WardenConfig.model_validate({
        "archive": f"sqlite:///{tmp_path / 'archive.db'}",
        "timezone": ZONE.key,
        "objects": [{"name": "yi2-wcm3", "type": "WcmControl", "source": "tango",
                     "prefix": name, "mode": "monitor"}],
        "exchange": [{"source": f"{name}/localStatus", "target": f"{name}/magnetStatus",
                      "period": 0.5, "protocol": "tango"}],
    })
    service = WardenService(config, port=0)
    service.start()
    runner = threading.Thread(target=service.run)
    runner.start()
    try:
        wait_for(lambda: service.latest.get("yi2-wcm3")["rows"] >= 5, timeout=20)
        assert service.latest.get("yi2-wcm3")["connected"] is True
        tango_device.localStatus = "STANDBY"
        wait_for(lambda: tango_device.magnetStatus == "STANDBY", timeout=10)
        archive = service.archive()
        today = dt.datetime.now(ZONE).date().isoformat()
        wait_for(lambda: len(archive.day("yi2-wcm3", today)) >= 5, timeout=10)
        df = archive.day("yi2-wcm3", today)
        assert df["wcmBeam"].is_monotonic_decreasing
        assert np.stack(df["bunchIntensity"].to_list()).shape[1] == 120
        from catalog.plot import day_units

        units = day_units(archive, "yi2-wcm3", dt.date.fromisoformat(today))
        assert units == {"wcmBeam": "10^11 p", "bunchIntensity": "10^11 p"}  # for plots
    finally:
        service.stop()
        runner.join(timeout=30)
        service.close()


def test_a_stopped_tango_server_is_reported_disconnected():
    context = DeviceTestContext(TangoWcm, process=True)
    context.start()
    dev = build_device("yi2-wcm3", "WcmControl", context.device.dev_name(), source="tango")
    try:
        wait_for(lambda: dev.connected, timeout=10)
        context.stop()
        t0 = time.monotonic()
        wait_for(lambda: not dev.connected, timeout=30)
        assert time.monotonic() - t0 < 30
    finally:
        dev.destroy()

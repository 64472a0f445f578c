"""Plugins: scheduling on the injected clock, outputs archived like objects, failures contained."""

import datetime as dt
import math
import os
import threading
import time
from zoneinfo import ZoneInfo

import httpx
import pytest
from conftest import wait_for

from plans.clock import Clock
from warden.cli import main
from warden.config import WardenConfig
from warden.plugins import Plugin
from warden.plugins.bundled import FillSummary, Lifetime, decay_time
from warden.plugins.runner import PluginRunner, PluginState, discover
from warden.service import WardenService
from warden_devices.machine import RhicMachine

ZONE = ZoneInfo("America/New_York")


def test_decay_time_recovers_a_known_lifetime():
    samples = [(t, 100 * math.exp(-t / 3000.0)) for t in range(0, 300, 4)]
    assert decay_time(samples) == pytest.approx(3000.0, rel=1e-6)
    assert math.isnan(decay_time([(0, 5.0), (4, 5.0), (8, 5.0)]))  # no decay, no lifetime


def entry(attrs: dict, t: float) -> dict:
    return {"attributes": {k: {"value": v, "timestamp": t} for k, v in attrs.items()}}


def test_lifetime_of_the_simulated_machine_within_5_percent():
    """The model's currents (with their 0.2 % noise) decay with a known lifetime."""
    machine = RhicMachine(lifetime=3000.0, fill_length=20000.0)
    plugin = Lifetime()
    t0 = machine.epoch + 0.08 * machine.fill_length + 600  # well into the store
    out = {}
    for k in range(0, 300, 4):  # a 300 s window of WCM updates every 4 s
        t = t0 + k
        values = machine.values(t)
        latest = {obj: entry({"wcmBeam": values[f"{obj}:wcmBeam"]}, t)
                  for obj in ("yi2-wcm3", "bo2-wcm3")}
        out = plugin.compute(latest, t)
    assert out["lifetimeYellow"] == pytest.approx(3000.0, rel=0.05)
    assert out["lifetimeBlue"] == pytest.approx(3000.0, rel=0.05)


def test_fill_summary_integrates_current_and_restarts_on_a_new_fill():
    plugin = FillSummary()
    for t, fill, i in [(0, 7, 10.0), (10, 7, 20.0), (20, 7, 10.0), (30, 8, 1.0)]:
        out = plugin.compute({"ring-yellow": entry({"fillNumber": fill}, t),
                              "yi2-wcm3": entry({"wcmBeam": i}, t)}, t)
        if t == 20:
            assert out == {"fillNumber": 7, "peakCurrent": 20.0, "integratedCurrent": 300.0,
                           "duration": 20}
    assert out["fillNumber"] == 8 and out["integratedCurrent"] == 0.0


class Recorder(Plugin):
    name, interval, offset, inputs, outputs = "recorder", 10.0, 1.0, [], ["n"]

    def __init__(self):
        self.calls: list[float] = []

    def compute(self, latest, now):
        self.calls.append(now)
        return {"n": len(self.calls)}


def test_offset_and_interval_are_honoured_on_the_injected_clock():
    plugin = Recorder()
    published = []
    state = PluginState(plugin, interval=10.0, offset=1.0,
                        publish=lambda out, t: published.append((t, out["n"])))
    runner = PluginRunner([state], latest=lambda name: {}, time=lambda: 1000.0, num_threads=1)
    state.next_due = 1000.0 + state.offset  # what start() does at clock time 1000
    for tick in range(0, 351):  # 35 clock seconds in ticks of 0.1 s, no sleeping
        runner.run_due(1000.0 + tick / 10)
        if state.future is not None:
            state.future.result()
    runner.stop()
    assert plugin.calls == pytest.approx([1001.0, 1011.0, 1021.0, 1031.0])
    assert published == [(pytest.approx(1001.0), 1), (pytest.approx(1011.0), 2),
                         (pytest.approx(1021.0), 3), (pytest.approx(1031.0), 4)]


BAD_PLUGINS = '''
from warden.plugins import Plugin, value


class Broken(Plugin):
    name, interval, offset, inputs, outputs = "broken", 0.5, 0.0, ["yi2-wcm3"], ["x"]

    def compute(self, latest, now):
        raise RuntimeError("this plugin always fails")


class Twice(Plugin):
    name, interval, offset, inputs, outputs = "twice", 0.5, 0.2, ["yi2-wcm3"], ["twice"]

    def compute(self, latest, now):
        got = value(latest, "yi2-wcm3", "wcmBeam")
        return None if got is None else {"twice": 2 * got[0]}
'''


def test_plugins_are_archived_and_a_failing_one_stops_nothing(tmp_path, capsys):
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "mine.py").write_text(BAD_PLUGINS)
    assert {"lifetime", "fill", "broken", "twice"} <= set(discover(tmp_path / "plugins"))
    config = WardenConfig.model_validate({
        "archive": f"sqlite:///{tmp_path / 'archive.db'}",
        "timezone": ZONE.key,
        "plugin_dir": str(tmp_path / "plugins"),
        "objects": [
            {"name": "yi2-wcm3", "type": "WcmControl", "source": "sim", "mode": "monitor"},
            {"name": "bo2-wcm3", "type": "WcmControl", "source": "sim", "mode": "monitor"},
        ],
        "plugins": [{"name": "broken"}, {"name": "twice"}, {"name": "lifetime", "interval": 1}],
    })
    clock = Clock(ZONE)
    service = WardenService(config, clock=clock, port=0, api_key="pluginkey1")
    service.sim.update_period = 0.25
    url = service.start()
    clock.set(dt.datetime(2001, 11, 6, 12, 0, tzinfo=ZONE))
    runner = threading.Thread(target=service.run)
    runner.start()
    try:
        wait_for(lambda: service.latest.get("twice")["rows"] >= 3, timeout=15)
        rows = service.latest.get("yi2-wcm3")["rows"]
        wait_for(lambda: service.latest.get("yi2-wcm3")["rows"] > rows + 2, timeout=5)
        status = {p["name"]: p for p in service.runner.status()}
        assert status["broken"]["errors"] >= 2 and "always fails" in status["broken"]["last_error"]
        assert status["twice"]["errors"] == 0 and status["twice"]["runs"] >= 3
        archive = service.archive()
        twice = archive.latest("twice")["attributes"]["twice"]
        assert twice["timestamp"] == pytest.approx(clock.time(), abs=5)
        wait_for(lambda: len(archive.day("twice", "2001-11-06")) >= 3, timeout=5)
        assert "lifetime" in archive.objects()

        # control over HTTP: the key is needed to stop or start a plugin
        assert httpx.post(f"{url}/api/v1/warden/plugins/twice/stop").status_code == 401
        os.environ["WARDEN_API_KEY"] = "pluginkey1"
        try:
            assert main(["plugins", "stop", "twice", "--server", url]) == 0
            runs = service.runner.states["twice"].runs
            time.sleep(1.5)  # three intervals of the stopped plugin
            assert service.runner.states["twice"].runs == runs
            assert main(["plugins", "start", "twice", "--server", url]) == 0
            wait_for(lambda: service.runner.states["twice"].runs > runs, timeout=5)
            assert main(["plugins", "stop", "nope", "--server", url]) == 2
            capsys.readouterr()
            assert main(["plugins", "--server", url]) == 0
            listing = capsys.readouterr().out
            assert "twice" in listing and "broken" in listing
            assert "fill" in listing and "available" in listing  # discovered, not enabled
            assert main(["status", "--server", url]) == 0
        finally:
            del os.environ["WARDEN_API_KEY"]
    finally:
        service.stop()
        runner.join(timeout=30)
        service.close()


def test_unknown_plugin_is_a_config_error(tmp_path):
    from warden.config import ConfigError

    config = WardenConfig.model_validate({
        "archive": f"sqlite:///{tmp_path / 'a.db'}",
        "objects": [{"name": "a", "type": "DvmControl", "source": "sim"}],
        "plugins": [{"name": "nosuch"}],
    })
    with pytest.raises(ConfigError, match=r"plugins\[0\].name: unknown plugin 'nosuch'"):
        WardenService(config, port=0)

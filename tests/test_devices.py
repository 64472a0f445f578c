"""Devices built from examples/rhic.yaml against the real simulated IOC over Channel Access."""

import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from conftest import EXAMPLE, KILL_PORT, SimIOC, caget, fresh_prefix, wait_for

from warden.config import load_config
from warden_devices.build import build_device, pv_names
from warden_devices.machine import N_BUCKETS, PEAK_CURRENT


def devices_from(config_path, prefix: str = "", limit: int | None = None):
    """The devices of the first ``limit`` objects of a config (all by default)."""
    objects = load_config(config_path).objects[:limit]
    return [build_device(o.name, o.type, prefix + o.pv_prefix, o.source) for o in objects]


@pytest.fixture(scope="module")
def devices(sim_ioc):
    devs = devices_from(EXAMPLE)
    for dev in devs:
        dev.wait_for_connection(timeout=10)
    yield devs
    for dev in devs:
        dev.destroy()


def test_every_device_connects_and_reads_every_attribute(devices):
    assert len(devices) == 10
    for dev in devices:
        assert dev.connected, dev.name
        reading = dev.read()
        assert set(reading) == {f"{dev.name}_{attr}" for attr in dev.attributes}
        for key, r in reading.items():
            assert r["timestamp"] > 1e9, key
    wcm = next(d for d in devices if d.name == "yi2-wcm3")
    current = wcm.wcmBeam.get()
    bunches = wcm.bunchIntensity.get()
    assert isinstance(current, float)
    assert isinstance(bunches, np.ndarray) and bunches.shape == (N_BUCKETS,)
    assert bunches.dtype.kind == "f"
    ring = next(d for d in devices if d.name == "ring-yellow")
    assert isinstance(ring.fillNumber.get(), int)
    assert ring.species.get() == "p"
    assert ring.ringState.get() in {"Injection", "Ramp", "Store", "Dump"}


def test_monitor_updates_arrive(devices):
    wcm = next(d for d in devices if d.name == "bo2-wcm3")
    seen: list[float] = []
    got_three = threading.Event()

    def on_value(value, timestamp, **kwargs):
        seen.append(timestamp)
        if len(set(seen)) >= 3:
            got_three.set()

    token = wcm.wcmBeam.subscribe(on_value)
    try:
        assert got_three.wait(10), seen
    finally:
        wcm.wcmBeam.unsubscribe(token)
    assert sorted(set(seen)) == sorted(set(seen), key=float)


def test_every_attribute_describes_its_declared_units_and_kind(devices):
    """What the table declares reaches the data keys through describe(): served by the IOC
    for EPICS devices, declared for simulated ones."""
    from warden_devices.rhic import OBJECT_TYPES

    config = load_config(EXAMPLE)
    sims = [build_device(o.name, o.type, o.pv_prefix, "sim") for o in config.objects]
    for epics, sim, obj in zip(devices, sims, config.objects, strict=True):
        declared = OBJECT_TYPES[obj.type].attributes
        assert epics.attributes == sim.attributes == [a.name for a in declared]
        for attr in declared:
            for dev in (epics, sim):
                key = getattr(dev, attr.name).describe()[f"{dev.name}_{attr.name}"]
                if attr.dtype is not str:
                    assert key["units"] == attr.units, (dev.name, attr.name)
                if attr.precision is not None:
                    assert key["precision"] == attr.precision, (dev.name, attr.name)
                assert getattr(dev, attr.name).kind.name == attr.kind, (dev.name, attr.name)
        hinted = {a.name for a in declared if a.kind == "hinted"}
        assert set(epics.hints["fields"]) == {f"{epics.name}_{a}" for a in hinted}
    for dev in sims:
        dev.destroy()


def test_stream_data_keys_carry_the_units_the_ioc_serves(devices):
    """The descriptor of an object's stream (what plots read units from) carries them."""
    from plans.buffer import ConnectionLog, ObjectBuffer

    wcm = next(d for d in devices if d.name == "yi2-wcm3")
    buffer = ObjectBuffer(wcm, False, ConnectionLog(time.time))
    buffer.add_reading(wcm.read())
    keys = buffer.describe_collect()
    assert {a: (k["units"], k["precision"]) for a, k in keys.items()} == {
        "wcmBeam": ("10^11 p", 4), "bunchIntensity": ("10^11 p", 5)}
    assert keys["bunchIntensity"]["shape"] == [N_BUCKETS]


def test_pv_names_follow_prefix_and_attribute(devices):
    wcm = next(d for d in devices if d.name == "yi2-wcm3")
    assert pv_names(wcm) == {
        "wcmBeam": "yi2-wcm3:wcmBeam",
        "bunchIntensity": "yi2-wcm3:bunchIntensity",
    }


def test_pyepics_caget_reads_the_sim_ioc(sim_ioc):
    value, ts = caget("yi2-wcm3:wcmBeam")
    # the wall current monitor reads its noise floor (a few 10^-3, either sign) between fills
    assert isinstance(value, float) and -0.1 < value < 1.1 * PEAK_CURRENT["yellow"]
    bunches, _ = caget("yi2-wcm3:bunchIntensity")
    assert len(bunches) == N_BUCKETS
    status, _ = caget("phenix:magnet:status")
    assert status == "ON"


def test_devices_report_disconnected_when_the_ioc_dies():
    prefix = fresh_prefix()
    ioc = SimIOC(KILL_PORT, prefix=prefix).start()
    devs = devices_from(EXAMPLE, prefix=prefix, limit=3)
    try:
        for dev in devs:
            dev.wait_for_connection(timeout=10)
        assert all(dev.connected for dev in devs)
        ioc.kill()
        wait_for(lambda: not any(dev.connected for dev in devs), timeout=30)
        ioc.start()
        wait_for(lambda: all(dev.connected for dev in devs), timeout=60)
    finally:
        ioc.kill()
        for dev in devs:
            dev.destroy()


def test_the_model_and_the_ioc_give_every_declared_attribute_and_nothing_else():
    from warden_devices.ioc import all_pvnames, make_ioc
    from warden_devices.machine import EXCHANGE_PVS, RHIC_OBJECTS, RhicMachine
    from warden_devices.rhic import OBJECT_TYPES

    declared = {f"{name}:{a.name}" for name, otype, _ in RHIC_OBJECTS
                for a in OBJECT_TYPES[otype].attributes}
    assert set(RhicMachine().values(1_700_000_500.0)) == declared
    assert set(all_pvnames(make_ioc())) == declared | set(EXCHANGE_PVS) | {"sim:tick"}


def test_sim_ioc_lists_its_pvs():
    out = subprocess.run([sys.executable, "-m", "warden", "sim-ioc", "--list-pvs", "--extra", "2"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert "yi2-wcm3:wcmBeam" in out and "rhic:phenix:magnetStatus" in out
    assert "syn00001:a3" in out


def test_sim_source_devices_follow_the_model():
    from warden_devices.machine import RhicMachine
    from warden_devices.sim import SimUpstream

    dev = build_device("yi2-wcm3", "WcmControl", "yi2-wcm3:", source="sim")
    machine = RhicMachine()
    sim = SimUpstream([dev], machine, time=lambda: machine.epoch + 300.0)
    assert sim.step() == 2
    assert dev.connected
    assert dev.wcmBeam.get() == pytest.approx(machine.current("yellow", machine.epoch + 300), 0.02)
    assert dev.bunchIntensity.get().shape == (N_BUCKETS,)
    assert dev.read()["yi2-wcm3_wcmBeam"]["timestamp"] == machine.epoch + 300.0


def test_reconnect_watch_recreates_lost_channels_once_when_their_ioc_answers():
    """An IOC that comes back on its port has its lost channels re-created (libca then finds
    them at once); one that answers but no longer serves them gets them re-created once, not
    searched for every second."""
    from warden_devices.reconnect import ReconnectWatch, channels_of

    prefix = fresh_prefix()
    ioc = SimIOC(KILL_PORT, prefix=prefix).start()
    other = SimIOC(KILL_PORT, prefix=fresh_prefix())
    devs = devices_from(EXAMPLE, prefix=prefix, limit=2)
    watch = ReconnectWatch(channels_of(devs), period=0.2)
    n = len(watch.pvs)
    try:
        for dev in devs:
            dev.wait_for_connection(timeout=30)
        watch.start()
        ioc.kill()
        wait_for(lambda: not any(dev.connected for dev in devs), timeout=30)
        time.sleep(1)  # knocks on a dead port re-create nothing
        assert watch.recreated == 0
        other.start()  # answers on the port, serves other PVs
        wait_for(lambda: watch.recreated == n, timeout=10)
        time.sleep(1)  # five more knocks
        assert watch.recreated == n and not any(dev.connected for dev in devs)
        other.kill()
        ioc.start()  # the PVs' own IOC again: libca finds the re-created channels
        wait_for(lambda: all(dev.connected for dev in devs), timeout=10)
        assert devs[0].wcmBeam.get() is not None
    finally:
        watch.stop()
        other.kill()
        ioc.kill()
        for dev in devs:
            dev.destroy()

"""Shared fixtures: real simulated IOCs over Channel Access on loopback, a running service.

Channel Access settings must be in the environment before ophyd starts pyepics, so they are
made here, at import, before any test module imports ophyd. Each IOC gets its own port and
its own PV prefix; the client searches all of them on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


IOC_PORT = _free_port()  # the shared, always-running simulated machine (no PV prefix)
KILL_PORT = _free_port()  # an IOC the tests kill and restart (PV prefix "k:")
REPEATER_PORT = _free_port()  # beacons: IOCs -> this session's CA repeater -> clients
os.environ.update(
    EPICS_CA_ADDR_LIST=f"127.0.0.1:{IOC_PORT} 127.0.0.1:{KILL_PORT}",
    EPICS_CA_AUTO_ADDR_LIST="NO",
    EPICS_CA_SERVER_PORT=str(IOC_PORT),
    EPICS_CA_CONN_TMO="2",
    EPICS_CA_REPEATER_PORT=str(REPEATER_PORT),
    EPICS_CAS_BEACON_PORT=str(REPEATER_PORT),
    EPICS_CAS_BEACON_ADDR_LIST="127.0.0.1",
    EPICS_CAS_AUTO_BEACON_ADDR_LIST="NO",
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "rhic.yaml"
API_KEY = "testsecretkey1234"


_PREFIXES = iter(range(1, 10_000))


def fresh_prefix() -> str:
    """A PV prefix never used before in this test session (``k1:``, ``k2:`` ...).

    pyepics keeps every channel it ever made; a channel of a killed IOC waits out a search
    back-off before it finds a new IOC, so each killable IOC gets names of its own.
    """
    return f"k{next(_PREFIXES)}:"


class SimIOC:
    """``warden sim-ioc`` as a real subprocess, on loopback."""

    def __init__(self, port: int, prefix: str = "", update_period: float = 0.5):
        self.port, self.prefix, self.update_period = port, prefix, update_period
        self.proc: subprocess.Popen | None = None

    def start(self) -> SimIOC:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "warden", "sim-ioc", "--port", str(self.port),
             "--prefix", self.prefix, "--update-period", str(self.update_period)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        line = self.proc.stdout.readline()
        assert "serving" in line, line
        deadline = time.monotonic() + 30  # "serving" is printed before the sockets are bound
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                assert time.monotonic() < deadline and self.proc.poll() is None, "IOC not up"
                time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc.stdout.close()
            self.proc = None


def caget(pvname: str, timeout: float = 5.0) -> tuple[object, float]:
    """``epics.caget`` in a fresh interpreter (a client we did not write): (value, timestamp)."""
    code = (
        "import epics, json, sys\n"
        f"pv = epics.PV({pvname!r}, auto_monitor=False)\n"
        f"v = pv.get(timeout={timeout}, use_monitor=False)\n"
        "v = v.tolist() if hasattr(v, 'tolist') else v\n"
        "print(json.dumps([v, pv.timestamp]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=30, env=os.environ.copy())
    import json

    lines = [x for x in out.stdout.splitlines() if x.startswith("[")]
    assert lines, out.stdout + out.stderr
    value, ts = json.loads(lines[-1])
    return value, ts


@pytest.fixture(scope="session", autouse=True)
def ca_repeater():
    """This session's CA repeater on loopback (the service would start a detached one)."""
    from warden_devices.repeater import ensure_repeater

    proc = ensure_repeater()
    yield
    if proc is not None:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def sim_ioc():
    ioc = SimIOC(IOC_PORT).start()
    yield ioc
    ioc.kill()


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.2):
    """Poll ``predicate`` until it returns a truthy value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {predicate}")
        time.sleep(interval)


@pytest.fixture(scope="session")
def warden_server(sim_ioc, tmp_path_factory):
    """``warden run examples/rhic.yaml`` (faster polls) as a subprocess, with its Tiled server."""
    import yaml

    data = tmp_path_factory.mktemp("warden-run")
    config = yaml.safe_load(EXAMPLE.read_text())
    config["archive"] = f"sqlite:///{data / 'archive.db'}"
    config["serve"] = {"host": "127.0.0.1", "port": _free_port()}
    config["ascii"] = None
    for obj in config["objects"]:
        if obj["mode"] == "scan":
            obj.update(period=2.0, offset=0.5)
    path = data / "warden.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "WARDEN_API_KEY": API_KEY}
    proc = subprocess.Popen([sys.executable, "-m", "warden", "run", str(path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    while not seen or "serving" not in seen[-1]:  # libca may first warn about caRepeater
        seen.append(proc.stdout.readline())
        assert seen[-1] or proc.poll() is None, "".join(seen)
        assert len(seen) < 50, "".join(seen)
    threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep draining
    url = f"http://127.0.0.1:{config['serve']['port']}"

    def all_archived():
        r = httpx.get(f"{url}/api/v1/search/latest", headers={"Authorization": f"Apikey {API_KEY}"})
        items = r.json()["data"]
        return all(i["attributes"]["metadata"]["archived_time"] for i in items)

    wait_for(all_archived, timeout=30)
    yield {"url": url, "config": config, "proc": proc, "data": data}
    proc.terminate()
    proc.wait(timeout=30)


# -- the in-process service on the sim source, with an injected clock --------------------------
ZONE = ZoneInfo("America/New_York")


def sim_config(tmp_path, **extra):
    """A WCM (monitor) and a ringSpec (1 s scan) on the in-process sim source, SQLite archive."""
    from warden.config import WardenConfig

    return WardenConfig.model_validate({
        "archive": f"sqlite:///{tmp_path / 'archive.db'}",
        "timezone": ZONE.key,
        "objects": [
            {"name": "yi2-wcm3", "type": "WcmControl", "source": "sim", "mode": "monitor"},
            {"name": "ring-yellow", "type": "ringSpec", "source": "sim", "period": 1,
             "offset": 0.2},
        ],
        **extra,
    })


@contextlib.contextmanager
def run_service(config, start: dt.datetime, seconds: float, rate: float = 1.0,
                public: bool = False, api_key: str | None = None,
                compact_grace: float | None = 10.0, during=None):
    """Run the service for ``seconds`` from clock time ``start``; yield its served archive.
    ``during``: called on a thread (with the service) half way through the run."""
    from plans.clock import Clock
    from warden.service import WardenService

    clock = Clock(ZONE, rate=rate)
    service = WardenService(config, clock=clock, port=0, public=public, api_key=api_key)
    service.sim.update_period = 0.25
    service.compact_grace = compact_grace
    service.start()
    clock.set(start)  # the clock starts now, after the server is up
    threading.Timer(seconds, service.stop).start()
    if during is not None:
        threading.Timer(seconds / 2, during, (service,)).start()
    try:
        service.run()
        service.writer.join()
        assert service.writer.errors == 0
        assert service.ascii is None or service.ascii.errors == 0
        yield service.archive()
    finally:
        service.close()

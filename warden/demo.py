"""``warden demo``: the simulated IOC, the service and its Tiled server, in one command."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

MONITORED_TYPES = {"WcmControl", "DvmControl"}
SCAN = {"ringSpec": (10, 1), "irSpec": (10, 3), "SisScaler": (5, 1), "Polarimeter": (30, 5)}
DEMO_PLUGINS = ("lifetime", "fill")  # the bundled plugins, running: `warden plugins stop NAME`


def demo_config(data_dir: Path, port: int):
    """The RHIC objects of the simulated IOC (as in ``examples/rhic.yaml``, faster polls) and
    the bundled plugins."""
    from warden_devices.machine import RHIC_OBJECTS

    from .config import WardenConfig

    objects = []
    for name, kind, _ in RHIC_OBJECTS:
        obj = {"name": name, "type": kind, "source": "epics", "prefix": f"{name}:"}
        if kind in MONITORED_TYPES:
            obj["mode"] = "monitor"
        else:
            obj.update(mode="scan", period=SCAN[kind][0], offset=SCAN[kind][1])
        objects.append(obj)
    return WardenConfig.model_validate(
        {
            "archive": f"sqlite:///{(data_dir / 'archive.db').resolve()}",
            "serve": {"host": "127.0.0.1", "port": port},
            "objects": objects,
            "plugins": [{"name": name} for name in DEMO_PLUGINS],
        }
    )


def free_port() -> int:
    """A free TCP port on loopback (for the IOC's Channel Access server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ca_environment(port: int) -> dict[str, str]:
    """Channel Access client settings that find an IOC on loopback at ``port`` only."""
    return {
        "EPICS_CA_ADDR_LIST": "127.0.0.1",
        "EPICS_CA_AUTO_ADDR_LIST": "NO",
        "EPICS_CA_SERVER_PORT": str(port),
    }


def start_sim_ioc(port: int, update_period: float, *extra: str) -> subprocess.Popen:
    """Start ``warden sim-ioc`` as a subprocess and wait until it serves."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "warden",
            "sim-ioc",
            "--port",
            str(port),
            "--update-period",
            str(update_period),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    line = proc.stdout.readline()
    if "serving" not in line:
        proc.kill()
        raise RuntimeError(f"the simulated IOC did not start: {line.strip()}")
    threading.Thread(target=proc.stdout.read, daemon=True).start()  # drain its output
    return proc


def run_demo(data_dir: str, port: int, duration: float | None, update_period: float) -> int:
    """Run the demo until Ctrl-C or ``duration`` seconds."""
    ca_port = free_port()
    os.environ.update(ca_environment(ca_port))  # before ophyd starts Channel Access
    from .cli import _run_until_signalled
    from .service import WardenService

    data = Path(data_dir)
    data.mkdir(parents=True, exist_ok=True)
    ioc = start_sim_ioc(ca_port, update_period)
    try:
        config = demo_config(data, port)
        service = WardenService(config, public=True, port=port)
        url = service.start()
        threading.Thread(target=_progress, args=(service,), daemon=True).start()
        _run_until_signalled(service, _banner(url, data, ca_port, service.api_key), duration,
                             on_abort=ioc.kill)
        print("warden demo: stopped; the archive stays in", data.resolve(), flush=True)
    finally:
        ioc.terminate()
        ioc.wait(timeout=10)
    return 0


def _banner(url: str, data: Path, ca_port: int, key: str) -> str:
    return f"""
Beamline Warden demo
  simulated RHIC IOC   Channel Access on 127.0.0.1:{ca_port}
  archive              {data.resolve()}/archive.db (SQLite)
  Tiled server         {url}   (reads are public; writes need the key)
  web page             {url}/warden/
  latest, raw HTTP     {url}/api/v1/metadata/latest/yi2-wcm3
  Archiver Appliance   {url}/retrieval/data/getData.json?pv=yi2-wcm3:wcmBeam
  API key              {key}

Try, in another shell:
  warden latest yi2-wcm3 --server {url}
  warden day yi2-wcm3 {time.strftime("%Y-%m-%d")} --server {url}
  warden status --server {url}
  WARDEN_API_KEY={key} warden plugins stop fill --server {url}
  python -c "from tiled.client import from_uri; print(from_uri('{url}')['archive'])"

Ctrl-C stops the demo (a second Ctrl-C at once).
"""


def _progress(service, every: float = 5.0) -> None:
    latest = service.served_latest()
    while not service.stop_event.wait(every):
        entries = [latest.get(name) for name in latest.objects]
        connected = sum(e["connected"] for e in entries)
        lags = [e["time"] - e["archived_time"] for e in entries if e["time"] and e["archived_time"]]
        print(
            f"  {time.strftime('%H:%M:%S')}  objects connected {connected}/{len(entries)}"
            f"  rows archived {service.writer.written}"
            f"  archive lag {max(lags, default=0.0):.1f} s",
            flush=True,
        )

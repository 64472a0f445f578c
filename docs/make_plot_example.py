"""Render ``docs/plot_example.png``: an hour of the simulated machine, one disconnect.

Runs the warden service in-process on the ``sim`` source with a clock 60 times faster than
real time (an hour of machine time in a minute), takes ``yi2-wcm3`` off line for a few
minutes of it (its signals report a disconnect and its updates are withheld, as when an IOC
is lost), then plots the day::

    python docs/make_plot_example.py [OUTPUT.png]
"""

from __future__ import annotations

import datetime as dt
import sys
import tempfile
import threading
import time
from pathlib import Path
from zoneinfo import ZoneInfo

from catalog.plot import render_day_png
from plans.clock import Clock
from warden.config import WardenConfig
from warden.service import WardenService
from warden_devices.machine import RHIC_OBJECTS

ZONE = ZoneInfo("America/New_York")
START = dt.datetime(2001, 11, 6, 13, 0, tzinfo=ZONE)
RATE = 60.0  # clock seconds per real second
HOURS = 1.0
OFFLINE = ("yi2-wcm3", 20 * 60, 27 * 60)  # object, from, to (clock seconds after START)


def config(data: Path) -> WardenConfig:
    objects = [
        {"name": n, "type": t, "source": "sim", "mode": "monitor"}
        if t in ("WcmControl", "DvmControl")
        else {"name": n, "type": t, "source": "sim", "mode": "scan", "period": 30, "offset": 2}
        for n, t, _ in RHIC_OBJECTS
    ]
    return WardenConfig.model_validate({
        "archive": f"sqlite:///{data / 'archive.db'}",
        "timezone": ZONE.key,
        "flush_interval": 5,
        "objects": objects,
    })


def set_connected(device, connected: bool) -> None:
    """Make a simulated device's signals (dis)connected, as a lost IOC would."""
    for attr in device.component_names:
        signal = getattr(device, attr)
        signal._metadata["connected"] = connected
        signal._run_subs(sub_type=signal.SUB_META, **signal._metadata)


def take_offline(service: WardenService, clock: Clock) -> None:
    """Disconnect one object for a while, withholding its simulated updates."""
    name, t0, t1 = OFFLINE
    device = next(d for d in service.devices if d.name == name)
    signals = service.sim._signals
    withheld = {pv: sig for pv, sig in signals.items() if pv.startswith(f"{name}:")}
    while clock.time() < START.timestamp() + t0:
        time.sleep(0.05)
    for pv in withheld:
        del signals[pv]
    set_connected(device, False)
    while clock.time() < START.timestamp() + t1:
        time.sleep(0.05)
    set_connected(device, True)
    signals.update(withheld)


def main(out: str = "docs/plot_example.png") -> None:
    with tempfile.TemporaryDirectory() as tmp:
        clock = Clock(ZONE, rate=RATE)
        service = WardenService(config(Path(tmp)), clock=clock, port=0)
        service.sim.update_period = 0.1  # 6 clock seconds between beam updates
        service.start()
        clock.set(START)
        threading.Thread(target=take_offline, args=(service, clock), daemon=True).start()
        threading.Timer(HOURS * 3600 / RATE, service.stop).start()
        try:
            service.run()
            service.writer.join()
            archive = service.archive()
            path = render_day_png(archive, "yi2-wcm3", START.date(), None, out, 1200, 700)
            print("wrote", path)
        finally:
            service.close()


if __name__ == "__main__":
    main(*sys.argv[1:])

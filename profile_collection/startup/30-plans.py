# Beamline Warden IPython profile, part 3: the monitoring plan, to run by hand.
#
#   RE(monitor_plan(stop))    watch every configured object until `stop.set()` (or Ctrl-C,
#                             then RE.stop()); documents go to RE's subscribers, e.g.
#                             RE.subscribe(print). It archives nothing by itself: that is
#                             the service's job (`warden run`).
#   sim                       drives the `source: sim` devices; sim.start() before the plan
#   monitor_objects           the plan itself (plans.monitor.monitor_objects)

import threading

from plans.buffer import ConnectionLog, ObjectBuffer
from plans.clock import Clock
from plans.monitor import monitor_objects
from warden_devices.sim import SimUpstream


def monitor_plan(stop: threading.Event | None = None, clock: Clock | None = None,
                 flush_interval: float | None = None, md=None):
    """The monitoring plan over this session's devices, as the service wires it.

    It notices ``stop`` between two flushes, so up to ``flush_interval`` (default the
    config's) after it is set.
    """
    config = warden_config  # noqa: F821 - from 10-devices.py
    if config is None:
        raise RuntimeError(f"no devices: the config {WARDEN_CONFIG} did not load")  # noqa: F821
    clock = clock or Clock(config.zone)
    connections = ConnectionLog(clock.time)
    buffers = [
        ObjectBuffer(devices[o.name], o.mode == "monitor", connections)  # noqa: F821
        for o in config.objects
    ]
    periods = {o.name: (o.period, o.offset) for o in config.objects if o.mode == "scan"}
    return monitor_objects(buffers, connections, periods, clock=clock,
                           flush_interval=flush_interval or config.flush_interval, stop=stop,
                           md={"timezone": config.zone.key, **(md or {})})


_sim_devices = [devices[o.name] for o in (warden_config.objects if warden_config else [])  # noqa: F821
                if o.source == "sim"]
sim = SimUpstream(_sim_devices, update_period=1.0) if _sim_devices else None

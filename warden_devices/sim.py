"""The ``sim`` source: simulated devices driven in-process by the machine model."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from ophyd.sim import FakeEpicsSignalRO

from .build import UpstreamObject, pv_names
from .machine import RhicMachine, same_value
from .rhic import describe_declared


class SimAttribute(FakeEpicsSignalRO):
    """A simulated read-only attribute: a fake EPICS signal with the declared units and
    precision, which it describes as an EPICS signal does those its IOC serves."""

    def __init__(self, read_pv: str, *, units: str = "", precision: int | None = None,
                 **kwargs):
        super().__init__(read_pv, **kwargs)
        self._metadata.update(units=units, precision=precision)

    def describe(self) -> dict[str, dict]:
        return describe_declared(super().describe(), self.name, self._metadata)


class SimUpstream:
    """Drive simulated (fake EPICS) devices from a :class:`RhicMachine`.

    Every ``update_period`` seconds of ``clock`` the model is evaluated and each signal whose
    value changed is updated with ``sim_put``, stamped with the clock's time, so subscriptions
    fire exactly as they would for a real IOC.
    """

    def __init__(
        self,
        devices: Iterable[UpstreamObject],
        machine: RhicMachine | None = None,
        time: Callable[[], float] | None = None,
        update_period: float = 4.0,
    ):
        import time as _time

        self.machine = machine or RhicMachine()
        self.time = time or _time.time
        self.update_period = update_period
        self._signals = {
            pv: getattr(dev, attr) for dev in devices for attr, pv in pv_names(dev).items()
        }
        self._last: dict[str, object] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def step(self) -> int:
        """Evaluate the model now and push changed values; return how many changed."""
        t = self.time()
        changed = 0
        for pv, value in self.machine.values(t).items():
            sig = self._signals.get(pv)
            if sig is None or same_value(self._last.get(pv), value):
                continue
            self._last[pv] = value
            sig.sim_put(value, timestamp=t)
            changed += 1
        return changed

    def start(self) -> None:
        """Step once now, then every ``update_period`` seconds on a thread."""
        self.step()
        self._thread = threading.Thread(target=self._loop, name="sim-upstream", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.update_period):
            self.step()

"""Find a restarted IOC within a second, where libca alone takes up to 8 s.

When an IOC dies, libca puts its channels back to searching with a growing interval. The
restarted IOC's beacons (through the repeater, see :mod:`.repeater`) move them onto libca's
"beacon anomaly" search timer, whose period is 2**8 x 32 ms = 8.2 s: monitoring resumes
0.1-8.2 s after the IOC returns, by chance of that timer's phase (1.4 s and 7.6-9.3 s
measured). :class:`ReconnectWatch` does what an operator would do: once a second it knocks
on the TCP port of each IOC that channels lost (a plain connect, closed at once) and, when
it answers, re-creates those channels, which libca searches for at once (32 ms).

Channels that never connected are left to libca's own search: they have no IOC to knock
on, and searching them faster would only flood the network.

pyepics has no call that gives a PV a fresh channel (``PV.reconnect`` keeps the old one;
pyepics/pyepics#68), so :func:`recreate_channel` does it with its public channel functions
(``ca.clear_channel``, ``ca.create_channel``, ``ca.replace_access_rights_event``).
"""

from __future__ import annotations

import logging
import socket
import threading
from collections import defaultdict
from collections.abc import Iterable

from epics import ca
from ophyd import Device
from ophyd.signal import EpicsSignalBase

log = logging.getLogger(__name__)


def channels_of(signals: Iterable) -> list:
    """The pyepics PVs behind the EPICS signals among ``signals`` (devices are walked)."""
    pvs: dict[int, object] = {}
    for item in signals:
        leaves = ([w.item for w in item.walk_signals()] if isinstance(item, Device)
                  else [item])
        for sig in leaves:
            if isinstance(sig, EpicsSignalBase):
                for pv in (sig._read_pv, getattr(sig, "_write_pv", None)):
                    if pv is not None:
                        pvs[id(pv)] = pv
    return list(pvs.values())


def recreate_channel(pv) -> None:
    """Clear a disconnected PV's channel and create it anew for the same PV object, so libca
    searches for it at once; the PV subscribes its monitor again when it connects.

    Only pyepics' public channel functions are used, with the connection and access-rights
    callbacks of the old channel (those of every PV object sharing it) moved to the new one.
    """
    entry = ca.get_cache(pv.pvname)
    if entry is None or entry.chid is None:  # its owner disconnected the PV: leave it
        return
    pv._clear_auto_monitor_subscription()  # first: clearing the channel frees the monitor
    on_connect, on_access = list(entry.callbacks), list(entry.access_event_callback)
    ca.clear_channel(entry.chid)
    chid = ca.create_channel(pv.pvname)
    for callback in on_connect:
        ca.create_channel(pv.pvname, callback=callback)  # (called at once if connected)
    for callback in on_access:
        ca.replace_access_rights_event(chid, callback=callback)
    pv.chid = chid
    ca.flush_io()


def answers(host: str, timeout: float = 0.5) -> bool:
    """Whether ``host:port`` accepts a TCP connection (the IOC's CA server is up)."""
    name, _, port = host.rpartition(":")
    try:
        with socket.create_connection((name, int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


class ReconnectWatch:
    """A thread that re-creates the channels of lost PVs once their IOC answers again.

    Parameters
    ----------
    pvs
        The pyepics PVs to watch (see :func:`channels_of`).
    period
        Seconds between knocks on each lost IOC.
    """

    def __init__(self, pvs: list, period: float = 1.0):
        self.pvs = pvs
        self.period = period
        self.recreated = 0  # channels re-created so far
        self._hosts: dict[int, str] = {}  # "host:port" where each PV was last connected
        self._waiting: set[int] = set()  # re-created, not connected since: left to libca
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="warden-reconnect", daemon=True)

    def start(self) -> ReconnectWatch:
        for pv in self.pvs:
            pv.connection_callbacks.append(self._on_connection)
            if pv.connected:
                self._on_connection(pv=pv, conn=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:  # started
            self._thread.join(timeout=5)
        for pv in self.pvs:
            if self._on_connection in pv.connection_callbacks:
                pv.connection_callbacks.remove(self._on_connection)

    def _on_connection(self, pv, conn: bool, **kwargs) -> None:
        if conn:
            self._hosts[id(pv)] = ca.host_name(pv.chid)

    def lost(self) -> dict[str, list]:
        """``{"host:port": [PV, ...]}`` of PVs that were connected and are not now (once
        re-created, a PV is left to libca until it connects again: an IOC that answers but
        no longer serves it must not have it searched for every second)."""
        by_host = defaultdict(list)
        for pv in self.pvs:
            if pv.connected:
                self._waiting.discard(id(pv))
                continue
            host = self._hosts.get(id(pv))
            if host and ":" in host and id(pv) not in self._waiting:
                by_host[host].append(pv)
        return by_host

    def check(self) -> int:
        """Knock once on each lost IOC; re-create the channels of those that answer."""
        done = 0
        for host, pvs in self.lost().items():
            if self._stop.is_set() or not answers(host):
                continue
            for pv in pvs:
                if not pv.connected:
                    recreate_channel(pv)
                    self._waiting.add(id(pv))
                    done += 1
            log.info("%s answers again: re-created %d channels", host, len(pvs))
        self.recreated += done
        return done

    def _run(self) -> None:
        ca.use_initial_context()
        while not self._stop.wait(self.period):
            try:
                self.check()
            except Exception:  # noqa: BLE001 - keep watching; libca still searches on its own
                log.exception("reconnect watch")

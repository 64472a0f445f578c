"""The ``tango`` source: Ophyd signals backed by Tango device attributes (PyTango).

A signal follows its attribute through Tango change events where the device pushes them,
and polls it (every ``poll_period`` seconds) where it does not. A failed read or an error
event marks the signal disconnected, as for EPICS; the next good value reconnects it.
An object's ``prefix`` is its Tango device name (``rhic/wcm/yi2``, or a full
``tango://host:port/...#dbase=no`` name); each component's suffix is an attribute name.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from ophyd.signal import Signal

from .rhic import describe_declared

log = logging.getLogger(__name__)


class TangoAttribute(Signal):
    """One attribute of a Tango device as an Ophyd signal (writable when ``write_access``).

    ``units`` and ``precision`` are those declared for the attribute; :meth:`describe`
    carries them, as an EPICS signal's does those its IOC serves.
    """

    poll_period = 1.0
    _metadata_keys = (*Signal._core_metadata_keys, "status", "severity", "precision", "units")

    def __init__(self, device: str, *, attr: str, write_access: bool = False,
                 units: str = "", precision: int | None = None, **kwargs):
        super().__init__(**kwargs)
        import tango

        self._tango = tango
        self.device_name, self.attr = device, attr
        self._writable = write_access
        self._proxy = None
        self._event_id: int | None = None
        self._poller: threading.Thread | None = None
        self._stop = threading.Event()
        self._metadata.update(connected=False, write_access=write_access, units=units,
                              precision=precision)
        threading.Thread(target=self._connect, daemon=True, name=f"tango-{attr}").start()

    # -- connection and updates --------------------------------------------------------------
    def _connect(self) -> None:
        while not self._stop.is_set():
            try:
                self._proxy = self._tango.DeviceProxy(self.device_name)
                self._update(self._proxy.read_attribute(self.attr))
                break
            except self._tango.DevFailed:
                self._stop.wait(self.poll_period)
        if self._stop.is_set():
            return
        try:
            self._event_id = self._proxy.subscribe_event(
                self.attr, self._tango.EventType.CHANGE_EVENT, self._on_event
            )
        except self._tango.DevFailed:  # the device pushes no change events: poll it
            self._poller = threading.Thread(target=self._poll, daemon=True)
            self._poller.start()

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_period):
            try:
                self._update(self._proxy.read_attribute(self.attr))
            except self._tango.DevFailed:
                self._set_connected(False)

    def _on_event(self, event) -> None:
        if event.err:
            self._set_connected(False)
        else:
            self._update(event.attr_value)

    def _update(self, reading) -> None:
        self._set_connected(True)
        value, ts = reading.value, reading.time.totime()
        if value is not None and ts != self.timestamp:
            super().put(value, timestamp=ts, force=True)

    def _set_connected(self, connected: bool) -> None:
        if self._metadata["connected"] != connected:
            self._metadata["connected"] = connected
            self._run_metadata_callbacks()

    # -- Signal API --------------------------------------------------------------------------
    def describe(self) -> dict[str, dict]:
        return describe_declared(super().describe(), self.name, self._metadata)

    @property
    def connected(self) -> bool:
        return bool(self._metadata["connected"])

    def get(self, **kwargs) -> Any:
        if self._proxy is None:
            raise TimeoutError(f"Tango device {self.device_name} is not connected")
        try:
            self._update(self._proxy.read_attribute(self.attr))
        except self._tango.DevFailed as err:
            self._set_connected(False)
            raise TimeoutError(f"reading {self.device_name}/{self.attr} failed") from err
        return self._readback

    def put(self, value, **kwargs) -> None:
        if not self._writable:
            raise PermissionError(f"{self.device_name}/{self.attr} is read-only here")
        self._proxy.write_attribute(self.attr, value)
        self.get()

    def wait_for_connection(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.connected:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.device_name}/{self.attr} did not connect")
            time.sleep(0.05)

    def destroy(self) -> None:
        self._stop.set()
        if self._event_id is not None and self._proxy is not None:
            try:
                self._proxy.unsubscribe_event(self._event_id)
            except self._tango.DevFailed:
                pass
        super().destroy()


def tango_target(name: str) -> TangoAttribute:
    """A writable attribute, ``device/name/attribute`` (exchange targets and sources)."""
    device, attr = name.rsplit("/", 1)
    return TangoAttribute(device, attr=attr, write_access=True, name=name.replace("/", "_"))


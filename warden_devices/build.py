"""Build Ophyd devices from the configured objects."""

from __future__ import annotations

from collections.abc import Mapping

from ophyd import Component as Cpt
from ophyd import EpicsSignal, EpicsSignalRO, Signal
from ophyd.sim import make_fake_device

from .rhic import GENERIC, OBJECT_TYPES, UpstreamObject

_generic_cache: dict[tuple, type[UpstreamObject]] = {}


def generic_type(attributes: Mapping[str, str]) -> type[UpstreamObject]:
    """Return a device class with one read-only EPICS signal per ``{attribute: suffix}``."""
    key = tuple(attributes.items())
    if key not in _generic_cache:
        body = {attr: Cpt(EpicsSignalRO, suffix) for attr, suffix in attributes.items()}
        _generic_cache[key] = type("GenericObject", (UpstreamObject,), body)
    return _generic_cache[key]


def device_class(
    type_name: str, source: str = "epics", attributes: Mapping[str, str] | None = None
) -> type[UpstreamObject]:
    """Return the device class of an object type for a source (``epics``, ``sim``, ``tango``)."""
    if type_name == GENERIC:
        cls = generic_type(attributes or {})
    else:
        cls = OBJECT_TYPES[type_name]
    if source == "tango":
        from .tango import make_tango_device  # PyTango only when a Tango object is configured

        return make_tango_device(cls)
    return make_fake_device(cls) if source == "sim" else cls


def build_device(
    name: str,
    type_name: str,
    prefix: str,
    source: str = "epics",
    attributes: Mapping[str, str] | None = None,
) -> UpstreamObject:
    """Build the device of one configured object (not yet connected)."""
    return device_class(type_name, source, attributes)(prefix, name=name)


def build_derived(name: str, attributes: list[str]) -> UpstreamObject:
    """A device of soft signals, one per attribute, for values the warden derives itself."""
    key = ("derived", *attributes)
    if key not in _generic_cache:
        body = {attr: Cpt(Signal, value=None, kind="normal") for attr in attributes}
        _generic_cache[key] = type("DerivedObject", (UpstreamObject,), body)
    return _generic_cache[key]("", name=name)


def pv_names(device: UpstreamObject) -> dict[str, str]:
    """Return ``{attribute: pvname}`` of a device, for EPICS and simulated devices alike."""
    cls = type(device)
    return {attr: device.prefix + getattr(cls, attr).suffix for attr in device.attributes}


def build_target(pvname: str, source: str = "epics") -> EpicsSignal:
    """Build the writable signal of an exchange target (put with completion)."""
    if source == "tango":
        from .tango import tango_target

        return tango_target(pvname)
    if source == "sim":
        return make_fake_device(EpicsSignal)(pvname, name=_signal_name(pvname))
    return EpicsSignal(pvname, name=_signal_name(pvname), put_complete=True, string=True)


def build_source(pvname: str, source: str = "epics") -> EpicsSignalRO:
    """Build the read-only signal of an exchange source."""
    if source == "tango":
        from .tango import tango_target

        return tango_target(pvname)
    cls = make_fake_device(EpicsSignalRO) if source == "sim" else EpicsSignalRO
    return cls(pvname, name=_signal_name(pvname), string=True)


def _signal_name(pvname: str) -> str:
    return pvname.replace(":", "_").replace("-", "_")

"""Build Ophyd devices from the configured objects.

Each object type of :mod:`warden_devices.rhic` becomes one device class per source, one
component per attribute, in the attribute's kind:

=========  ==========================================================================
``epics``  ``EpicsSignalRO`` on ``<prefix><attribute>``; units and precision as the IOC
           serves them
``sim``    :class:`~warden_devices.sim.SimAttribute` (a fake EPICS signal), driven by
           :class:`~warden_devices.sim.SimUpstream`; describes the declared units
``tango``  :class:`~warden_devices.tango.TangoAttribute` of the device named by the
           prefix; describes the declared units
=========  ==========================================================================
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ophyd import Component as Cpt
from ophyd import Device, EpicsSignal, EpicsSignalRO, Signal
from ophyd import FormattedComponent as FCpt
from ophyd.sim import make_fake_device

from .rhic import GENERIC, OBJECT_TYPES, Attribute

SOURCES = ("epics", "sim", "tango")


class UpstreamObject(Device):
    """An upstream control-system object: every component is one attribute."""

    @property
    def attributes(self) -> list[str]:
        """Attribute names, in declaration order."""
        return list(self.component_names)


_classes: dict[tuple, type[UpstreamObject]] = {}


def _component(attr: Attribute, suffix: str, source: str) -> Cpt:
    common: dict[str, Any] = {"kind": attr.kind, "doc": attr.doc or None}
    if source == "tango":
        from .tango import TangoAttribute  # PyTango only when a Tango object is configured

        return FCpt(TangoAttribute, "{prefix}", attr=suffix, units=attr.units,
                    precision=attr.precision, **common)
    if source == "sim":
        from .sim import SimAttribute

        return Cpt(SimAttribute, suffix, string=attr.dtype is str, units=attr.units,
                   precision=attr.precision, **common)
    return Cpt(EpicsSignalRO, suffix, string=attr.dtype is str, **common)


def object_class(
    name: str,
    attributes: Sequence[Attribute],
    source: str = "epics",
    suffixes: Mapping[str, str] | None = None,
) -> type[UpstreamObject]:
    """The device class of an object type for ``source``: one component per attribute.

    ``suffixes`` maps attributes to PV suffixes (Tango attribute names) that differ from the
    attribute name.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r} (known: {', '.join(SOURCES)})")
    suffixes = suffixes or {}
    key = (name, tuple(attributes), source, tuple(suffixes.items()))
    if key not in _classes:
        body: dict[str, Any] = {
            a.name: _component(a, suffixes.get(a.name, a.name), source) for a in attributes
        }
        prefix = {"epics": "", "sim": "Fake", "tango": "Tango"}[source]
        _classes[key] = type(f"{prefix}{name}", (UpstreamObject,), body)
    return _classes[key]


def device_class(
    type_name: str, source: str = "epics", attributes: Mapping[str, str] | None = None
) -> type[UpstreamObject]:
    """The device class of a configured object type for a source (``epics``, ``sim``,
    ``tango``); a ``generic`` type takes ``{attribute: suffix}``."""
    if type_name == GENERIC:
        attributes = attributes or {}
        return object_class("GenericObject", [Attribute(a) for a in attributes], source,
                            attributes)
    otype = OBJECT_TYPES[type_name]
    return object_class(otype.name[:1].upper() + otype.name[1:], otype.attributes, source)


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
    if key not in _classes:
        body = {attr: Cpt(Signal, value=None, kind="normal") for attr in attributes}
        _classes[key] = type("DerivedObject", (UpstreamObject,), body)
    return _classes[key]("", name=name)


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

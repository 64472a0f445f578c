"""The RHIC object types, declared once: every attribute with its type, units and kind.

This table is the one place an object type is written down. From it are made the Ophyd
device classes of every source (:mod:`warden_devices.build`), the PV groups of the simulated
IOC (:mod:`warden_devices.ioc`) and, through the units the devices describe, the axis labels
of plots. The attribute name is the upstream name (``wcmBeam``), as operators and the daily
ASCII files know it; the PV is ``<prefix><attribute>``.

Units are Channel Access engineering units: at most 7 characters; ``^`` marks an exponent
(``10^11 p``, ``cm^-2/s``), which plots show as a superscript.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

N_BUCKETS = 120  # RHIC's RF buckets: one bunch intensity each
SIS_CHANNELS = 16
MAX_UNITS = 7  # Channel Access carries units in 8 bytes, the last a NUL

GENERIC = "generic"  # an object type given by its attribute list in the config


@dataclass(frozen=True)
class Attribute:
    """One attribute of an object type.

    Parameters
    ----------
    name
        Upstream attribute name, also the PV suffix and the Ophyd component name.
    dtype
        Element type (``float``, ``int`` or ``str``); ``None``: whatever the upstream serves.
    units
        Engineering units, ``""`` for a pure number.
    precision
        Digits after the decimal point that displays show.
    kind
        Ophyd kind: ``"hinted"`` for what a plot of the object shows first.
    shape
        ``()`` for a scalar, ``(n,)`` for an array of ``n`` elements.
    doc
        What the attribute is, in a few words.
    """

    name: str
    dtype: type | None = None
    units: str = ""
    precision: int | None = None
    kind: Literal["hinted", "normal"] = "normal"
    shape: tuple[int, ...] = ()
    doc: str = ""

    def __post_init__(self) -> None:
        if len(self.units) > MAX_UNITS:
            raise ValueError(f"{self.name}: units {self.units!r} longer than {MAX_UNITS}")


@dataclass(frozen=True)
class ObjectType:
    """An upstream object type: a name, what it is, and its attributes in order."""

    name: str
    doc: str
    attributes: tuple[Attribute, ...] = field(default_factory=tuple)


P = "10^11 p"  # beam intensity: 10^11 protons

# Each line: Attribute(name, dtype, units, precision, kind, shape=..., doc=...)
RING_SPEC = ObjectType("ringSpec", "A ring's specification: energy, fill number, species and "
                       "machine state.", (
    Attribute("beamEnergy", float, "GeV", 3, "hinted", doc="beam energy"),
    Attribute("fillNumber", int, doc="RHIC fill number"),
    Attribute("species", str, doc="ion species in the ring"),
    Attribute("ringState", str, doc="Injection, Ramp, Store or Dump"),
))

IR_SPEC = ObjectType("irSpec", "An interaction region: luminosity, beta* and collision rate.", (
    Attribute("luminosity", float, "cm^-2/s", kind="hinted", doc="instantaneous luminosity"),
    Attribute("betaStar", float, "m", 2, doc="beta function at the collision point"),
    Attribute("collisionRate", float, "Hz", 3, doc="collisions per second"),
))

WCM_CONTROL = ObjectType("WcmControl", "Wall-current monitor: total beam current and the 120 "
                         "bunch intensities.", (
    Attribute("wcmBeam", float, P, 4, "hinted", doc="total beam intensity"),
    Attribute("bunchIntensity", float, P, 5, shape=(N_BUCKETS,), doc="intensity per bucket"),
))

DVM_CONTROL = ObjectType("DvmControl", "DC voltmeter beam-current transformer.", (
    Attribute("dvmBeam", float, P, 4, "hinted", doc="total beam intensity"),
))

SIS_SCALER = ObjectType("SisScaler", "SIS scaler: 16 channel counts and rates.", (
    Attribute("counts", float, "counts", 0, shape=(SIS_CHANNELS,), doc="counts per channel"),
    Attribute("rates", float, "Hz", 3, "hinted", shape=(SIS_CHANNELS,), doc="rate per channel"),
))

POLARIMETER = ObjectType("Polarimeter", "A ring's polarimeter: one measurement every few "
                         "minutes.", (
    Attribute("polarization", float, "", 4, "hinted", doc="beam polarization (fraction)"),
    Attribute("polarizationError", float, "", 4, doc="its statistical error"),
    Attribute("asymmetryX", float, "", 6, doc="left-right asymmetry"),
    Attribute("asymmetryY", float, "", 6, doc="up-down asymmetry"),
    Attribute("measurementNumber", int, doc="number of the measurement"),
))

OBJECT_TYPES: dict[str, ObjectType] = {
    t.name: t for t in (RING_SPEC, IR_SPEC, WCM_CONTROL, DVM_CONTROL, SIS_SCALER, POLARIMETER)
}


def describe_declared(desc: dict[str, dict], name: str, metadata: dict) -> dict[str, dict]:
    """``desc`` (a signal's ``describe()``) with the declared ``units`` and ``precision`` the
    signal holds in ``metadata``, as an EPICS signal describes those its IOC serves."""
    for key in ("units", "precision"):
        if metadata.get(key) is not None:
            desc[name][key] = metadata[key]
    return desc

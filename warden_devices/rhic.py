"""The RHIC object types, one Ophyd device each, one signal per attribute.

The component name is the upstream attribute name (``wcmBeam``), as operators and the
daily ASCII files know it; the PV is ``<prefix><attribute>``.
"""

from __future__ import annotations

from ophyd import Component as Cpt
from ophyd import Device, EpicsSignalRO


class UpstreamObject(Device):
    """An upstream control-system object: every component is one attribute."""

    @property
    def attributes(self) -> list[str]:
        """Attribute names, in declaration order."""
        return list(self.component_names)


class RingSpec(UpstreamObject):
    """A ring's specification: energy, fill number, species and machine state."""

    beamEnergy = Cpt(EpicsSignalRO, "beamEnergy", kind="hinted")
    fillNumber = Cpt(EpicsSignalRO, "fillNumber")
    species = Cpt(EpicsSignalRO, "species", string=True)
    ringState = Cpt(EpicsSignalRO, "ringState", string=True)


class IrSpec(UpstreamObject):
    """An interaction region: luminosity, beta* and collision rate."""

    luminosity = Cpt(EpicsSignalRO, "luminosity", kind="hinted")
    betaStar = Cpt(EpicsSignalRO, "betaStar")
    collisionRate = Cpt(EpicsSignalRO, "collisionRate")


class WcmControl(UpstreamObject):
    """Wall-current monitor: total beam current and the 120 bunch intensities."""

    wcmBeam = Cpt(EpicsSignalRO, "wcmBeam", kind="hinted")
    bunchIntensity = Cpt(EpicsSignalRO, "bunchIntensity")


class DvmControl(UpstreamObject):
    """DC voltmeter beam-current transformer."""

    dvmBeam = Cpt(EpicsSignalRO, "dvmBeam", kind="hinted")


class SisScaler(UpstreamObject):
    """SIS scaler: 16 channel counts and rates."""

    counts = Cpt(EpicsSignalRO, "counts")
    rates = Cpt(EpicsSignalRO, "rates", kind="hinted")


class Polarimeter(UpstreamObject):
    """A ring's polarimeter: one measurement every few minutes."""

    polarization = Cpt(EpicsSignalRO, "polarization", kind="hinted")
    polarizationError = Cpt(EpicsSignalRO, "polarizationError")
    asymmetryX = Cpt(EpicsSignalRO, "asymmetryX")
    asymmetryY = Cpt(EpicsSignalRO, "asymmetryY")
    measurementNumber = Cpt(EpicsSignalRO, "measurementNumber")


OBJECT_TYPES: dict[str, type[UpstreamObject]] = {
    "ringSpec": RingSpec,
    "irSpec": IrSpec,
    "WcmControl": WcmControl,
    "DvmControl": DvmControl,
    "SisScaler": SisScaler,
    "Polarimeter": Polarimeter,
}
GENERIC = "generic"

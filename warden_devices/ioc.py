"""The simulated RHIC upstream: a caproto Channel Access server.

One ``PVGroup`` per object type, made from its declaration in :mod:`warden_devices.rhic`
(a read-only ``pvproperty`` per attribute, with its type, units and precision);
:class:`RhicIOC` places one of each RHIC object at its prefix and drives all values from
:class:`~warden_devices.machine.RhicMachine`.
"""

from __future__ import annotations

import os
import time

from caproto import ChannelType
from caproto.server import PVGroup, SubGroup, pvproperty, run

from .machine import EXCHANGE_PVS, MAGNET_STATES, RhicMachine, same_value
from .rhic import (
    DVM_CONTROL,
    IR_SPEC,
    POLARIMETER,
    RING_SPEC,
    SIS_SCALER,
    WCM_CONTROL,
    Attribute,
    ObjectType,
)

STRING = ChannelType.STRING
CA_TYPES = {float: ChannelType.DOUBLE, int: ChannelType.LONG, str: ChannelType.STRING}


def attribute_pv(attr: Attribute) -> pvproperty:
    """The read-only PV of one declared attribute, with its units and precision."""
    dtype = attr.dtype or float
    length = attr.shape[0] if attr.shape else None
    display = {} if dtype is str else {"units": attr.units}
    if attr.precision is not None:
        display["precision"] = attr.precision
    return pvproperty(value=[dtype()] * length if length else dtype(), max_length=length,
                      dtype=CA_TYPES[dtype], read_only=True, doc=attr.doc, **display)


def object_group(otype: ObjectType) -> type[PVGroup]:
    """A PVGroup class serving one object of ``otype``: one PV per attribute."""
    body = {attr.name: attribute_pv(attr) for attr in otype.attributes}
    body["__doc__"] = f"{otype.name}: {otype.doc}"
    return type(f"{otype.name[:1].upper()}{otype.name[1:]}Group", (PVGroup,), body)


RingSpecGroup = object_group(RING_SPEC)
IrSpecGroup = object_group(IR_SPEC)
WcmGroup = object_group(WCM_CONTROL)
DvmGroup = object_group(DVM_CONTROL)
SisScalerGroup = object_group(SIS_SCALER)
PolarimeterGroup = object_group(POLARIMETER)


class RhicIOC(PVGroup):
    """Simulated RHIC upstream for Beamline Warden.

    Both rings' wall-current monitors and DVMs, their ringSpecs, the IR8 irSpec, a SIS scaler
    and both polarimeters, plus the PHENIX-side PVs exchanged with RHIC. Fills ramp in, decay,
    dump and refill; beam and bunch currents change every update period.
    """

    yi2_wcm3 = SubGroup(WcmGroup, prefix="yi2-wcm3:")
    bo2_wcm3 = SubGroup(WcmGroup, prefix="bo2-wcm3:")
    yi2_dvm = SubGroup(DvmGroup, prefix="yi2-dvm:")
    bo2_dvm = SubGroup(DvmGroup, prefix="bo2-dvm:")
    ring_yellow = SubGroup(RingSpecGroup, prefix="ring-yellow:")
    ring_blue = SubGroup(RingSpecGroup, prefix="ring-blue:")
    ir8_spec = SubGroup(IrSpecGroup, prefix="ir8-spec:")
    phenix_sis = SubGroup(SisScalerGroup, prefix="phenix-sis:")
    pol_yellow = SubGroup(PolarimeterGroup, prefix="pol-yellow:")
    pol_blue = SubGroup(PolarimeterGroup, prefix="pol-blue:")

    magnet_status = pvproperty(
        name="phenix:magnet:status",
        value=EXCHANGE_PVS["phenix:magnet:status"],
        dtype=STRING,
        doc="PHENIX magnet status (local, written by PHENIX operators)",
    )
    rhic_magnet_status = pvproperty(
        name="rhic:phenix:magnetStatus",
        value=EXCHANGE_PVS["rhic:phenix:magnetStatus"],
        dtype=STRING,
        doc="PHENIX magnet status as RHIC sees it (written by the warden's exchange)",
    )
    tick = pvproperty(name="sim:tick", value=0, read_only=True, doc="Model updates so far")

    def __init__(self, *args, machine: RhicMachine, update_period: float = 4.0, **kwargs):
        super().__init__(*args, **kwargs)  # prefix: put before every PV name
        self.machine = machine
        self.update_period = update_period
        self.extra_pvdb: dict = {}
        self._last: dict[str, object] = {}

    @rhic_magnet_status.putter
    async def rhic_magnet_status(self, instance, value):
        if value not in MAGNET_STATES:
            raise ValueError(f"magnet status must be one of {MAGNET_STATES}, not {value!r}")
        return value

    @tick.startup
    async def tick(self, instance, async_lib):
        pvdb = {**self.pvdb, **self.extra_pvdb}
        while True:
            t = time.time()
            for pv, value in self.machine.values(t).items():
                if not same_value(self._last.get(pv), value):
                    self._last[pv] = value
                    await pvdb[self.prefix + pv].write(value, timestamp=t)
            await instance.write(instance.value + 1, timestamp=t)
            await async_lib.library.sleep(self.update_period)


def synthetic_group(n_attrs: int) -> type[PVGroup]:
    """Return a PVGroup class of ``n_attrs`` scalar attributes ``a0``, ``a1``, ..."""
    body = {f"a{k}": pvproperty(value=0.0, read_only=True) for k in range(n_attrs)}
    body["__doc__"] = "A synthetic object for scale tests."
    return type("SyntheticGroup", (PVGroup,), body)


def make_ioc(
    update_period: float = 4.0,
    extra: int = 0,
    extra_attrs: int = 4,
    fill_length: float = 1200.0,
    prefix: str = "",
) -> RhicIOC:
    """Build the simulated upstream, with ``extra`` synthetic objects ``syn00000:`` ...

    ``prefix`` goes before every PV name, so that two simulated machines can share a network.
    """
    machine = RhicMachine(fill_length=fill_length, extra=extra, extra_attrs=extra_attrs)
    ioc = RhicIOC(prefix=prefix, machine=machine, update_period=update_period)
    group = synthetic_group(extra_attrs)
    for i in range(extra):
        ioc.extra_pvdb.update(group(prefix=f"{prefix}syn{i:05d}:").pvdb)
    return ioc


def serve(ioc: RhicIOC, port: int = 5064, interfaces: tuple[str, ...] = ("127.0.0.1",)) -> None:
    """Serve the IOC over Channel Access until interrupted."""
    os.environ["EPICS_CA_SERVER_PORT"] = str(port)
    os.environ.setdefault("EPICS_CAS_BEACON_ADDR_LIST", "127.255.255.255")
    os.environ.setdefault("EPICS_CAS_AUTO_BEACON_ADDR_LIST", "NO")
    run({**ioc.pvdb, **ioc.extra_pvdb}, interfaces=list(interfaces))


def all_pvnames(ioc: RhicIOC) -> list[str]:
    """Every PV the IOC serves, sorted."""
    return sorted({**ioc.pvdb, **ioc.extra_pvdb})

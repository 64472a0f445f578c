"""A small model of RHIC seen from PHENIX: fills ramp in, store, decay, dump and refill.

The model is a pure function of time, so the simulated IOC and the in-process ``sim``
source serve the same numbers, and a test can ask what a PV holds at any instant.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np

from .rhic import N_BUCKETS, SIS_CHANNELS

FILLED_BUCKETS = 111  # the last 9 buckets are the abort gap
INJECTION_ENERGY = 9.8
STORE_ENERGY = 100.0

# (object name, object type, ring) of the simulated upstream; the PV prefix is "<name>:".
RHIC_OBJECTS: list[tuple[str, str, str]] = [
    ("yi2-wcm3", "WcmControl", "yellow"),
    ("bo2-wcm3", "WcmControl", "blue"),
    ("yi2-dvm", "DvmControl", "yellow"),
    ("bo2-dvm", "DvmControl", "blue"),
    ("ring-yellow", "ringSpec", "yellow"),
    ("ring-blue", "ringSpec", "blue"),
    ("ir8-spec", "irSpec", ""),
    ("phenix-sis", "SisScaler", ""),
    ("pol-yellow", "Polarimeter", "yellow"),
    ("pol-blue", "Polarimeter", "blue"),
]

# Exchange: local PHENIX-side PVs and the writable RHIC-side targets.
EXCHANGE_PVS = {
    "phenix:magnet:status": "ON",
    "rhic:phenix:magnetStatus": "ON",
}
MAGNET_STATES = ("ON", "OFF", "STANDBY", "RAMPING")

PEAK_CURRENT = {"yellow": 110.0, "blue": 104.0}  # 10^11 protons


@dataclass
class FillPhase:
    """Where a ring stands in its fill cycle at one instant."""

    fill_number: int
    state: str  # Injection, Ramp, Store, Dump
    seconds_into_fill: float
    current_fraction: float  # of the peak current
    energy: float


class RhicMachine:
    """Values of every simulated PV as a function of time.

    Parameters
    ----------
    fill_length
        Seconds from one injection to the next; real fills last hours, the default
        is short enough to watch a whole cycle in a demo.
    lifetime
        Beam lifetime at store, in seconds.
    polarimeter_period
        Seconds between two polarization measurements.
    first_fill
        Fill number at ``epoch``.
    epoch
        Time (UNIX seconds) at which fill ``first_fill`` starts.
    extra
        Number of synthetic objects ``syn00000`` ... added for scale tests.
    extra_attrs
        Scalar attributes of each synthetic object (``a0`` ...).
    """

    def __init__(
        self,
        fill_length: float = 1200.0,
        lifetime: float = 3000.0,
        polarimeter_period: float = 180.0,
        first_fill: int = 34000,
        epoch: float = 1_700_000_000.0,
        extra: int = 0,
        extra_attrs: int = 4,
        seed: int = 1,
    ):
        self.fill_length = fill_length
        self.lifetime = lifetime
        self.polarimeter_period = polarimeter_period
        self.first_fill = first_fill
        self.epoch = epoch
        self.extra = extra
        self.extra_attrs = extra_attrs
        self._rng = random.Random(seed)
        pattern = np.random.default_rng(seed).normal(1.0, 0.05, N_BUCKETS)
        pattern[FILLED_BUCKETS:] = 0.0
        self._bunch_pattern = pattern / pattern[:FILLED_BUCKETS].sum()
        self._sis_counts = np.zeros(SIS_CHANNELS)
        self._last_t: float | None = None

    # -- the fill cycle ---------------------------------------------------------------------
    def phase(self, t: float) -> FillPhase:
        """Return the fill phase at time ``t`` (same for both rings)."""
        n, into = divmod(t - self.epoch, self.fill_length)
        f = into / self.fill_length
        inj, ramp, dump = 0.05, 0.08, 0.97
        if f < inj:
            state, frac, energy = "Injection", f / inj, INJECTION_ENERGY
        elif f < ramp:
            x = (f - inj) / (ramp - inj)
            state, frac = "Ramp", 1.0
            energy = INJECTION_ENERGY + (STORE_ENERGY - INJECTION_ENERGY) * x
        elif f < dump:
            state, energy = "Store", STORE_ENERGY
            frac = math.exp(-(into - ramp * self.fill_length) / self.lifetime)
        else:
            state, frac, energy = "Dump", 0.0, INJECTION_ENERGY
        return FillPhase(self.first_fill + int(n) % 5000, state, into, frac, energy)

    def current(self, ring: str, t: float) -> float:
        """Noiseless total beam current of ``ring`` at ``t`` (10^11 protons)."""
        return PEAK_CURRENT[ring] * self.phase(t).current_fraction

    def polarization(self, ring: str, t: float) -> float:
        """Noiseless polarization of ``ring``: it decays slowly through a fill."""
        p = self.phase(t)
        base = 0.58 if ring == "yellow" else 0.55
        return base * math.exp(-p.seconds_into_fill / (40 * self.fill_length))

    # -- PV values --------------------------------------------------------------------------
    def values(self, t: float) -> dict[str, object]:
        """Return ``{pvname: value}`` for every PV at time ``t``."""
        rng = self._rng
        p = self.phase(t)
        out: dict[str, object] = {}
        # relative noise, plus the instruments' own noise floor (they read ~0 without beam)
        cur = {ring: self.current(ring, t) * (1 + rng.gauss(0, 0.002)) + rng.gauss(0, 0.003)
               for ring in PEAK_CURRENT}
        for name, kind, ring in RHIC_OBJECTS:
            pre = f"{name}:"
            if kind == "WcmControl":
                out[pre + "wcmBeam"] = round(cur[ring], 4)
                noise = np.random.default_rng(int(t * 1000) % 2**32).normal(1, 0.01, N_BUCKETS)
                bunches = cur[ring] * self._bunch_pattern * noise
                out[pre + "bunchIntensity"] = np.round(bunches, 5)
            elif kind == "DvmControl":
                out[pre + "dvmBeam"] = round(cur[ring] * 1.02 + rng.gauss(0, 0.05), 4)
            elif kind == "ringSpec":
                out[pre + "beamEnergy"] = round(p.energy, 3)
                out[pre + "fillNumber"] = p.fill_number
                out[pre + "species"] = "p"
                out[pre + "ringState"] = p.state
            elif kind == "irSpec":
                lumi = 0.0 if p.state != "Store" else 1.5e31 * cur["yellow"] * cur["blue"] / 1e4
                out[pre + "luminosity"] = float(f"{lumi:.5g}")
                out[pre + "betaStar"] = 1.0 if p.state == "Store" else 10.0
                out[pre + "collisionRate"] = round(lumi * 2.3e-26, 3)
            elif kind == "SisScaler":
                out.update(self._sis(pre, t, cur))
            elif kind == "Polarimeter":
                out.update(self._polarimeter(pre, ring, t))
        for i in range(self.extra):
            for a in range(self.extra_attrs):
                out[f"syn{i:05d}:a{a}"] = round(math.sin(t / 60 + i + a) + rng.gauss(0, 0.01), 6)
        return out

    def _sis(self, pre: str, t: float, cur: dict[str, float]) -> dict[str, object]:
        dt = 0.0 if self._last_t is None else max(0.0, t - self._last_t)
        self._last_t = t
        beam = max(0.0, cur["yellow"]) * max(0.0, cur["blue"])
        rates = np.array([beam * (1 + 0.1 * k) for k in range(SIS_CHANNELS)])
        self._sis_counts += np.floor(rates * dt)
        return {pre + "counts": self._sis_counts.copy(), pre + "rates": np.round(rates, 3)}

    def _polarimeter(self, pre: str, ring: str, t: float) -> dict[str, object]:
        n = int((t - self.epoch) // self.polarimeter_period)
        tm = self.epoch + n * self.polarimeter_period  # the measurement's own time
        m = random.Random(f"{ring}:{n}")
        pol = self.polarization(ring, tm) + m.gauss(0, 0.01)
        return {
            pre + "polarization": round(pol, 4),
            pre + "polarizationError": round(0.01 + m.random() * 0.01, 4),
            pre + "asymmetryX": round(pol * 0.0135 + m.gauss(0, 2e-4), 6),
            pre + "asymmetryY": round(m.gauss(0, 2e-4), 6),
            pre + "measurementNumber": n,
        }


def same_value(a: object, b: object) -> bool:
    """True when two PV values are equal (arrays element-wise)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return a is not None and b is not None and np.array_equal(a, b)
    return a == b

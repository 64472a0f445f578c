"""Clocks: where the warden's notion of 'now' and of the archive day comes from.

The monitoring plan asks its clock for the time, the archive day and the next local
midnight, and converts clock seconds to real seconds before it sleeps. Tests inject a
:class:`Clock` that starts at a chosen instant (say 23:59:58 on 6 Nov 2001) and may run
faster than real time, so a midnight rollover takes a few real seconds, not a day.
"""

from __future__ import annotations

import datetime as dt
import time as _time
from zoneinfo import ZoneInfo


class Clock:
    """A clock in a facility time zone, optionally offset and sped up.

    Parameters
    ----------
    zone
        The facility's time zone; ``None`` means the machine's local zone.
    start
        Clock time (UNIX seconds, or an aware datetime) at construction; ``None`` follows
        the system clock.
    rate
        Clock seconds per real second.
    """

    def __init__(
        self,
        zone: ZoneInfo | None = None,
        start: float | dt.datetime | None = None,
        rate: float = 1.0,
    ):
        self.zone = zone
        if isinstance(start, dt.datetime):
            start = start.timestamp()
        self._start = start
        self._real0 = _time.time()
        self.rate = rate

    def set(self, start: float | dt.datetime) -> None:
        """Make the clock read ``start`` now (and run on from there at ``rate``)."""
        self._start = start.timestamp() if isinstance(start, dt.datetime) else start
        self._real0 = _time.time()

    def time(self) -> float:
        """Clock time now, UNIX seconds."""
        real = _time.time()
        if self._start is None:
            return self._real0 + (real - self._real0) * self.rate
        return self._start + (real - self._real0) * self.rate

    def real_seconds(self, clock_seconds: float) -> float:
        """Real seconds that ``clock_seconds`` of this clock take."""
        return max(0.0, clock_seconds / self.rate)

    def local(self, t: float | None = None) -> dt.datetime:
        """Aware local datetime of clock time ``t`` (default now)."""
        t = self.time() if t is None else t
        return dt.datetime.fromtimestamp(t, self.zone).astimezone(self.zone)

    def day(self, t: float | None = None) -> dt.date:
        """The archive day (local calendar day) of ``t`` (default now)."""
        return self.local(t).date()

    def next_midnight(self, t: float | None = None) -> float:
        """Clock time of the first local midnight after ``t`` (default now)."""
        return day_start(self.day(t) + dt.timedelta(days=1), self.zone)


def day_start(day: dt.date, zone: ZoneInfo | None = None) -> float:
    """UNIX time of local midnight at the start of ``day``."""
    midnight = dt.datetime.combine(day, dt.time(0))
    if zone is None:
        return midnight.astimezone().timestamp()
    return midnight.replace(tzinfo=zone).timestamp()

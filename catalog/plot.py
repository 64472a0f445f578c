"""Plot one object's archive day: time series in local time, with units and disconnect gaps.

>>> from catalog.query import Archive
>>> from catalog.plot import plot_day, render_day_png
>>> a = Archive.from_uri("http://127.0.0.1:8000", api_key="secret")
>>> fig = plot_day(a, "yi2-wcm3", "2001-11-06")            # a matplotlib Figure
>>> render_day_png(a, "yi2-wcm3", "2001-11-06", None, "wcm.png", 1200, 700)

What is drawn
-------------
* One panel per unit: attributes that share a known unit (the SIS ``rates``, say) share a
  panel and a legend; every attribute without a unit gets a panel of its own.
* Times on the x axis are local times of the facility zone (``archive.zone``), and the axis
  stays within the day (a value that stood still since yesterday starts at midnight).
* Units come from the stream's data keys (``units``, as the devices described them when the
  run started); an attribute without units gets a panel of its own.
* Where the object was disconnected (``archive.connections``) the line is broken and the
  interval is shaded. A disconnect that is never followed by a reconnect lasts until now on
  today, until midnight on a past day.
* Where the warden was not recording (before the day's first run, between runs, after the
  last run stopped: ``archive.recording``) the line is broken too and the interval is shaded
  grey: an upstream value is not known to have held while nobody watched.
* Array attributes (``bunchIntensity``, the SIS ``counts``) are not drawn by default: a line
  per element would be unreadable and their sum duplicates a scalar (``wcmBeam``). Asked for
  by name, an array is drawn as the sum of its elements (``Σ bunchIntensity``). An object with
  no scalar attribute at all (``SisScaler``) shows the sums of its arrays.
* Every line is drawn in steps: an upstream value holds until its next update (a monitored
  object sends nothing while its value stands still). Text attributes (``ringState``) are
  not drawn.

Only the object-oriented matplotlib API is used (no ``pyplot``), so plotting is safe from any
thread and never opens a window; PNG files are written with the Agg renderer (which
``Figure.savefig`` picks for PNG whatever the session's backend).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo

import matplotlib.dates as mdates
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .query import Archive, QueryError, parse_day

MIN_PX, MAX_PX = 200, 8000
GAP_COLOR = "#d62728"
IDLE_COLOR = "0.5"
MIN_IDLE = 1.0  # seconds: a shorter pause between runs (midnight) is no gap


class PlotError(QueryError):
    """A plot that cannot be drawn as asked (unknown or text attribute, bad size)."""


# -- public API ---------------------------------------------------------------------------------
def plot_day(
    archive: Archive,
    obj: str,
    day: str | dt.date,
    attrs: Sequence[str] | None = None,
    *,
    ax: Axes | None = None,
    fig: Figure | None = None,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """Draw ``obj``'s readings on archive ``day``; return the figure.

    Parameters
    ----------
    archive
        The query helper of a warden server.
    obj
        Object name, e.g. ``"yi2-wcm3"``.
    day
        Archive day, ``YYYY-MM-DD`` or a date.
    attrs
        Attributes to draw; default every numeric scalar attribute (see the module notes).
    ax
        Draw every attribute into these axes (say, to compare objects); lines are then
        labelled ``object attribute`` and the caller owns the title.
    fig
        Draw the panels into this (empty) figure instead of a new one.
    figsize
        Size in inches of a new figure (default 10 wide, 2.4 per panel).

    Returns
    -------
    matplotlib.figure.Figure
        The figure drawn into (``ax.figure`` when ``ax`` was given).

    Raises
    ------
    UnknownObjectError
        ``obj`` is not in the archive.
    QueryError
        A malformed day; :class:`PlotError` for an unknown or text attribute.
    """
    d = parse_day(day)
    df = archive.day(obj, d)
    gaps = disconnected_intervals(archive, obj, d)
    idle = not_recording_intervals(archive, d)
    breaks = gaps + idle
    series = day_series(df, attrs, obj)
    known = day_units(archive, obj, d)
    units = {s.label: known.get(s.attr, "") for s in series}
    zone = archive.zone

    if ax is not None:
        for s in series:
            _draw(ax, df["time"], s, breaks, f"{obj} {s.label}")
        _shade(ax, gaps, f"{obj} disconnected")
        if not any(t.get_label() == "not recording" for t in ax.patches):
            _shade(ax, idle, "not recording", IDLE_COLOR)
        shown = {units[s.label] for s in series}
        if len(shown) == 1:
            ax.set_ylabel(_label(series[0].label, shown.pop(), len(series)))
        local_time_axis(ax, zone, d)
        _clip_to_day(ax, zone, d)
        many = sum(len(s.values) for s in series) > 20_000  # "best" is slow on big data
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper right" if many else "best", fontsize="small")
        return ax.figure

    panels = _panels(series, units)
    fig = fig or Figure(figsize=figsize or (10, 1.2 + 2.4 * max(1, len(panels))))
    fig.set_layout_engine("constrained")
    fig.suptitle(f"{obj} — {d:%a %d %b %Y}", fontweight="bold")
    if not len(df) or not panels:
        what = "no readings" if not len(df) else "no numeric attributes"
        ax0 = fig.add_subplot()
        ax0.text(0.5, 0.5, f"{what} of {obj} on {d.isoformat()}", ha="center", va="center",
                 transform=ax0.transAxes, fontsize="large", color="0.4")
        ax0.set_axis_off()
        return fig
    axes = np.atleast_1d(fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0])
    for axis, (unit, members) in zip(axes, panels, strict=True):
        for s in members:
            _draw(axis, df["time"], s, breaks, s.label)
        _shade(axis, gaps, "disconnected")
        _shade(axis, idle, "not recording", IDLE_COLOR)
        axis.set_ylabel(_label(members[0].label, unit, len(members)))
        axis.grid(True, alpha=0.3)
        axis.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize="small",
                    frameon=False)
    for axis in axes:
        local_time_axis(axis, zone, d, labels=axis is axes[-1])
    _clip_to_day(axes[0], zone, d)  # the panels share their x axis
    return fig


def render_day_png(
    archive: Archive,
    obj: str,
    day: str | dt.date,
    attrs: Sequence[str] | None,
    path: str | Path,
    width_px: int = 1200,
    height_px: int = 700,
) -> Path:
    """Write :func:`plot_day` of ``obj`` on ``day`` as a PNG of exactly the size asked.

    Parameters
    ----------
    archive, obj, day, attrs
        As for :func:`plot_day` (``attrs`` ``None`` or empty: the default attributes).
    path
        The PNG file to write (its directory must exist).
    width_px, height_px
        Image size in pixels, each between 200 and 8000.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    PlotError
        A size out of range, or an unknown or text attribute (a :class:`QueryError`).
    """
    for what, px in (("width", width_px), ("height", height_px)):
        if isinstance(px, bool) or not isinstance(px, int) or not MIN_PX <= px <= MAX_PX:
            raise PlotError(f"{what} must be {MIN_PX} to {MAX_PX} pixels, not {px!r}")
    dpi = 100
    fig = Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi)
    plot_day(archive, obj, day, list(attrs) if attrs else None, fig=fig)
    path = Path(path)
    fig.savefig(path, format="png", dpi=dpi)
    return path


# -- what to draw -------------------------------------------------------------------------------
@dataclass
class Series:
    """One line to draw."""

    label: str  #: ``wcmBeam``, or ``Σ bunchIntensity`` for the sum of an array
    attr: str
    values: np.ndarray
    integer: bool  #: counters and numbers (``fillNumber``): integer ticks, no offset


def day_series(df: pd.DataFrame, attrs: Sequence[str] | None, obj: str = "object") -> list[Series]:
    """The lines to draw from a day's table (see the module notes)."""
    kinds = {col: _kind(df[col]) for col in df.columns if col != "time"}
    if attrs:
        for attr in attrs:
            if attr not in kinds and len(df):
                known = ", ".join(kinds) or "none"
                raise PlotError(f"{obj} has no attribute {attr!r} (known: {known})")
            if kinds.get(attr) == "text":
                raise PlotError(f"{obj}.{attr} is text; only numbers can be plotted")
        chosen = [a for a in attrs if a in kinds]
    else:
        chosen = [a for a, k in kinds.items() if k == "scalar"]
        chosen = chosen or [a for a, k in kinds.items() if k == "array"]
    out = []
    for attr in chosen:
        if kinds[attr] == "array":
            sums = [np.nansum(np.asarray(v, dtype=float)) if v is not None else np.nan
                    for v in df[attr]]
            out.append(Series(f"Σ {attr}", attr, np.asarray(sums, dtype=float), False))
        else:
            values = pd.to_numeric(df[attr], errors="coerce")
            integer = pd.api.types.is_integer_dtype(values) or pd.api.types.is_bool_dtype(values)
            out.append(Series(attr, attr, values.to_numpy(float), bool(integer)))
    return out


def disconnected_intervals(
    archive: Archive, obj: str, day: dt.date
) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
    """``[(lost, regained), ...]`` of ``obj`` on ``day``, as aware local timestamps."""
    log = archive.connections(obj, day)
    out: list[tuple[pd.Timestamp, pd.Timestamp]] = []
    lost = None
    for t, connected in zip(log["time"], log["connected"], strict=True):
        if not connected and lost is None:
            lost = t
        elif connected and lost is not None:
            out.append((lost, t))
            lost = None
    if lost is not None:
        out.append((lost, _open_end(archive.zone, day, lost)))
    return out


def not_recording_intervals(
    archive: Archive, day: str | dt.date
) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
    """``[(from, to), ...]`` of ``day`` when the warden was not recording, as aware local
    timestamps: before the day's first run, between runs, after the last run stopped (until
    now on today).

    A run with no stop document (open, or its service killed) is taken to last until the
    next run starts, or until now. Runs whose times are not on ``day`` (made under an
    injected clock) say nothing: then no interval is returned.
    """
    day = parse_day(day)
    runs = archive.recording(day)
    zone = archive.zone
    first, last = (pd.Timestamp(dt.datetime.combine(day + dt.timedelta(days=i), dt.time(0),
                                                    tzinfo=zone)) for i in (0, 1))
    end = min(last, pd.Timestamp.now(tz=zone))
    spans = []
    for i, (start, stop) in enumerate(zip(runs["start"], runs["stop"], strict=True)):
        if pd.isna(stop):
            stop = runs["start"].iloc[i + 1] if i + 1 < len(runs) else end
        if start < end and stop > first:
            spans.append((max(start, first), min(stop, end)))
    if not spans:
        return []
    out, cursor = [], first
    for start, stop in sorted(spans):
        if (start - cursor).total_seconds() >= MIN_IDLE:
            out.append((cursor, start))
        cursor = max(cursor, stop)
    if (end - cursor).total_seconds() >= MIN_IDLE:
        out.append((cursor, end))
    return out


def day_units(archive: Archive, obj: str, day: str | dt.date) -> dict[str, str]:
    """``{attribute: units}`` of ``obj`` on ``day``, from its streams' data keys (the first
    run that gives an attribute units wins); an attribute without units is left out."""
    day = parse_day(day)
    units: dict[str, str] = {}
    try:
        from tiled.queries import Key

        for run in archive.catalog.search(Key("start.day") == day.isoformat()).values():
            if obj not in run:
                continue
            md = run[obj].metadata
            keys = md.get("data_keys") or md["descriptors"][0]["data_keys"]  # SQL, MongoDB
            for attr, key in keys.items():
                if key.get("units") and attr not in units:
                    units[attr] = str(key["units"])
    except Exception:  # noqa: BLE001 - a unit is a nicety, never a failure
        pass
    return units


# -- drawing ------------------------------------------------------------------------------------
def _kind(column: pd.Series) -> str:
    values = column.dropna()
    if not len(values):
        return "scalar" if pd.api.types.is_numeric_dtype(column) else "text"
    first = values.iloc[0]
    if isinstance(first, np.ndarray | list | tuple):
        return "array"
    if isinstance(first, bool | int | float | np.bool_ | np.number):
        return "scalar"
    return "text"


def _panels(series: list[Series], units: dict[str, str]) -> list[tuple[str, list[Series]]]:
    """Group series sharing a (non-empty) unit into one panel, in first-seen order."""
    panels: list[tuple[str, list[Series]]] = []
    for s in series:
        unit = units[s.label]
        shared = [p for p in panels if unit and p[0] == unit]
        if shared:
            shared[0][1].append(s)
        else:
            panels.append((unit, [s]))
    return panels


def _draw(ax: Axes, times: pd.Series, series: Series, gaps, label: str) -> None:
    """One line, broken (a NaN point) where each gap (disconnected, not recording) begins."""
    t = mpl_times(times)
    v = np.asarray(series.values, dtype=float)
    if gaps:
        starts = mpl_times(pd.Series([lost for lost, _ in gaps]))
        t = np.concatenate([t, starts])
        v = np.concatenate([v, np.full(len(starts), np.nan)])
        order = np.argsort(t, kind="stable")
        t, v = t[order], v[order]
    few = np.isfinite(v).sum() < 40
    ax.plot(t, v, label=label, linewidth=1.4, marker="." if few else None, drawstyle="steps-post")
    if series.integer:
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.ticklabel_format(axis="y", style="plain", useOffset=False)


def _shade(ax: Axes, gaps, label: str, color: str = GAP_COLOR) -> None:
    for i, (lost, back) in enumerate(gaps):
        t0, t1 = mpl_times(pd.Series([lost, back]))
        ax.axvspan(t0, t1, color=color, alpha=0.15, linewidth=0,
                   label=label if i == 0 else None)


def local_time_axis(ax: Axes, zone: ZoneInfo, day: str | dt.date | None = None,
                    labels: bool = True) -> None:
    """Tick ``ax``'s x axis (UTC datetimes, see :func:`mpl_times`) in local time of ``zone``.

    ``labels`` also writes the axis label, naming the zone (its abbreviation on ``day``).
    """
    locator = mdates.AutoDateLocator(tz=zone, minticks=4, maxticks=10)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(_LocalFormatter(locator, zone))
    if labels:
        day = parse_day(day) if day is not None else dt.date.today()
        noon = dt.datetime.combine(day, dt.time(12), tzinfo=zone)
        ax.set_xlabel(f"local time, {zone.key} ({noon.tzname()})")


def _clip_to_day(ax: Axes, zone: ZoneInfo, day: dt.date) -> None:
    """Keep the x axis within the day.

    A row's time is the newest upstream timestamp of its attributes, so a polled object whose
    values stood still since yesterday has rows of today's run stamped yesterday.
    """
    bounds = [dt.datetime.combine(day + dt.timedelta(days=i), dt.time(0), tzinfo=zone)
              for i in (0, 1)]
    start, end = mdates.date2num(mpl_times(pd.Series(bounds)))
    left, right = ax.get_xlim()
    if left < start < right or left < end < right:
        ax.set_xlim(max(left, start), min(right, end))


class _LocalFormatter(mdates.ConciseDateFormatter):
    """Concise local-time ticks without the date offset (the title names the day)."""

    def __init__(self, locator, zone):
        super().__init__(locator, tz=zone, show_offset=False)
        self.formats = ["%Y", "%b", "%d %b", "%H:%M", "%H:%M", "%H:%M:%S.%f"]
        self.zero_formats = ["", "%Y", "%b", "%d %b", "%H:%M", "%H:%M:%S"]


def _label(name: str, unit: str, n: int) -> str:
    unit = mathtext(unit)
    if n > 1:
        return f"[{unit}]" if unit else ""
    return f"{name} [{unit}]" if unit else name


def mathtext(unit: str) -> str:
    """``10^11 p`` -> ``10$^{11}$ p`` (matplotlib mathtext superscripts)."""
    return re.sub(r"\^(-?\d+)", r"$^{\1}$", unit)


def mpl_times(times: pd.Series) -> np.ndarray:
    """Aware timestamps as naive UTC ``datetime64``, what matplotlib plots as dates.

    Plot with these and tick with :func:`local_time_axis` to show local times.
    """
    s = pd.to_datetime(pd.Series(times).reset_index(drop=True))
    if s.dt.tz is not None:
        s = s.dt.tz_convert("UTC").dt.tz_localize(None)
    return s.to_numpy(dtype="datetime64[ns]")


def _open_end(zone, day: dt.date, lost: pd.Timestamp) -> pd.Timestamp:
    """Where a disconnect with no reconnect ends: now on today, midnight on a past day."""
    midnight = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0), tzinfo=zone)
    return max(min(pd.Timestamp.now(tz=zone), pd.Timestamp(midnight)), lost)

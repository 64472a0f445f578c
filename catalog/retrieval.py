"""The EPICS Archiver Appliance's retrieval API, served from the archive.

Clients of the Archiver Appliance (Phoebus Data Browser, PyDM, Grafana's archiverappliance
data source, aapy, epicsarchiver-retrieval-client, ...) read the warden unchanged, at
``<server>/retrieval``:

* ``GET /retrieval/data/getData.{json,csv,txt,raw}?pv=PV&from=ISO&to=ISO``: the samples of a
  PV, ``PV`` being ``<object>:<attribute>``, or a post-processor of it, ``mean_600(PV)``
  (``mean``, ``min``, ``max``, ``count``, ``std``, ``firstSample``, ``lastSample``; ``N``
  seconds a bin, 900 if left out; :mod:`catalog.reduce`), or ``optimized_N(PV)`` (at most N
  points: the samples, or N bins of ``[mean, std, min, max, count]``). ``.raw`` is PB/HTTP
  (:mod:`catalog.pb`).
* ``POST /retrieval/data/getDataAtTime?at=ISO`` with a JSON list of PVs: each PV's sample at
  that time (the newest at or before it), as a dict by PV.
* ``GET /retrieval/bpl/getAllPVs``, ``/retrieval/bpl/getMatchingPVs?pv=GLOB`` (or
  ``regex=``).

A PV's samples are the distinct upstream timestamps of its attribute in the object's rows,
from every run of the days asked (SQL tables of the open day, Parquet files of closed days),
read in the server's process through the archive's catalog adapter. As the Archiver
Appliance does, a range starts with the newest sample before ``from`` and holds those with
``from <= t <= to``. Times without a zone are the facility's. Requests need the API key
unless the server is public.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import fnmatch
import re
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import anyio
import numpy as np
import orjson
import pandas as pd
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response
from tiled.queries import Key

from . import pb, reduce
from .access import require_key
from .query import MAX_RANGE_DAYS, QueryError, parse_time
from .tiled_internals import NoEntry

DEFAULT_BIN = 900  # seconds, a post-processor named without _N (as the Archiver Appliance)
OPTIMIZED = "optimized"  # optimized_N: N points at most, each [mean, std, min, max, count]
OPTIMIZED_STATS = ("mean", "std", "min", "max", "count")
_PROCESSED = re.compile(r"^(?P<name>[A-Za-z]+)(?:_(?P<n>-?[0-9]+(?:\.[0-9]*)?))?\((?P<pv>.+)\)\Z")
FORMATS = {"json": "application/json", "csv": "text/csv", "txt": "text/plain",
           "raw": "application/x-protobuf"}


class UnknownPV(QueryError, LookupError):
    """No such PV (object or attribute) in the archive."""


@dataclass
class Samples:
    """A PV's samples: UNIX seconds, values (1-D, rows of numbers, or text) and its meta."""

    pv: str
    seconds: np.ndarray
    values: Any
    meta: dict[str, str]


@dataclass(frozen=True)
class Asked:
    """A ``pv`` argument: the PV and, for a post-processor, its aggregate and bin width."""

    pv: str
    agg: str | None = None
    width: float | None = None


def parse_pv(text: str) -> Asked:
    """``PV`` or ``agg_N(PV)`` (AA's syntax) as a :class:`Asked`; QueryError if bad."""
    match = _PROCESSED.match(text or "")
    if not match:
        if not text or "(" in text or ")" in text:
            raise QueryError(f"malformed pv {text!r}: expected OBJECT:ATTRIBUTE or agg_N(PV)")
        return Asked(text)
    name, n = match["name"], match["n"]
    if name not in (*reduce.AGGREGATES, OPTIMIZED):
        raise QueryError(f"unknown post-processor {name!r}: one of "
                         f"{', '.join(reduce.AGGREGATES)}, {OPTIMIZED}")
    width = float(n) if n is not None else DEFAULT_BIN
    if width <= 0:
        raise QueryError(f"post-processor {name}_{n}: N must be > 0")
    return Asked(match["pv"], name, width)


class ArchiveReader:
    """Samples of PVs from the archive's Tiled catalog adapter (``tree``), and the PVs the
    configured objects have (from ``store``: the served ``latest``)."""

    def __init__(self, tree, store, zone: ZoneInfo):
        self.tree, self.store, self.zone = tree, store, zone

    def pvs(self) -> list[str]:
        """``<object>:<attribute>`` of every attribute ``latest`` knows."""
        names = []
        for obj in self.store.objects:
            try:
                attributes = self.store.get(obj).get("attributes") or {}
            except KeyError:
                continue
            names.extend(f"{obj}:{attr}" for attr in attributes)
        return names

    def split(self, pv: str) -> tuple[str, str]:
        """``(object, attribute)`` of a PV of a configured object; UnknownPV otherwise."""
        obj, _, attr = pv.rpartition(":")
        if not obj or obj not in self.store.objects:
            raise UnknownPV(f"unknown pv {pv!r}: no object {obj or pv!r}")
        return obj, attr

    async def samples(self, pv: str, t0: float, t1: float, prior: bool = True) -> Samples:
        """Samples of ``pv`` with ``t0 <= t <= t1`` and, with ``prior``, the newest before
        ``t0`` (looked for on the day before too)."""
        if t1 < t0:
            raise QueryError("from is after to")
        obj, attr = self.split(pv)
        days = self._days(t0, t1)
        found = await self._read(obj, attr, days)
        seconds = found.seconds
        first = int(np.searchsorted(seconds, t0, "left"))
        last = int(np.searchsorted(seconds, t1, "right"))
        if prior and first == 0:
            before = days[0] - dt.timedelta(days=1)
            earlier = await self._read(obj, attr, [before], known=found.meta is not None)
            if len(earlier.seconds):
                return _join(earlier, found, slice(len(earlier.seconds) - 1, None),
                             slice(first, last))
        start = first - 1 if prior and first > 0 else first
        return Samples(pv, seconds[start:last], found.values[start:last], found.meta or {})

    def _days(self, t0: float, t1: float) -> list[dt.date]:
        try:
            first = dt.datetime.fromtimestamp(t0, self.zone).date()
            last = dt.datetime.fromtimestamp(t1, self.zone).date()
        except (OverflowError, ValueError, OSError):
            raise QueryError("time out of range") from None
        n = (last - first).days + 1
        if n > MAX_RANGE_DAYS:
            raise QueryError(f"range spans {n} days; ask for at most {MAX_RANGE_DAYS}")
        return [first + dt.timedelta(days=i) for i in range(n)]

    async def _read(self, obj: str, attr: str, days: list[dt.date], known: bool = False
                    ) -> _Found:
        parts, meta = [], None
        for day in days:
            node = self.tree.search(Key("start.day") == day.isoformat())
            runs = await node.items_range(0, None)
            runs.sort(key=lambda item: item[1].metadata()["start"]["time"])
            for _, run in runs:
                part = await _read_stream(run, obj, attr)
                if part is not None:
                    meta = part[2]
                    parts.append(part[:2])
        if meta is None and not known:
            entry = self.store.get(obj)
            if attr not in (entry.get("attributes") or {}):
                raise UnknownPV(f"unknown pv '{obj}:{attr}': {obj} has no attribute {attr!r}")
        return _merge(parts, meta)


@dataclass
class _Found:
    seconds: np.ndarray
    values: Any
    meta: dict[str, str] | None


async def _read_stream(run, obj: str, attr: str):
    """``(seconds, values, meta)`` of ``attr`` in the stream ``obj`` of ``run``, or None."""
    try:
        stream = await run.lookup_adapter([obj])
    except NoEntry:
        return None
    keys = stream.metadata().get("data_keys") or {}
    if attr not in keys:
        return None
    key = keys[attr]
    meta = {"name": f"{obj}:{attr}", "EGU": str(key.get("units") or ""),
            "PREC": str(key.get("precision") if key.get("precision") is not None else 0)}
    try:
        table = await stream.lookup_adapter(["internal"])
    except NoEntry:  # described, no row written yet
        return None
    if key.get("dtype") == "array":
        seconds = (await table.read(fields=[f"ts_{attr}"]))[f"ts_{attr}"].to_numpy()
        try:
            values = np.asarray(await (await stream.lookup_adapter([attr])).read())
        except NoEntry:
            return None
        rows = min(len(seconds), len(values))  # rows whose arrays are written too
        return seconds[:rows], values[:rows], meta
    df = await table.read(fields=[attr, f"ts_{attr}"])
    column = df[attr]
    values = column.to_numpy(dtype=object) if column.dtype.kind in "OUS" or \
        isinstance(column.dtype, pd.StringDtype) else column.to_numpy()
    return df[f"ts_{attr}"].to_numpy(), values, meta


def _merge(parts: list[tuple[np.ndarray, Any]], meta) -> _Found:
    """The runs' samples in time order, one per distinct upstream timestamp."""
    if not parts:
        return _Found(np.zeros(0), np.zeros(0), meta)
    seconds = np.concatenate([p[0] for p in parts]).astype(np.float64)
    kinds = {p[1].dtype.kind == "O" for p in parts}
    values = np.concatenate([p[1].astype(object) if kinds == {True, False} else p[1]
                             for p in parts])
    if len(seconds) > 1 and (np.diff(seconds) < 0).any():
        order = np.argsort(seconds, kind="stable")
        seconds, values = seconds[order], values[order]
    keep = np.r_[True, seconds[1:] != seconds[:-1]]
    if not keep.all():
        seconds, values = seconds[keep], values[keep]
    return _Found(seconds, values, meta)


def _join(earlier: _Found, found: _Found, a: slice, b: slice) -> Samples:
    meta = found.meta or earlier.meta or {}
    values = [earlier.values[a], found.values[b]]
    if values[0].dtype != values[1].dtype:
        values = [v.astype(object) for v in values]
    return Samples(meta.get("name", ""), np.concatenate([earlier.seconds[a], found.seconds[b]]),
                   np.concatenate(values), meta)


# -- encodings ---------------------------------------------------------------------------------
def _secs_nanos(seconds: np.ndarray) -> tuple[list[int], list[int]]:
    whole = np.floor(seconds).astype(np.int64)
    nanos = np.clip(np.round((seconds - whole) * 1e9), 0, 999_999_999).astype(np.int64)
    return whole.tolist(), nanos.tolist()


def to_json(s: Samples) -> bytes:
    """``[{"meta": {...}, "data": [{"secs", "nanos", "val", "severity", "status"}, ...]}]``"""
    secs, nanos = _secs_nanos(s.seconds)
    values = values_list(s.values)
    data = [{"secs": a, "nanos": b, "val": v, "severity": 0, "status": 0}
            for a, b, v in zip(secs, nanos, values, strict=True)]
    meta = {"name": s.pv, "EGU": s.meta.get("EGU", ""), "PREC": s.meta.get("PREC", "0")}
    return orjson.dumps([{"meta": meta, "data": data}], option=orjson.OPT_SERIALIZE_NUMPY)


def to_csv(s: Samples) -> bytes:
    """One line a sample: ``secs,val,severity,status,nanos`` (array values joined by ``|``)."""
    secs, nanos = _secs_nanos(s.seconds)
    values = ["|".join(map(str, v)) if isinstance(v, list) else str(v)
              for v in values_list(s.values)]
    return "".join(f"{a},{v},0,0,{b}\n" for a, v, b in zip(secs, values, nanos, strict=True)
                   ).encode()


def to_txt(s: Samples, zone: ZoneInfo) -> bytes:
    """A header naming the PV, then ``time<TAB>value`` lines (local ISO times)."""
    times = pd.to_datetime(s.seconds, unit="s", utc=True).tz_convert(zone)
    lines = [f"# {s.pv} ({s.meta.get('EGU', '')})"]
    lines += [f"{t.isoformat()}\t{v}" for t, v in zip(times, values_list(s.values), strict=True)]
    return ("\n".join(lines) + "\n").encode()


def values_list(values: np.ndarray) -> list:
    """Values as JSON-ready Python objects (rows of numbers as lists)."""
    if values.dtype == object:
        return [v.tolist() if isinstance(v, np.ndarray) else v for v in values]
    return values.tolist()


def at_json(sample: Samples) -> dict[str, Any] | None:
    """The last sample as getDataAtTime answers it, or None."""
    if not len(sample.seconds):
        return None
    secs, nanos = _secs_nanos(sample.seconds[-1:])
    return {"secs": secs[0], "nanos": nanos[0], "val": values_list(sample.values[-1:])[0],
            "severity": 0, "status": 0}


# -- routes ------------------------------------------------------------------------------------
def retrieval_router(tree, store, zone: str, api_key: str, public: bool = False) -> APIRouter:
    """The retrieval routes under ``/retrieval`` (mount with ``app.include_router``)."""
    reader = ArchiveReader(tree, store, ZoneInfo(zone))
    router = APIRouter(prefix="/retrieval")
    sql = asyncio.iscoroutinefunction(getattr(tree, "items_range", None))  # Tiled's catalog

    def authorize(request: Request) -> None:
        require_key(request, api_key, public)

    def when(text: str | None, name: str, default: float) -> float:
        if text is None or text == "":
            return default
        try:
            return parse_time(text, reader.zone)
        except QueryError as err:
            raise HTTPException(status_code=400, detail=f"{name}: {err}") from None

    @router.get("/data/getData.{fmt}")
    async def get_data(fmt: str, request: Request) -> Response:
        authorize(request)
        if not sql:
            raise HTTPException(501, "the retrieval API reads SQL archives (SQLite, PostgreSQL)")
        if fmt not in FORMATS:
            raise HTTPException(404, f"unknown format {fmt!r}: one of {', '.join(FORMATS)}")
        query = request.query_params
        t1 = when(query.get("to"), "to", dt.datetime.now(dt.UTC).timestamp())
        t0 = when(query.get("from"), "from", t1 - 86_400)
        try:
            asked = parse_pv(query.get("pv", ""))
            s = await reader.samples(asked.pv, t0, t1, prior=asked.agg is None)
            if asked.agg is not None:
                s = await anyio.to_thread.run_sync(_reduced, s, asked, t0, t1)
        except UnknownPV as err:
            raise HTTPException(404, str(err)) from None
        except (QueryError, reduce.BinError) as err:
            raise HTTPException(400, str(err)) from None
        if asked.agg is not None:
            s.pv = query.get("pv")
        encode = {"json": to_json, "csv": to_csv, "raw": _raw,
                  "txt": lambda s: to_txt(s, reader.zone)}[fmt]
        body = await anyio.to_thread.run_sync(encode, s)
        return Response(body, media_type=FORMATS[fmt])

    @router.post("/data/getDataAtTime")
    async def get_data_at_time(request: Request) -> Response:
        authorize(request)
        if not sql:
            raise HTTPException(501, "the retrieval API reads SQL archives (SQLite, PostgreSQL)")
        at = when(request.query_params.get("at"), "at", dt.datetime.now(dt.UTC).timestamp())
        try:
            pvs = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            raise HTTPException(400, "the body must be a JSON list of PV names") from None
        if not isinstance(pvs, list) or not all(isinstance(p, str) for p in pvs):
            raise HTTPException(400, "the body must be a JSON list of PV names")

        async def one(pv: str):
            try:
                return pv, at_json(await reader.samples(pv, at, at))
            except QueryError:  # unknown PVs are left out, as the Archiver Appliance does
                return pv, None

        found = await asyncio.gather(*(one(pv) for pv in pvs))
        return Response(orjson.dumps({pv: s for pv, s in found if s is not None}),
                        media_type="application/json")

    @router.get("/bpl/getAllPVs")
    def get_all_pvs(request: Request, limit: int = -1) -> list[str]:
        authorize(request)
        names = reader.pvs()
        return names if limit < 0 else names[:limit]

    @router.get("/bpl/getMatchingPVs")
    def get_matching_pvs(request: Request, pv: str | None = None, regex: str | None = None,
                         limit: int = 500) -> list[str]:
        authorize(request)
        if regex is not None:
            try:
                pattern = re.compile(regex)
            except re.error as err:
                raise HTTPException(400, f"regex: {err}") from None
        else:
            pattern = re.compile(fnmatch.translate(pv or "*"))
        names = [n for n in reader.pvs() if pattern.fullmatch(n)]  # (as Java matches())
        return names if limit < 0 else names[:limit]

    return router


def _reduced(s: Samples, asked: Asked, t0: float, t1: float) -> Samples:
    values = s.values
    if values.dtype == object and len(values) and isinstance(values[0], np.ndarray):
        values = np.stack(values)
    if asked.agg != OPTIMIZED:
        seconds, reduced = reduce.reduce(s.seconds, values, asked.width, asked.agg)
        return Samples(s.pv, seconds, reduced, s.meta)
    # optimized_N (what PyDM asks for): the samples themselves when there are at most N,
    # else N bins over the range, each [mean, std, min, max, count]
    if len(s.seconds) <= asked.width:
        return s
    if values.ndim != 1:
        raise reduce.BinError("optimized needs a scalar PV")
    width = max(t1 - t0, 1e-6) / asked.width
    stats = [reduce.reduce(s.seconds, values, width, agg) for agg in OPTIMIZED_STATS]
    return Samples(s.pv, stats[0][0], np.column_stack([v for _, v in stats]).astype(float),
                   s.meta)


def _raw(s: Samples) -> bytes:
    meta = {k: v for k, v in s.meta.items() if k in ("EGU", "PREC")}
    return pb.encode(s.pv, s.seconds, s.values, meta)

"""Ask the archive: what is an object now, what was it on a day, over a time range.

>>> a = Archive.from_uri("http://127.0.0.1:8000", api_key="secret")
>>> a.objects()
['yi2-wcm3', ...]
>>> a.latest("yi2-wcm3")["attributes"]["wcmBeam"]["value"]
16.4228
>>> a.day("yi2-wcm3", "2001-11-06")          # pandas DataFrame: time + one column per attribute
>>> a.range("yi2-wcm3", "2001-11-06T22:00", "2001-11-07T02:00")

A day's rows are those of every run recorded for that archive day (several after a restart),
merged in time order (:meth:`Archive.recording` says when each run recorded). The ``time``
of a row is the newest upstream timestamp of its attributes, as an aware datetime in the
facility's time zone.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import socket
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import tzlocal
from tiled.client import from_uri as tiled_from_uri
from tiled.client.utils import ClientError
from tiled.queries import In, Key

from . import reduce

MAX_RANGE_DAYS = 366
CONNECT_TIMEOUT = 3.0  # seconds to wait for the server to accept a connection
_DAY = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}\Z")  # ASCII digits, no trailing newline


def is_object_stream(name: str) -> bool:
    """Whether a run's stream holds an object's readings: not the ``exchange`` log, not a
    ``connection`` log (the service's, or a shard's ``connection-shard<i>``)."""
    return name != "exchange" and name.partition("-shard")[0] != "connection"


class QueryError(ValueError):
    """A question the archive cannot answer as asked (bad date, unknown object, ...)."""


class UnknownObjectError(QueryError, LookupError):
    """No such object is configured or archived."""


class ApiKeyError(PermissionError):
    """The server refused the API key: a wrong one, or none where reads need one."""


class ServerUnreachable(ConnectionError):
    """Nothing answers at the server's address (refused, or no answer within 3 s)."""


def parse_day(text: str | dt.date) -> dt.date:
    """``YYYY-MM-DD`` as a date; a clear :class:`QueryError` otherwise."""
    if isinstance(text, dt.datetime):
        return text.date()
    if isinstance(text, dt.date):
        return text
    if not isinstance(text, str) or not _DAY.match(text):
        raise QueryError(f"malformed date {text!r}: expected YYYY-MM-DD")
    try:
        return dt.date.fromisoformat(text)
    except ValueError as err:
        raise QueryError(f"impossible date {text!r}: {err}") from None


def parse_time(text: str | float | dt.datetime, zone: ZoneInfo | None = None) -> float:
    """A day (its local midnight), a local ISO date-time, or UNIX seconds, as UNIX seconds."""
    if isinstance(text, int | float):
        try:  # a time of the years 1 to 9999, as the archive's days are
            dt.datetime.fromtimestamp(float(text), dt.UTC)
        except (OverflowError, ValueError, OSError):
            raise QueryError(f"time {text!r} is out of range") from None
        return float(text)
    if isinstance(text, dt.datetime):
        when = text
    elif isinstance(text, str) and _DAY.match(text):
        when = dt.datetime.combine(parse_day(text), dt.time(0))
    else:
        try:
            when = dt.datetime.fromisoformat(str(text))
        except ValueError:
            raise QueryError(
                f"malformed time {text!r}: expected YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS]"
            ) from None
    try:
        if when.tzinfo is None:
            when = when.replace(tzinfo=zone) if zone else when.astimezone()
        return when.timestamp()
    except (OverflowError, ValueError, OSError):  # e.g. 9999-12-31T23:00-05:00 is year 10000
        raise QueryError(f"time {text!r} is out of range") from None


class Archive:
    """The query helper: ``latest``, ``day``, ``range``, ``objects``, ``days``.

    Parameters
    ----------
    root
        A Tiled client node holding ``archive`` (the catalog of day runs) and ``latest``.
    zone
        The facility time zone for days and returned times (default the machine's).
    """

    def __init__(self, root, zone: ZoneInfo | None = None):
        self.root = root
        if zone is None:
            served = root["latest"].metadata.get("timezone") if "latest" in root else None
            zone = ZoneInfo(served or tzlocal.get_localzone_name())
        self.zone = zone

    @classmethod
    def from_uri(cls, url: str, api_key: str | None = None, zone: ZoneInfo | None = None):
        """Connect to a warden's Tiled server.

        On the same machine the answers come uncompressed: a day of 864,000 rows reads in
        1.0 s instead of 1.3 s, the server's compressing and the client's decompressing
        costing more than loopback saves. Across a network Tiled's compression is kept.

        Raises :class:`ServerUnreachable` within 3 s when nothing listens (instead of the
        Tiled client's retries, which last tens of seconds), and :class:`ApiKeyError` when the
        server refuses the key.
        """
        _check_listening(url)
        headers = {"accept-encoding": "identity"} if _loopback(url) else None
        try:
            root = tiled_from_uri(url, api_key=api_key, headers=headers)
        except ClientError as err:
            if err.response.status_code in (401, 403):
                raise ApiKeyError(f"the warden server at {url} refused the API key "
                                  f"({err.response.status_code}: {_detail(err)})") from None
            raise
        except RuntimeError as err:  # tiled: "This server requires API key authentication."
            if "API key" not in str(err):
                raise
            raise ApiKeyError(f"the warden server at {url} requires an API key") from None
        return cls(root, zone=zone)

    @property
    def catalog(self):
        """The catalog of day runs, with v3 (SQL) run clients whatever was asked before.

        (``CatalogOfBlueskyRuns.v2`` changes the default run client process-wide.)
        """
        catalog = self.root["archive"]
        return catalog.v3 if getattr(catalog, "is_sql", False) else catalog

    # -- now ---------------------------------------------------------------------------------
    def objects(self) -> list[str]:
        """Names of the configured objects (from ``latest``), else of every archived stream."""
        if "latest" in self.root:
            return list(self.root["latest"])
        names: set[str] = set()
        for run in self.catalog.values():
            names.update(k for k in run if is_object_stream(k))
        return sorted(names)

    def latest(self, obj: str) -> dict[str, Any]:
        """Newest value and upstream timestamp of each attribute, and whether it is connected."""
        self._check(obj)
        return _plain(self.root["latest"][obj].metadata)

    # -- history -----------------------------------------------------------------------------
    def days(self) -> list[str]:
        """Archive days that hold at least one run, oldest first."""
        catalog = self.catalog
        if getattr(catalog, "is_sql", False):
            found = catalog.distinct("start.day")["metadata"].get("start.day", [])
            return sorted(e["value"] for e in found if e["value"] is not None)  # (prepared)
        # databroker's MongoAdapter groups the run starts by the key as given and answers
        # under "start.<key>"; should that ever change, look at every run.
        found = catalog.distinct("day")["metadata"].get("start.day")
        if found is not None:
            return sorted(entry["value"] for entry in found)
        return sorted({run.metadata["start"]["day"] for run in catalog.values()})

    def day(self, obj: str, day: str | dt.date, bin: str | float | None = None,
            agg: str = "mean") -> pd.DataFrame:
        """Every reading of ``obj`` on archive ``day``, from all of that day's runs; with
        ``bin`` (``"1h"``, ``60``), ``agg`` of each attribute per bin (:mod:`catalog.reduce`:
        mean, min, max, count, std, firstSample, lastSample)."""
        self._check(obj)
        d = parse_day(day)
        _check_bin(bin, agg)
        return _binned(self._read(obj, [d.isoformat()]), bin, agg)

    def range(self, obj: str, start, end, bin: str | float | None = None,
              agg: str = "mean") -> pd.DataFrame:
        """Readings of ``obj`` with ``start <= time < end``, across days and runs; ``bin``
        and ``agg`` as for :meth:`day`."""
        self._check(obj)
        _check_bin(bin, agg)
        if bin is not None:
            return _binned(self.range(obj, start, end), bin, agg)
        t0, t1 = parse_time(start, self.zone), parse_time(end, self.zone)
        if t1 <= t0:
            raise QueryError(f"range end {end!r} is not after its start {start!r}")
        try:
            first = dt.datetime.fromtimestamp(t0, self.zone).date()
            last = dt.datetime.fromtimestamp(t1, self.zone).date()
        except (OverflowError, ValueError, OSError):  # local day before year 1 or after 9999
            raise QueryError(f"range {start!r} to {end!r} is out of range") from None
        n = (last - first).days + 1
        if n > MAX_RANGE_DAYS:
            raise QueryError(f"range spans {n} days; ask for at most {MAX_RANGE_DAYS} at a time")
        days = [(first + dt.timedelta(days=i)).isoformat() for i in range(n)]
        df = self._read(obj, days)
        if df.empty:  # no run on those days (its datetimes do not compare with seconds)
            return df
        stamps = df["time"].map(lambda t: t.timestamp())
        return df[(stamps >= t0) & (stamps < t1)].reset_index(drop=True)

    def connections(self, obj: str, day: str | dt.date) -> pd.DataFrame:
        """When ``obj`` was connected and disconnected on ``day``."""
        self._check(obj)
        frames = []
        for run in self._runs([parse_day(day).isoformat()]):
            for log in (k for k in run if not is_object_stream(k) and k != "exchange"):
                _, data, stamps = self._columns(run[log])
                if "object" in data:
                    t = pd.DataFrame({**data, "ts_connected": stamps["connected"]})
                    frames.append(t[t["object"] == obj])
        if not frames:
            return pd.DataFrame({"time": [], "connected": []})
        t = pd.concat(frames, ignore_index=True)
        out = pd.DataFrame(
            {"time": self._times(t["ts_connected"]), "connected": t["connected"].astype(bool)}
        )
        return out.sort_values("time", kind="stable").reset_index(drop=True)

    def recording(self, day: str | dt.date) -> pd.DataFrame:
        """When the warden recorded on ``day``: one row per run, in start order.

        Columns ``start`` and ``stop`` (aware local times); ``stop`` is NaT while the run is
        open, and for a run whose service was killed (no stop document). A run opened
        shortly before its day (the plan opens the next day's run ahead of midnight) starts
        recording at the day's midnight; one stopped before its day began is not listed.
        """
        d = parse_day(day)
        begins = dt.datetime.combine(d, dt.time(0), self.zone).timestamp()
        rows = []
        for run in self._runs([d.isoformat()]):
            stop = run.metadata.get("stop") or {}
            if stop.get("time", np.inf) < begins:
                continue
            rows.append((max(run.metadata["start"]["time"], begins), stop.get("time", np.nan)))
        t = pd.DataFrame(rows, columns=["start", "stop"], dtype=float)
        return pd.DataFrame({"start": self._times(t["start"]), "stop": self._times(t["stop"])})

    # -- raw rows (the ASCII day files are made from these) -----------------------------------
    def streams(self, day: str | dt.date) -> list[str]:
        """Names of the object streams recorded on ``day``: in the order of the runs' start
        ``objects``, then any other stream; never ``connection`` or ``exchange``."""
        names: dict[str, None] = {}
        for run in self._runs([parse_day(day).isoformat()]):
            keys = list(run)
            names.update((k, None) for k in run.metadata["start"].get("objects", []) if k in keys)
            names.update((k, None) for k in keys)
        return [k for k in names if is_object_stream(k)]

    def raw_day(self, obj: str, day: str | dt.date) -> pd.DataFrame:
        """The rows of ``obj``'s stream on ``day`` as they were written, from all its runs.

        Columns: ``run`` (start uid) and ``run_time`` (start time) of the row's run,
        ``seq_num``, ``time`` (the RunEngine's event time: one per event page), one column per
        attribute (arrays as numpy arrays) and ``ts_<attribute>`` (upstream UNIX seconds).
        Runs come in start order, and rows as written. ``attrs["data_keys"]`` maps each run's
        uid to the stream's data keys, in the order of the stream's table columns. Unlike
        :meth:`day`, any archived stream may be asked for, and an absent one is an empty frame.
        """
        if not isinstance(obj, str):
            raise UnknownObjectError(f"unknown object {obj!r}")
        frames, data_keys = [], {}
        for run in self._runs([parse_day(day).isoformat()]):
            if obj not in list(run):  # a stream of the run, not a path ('a/b', '..', '')
                continue
            start = run.metadata["start"]
            df, keys = self._raw_stream(run[obj])
            data_keys[start["uid"]] = keys
            df.insert(0, "run_time", start["time"])
            df.insert(0, "run", start["uid"])
            frames.append(df)
        if len({tuple(f.columns) for f in frames}) > 1:  # runs differ: keep values as written
            frames = [f.astype(object) for f in frames]
        empty = pd.DataFrame({c: [] for c in ("run", "run_time", "seq_num", "time")})
        df = pd.concat(frames, ignore_index=True) if frames else empty
        df.attrs["data_keys"] = data_keys
        return df

    def _raw_stream(self, stream) -> tuple[pd.DataFrame, dict[str, dict]]:
        if not hasattr(stream, "base"):
            raise QueryError("raw rows are read from the SQL archive only (not MongoDB yet)")
        node = stream.base
        described = _plain(stream.metadata["data_keys"])
        if "internal" not in node:  # described, no row written yet
            return pd.DataFrame({"seq_num": [], "time": []}), {}
        table = node["internal"].read()
        position = {c: i for i, c in enumerate(table.columns)}
        keys = [k for k in described if f"ts_{k}" in position]
        keys.sort(key=lambda k: position[f"ts_{k}"])
        table, values = _complete_rows(node, table, keys)
        columns: dict[str, Any] = {"seq_num": table["seq_num"], "time": table["time"], **values}
        columns.update({f"ts_{k}": table[f"ts_{k}"] for k in keys})
        return pd.DataFrame(columns), {k: described[k] for k in keys}

    # -- helpers -----------------------------------------------------------------------------
    def _check(self, obj: str) -> None:
        if not isinstance(obj, str) or obj not in self._known_objects():
            raise UnknownObjectError(f"unknown object {obj!r}")

    def _known_objects(self) -> list[str]:
        """``objects()``, asked once: a server's configured objects do not change while it
        runs (an archive without ``latest`` is asked again, as it may grow)."""
        if getattr(self, "_configured", None) is None:
            names = self.objects()
            if "latest" not in self.root:
                return names
            self._configured = names
        return self._configured

    def _runs(self, days: list[str]):
        query = Key("start.day") == days[0] if len(days) == 1 else In("start.day", days)
        runs = list(self.catalog.search(query).values())
        return sorted(runs, key=lambda run: run.metadata["start"]["time"])

    def _read(self, obj: str, days: list[str]) -> pd.DataFrame:
        frames = [self._read_stream(run[obj]) for run in self._runs(days) if obj in run]
        frames = [f for f in frames if len(f)]
        if not frames:
            return pd.DataFrame({"time": pd.Series([], dtype=f"datetime64[ns, {self._zone_name}]")})
        df = pd.concat(frames, ignore_index=True)
        return df.sort_values("time", kind="stable").reset_index(drop=True)

    def _read_stream(self, stream) -> pd.DataFrame:
        keys, columns, stamps = self._columns(stream)
        if not keys:
            return pd.DataFrame({"time": []})
        ts = pd.DataFrame(stamps)[keys].max(axis=1)
        return pd.DataFrame({"time": self._times(ts), **columns})

    def _columns(self, stream) -> tuple[list[str], dict[str, Any], dict[str, Any]]:
        """A stream's attributes in written order, their columns (an array attribute as a
        list of row arrays) and their upstream timestamps, all of one length."""
        if hasattr(stream, "base"):  # SQL: BlueskyEventStream (v3) on a composite node
            return self._sql_columns(stream)
        return self._mongo_columns(stream)  # MongoDB: BlueskyEventStreamV2Mongo

    def _sql_columns(self, stream):
        node = stream.base
        try:
            internal = node["internal"]
        except KeyError:  # described, no row written yet
            return [], {}, {}
        # the order of the table's columns, as written (PostgreSQL's JSON keeps no key order)
        position = {c: i for i, c in enumerate(internal.structure().columns)}
        keys = [k for k in stream.metadata["data_keys"] if f"ts_{k}" in position]
        keys.sort(key=lambda k: position[f"ts_{k}"])
        if not keys:
            return [], {}, {}
        # the attributes and their timestamps, not seq_num and time (a sixth less to send),
        # as two requests at once: the server reads, packs and sends both halves side by side
        # (a full day of 5 attributes: 1.3 s -> 0.9 s; benchmarks/README.md, day read)
        halves = [[k for k in keys if k in position], [f"ts_{k}" for k in keys]]
        with ThreadPoolExecutor(2, thread_name_prefix="archive-read") as pool:
            values, stamps = pool.map(lambda cols: internal.read(columns=cols) if cols
                                      else pd.DataFrame(), halves)
        rows = min(len(stamps), len(values) if halves[0] else len(stamps))  # (rows appended
        table = pd.concat([values.iloc[:rows], stamps.iloc[:rows]], axis=1)  # in between)
        table, columns = _complete_rows(node, table, keys)
        return keys, columns, {k: table[f"ts_{k}"] for k in keys}

    def _mongo_columns(self, stream):
        data_keys = stream.metadata["descriptors"][0]["data_keys"]
        keys = list(data_keys)
        data_node = stream["data"]
        if data_node["time"].shape[0] == 0:  # described, no event yet (databroker can't read)
            return keys, {k: [] for k in keys}, {k: [] for k in keys}
        data = data_node.read()
        # Timestamps of array attributes one by one: databroker describes them with the
        # data's dimensions, so the whole timestamps dataset does not read as xarray.
        ts_node = stream["timestamps"]
        scalars = [k for k in keys if not data_keys[k].get("shape")]
        stamps: dict[str, Any] = {}
        if scalars:
            read = ts_node.read(variables=scalars)
            stamps.update({k: np.asarray(read[k].values, dtype=float) for k in scalars})
        for key in keys:
            if key not in stamps:
                stamps[key] = np.asarray(ts_node[key].read(), dtype=float)
        # data and timestamps are two requests: a run being written may have grown between
        n = min([data.sizes.get("time", 0), *(len(v) for v in stamps.values())])
        columns: dict[str, Any] = {}
        for key in keys:
            values = data[key].values[:n]
            if values.ndim > 1:
                columns[key] = list(values)
            elif values.dtype.kind in "OUS":  # strings as the SQL tables give them
                columns[key] = pd.Series(values, dtype=pd.StringDtype())
            else:
                columns[key] = pd.Series(values)
        stamps = {k: pd.Series(v[:n]) for k, v in stamps.items()}
        return keys, columns, stamps

    def _times(self, seconds: pd.Series) -> pd.Series:
        return (
            pd.to_datetime(seconds.astype(float), unit="s", utc=True)
            .dt.tz_convert(self._zone_name)
            .reset_index(drop=True)
        )

    @property
    def _zone_name(self) -> str:
        return self.zone.key


def _check_bin(bin: str | float | None, agg: str) -> None:
    """A bad ``bin`` or ``agg`` as a :class:`QueryError`, before anything is read."""
    try:
        if bin is not None:
            reduce.bin_seconds(bin)
        reduce.check_aggregate(agg)
    except reduce.BinError as err:
        raise QueryError(str(err)) from None


def _binned(df: pd.DataFrame, bin: str | float | None, agg: str) -> pd.DataFrame:
    return df if bin is None else reduce.reduce_frame(df, bin, agg)


def _check_listening(url: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """Raise :class:`ServerUnreachable` unless something accepts a connection at ``url``."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ServerUnreachable(f"not a server URL: {url!r} (expected http://host:port)")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except ValueError:  # a port out of range
        raise ServerUnreachable(f"not a server URL: {url!r} (bad port)") from None
    except OSError as err:
        why = f"no answer within {timeout:g} s" if isinstance(err, TimeoutError) else (
            (err.strerror or str(err)).lower())
        raise ServerUnreachable(f"cannot reach the warden server at {url}: {why}") from None


def _detail(err: ClientError) -> str:
    try:
        return str(err.response.json().get("detail", "")) or err.response.reason_phrase
    except ValueError:
        return err.response.reason_phrase


def _loopback(url: str) -> bool:
    """Whether ``url`` names this machine (``localhost``, ``127.0.0.0/8``, ``::1``)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _complete_rows(node, table: pd.DataFrame, keys: list[str]
                   ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The rows of a stream's ``table`` that its array nodes hold too, and the columns of
    ``keys`` (an array attribute, a node of its own, as a list of row arrays).

    The writer appends a page's table rows, then its arrays (creating an array's node with
    its first page): only complete rows are shown. Arrays are sliced, as a full read races
    concurrent appends.
    """
    arrays = {k: _child(node, k) for k in keys if k not in table.columns}
    rows = min([len(table), *(0 if a is None else a.shape[0] for a in arrays.values())])
    table = table.iloc[:rows].reset_index(drop=True)
    columns: dict[str, Any] = {}
    for key in keys:
        if key in table.columns:
            columns[key] = table[key]
        else:
            columns[key] = list(np.asarray(arrays[key][:rows])) if rows else []
    return table, columns


def _child(node, key: str):
    """``node[key]``, or None while it does not exist yet."""
    try:
        return node[key]
    except KeyError:
        return None


def _plain(value: Any) -> Any:
    """Tiled's read-only metadata views as plain dicts and lists."""
    if hasattr(value, "items"):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value

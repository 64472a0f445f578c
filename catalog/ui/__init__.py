"""The warden's web page: every object's latest values live, sparklines, day plots, status.

:func:`mount_ui` adds to a warden app (:func:`catalog.server.warden_app`):

* ``/warden/`` the page (``static/``: plain HTML, CSS and JavaScript, no build step, nothing
  fetched from elsewhere), and ``/`` redirecting to it (Tiled's own browser stays at ``/ui/``);
* under ``/api/v1/warden/ui/``, what the page reads, with the key as every read of the
  server needs it (``Authorization: Apikey <key>``) unless the server is public:
  ``overview`` (objects, zone, every latest entry), ``events`` (the entries that change, as
  server-sent events; opened with ``?token=`` from ``POST token``, which always needs the
  key, unless the server is public), ``series`` (an object's attributes over a
  range, binned when long) and ``export`` (a day as CSV or as the day's ASCII lines).

Histories are read through the server's own HTTP API with :class:`catalog.query.Archive`.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from pathlib import Path
from zoneinfo import ZoneInfo

from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from ..access import key_allows
from ..query import Archive, QueryError, UnknownObjectError, parse_day
from .bins import series
from .feed import LatestFeed, LatestReader, StreamTokens

STATIC = Path(__file__).parent / "static"
API = "/api/v1/warden/ui"
MAX_BINS = 2000
MAX_SPAN = 7 * 86400.0  # seconds a series may span


class _Reads:
    """The page's reads: the key check, and the archive through the server's own API."""

    def __init__(self, api_key: str, public: bool, zone: ZoneInfo):
        self.api_key, self.public, self.zone = api_key, public, zone
        self._archive: Archive | None = None
        self._lock = threading.Lock()

    def allowed(self, request: Request, keyed: bool = False) -> bool:
        """A read on a public server (unless ``keyed``), or the right key (header or
        ``?api_key=``)."""
        return key_allows(request, self.api_key, self.public, write=keyed)

    def archive(self, request: Request) -> Archive:
        """The query helper on this very server (the address the request came in on)."""
        with self._lock:
            if self._archive is None:
                host, port = request.scope["server"][:2]
                host = f"[{host}]" if ":" in host else host
                self._archive = Archive.from_uri(f"http://{host}:{port}", api_key=self.api_key,
                                                 zone=self.zone)
            return self._archive


def _refused() -> Response:
    return JSONResponse({"detail": "an API key is required"}, status_code=401)


def _bad(err: Exception) -> Response:
    status = 404 if isinstance(err, UnknownObjectError) else 400
    return JSONResponse({"detail": str(err)}, status_code=status)


def _number(request: Request, name: str, default: float | None = None) -> float | None:
    text = request.query_params.get(name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        raise QueryError(f"{name}: not a number: {text!r}") from None
    if value != value or value in (float("inf"), -float("inf")):
        raise QueryError(f"{name}: not a finite number: {text!r}")
    return value


def ui_routes(store: LatestReader, timezone: str, api_key: str, public: bool = False,
              interval: float = 0.5) -> list[BaseRoute]:
    """The page's routes, for ``store`` (``latest``) served in ``timezone``; reads need
    ``api_key`` unless ``public``; live entries are looked at every ``interval`` seconds."""
    zone = ZoneInfo(timezone)
    reads = _Reads(api_key, public, zone)
    feed = LatestFeed(store, interval)
    tokens = StreamTokens()

    async def page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def overview(request: Request) -> Response:
        if not reads.allowed(request):
            return _refused()
        entries = feed.snapshot()
        return JSONResponse({
            "objects": list(store.objects), "timezone": timezone, "public": public,
            "today": dt.datetime.now(zone).date().isoformat(), "t": time.time(),
            "entries": entries,
        })

    async def token(request: Request) -> Response:
        if not reads.allowed(request, keyed=True):  # (a public stream needs none)
            return _refused()
        return JSONResponse({"token": tokens.issue(), "ttl": tokens.ttl})

    async def events(request: Request) -> Response:
        given = request.query_params.get("token", "")
        if not (public or (given and tokens.redeem(given))):
            return _refused()
        return StreamingResponse(feed.events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    def window(request: Request) -> tuple[str, float, float, int]:
        """The object, start and end (UNIX seconds) and number of bins a request names."""
        obj = request.query_params.get("object", "")
        if obj not in store.objects:
            raise UnknownObjectError(f"unknown object {obj!r}")
        bins = int(_number(request, "bins", 600))
        if not 1 <= bins <= MAX_BINS:
            raise QueryError(f"bins: {bins} is not between 1 and {MAX_BINS}")
        if "day" in request.query_params:
            day = parse_day(request.query_params["day"])
            t0 = dt.datetime.combine(day, dt.time(0), zone).timestamp()
            t1 = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0), zone).timestamp()
            t0, t1 = _number(request, "start", t0), _number(request, "end", t1)
        else:
            t1 = _number(request, "end", time.time())
            t0 = _number(request, "start", t1 - 3600)
        if not 0 <= t0 < t1 <= t0 + MAX_SPAN or t1 > 253402300799:  # (year 9999)
            raise QueryError(f"start {t0} and end {t1}: the end must follow the start, "
                             f"at most {MAX_SPAN / 86400:.0f} days later")
        return obj, t0, t1, bins

    def history(request: Request) -> Response:
        if not reads.allowed(request):
            return _refused()
        try:
            obj, t0, t1, bins = window(request)
            df = reads.archive(request).range(obj, t0, t1)
        except QueryError as err:
            return _bad(err)
        return JSONResponse({"object": obj, "start": t0, "end": t1, "rows": len(df),
                             "attributes": series(df, t0, t1, bins)})

    def export(request: Request) -> Response:
        from ..ascii import export_day

        if not reads.allowed(request):
            return _refused()
        obj, kind = request.query_params.get("object", ""), request.query_params.get("format")
        try:
            if obj not in store.objects:
                raise UnknownObjectError(f"unknown object {obj!r}")
            if kind not in ("csv", "ascii"):
                raise QueryError(f"format: {kind!r} is not csv or ascii")
            day = parse_day(request.query_params.get("day", ""))
            archive = reads.archive(request)
            if kind == "csv":
                text, suffix = archive.day(obj, day).to_csv(index=False), "csv"
            else:
                text, suffix = export_day(archive, day, object=obj, zone=zone), "dat"
        except QueryError as err:
            return _bad(err)
        name = f"{obj}.{day.isoformat()}.{suffix}"
        return PlainTextResponse(text, media_type="text/csv" if kind == "csv" else "text/plain",
                                 headers={"Content-Disposition": f'attachment; filename="{name}"'})

    async def to_page(request: Request) -> Response:
        return RedirectResponse("/warden/", status_code=307)

    return [
        Route("/", to_page, methods=["GET"], include_in_schema=False),
        Route("/warden", to_page, methods=["GET"], include_in_schema=False),
        Route("/warden/", page, methods=["GET"], include_in_schema=False),
        Mount("/warden/static", StaticFiles(directory=STATIC), name="warden-static"),
        Route(f"{API}/overview", overview, methods=["GET"]),
        Route(f"{API}/token", token, methods=["POST"]),
        Route(f"{API}/events", events, methods=["GET"]),
        Route(f"{API}/series", history, methods=["GET"]),
        Route(f"{API}/export", export, methods=["GET"]),
    ]


def mount_ui(app, store: LatestReader, timezone: str, api_key: str, public: bool = False) -> None:
    """Put the page's routes ahead of the routes of ``app`` (a Tiled app: its ``/`` is
    replaced by a redirect to the page)."""
    app.router.routes[:0] = ui_routes(store, timezone, api_key, public)

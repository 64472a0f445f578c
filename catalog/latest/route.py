"""The ``latest`` node of the warden's Tiled app, and the fast route that answers its entries.

``GET /api/v1/metadata/latest/<object>`` answers with :meth:`Latest.get
<catalog.latest.store.Latest.get>` through :func:`latest_route`: a plain route placed ahead
of Tiled's, which answers the same body as Tiled's metadata route for that node in a fraction
of its time. Listing and search (``/api/v1/search/latest``) stay Tiled's node
(:func:`latest_tree`); :func:`read_only_routes` refuse writes below ``/latest``.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl

import packaging.version
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match, Route
from tiled.adapters.mapping import MapAdapter

from ..tiled_internals import (
    API_KEY_COOKIE_NAME,
    SingleUserPrincipal,
    current_principal,
    get_base_url,
    node_metadata_body,
)
from .store import Latest


class ObjectLatestAdapter(MapAdapter):
    """A leaf-less node whose metadata is the object's latest entry, read at request time."""

    def __init__(self, store: Latest, name: str):
        self._store = store
        self._name = name
        super().__init__({})

    def metadata(self) -> dict[str, Any]:
        return self._store.get(self._name)


def latest_tree(store: Latest, timezone: str) -> MapAdapter:
    """The ``latest`` node: one child per object; its metadata names the facility zone."""
    return MapAdapter(
        {name: ObjectLatestAdapter(store, name) for name in store.objects},
        metadata={"description": "newest reading of every object", "timezone": timezone},
    )


# -- GET /api/v1/metadata/latest/<object>, without Tiled's per-request machinery ---------------
#
# Tiled's metadata route costs several times /healthz for this node (dependency injection,
# pydantic models of the resource, ``str`` of the content for its ETag). The route below gives
# the same body from a template: the test suite compares it with Tiled's own answer. It takes
# the requests Tiled's route would answer with that body (no query parameter but ``api_key``;
# no key, or an ``Apikey`` one); any other request (``fields=``, ``select_metadata=``,
# ``Bearer`` tokens, clients older than Tiled 0.2.19, which expect ``access_blob``) does not
# match it and goes on to Tiled's route.
#
# In the router, it still pays Tiled's middleware (five ``BaseHTTPMiddleware`` layers and
# more), as /healthz does: p50 2.3 ms, p99 5-6 ms on 2 cores (``python -m benchmarks latest``).
# :class:`LatestFastPath` hands the same route the requests that need none of that middleware,
# ahead of it: p50 1.2 ms, p99 3.4 ms; Tiled's route was p50 11 ms, p99 22 ms in the same run.

LATEST_PATH = "/api/v1/metadata/latest"
_ACCESS_TAGS_ADDED_IN = packaging.version.Version("0.2.19")  # older clients: access_blob


@functools.lru_cache(maxsize=64)
def _old_tiled_client(user_agent: bytes) -> bool:
    """A ``python-tiled/<version>`` client Tiled answers in an older dialect (or can't parse)."""
    try:
        version = packaging.version.Version(user_agent.decode("latin-1").partition("/")[2])
    except (packaging.version.InvalidVersion, UnicodeDecodeError):
        return True
    return packaging.version.Version(version.base_version) < _ACCESS_TAGS_ADDED_IN


def _plain_request(scope) -> bool:
    """Whether Tiled's metadata route would answer this request with the plain body."""
    query = scope.get("query_string", b"")
    if query and any(k != "api_key" for k, _ in parse_qsl(query.decode("latin-1"), True)):
        return False
    for key, value in scope["headers"]:
        if key == b"authorization":
            if value and value.split(b" ", 1)[0].lower() != b"apikey":
                return False  # a token, or a malformed header: Tiled says what it makes of it
        elif key == b"user-agent" and value.startswith(b"python-tiled/"):
            if _old_tiled_client(value):
                return False
    return True


class _PlainLatestRoute(Route):
    """Matches only the requests :func:`_plain_request` accepts; the rest go on to Tiled."""

    def matches(self, scope):
        match, child_scope = super().matches(scope)
        if match is Match.FULL and not _plain_request(scope):
            return Match.NONE, {}
        return match, child_scope


def _given_key(request: Request) -> str | None:
    """The API key as Tiled finds it: ``?api_key=``, else ``Authorization: Apikey``, else the
    ``tiled_api_key`` cookie; empty counts as none."""
    key = request.query_params.get("api_key")
    if not key:
        header = request.headers.get("authorization", "")
        key = header.partition(" ")[2].strip() if header else ""  # only "Apikey" gets here
    return key or request.cookies.get(API_KEY_COOKIE_NAME) or None


def latest_route(
    store: Latest, names: Iterable[str], api_key: str, public: bool = False
) -> Route:
    """``GET /api/v1/metadata/latest/{name}``: the body, status and auth of Tiled's metadata
    route for the ``latest`` node's child ``name`` (see :func:`latest_tree`), for an app built
    with Tiled's single-user ``api_key`` (reads without it when ``public``).

    Insert it ahead of Tiled's routes (``app.router.routes.insert(0, ...)``).
    """
    served = frozenset(names)  # the children of the Tiled node, no more
    key_bytes = api_key.encode()

    def unauthorized(detail: str, headers: dict | None = None) -> Response:
        return JSONResponse({"detail": detail}, status_code=401, headers=headers)

    async def latest_entry(request: Request) -> Response:
        # Authentication as Tiled's single-user mode does it: a key given must be right (even
        # on a public server); no key reads only on a public server.
        given = _given_key(request)
        if given is not None:
            cookie = request.cookies.get(API_KEY_COOKIE_NAME)
            if "api_key" in request.query_params and cookie != given:
                cookies = getattr(request.state, "cookies_to_set", None)  # Tiled's move_api_key
                if cookies is not None:
                    cookies.append({"key": API_KEY_COOKIE_NAME, "value": given})
            if not secrets.compare_digest(given.encode(), key_bytes):
                return unauthorized("Invalid API key")
            request.state.principal = SingleUserPrincipal  # for Tiled's access log
            current_principal.set(SingleUserPrincipal)  # (the same, ahead of its middleware)
        else:
            current_principal.set(None)
        if given is None and not public:
            return unauthorized(
                "Not enough permissions. Requires scopes ['read:metadata']. "
                "Request had scopes []",
                {"WWW-Authenticate": 'Bearer scope="read:metadata"',
                 "X-Tiled-Root": get_base_url(request)},
            )
        name = request.path_params["name"]
        if name not in served:
            return JSONResponse(
                {"detail": f"No such entry: {['latest', name]}: "
                           f"no object {name!r} is configured"},
                status_code=404,
            )
        body, media_type, etag = node_metadata_body(request, ["latest", name], store.get(name))
        if request.headers.get("if-none-match", "") == etag:
            return Response(status_code=304, headers={"ETag": etag})
        return Response(body, media_type=media_type, headers={"ETag": etag})

    route = _PlainLatestRoute(f"{LATEST_PATH}/{{name}}", latest_entry, methods=["GET"],
                              name="latest entry", include_in_schema=False)
    route.methods.discard("HEAD")  # as Tiled's route: GET only
    return route


class LatestFastPath:
    """ASGI layer that answers the ``latest`` route's requests ahead of Tiled's middleware.

    Put it just inside Tiled's ``CorrelationIdMiddleware`` (the request id and its log
    context stay). It takes the requests :func:`latest_route` takes but for those that want
    something of the middleware it skips: a browser's (an ``Origin`` header: CORS) and any
    with a query string (``?api_key=``: Tiled moves the key into a cookie). Its answers are
    not compressed (a few kB), carry no ``Server-Timing`` and set no CSRF cookie (only
    Tiled's writes check one); everything else goes on down the stack, to the same route in
    the router or to Tiled's.
    """

    def __init__(self, app, route: Route):
        self.app = app
        self.route = route

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and not scope.get("query_string"):
            if not any(key == b"origin" for key, _ in scope["headers"]):
                match, child_scope = self.route.matches(scope)
                if match is Match.FULL:
                    await self.route.handle({**scope, **child_scope}, receive, send)
                    return
        await self.app(scope, receive, send)


def read_only_routes() -> list[Route]:
    """405 for every write to ``/latest`` and below: it shows what the warden reads upstream.

    (Tiled answers a POST there with a 500, as its read-only ``MapAdapter`` cannot create
    nodes; insert these ahead of Tiled's routes.)
    """

    async def refuse(request: Request) -> Response:
        return JSONResponse({"detail": "latest is read-only: it shows what the warden reads "
                                       "upstream"}, status_code=405)

    methods = ["POST", "PUT", "PATCH", "DELETE"]
    return [Route(f"/api/v1/{kind}/latest{{rest:path}}", refuse, methods=methods)
            for kind in ("metadata", "register")]

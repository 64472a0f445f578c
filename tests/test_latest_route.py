"""``GET /api/v1/metadata/latest/<object>`` through our plain route (``catalog.latest``).

The route answers ahead of Tiled (its middleware and its routes); it must answer what Tiled's
own metadata route answers for the same node. A query parameter it does not know
(``?via=tiled``, which Tiled ignores) sends a request on to Tiled's route, so every answer is
checked against Tiled's for the very same node and request, and against a static Tiled
``MapAdapter`` node holding the same metadata. The apps are built with ``warden_app``, serve
``latest`` as the server's process does (from the shared file: the publisher's entries, the
archive writer's times) and are served over real HTTP by ``TiledServer`` on 127.0.0.1.
"""

from __future__ import annotations

import logging
import threading
import time

import httpx
import msgpack
import numpy as np
import pytest
from ophyd import Component, Device, Signal
from tiled.adapters.mapping import MapAdapter
from tiled.client import from_uri
from tiled.server.settings import get_settings

from catalog.latest import ArchivedTimes, LatestPublisher, LatestStore, SharedLatest
from catalog.query import Archive
from catalog.server import TiledServer, warden_app
from plans.buffer import ConnectionLog, ObjectBuffer

KEY = "routekey0123456789"
HEADERS = {"Authorization": f"Apikey {KEY}"}
JSON, MSGPACK = "application/json", "application/x-msgpack"
ORIGIN = {"Origin": "http://127.0.0.1"}  # a browser's request: through Tiled's middleware
WCM, RING, IDLE = "yi2-wcm3", "ring yellow", "idle-obj"
OBJECTS = [WCM, RING, IDLE, "b/c"]
BUNCHES = np.linspace(0.5, 2.5, 120)
BUNCHES[7] = np.nan
T0 = 1_004_000_000.0


def buffers_for(attributes: dict[str, list[str]], connections: ConnectionLog
                ) -> list[ObjectBuffer]:
    """The monitoring plan's buffers of objects with these attributes (plain signals)."""
    buffers = []
    for name, attrs in attributes.items():
        device_class = type("Obj", (Device,), {a: Component(Signal) for a in attrs})
        buffers.append(ObjectBuffer(device_class(name=name), True, connections))
    return buffers


def live_store(attributes: dict[str, list[str]], objects: list[str] | None = None
               ) -> tuple[LatestStore, dict[str, ObjectBuffer], ConnectionLog]:
    """A store following new buffers of ``attributes`` (and showing ``objects``)."""
    connections = ConnectionLog(time.time)
    buffers = buffers_for(attributes, connections)
    store = LatestStore(objects or list(attributes))
    store.follow(buffers, connections)
    return store, {buf.name: buf for buf in buffers}, connections


def filled_store() -> LatestStore:
    """What the monitoring plan's buffers would hold: a WCM with every kind of value,
    connected; a ring with one reading, disconnected; an idle object."""
    data = {
        "wcmBeam": [16.0, 16.4228],
        "bunchIntensity": [BUNCHES * 0.5, BUNCHES],  # numpy arrays, one element NaN
        "bunchList": [[1, 2], [1, 2, 3]],
        "fill": [np.int64(34000), np.int64(34001)],
        "gain": [np.float32(1.5), np.float32(2.5)],
        "species": ["Au", "Au"],
        "lost": [1.0, float("nan")],
        "huge": [1.0, float("inf")],
        "ok": [np.bool_(False), np.bool_(True)],
    }
    store, buffers, connections = live_store({WCM: list(data), RING: ["energy"]}, OBJECTS)
    connections.record(WCM, True, T0)
    for i, t in enumerate((T0 + 1, T0 + 2)):
        for attr, values in data.items():
            buffers[WCM].add(attr, values[i], t)
    buffers[RING].add("energy", 100.0, T0 + 3)
    return store


def ring_page(uid: str, name: str, newest: float) -> list[tuple[str, dict]]:
    """A batch the archive writer committed: a stream's descriptor and an event page."""
    return [("descriptor", {"uid": uid, "name": name}),
            ("event_page", {"descriptor": uid, "seq_num": [1, 2],
                            "timestamps": {"v": [newest - 1, newest]}})]


def shared(store: LatestStore, path) -> SharedLatest:
    """``store`` as the server's process reads it: published into ``path``, with what the
    archive writer recorded of the ring (archived up to its reading)."""
    publisher = LatestPublisher(store, path)
    archived = ArchivedTimes(path)
    archived(ring_page("d-ring", RING, T0 + 3))
    archived.close()
    publisher.stop()
    return SharedLatest(path, store.objects)


def static_copy(store: SharedLatest) -> MapAdapter:
    """The same entries as static metadata: served by Tiled at ``/archive/static/<name>``."""
    return MapAdapter({"static": MapAdapter(
        {name: MapAdapter({}, metadata=store.get(name)) for name in store.objects})})


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return shared(filled_store(), tmp_path_factory.mktemp("latest") / "latest.db")


@pytest.fixture(scope="module")
def url(store):
    with TiledServer(warden_app(static_copy(store), store, "UTC", KEY)).running() as url:
        yield url


@pytest.fixture
def public_url(store):
    """A public app, for one test. Tiled 0.2.20 keeps its auth settings in one object per
    process (``tiled.server.settings.get_settings`` is cached; each app writes its own
    ``allow_anonymous_access`` and key into it), so a public app makes every Tiled app of
    the process public: put the settings back after it. (Our route keeps its app's own.)"""
    settings = get_settings()
    saved = settings.allow_anonymous_access, settings.single_user_api_key
    app = warden_app(static_copy(store), store, "UTC", KEY, public=True)
    try:
        with TiledServer(app).running() as url:
            yield url
    finally:
        settings.allow_anonymous_access, settings.single_user_api_key = saved


@pytest.fixture(scope="module")
def http():
    with httpx.Client(trust_env=False, timeout=30) as client:
        yield client


def both(http: httpx.Client, url: str, name: str, query: str = "", **kwargs):
    """(our route's answer, Tiled's route's answer) to the same request, each sent without
    the cookies the other one set."""
    http.cookies.clear()
    ours = http.get(f"{url}/api/v1/metadata/latest/{name}{query}", **kwargs)
    http.cookies.clear()
    sep = "&" if query else "?"
    tiled = http.get(f"{url}/api/v1/metadata/latest/{name}{query}{sep}via=tiled", **kwargs)
    http.cookies.clear()
    if tiled.status_code == 200:  # Tiled's route times its packing; ours does not
        assert "pack" in tiled.headers.get("server-timing", ""), "not Tiled's route"
        assert "pack" not in ours.headers.get("server-timing", ""), "not our route"
    return ours, tiled


def decode(response: httpx.Response):
    if response.headers["content-type"] == MSGPACK:
        return msgpack.unpackb(response.content)
    return response.json()


# -- the same body as Tiled --------------------------------------------------------------------
@pytest.mark.parametrize("accept", [JSON, MSGPACK])
@pytest.mark.parametrize("extra", [{}, ORIGIN], ids=["fast-path", "behind-middleware"])
@pytest.mark.parametrize("name", [WCM, RING, IDLE])
def test_same_body_as_tiled_route(http, url, name, accept, extra):
    ours, tiled = both(http, url, name, headers={**HEADERS, "Accept": accept, **extra})
    assert ours.status_code == tiled.status_code == 200
    assert ours.headers["content-type"] == tiled.headers["content-type"] == accept
    assert ours.content == tiled.content  # byte for byte: numpy, NaN, key order and all


@pytest.mark.parametrize("accept", [JSON, MSGPACK])
def test_same_body_as_a_static_tiled_node(http, url, accept):
    """Tiled's answer for a plain MapAdapter node with the same metadata, but for its path."""
    headers = {**HEADERS, "Accept": accept}
    for name in (WCM, RING, IDLE):
        ours = decode(http.get(f"{url}/api/v1/metadata/latest/{name}", headers=headers))
        static = decode(http.get(f"{url}/api/v1/metadata/archive/static/{name}",
                                 headers=headers))
        assert static["data"]["attributes"].pop("ancestors") == ["archive", "static"]
        assert ours["data"]["attributes"].pop("ancestors") == ["latest"]
        links = ours["data"].pop("links")
        static_links = static["data"].pop("links")
        assert links == {k: v.replace("archive/static/", "latest/")
                         for k, v in static_links.items()}
        if accept == MSGPACK:  # NaN != NaN: compare the one NaN apart
            for doc in (ours, static):
                values = doc["data"]["attributes"]["metadata"]["attributes"]
                bunches = values.get("bunchIntensity", {}).get("value")
                if bunches:
                    assert np.isnan(bunches[7])
                    bunches[7] = None
        assert ours == static


def test_search_and_listing_stay_tiled(http, url, store):
    r = http.get(f"{url}/api/v1/search/latest", headers=HEADERS)
    assert r.status_code == 200
    items = {i["id"]: i["attributes"]["metadata"] for i in r.json()["data"]}
    assert list(items) == OBJECTS
    assert items[WCM] == http.get(f"{url}/api/v1/metadata/latest/{WCM}",
                                  headers=HEADERS).json()["data"]["attributes"]["metadata"]
    latest = http.get(f"{url}/api/v1/metadata/latest", headers=HEADERS).json()
    assert latest["data"]["attributes"]["metadata"]["timezone"] == "UTC"


def test_requests_it_does_not_take_go_to_tiled(http, url):
    """Options of Tiled's route, tokens and old clients get Tiled's own answer."""
    r = http.get(f"{url}/api/v1/metadata/latest/{WCM}?fields=metadata", headers=HEADERS)
    assert "pack" in r.headers["server-timing"]
    assert r.json()["data"]["attributes"]["specs"] is None  # fields= honoured
    r = http.get(f"{url}/api/v1/metadata/latest/{WCM}?select_metadata=connected",
                 headers=HEADERS)
    assert r.json()["data"]["attributes"]["metadata"] == {"selected": True}
    old = {**HEADERS, "User-Agent": "python-tiled/0.2.10"}  # expects access_blob
    r = http.get(f"{url}/api/v1/metadata/latest/{WCM}", headers=old)
    assert "pack" in r.headers["server-timing"]
    assert "access_blob" in r.json()["data"]["attributes"]
    for header in ("Bearer not-a-token", "Basic abc"):
        ours = http.get(f"{url}/api/v1/metadata/latest/{WCM}", headers={"Authorization": header})
        tiled = http.get(f"{url}/api/v1/metadata/latest/{WCM}?via=tiled",
                         headers={"Authorization": header})
        assert ours.status_code == tiled.status_code and ours.status_code in (400, 401)
        assert ours.json() == tiled.json()


def test_etag_and_not_modified(http, url):
    r = http.get(f"{url}/api/v1/metadata/latest/{RING}", headers=HEADERS)
    etag = r.headers["etag"]
    again = http.get(f"{url}/api/v1/metadata/latest/{RING}",
                     headers={**HEADERS, "If-None-Match": etag})
    assert again.status_code == 304 and again.headers["etag"] == etag and not again.content
    other = http.get(f"{url}/api/v1/metadata/latest/{RING}",
                     headers={**HEADERS, "Accept": MSGPACK, "If-None-Match": etag})
    assert other.status_code == 200  # another representation, another tag


# -- auth ----------------------------------------------------------------------------------------
AUTH_CASES = {
    "no key": ({}, ""),
    "key header": (HEADERS, ""),
    "key query": ({}, f"?api_key={KEY}"),
    "key query, name encoded": ({}, f"?api%5Fkey={KEY}"),
    "key cookie": ({"Cookie": f"tiled_api_key={KEY}"}, ""),
    "wrong header": ({"Authorization": "Apikey wrong"}, ""),
    "wrong query": ({}, "?api_key=wrong"),
    "empty header": ({"Authorization": "Apikey"}, ""),  # no key after the scheme
}


@pytest.mark.parametrize("case", list(AUTH_CASES))
@pytest.mark.parametrize("public", [False, True], ids=["private", "public"])
def test_auth_as_tiled(http, url, request, case, public):
    headers, query = AUTH_CASES[case]
    base = request.getfixturevalue("public_url") if public else url
    for extra in ({}, ORIGIN):
        ours, tiled = both(http, base, WCM, query, headers={**headers, **extra})
        assert ours.status_code == tiled.status_code, case
        assert ours.json() == tiled.json()
        if ours.status_code == 401 and "WWW-Authenticate" in tiled.headers:
            for h in ("WWW-Authenticate", "X-Tiled-Root"):
                assert ours.headers[h] == tiled.headers[h]
        if query:  # Tiled moves a key given in the URL into a cookie: so do we
            assert ("tiled_api_key" in ours.cookies) == ("tiled_api_key" in tiled.cookies)
    expected = {"no key": 200 if public else 401, "key header": 200, "key query": 200,
                "key query, name encoded": 200, "key cookie": 200, "wrong header": 401,
                "wrong query": 401, "empty header": 200 if public else 401}
    assert ours.status_code == expected[case]


def test_each_app_keeps_its_own_auth(http, url, public_url):
    """A private and a public app in one process: ours answers each by its own rules."""
    get = http.get
    for extra in ({}, ORIGIN):
        http.cookies.clear()
        assert get(f"{url}/api/v1/metadata/latest/{WCM}", headers=extra).status_code == 401
        assert get(f"{url}/api/v1/metadata/latest/nope", headers=extra).status_code == 401
        assert get(f"{public_url}/api/v1/metadata/latest/{WCM}",
                   headers=extra).status_code == 200
        assert get(f"{url}/api/v1/metadata/latest/{WCM}",
                   headers={**HEADERS, **extra}).status_code == 200
        assert get(f"{url}/api/v1/metadata/latest/{WCM}?api_key={KEY}",
                   headers=extra).status_code == 200
    http.cookies.clear()


# -- unknown objects and odd names ---------------------------------------------------------------
@pytest.mark.parametrize("extra", [{}, ORIGIN], ids=["fast-path", "behind-middleware"])
def test_unknown_object_is_404(http, url, extra):
    r = http.get(f"{url}/api/v1/metadata/latest/nope", headers={**HEADERS, **extra})
    assert r.status_code == 404
    assert "nope" in r.json()["detail"] and "configured" in r.json()["detail"]
    assert http.get(f"{url}/api/v1/metadata/latest/nope?via=tiled",
                    headers=HEADERS).status_code == 404
    with pytest.raises(KeyError):
        from_uri(url, api_key=KEY)["latest"]["nope"]


def test_names_with_slashes_dots_and_spaces(http, url):
    # "b/c" is configured, but no path reaches it, through Tiled as through us
    for path in ("b/c", "b%2Fc"):
        r = http.get(f"{url}/api/v1/metadata/latest/{path}", headers=HEADERS)
        assert r.status_code == 404
    for path in ("%2E%2E", "%2E", ".."):
        raw = httpx.URL(f"{url}/api/v1/metadata/latest/x").copy_with(
            raw_path=f"/api/v1/metadata/latest/{path}".encode())
        r = http.get(raw, headers=HEADERS)
        assert r.status_code in (404, 307), (path, r.status_code)
        assert b'"object"' not in r.content
    ours, tiled = both(http, url, "ring%20yellow", headers=HEADERS)
    assert ours.status_code == 200 and ours.content == tiled.content
    assert ours.json()["data"]["id"] == RING
    trailing = http.get(f"{url}/api/v1/metadata/latest/{RING}/", headers=HEADERS)
    assert trailing.status_code == 200  # Tiled's, as before
    assert trailing.json()["data"]["attributes"]["metadata"]["object"] == RING


# -- values --------------------------------------------------------------------------------------
def expected_wcm() -> dict:
    return {
        "wcmBeam": 16.4228, "bunchIntensity": [None if i == 7 else v
                                              for i, v in enumerate(BUNCHES.tolist())],
        "bunchList": [1, 2, 3], "fill": 34001, "gain": 2.5, "species": "Au",
        "lost": None, "huge": None, "ok": True,
    }


def test_values_round_trip_over_json(http, url):
    md = http.get(f"{url}/api/v1/metadata/latest/{WCM}",
                  headers=HEADERS).json()["data"]["attributes"]["metadata"]
    assert md["object"] == WCM and md["connected"] is True
    assert md["time"] == T0 + 2 and md["rows"] == 2 and md["since"] == T0 + 1
    assert md["archived_time"] is None
    got = {k: v["value"] for k, v in md["attributes"].items()}
    assert got == expected_wcm()
    assert all(v["timestamp"] == T0 + 2 for v in md["attributes"].values())
    ring = http.get(f"{url}/api/v1/metadata/latest/{RING}",
                    headers=HEADERS).json()["data"]["attributes"]["metadata"]
    assert ring["connected"] is False and ring["archived_time"] == T0 + 3
    assert ring["archived_rows"] == 2
    assert ring["attributes"] == {"energy": {"value": 100.0, "timestamp": T0 + 3}}
    idle = http.get(f"{url}/api/v1/metadata/latest/{IDLE}",
                    headers=HEADERS).json()["data"]["attributes"]["metadata"]
    assert idle == {"object": IDLE, "connected": False, "time": None, "rows": 0,
                    "since": None, "attributes": {}, "archived_time": None,
                    "archived_rows": 0}


def test_values_round_trip_through_the_tiled_client_and_archive(url):
    client = from_uri(url, api_key=KEY)
    md = client["latest"][WCM].metadata
    got = {k: v["value"] for k, v in md["attributes"].items()}
    bunches = got.pop("bunchIntensity")  # msgpack keeps the NaN inside the array
    assert np.isnan(bunches[7]) and bunches[:7] == BUNCHES[:7].tolist()
    want = expected_wcm()
    want.pop("bunchIntensity")
    assert got == want and md["connected"] is True
    archive = Archive(client)
    assert archive.objects() == OBJECTS
    entry = archive.latest(WCM)
    assert entry["attributes"]["wcmBeam"]["value"] == 16.4228 and entry["connected"] is True
    assert archive.latest(RING)["archived_time"] == T0 + 3
    assert archive.latest(IDLE)["rows"] == 0


def test_new_readings_are_served_at_once(http):
    """A value is served as soon as the buffer has it, without waiting for a flush."""
    store, buffers, _ = live_store({"obj": ["v"]})
    with TiledServer(warden_app(MapAdapter({}), store, "UTC", KEY)).running() as url:
        for i in range(3):
            buffers["obj"].add("v", float(i), T0 + i)
            md = http.get(f"{url}/api/v1/metadata/latest/obj",
                          headers=HEADERS).json()["data"]["attributes"]["metadata"]
            assert md["attributes"]["v"] == {"value": float(i), "timestamp": T0 + i}
            assert md["rows"] == i + 1 and md["since"] == T0
        assert list(buffers["obj"].collect_pages())  # the flush still gets every row


def test_the_shared_file_answers_as_the_store(http, tmp_path):
    """The server's process reads ``latest`` from the file the publisher writes: every
    answer, JSON and msgpack, is the one the store itself gives (before anything is archived)."""
    path = tmp_path / "latest.db"
    stale = LatestPublisher(LatestStore(["gone"]), path)  # a previous run's file
    stale.stop()
    store = filled_store()
    publisher = LatestPublisher(store, path)
    view = SharedLatest(path, store.objects)
    with (TiledServer(warden_app(MapAdapter({}), store, "UTC", KEY)).running() as url,
          TiledServer(warden_app(MapAdapter({}), view, "UTC", KEY)).running() as shared_url):
        for name in (WCM, RING, IDLE):  # ("b/c": no path reaches it)
            for accept in (JSON, MSGPACK):
                headers = {**HEADERS, "Accept": accept}
                want = http.get(f"{url}/api/v1/metadata/latest/{name}", headers=headers)
                got = http.get(f"{shared_url}/api/v1/metadata/latest/{name}", headers=headers)
                assert got.status_code == want.status_code == 200
                body = got.content.replace(shared_url.encode(), url.encode())  # (links)
                assert body == want.content, (name, accept)
    with pytest.raises(KeyError):
        view.get("gone")
    publisher.stop()


def test_the_shared_file_gets_what_changed_and_what_is_archived(tmp_path):
    """A new reading reaches the file with the next pass, which writes only what changed;
    the archive writer's record of a committed batch shows as ``archived_time``."""
    path = tmp_path / "latest.db"
    live, buffers, connections = live_store({"a": ["v"], "b": ["v"]})
    publisher = LatestPublisher(live, path)
    view = SharedLatest(path, live.objects)
    assert view.get("a")["rows"] == 0 and publisher.publish() == []
    buffers["a"].add("v", float("nan"), T0)
    assert view.get("a")["rows"] == 0  # not yet published
    assert publisher.publish() == ["a"]
    assert view.get("a")["attributes"] == {"v": {"value": None, "timestamp": T0}}
    assert view.get("a") == live.get("a") and view.get("b") == live.get("b")
    connections.record("b", True)  # a connection change is a change too
    assert publisher.publish() == ["b"] and view.get("b")["connected"] is True
    archived = ArchivedTimes(path)  # (the writer's process, in the service: its own file)
    archived(ring_page("d-a", "a", T0))
    assert view.get("a")["archived_time"] == T0 and view.get("b")["archived_time"] is None
    assert [(name, t) for name, t, _ in view.archived()] == [("a", T0)]
    assert view.get("a")["archived_rows"] == 2
    archived([("event_page", {"descriptor": "d-a", "seq_num": [1], "timestamps": {"v": [T0 - 5]}})])
    assert view.get("a")["archived_time"] == T0  # a replayed page does not move it back
    assert view.get("a")["archived_rows"] == 2
    archived([("event_page", {"descriptor": "d-a", "seq_num": [1], "timestamps": {"v": [T0 + 9]}})])
    assert view.get("a")["archived_rows"] == 1  # the next day's run: its own rows
    archived([("event_page", {"descriptor": "d-x", "timestamps": {"v": [T0]}})])  # unknown
    assert [name for name, _, _ in view.archived()] == ["a"]
    assert publisher.publish() == []  # (archived times are not the publisher's)
    archived.close()
    publisher.stop()


def test_store_reads_are_whole_entries_while_it_is_updated():
    """Reads from another thread, while a buffer is filled, see every attribute's value
    whole and with its own timestamp, and count the rows made so far."""
    attrs = [f"a{k}" for k in range(20)]
    store, buffers, _ = live_store({"obj": attrs})
    stop = threading.Event()

    def feed():
        i = 0
        while not stop.is_set():
            i += 1
            for a in attrs:
                buffers["obj"].add(a, np.full(50, float(i)), float(i))

    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        deadline = time.monotonic() + 0.5
        reads = 0
        while time.monotonic() < deadline:
            entry = store.get("obj")
            values = entry["attributes"]
            if len(values) == len(attrs):
                stamps = [values[a]["timestamp"] for a in attrs]
                assert all(values[a]["value"] == [values[a]["timestamp"]] * 50 for a in attrs)
                assert entry["time"] == max(stamps) == entry["rows"]  # (a row per new time)
                reads += 1
    finally:
        stop.set()
        feeder.join()
    assert reads > 10


def test_access_log_names_the_principal(tmp_path, store):
    """Tiled's access log says who asked (``singleuser``, ``anon``), ahead of its middleware
    as behind it."""
    app = warden_app(MapAdapter({}), store, "UTC", KEY, public=True)
    access = logging.getLogger("uvicorn.access")
    with TiledServer(app, log_dir=tmp_path).running() as url, httpx.Client(trust_env=False) as c:
        level = access.level
        access.setLevel(logging.INFO)  # (TiledServer's log_level="warning" silences it)
        try:
            for extra in ({}, ORIGIN):
                assert c.get(f"{url}/api/v1/metadata/latest/{RING}",
                             headers={**HEADERS, **extra}).status_code == 200
                assert c.get(f"{url}/api/v1/metadata/latest/{IDLE}",
                             headers=extra).status_code == 200
        finally:
            access.setLevel(level)
    lines = [line for line in (tmp_path / "access.log").read_text().splitlines()
             if "/latest/" in line]
    assert len(lines) == 4, lines
    assert ["(singleuser)" in line for line in lines] == [True, False, True, False]
    assert ["(anon)" in line for line in lines] == [False, True, False, True]


def test_after_the_plans_last_page_at_a_stop_latest_stays_what_was_archived():
    """The plan's last flush at a stop closes the buffers: a later update makes no row and
    does not change ``latest`` (it would not be in the archive); staging opens them again."""
    store, buffers, _ = live_store({"a": ["v"]})
    buf = buffers["a"]
    buf.add("v", 1.0, T0)
    buf.closed, buf.hold = True, 0.0  # what monitor_day does before its last flush (stop)
    buf.add("v", 2.0, T0 + 1)
    entry = store.get("a")
    assert entry["rows"] == 1 and entry["attributes"]["v"]["value"] == 1.0
    assert list(buf.collect_pages())[0]["data"] == {"v": [1.0]}
    buf.stage()
    buf.add("v", 3.0, T0 + 2)
    assert store.get("a")["attributes"]["v"]["value"] == 3.0
    buf.unstage()

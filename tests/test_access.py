"""Access: writes need the API key even on a ``--public`` server, plugins are switched only with
it, nothing over HTTP writes upstream, and the key never shows in a log.

Two real servers: the session's ``warden run`` (reads need the key, ``warden_server``) and,
here, ``warden run --public`` on a simulated IOC of its own with an ``exchange`` configured.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import API_KEY, KILL_PORT, SimIOC, _free_port, caget, fresh_prefix, wait_for
from tiled.client import from_uri

from warden.cli import main

KEY = "accesskey" + secrets.token_hex(8)  # the --public server's key
WRONG = "wrongkey" + secrets.token_hex(8)  # near enough to look real, never accepted
LOCAL, TARGET = "phenix:magnet:status", "rhic:phenix:magnetStatus"
WRITES = ("POST", "PUT", "PATCH", "DELETE")
REFUSED = (401, 403, 405)
INTRUDER = "intruder"


def apikey(key: str) -> dict:
    return {"Authorization": f"Apikey {key}"}


# -- the --public server -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def public_warden(tmp_path_factory):
    """``warden run --public`` (WARDEN_API_KEY set) on its own simulated IOC, with an exchange
    (source -> target every second) and a plugin; stdout and stderr kept in files."""
    data = tmp_path_factory.mktemp("public-warden")
    k = fresh_prefix()
    ioc = SimIOC(KILL_PORT, prefix=k).start()
    config = {
        "archive": f"sqlite:///{data / 'archive.db'}",
        "timezone": "America/New_York",
        "serve": {"host": "127.0.0.1", "port": _free_port()},
        "objects": [
            {"name": name, "type": "WcmControl", "prefix": f"{k}{name}:", "mode": "monitor"}
            for name in ("yi2-wcm3", "bo2-wcm3")
        ],
        "exchange": [{"source": f"{k}{LOCAL}", "target": f"{k}{TARGET}", "period": 1.0}],
        "plugins": [{"name": "lifetime", "interval": 1}],
    }
    path = data / "warden.yaml"
    path.write_text(yaml.safe_dump(config))
    out, err = data / "stdout.txt", data / "stderr.txt"
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "warden", "run", str(path), "--public"],
            env={**os.environ, "WARDEN_API_KEY": KEY}, stdout=stdout, stderr=stderr, text=True,
        )
    url = f"http://127.0.0.1:{config['serve']['port']}"

    def stop() -> None:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)

    try:
        wait_for(lambda: "serving" in out.read_text() or proc.poll() is not None, timeout=60)
        assert proc.poll() is None, out.read_text() + err.read_text()
        server = {"url": url, "proc": proc, "stop": stop, "data": data, "stdout": out,
                  "stderr": err, "pv": lambda name: f"{k}{name}"}
        # the exchange's first write (the value at start) is done and archived
        wait_for(lambda: exchange_rows(url) == [("ON", True)], timeout=30)
        yield server
    finally:
        stop()
        ioc.kill()


def exchange_rows(url: str) -> list[tuple]:
    runs = from_uri(url, api_key=KEY)["archive"]
    if not len(runs):
        return []
    run = runs.values().last()
    if "exchange" not in run or "internal" not in run["exchange"].base:  # (no row yet)
        return []
    table = run["exchange"].base["internal"].read()
    return list(zip(table["value"], table["accepted"], strict=True))


@pytest.fixture(params=["public", "keyed"])
def server(request):
    """Each test on both servers: ``--public`` (reads need no key) and the session's."""
    if request.param == "public":
        s = request.getfixturevalue("public_warden")
        return {"url": s["url"], "key": KEY, "public": True}
    s = request.getfixturevalue("warden_server")
    return {"url": s["url"], "key": API_KEY, "public": False}


def snapshot(url: str, key: str) -> dict:
    """What a writer could change: the root, ``latest``, the runs with their start documents
    and streams (read with the key)."""
    with httpx.Client(base_url=url, headers=apikey(key), trust_env=False) as c:
        def ids(path: str) -> list[str]:
            r = c.get(f"/api/v1/search/{path}", params={"page[limit]": 300})
            r.raise_for_status()
            return sorted(item["id"] for item in r.json()["data"])

        runs = {}
        for uid in ids("archive"):
            meta = c.get(f"/api/v1/metadata/archive/{uid}").json()["data"]["attributes"]
            runs[uid] = {"start": meta["metadata"]["start"], "streams": ids(f"archive/{uid}")}
        return {"root": ids(""), "latest": ids("latest"), "runs": runs}


def assert_unchanged(before: dict, after: dict) -> None:
    """Nothing removed, renamed or added (the live run may gain a stream of its own: a
    plugin's first output; never an intruder's)."""
    assert after["root"] == before["root"]
    assert after["latest"] == before["latest"]
    assert sorted(after["runs"]) == sorted(before["runs"])
    for uid, run in before["runs"].items():
        assert after["runs"][uid]["start"] == run["start"], uid
        assert set(run["streams"]) <= set(after["runs"][uid]["streams"]), uid
        assert INTRUDER not in after["runs"][uid]["streams"]


def attempts(uid: str) -> list[tuple[str, str, dict | None]]:
    """Writes a client might try: create containers in /archive, /latest, a run and the root;
    replace, patch or delete metadata and nodes; write array and table data; register files."""
    def new(parent: list[str]) -> dict:
        return {"id": INTRUDER, "ancestors": parent, "metadata": {"by": "intruder"},
                "structure_family": "container", "specs": [], "data_sources": [],
                "access_tags": None}

    patch = {"content-type": "application/json-patch+json",
             "patch": [{"op": "add", "path": "/by", "value": "intruder"}]}
    return [
        ("POST", "/api/v1/metadata/archive", new(["archive"])),
        ("POST", f"/api/v1/metadata/archive/{uid}", new(["archive", uid])),
        ("POST", "/api/v1/metadata/latest", new(["latest"])),
        ("POST", "/api/v1/metadata/", new([])),
        ("PUT", f"/api/v1/metadata/archive/{uid}", {"metadata": {"by": "intruder"}}),
        ("PATCH", f"/api/v1/metadata/archive/{uid}", patch),
        ("PATCH", "/api/v1/metadata/latest/yi2-wcm3", patch),
        ("PUT", "/api/v1/metadata/latest/yi2-wcm3", {"metadata": {"connected": False}}),
        ("DELETE", f"/api/v1/metadata/archive/{uid}", None),
        ("DELETE", f"/api/v1/metadata/archive/{uid}/yi2-wcm3", None),
        ("DELETE", "/api/v1/metadata/archive", None),
        ("DELETE", "/api/v1/metadata/latest/yi2-wcm3", None),
        ("DELETE", f"/api/v1/revisions/archive/{uid}?number=1", None),
        ("PUT", f"/api/v1/node/full/archive/{uid}", {"metadata": {}}),
        ("PUT", f"/api/v1/array/full/archive/{uid}/yi2-wcm3/wcmBeam", None),
        ("PUT", f"/api/v1/table/full/archive/{uid}/yi2-wcm3/internal", None),
        ("PATCH", f"/api/v1/table/partition/archive/{uid}/yi2-wcm3/internal?partition=0", None),
        ("POST", "/api/v1/register/archive", {"path": "/etc", "overwrite": True}),
        ("DELETE", f"/api/v1/stream/close/archive/{uid}", None),
    ]


NO_KEY = {  # ways of sending no key or a wrong one: (headers, query parameters)
    "no key": ({}, {}),
    "wrong key": (apikey(WRONG), {}),
    "wrong key as api_key=": ({}, {"api_key": WRONG}),
    "wrong key as cookie": ({"Cookie": f"tiled_api_key={WRONG}"}, {}),
    "right key, wrong scheme": ({"Authorization": "Bearer {key}"}, {}),
}


def without_key(key: str):
    for who, (headers, params) in NO_KEY.items():
        yield who, {k: v.format(key=key) for k, v in headers.items()}, params


def test_writes_need_the_key_even_on_a_public_server(server):
    url, key = server["url"], server["key"]
    before = snapshot(url, key)
    uid = sorted(before["runs"])[-1]
    with httpx.Client(base_url=url, trust_env=False) as client:
        for who, headers, params in without_key(key):
            for method, path, body in attempts(uid):
                client.cookies.clear()  # Tiled's cookies of one answer vouch for no request
                r = client.request(method, path, json=body, headers=headers, params=params)
                assert r.status_code in REFUSED, (who, method, path, r.status_code, r.text)
                assert r.text, (who, method, path)  # says why
    if server["public"]:
        # ... and so does a stock Tiled client without a key, which may read
        client = from_uri(url)
        assert len(client["archive"]) == len(before["runs"])
        with pytest.raises(Exception) as err:  # noqa: B017 - the client's own error types vary
            client["archive"].create_container(INTRUDER)
        assert re.search(r"40[13]", str(err.value)), err.value
        with pytest.raises(Exception) as err:  # noqa: B017
            client["archive"][uid].update_metadata({"by": "intruder"})
        assert re.search(r"40[13]", str(err.value)), err.value
    assert_unchanged(before, snapshot(url, key))


def plugin_state(url: str, key: str, name: str = "lifetime") -> str:
    r = httpx.get(f"{url}/api/v1/warden/plugins", headers=apikey(key), trust_env=False)
    r.raise_for_status()
    return {p["name"]: p["state"] for p in r.json()}[name]


def test_plugins_are_started_and_stopped_only_with_the_key(server, capsys, monkeypatch):
    url, key = server["url"], server["key"]
    assert plugin_state(url, key) != "stopped"
    tries = [*without_key(key), ("empty key", {"Authorization": "Apikey"}, {})]
    with httpx.Client(base_url=url, trust_env=False) as client:
        for prefix in ("/api/v1/warden", "/custom/warden"):  # Tiled mounts the router twice
            for action in ("stop", "start"):
                for who, headers, params in tries:
                    client.cookies.clear()
                    r = client.post(f"{prefix}/plugins/lifetime/{action}", headers=headers,
                                    params=params)
                    if who == "wrong key as cookie":  # without Tiled's CSRF token: refused
                        assert r.status_code == 403, (prefix, action, r.text)
                        continue
                    assert r.status_code == 401, (prefix, action, who, r.text)
                    assert r.json()["detail"] == "an API key is required"
        assert plugin_state(url, key) != "stopped"
        # the list: without a key on the --public server only
        assert client.get("/api/v1/warden/plugins").status_code == (
            200 if server["public"] else 401)
        if not server["public"]:
            assert client.get("/api/v1/warden/plugins", headers=apikey(WRONG)).status_code == 401

    # the CLI, with a wrong key and with none: exit 2 saying which, the plugin runs on
    for env, says in ((WRONG, "refused the API key"), (None, "requires an API key")):
        if env is None:
            monkeypatch.delenv("WARDEN_API_KEY", raising=False)
        else:
            monkeypatch.setenv("WARDEN_API_KEY", env)
        assert main(["plugins", "stop", "lifetime", "--server", url]) == 2
        assert says in capsys.readouterr().err
    assert plugin_state(url, key) != "stopped"

    if server["public"]:  # the key does switch it (so the refusals above are not a broken route)
        monkeypatch.setenv("WARDEN_API_KEY", key)
        assert main(["plugins", "stop", "lifetime", "--server", url]) == 0
        assert plugin_state(url, key) == "stopped"
        assert main(["plugins", "start", "lifetime", "--server", url]) == 0
        assert plugin_state(url, key) != "stopped"


# -- nothing over HTTP writes upstream ----------------------------------------------------------
def app_routes() -> list[tuple[str, set[str]]]:
    """Every route of the app the service serves, as (path template, methods): the OpenAPI
    paths, plus the routes kept out of the schema (static files, docs, the fast ``latest``)."""
    from tiled.adapters.mapping import MapAdapter

    from catalog.latest import LatestStore
    from catalog.server import warden_app
    from catalog.ui import mount_ui
    from warden.control import control_router
    from warden.plugins.runner import PluginRunner

    runner = PluginRunner([], lambda name: {}, time.time, 1, 0.1)
    store = LatestStore(["yi2-wcm3", "bo2-wcm3", "lifetime"])
    app = warden_app(MapAdapter({}), store, "America/New_York", KEY, public=True,
                     routers=[control_router(runner, KEY, public=True)])
    mount_ui(app, store, "America/New_York", KEY, public=True)  # as service_server does
    routes = {path: {m.upper() for m in ops} for path, ops in app.openapi()["paths"].items()}
    for route in app.routes:
        path = getattr(route, "path", None)
        if path:  # a Route, or a Mount (methods None: anything under it)
            routes.setdefault(path, set()).update(getattr(route, "methods", None) or WRITES)
    assert "/api/v1/warden/plugins/{name}/{action}" in routes  # the control router is listed
    assert "/api/v1/metadata/latest/{name}" in routes  # and the fast latest route
    return sorted(routes.items())


def fill(template: str, paths: list[str]) -> list[str]:
    """Concrete URLs of a route template."""
    urls = [template]
    for name, values in (("{path}", paths), ("{path:path}", paths), ("{name}", ["lifetime"]),
                         ("{action}", ["stop", "start"]), ("{block}", ["0"])):
        urls = [u.replace(name, v, 1) for u in urls for v in values] if any(
            name in u for u in urls) else urls
    if template == "/static":
        urls = ["/static/x"]
    return [u.replace("//", "/") for u in urls]


def test_nothing_over_http_writes_upstream(public_warden):
    url, pv = public_warden["url"], public_warden["pv"]
    with ThreadPoolExecutor(2) as pool:
        target_before, source_before = pool.map(caget, [pv(TARGET), pv(LOCAL)])
    before = snapshot(url, KEY)
    uid = sorted(before["runs"])[-1]
    real = ["archive", f"archive/{uid}", f"archive/{uid}/yi2-wcm3", f"archive/{uid}/exchange",
            "latest/yi2-wcm3"]
    harmless = ["latest", "latest/yi2-wcm3", f"archive/{INTRUDER}"]
    routes = app_routes()

    def requests(paths, headers, params, everything=False):
        """Each write method on each route: on ``paths`` where the route takes a write, and
        (``everything``) once on the routes that take none."""
        for template, methods in routes:
            writable = bool(methods & set(WRITES)) or template == "/static"
            if writable or everything:
                for path in fill(template, paths if writable else paths[-1:]):
                    for method in WRITES:
                        yield method, path, headers, params

    # without the key on every route, the real runs included; a wrong key on every route
    # that takes a write (the key is checked before the path; the other ways of sending a
    # wrong key are in the test above)
    refused = [*requests(real, {}, {}, everything=True)]
    for who, headers, params in without_key(KEY):
        if who in ("wrong key", "wrong key as api_key="):
            refused += requests(["latest/yi2-wcm3"], headers, params)
    # with the key, on paths where a write harms no other test: the key may write the
    # archive (Tiled's business); it still cannot reach upstream
    keyed = [*requests(harmless, apikey(KEY), {}), *requests(harmless[1:2], {}, {"api_key": KEY})]

    local, clients = threading.local(), []
    body = {"id": INTRUDER, "ancestors": [], "metadata": {"value": "OFF"},
            "structure_family": "container", "specs": [], "data_sources": [],
            "access_tags": None}

    def send(request) -> tuple[int | str, str]:
        method, path, headers, params = request
        if not hasattr(local, "client"):  # one per thread, cookies cleared before each use
            local.client = httpx.Client(base_url=url, trust_env=False, timeout=30)
            clients.append(local.client)
        local.client.cookies.clear()  # no cookie of one answer vouches for the next
        try:
            r = local.client.request(method, path, headers=headers, params=params,
                                     json=None if method == "DELETE" else body)
        except httpx.TransportError as err:  # an error in the server closed the connection
            return repr(err), ""
        return r.status_code, r.text

    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(send, refused))
        for (method, path, headers, params), (status, text) in zip(refused, answers,
                                                                  strict=True):
            who = (method, path, headers, params)
            assert isinstance(status, int) and status < 500, (who, status, text)
            if 200 <= status < 300:  # a public read through POST (table, awkward buffers)
                assert method == "POST" and "/metadata/" not in path, (who, text)
        assert_unchanged(before, snapshot(url, KEY))
        answers = dict(zip([(m, p, bool(h)) for m, p, h, _ in keyed],
                           pool.map(send, keyed), strict=True))
    for client in clients:
        client.close()
    # the key did get through (so the refusals above are the key's doing) ...
    latest_writes = [(k, a) for k, a in answers.items()
                     if k[1].startswith(("/api/v1/metadata/latest", "/api/v1/register/latest"))]
    assert len(latest_writes) >= 8  # ... except to latest, which is read-only even so
    assert all(status == 405 for _, (status, _) in latest_writes), latest_writes
    assert answers["POST", "/api/v1/warden/plugins/lifetime/stop", True][0] == 200
    assert len(refused) + len(keyed) > 800
    time.sleep(2)  # two more exchange periods: a write asked for over HTTP would land by now
    with ThreadPoolExecutor(2) as pool:
        assert list(pool.map(caget, [pv(TARGET), pv(LOCAL)])) == [target_before, source_before]
    assert exchange_rows(url) == [("ON", True)]  # the service's own record of its writes
    r = httpx.post(f"{url}/api/v1/warden/plugins/lifetime/start", headers=apikey(KEY),
                   trust_env=False)  # (stop and start went in parallel: leave it running)
    assert r.status_code == 200


# -- keys never show in logs -------------------------------------------------------------------
def test_keys_never_appear_in_logs(public_warden):
    """The key in a header, as ``?api_key=``, a wrong one: in no output and no log file of
    ``warden run``. (It stops the server: the last test here to use it.)"""
    url = public_warden["url"]
    with httpx.Client(base_url=url, trust_env=False) as c:
        latest = "/api/v1/metadata/latest/yi2-wcm3"
        assert c.get(latest, headers=apikey(KEY)).status_code == 200
        c.cookies.clear()
        assert c.get(latest, params={"api_key": KEY}).status_code == 200
        c.cookies.clear()
        assert c.get(f"{latest}?api%5Fkey={KEY}").status_code == 200  # the name encoded
        c.cookies.clear()
        assert c.get("/api/v1/search/archive", params={"api_key": KEY}).status_code == 200
        c.cookies.clear()
        assert c.get("/api/v1/metadata/nope", params={"api_key": KEY}).status_code == 404
        c.cookies.clear()
        assert c.get(latest, headers=apikey(WRONG)).status_code == 401
        c.cookies.clear()
        assert c.get(latest, params={"api_key": WRONG}).status_code == 401
        c.cookies.clear()
        r = c.post("/api/v1/metadata/archive", params={"api_key": WRONG}, json={})
        assert r.status_code == 401
        c.cookies.clear()
        assert c.post("/api/v1/warden/plugins/lifetime/stop",
                      params={"api_key": WRONG}).status_code == 401
        c.cookies.clear()
        for action in ("stop", "start"):
            assert c.post(f"/api/v1/warden/plugins/lifetime/{action}",
                          params={"api_key": KEY}).status_code == 200
            c.cookies.clear()
    assert from_uri(url, api_key=KEY)["latest"]["yi2-wcm3"].metadata["connected"] is True
    public_warden["stop"]()
    data: Path = public_warden["data"]
    logs = sorted(data.rglob("*.log"))
    assert {p.name for p in logs} >= {"server.log", "access.log"}, logs
    for path in [public_warden["stdout"], public_warden["stderr"], *logs]:
        text = path.read_text(errors="replace")
        assert KEY not in text, path
        assert WRONG not in text, path
    assert "serving" in public_warden["stdout"].read_text()
    access = next(p for p in logs if p.name == "access.log").read_text()
    assert "GET /api/v1/" in access and "POST /api/v1/" in access  # every request is logged


def test_access_log_shows_no_key_sent_as_a_query_parameter(tmp_path):
    """Every request is in access.log, and any ``api_key=`` value in it is ``***``."""
    from tiled.adapters.mapping import MapAdapter

    from catalog.latest import LatestStore
    from catalog.server import TiledServer, warden_app

    app = warden_app(MapAdapter({}), LatestStore(["yi2-wcm3"]), "UTC", KEY)
    with TiledServer(app, log_dir=tmp_path).running() as url:
        for query in (f"api_key={KEY}", f"api%5Fkey={KEY}", f"x=1&api_key={KEY}&y=2",
                      f"API_KEY={WRONG}"):
            httpx.get(f"{url}/api/v1/metadata/latest/yi2-wcm3?{query}", trust_env=False)
    text = (tmp_path / "access.log").read_text()
    assert text.count("/api/v1/metadata/latest/yi2-wcm3?") == 4, text
    assert "\x1b[" not in text  # plain text, each line with its time
    assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d ", x) for x in text.splitlines())
    assert "api_key=***" in text and "x=1&api_key=***&y=2" in text
    assert KEY not in text and WRONG not in text

"""The web page at ``/warden/``, in headless Chromium, on real services over real IOCs.

Two servers: the session's ``warden run`` (reads need the key, ``warden_server``) and, here,
``warden run --public`` on a killable simulated IOC with a writable object and a plugin. The
browser tests need Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them);
the HTTP tests of the page's routes run without them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import API_KEY, KILL_PORT, SimIOC, _free_port, fresh_prefix, wait_for

from catalog.ui.bins import reduce_bins

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
KEY = "uikey0123456789abcdef"
MAGNET = "phenix:magnet:status"
browser_only = pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="no /usr/bin/chromium and /usr/bin/chromedriver "
           "(apt-get install chromium chromium-driver; .ci/run does)",
)


def caput(pvname: str, value: str) -> None:
    """``epics.caput`` in a fresh interpreter, as an operator would."""
    code = f"import epics; assert epics.caput({pvname!r}, {value!r}, wait=True, timeout=5)"
    subprocess.run([sys.executable, "-c", code], check=True, env=os.environ.copy(), timeout=30,
                   capture_output=True)


# -- fixtures ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def public_warden(tmp_path_factory):
    """``warden run --public`` on a simulated IOC of its own: a WCM, a ring (1 s scan), the
    PHENIX magnet status (a PV operators write) as a generic object, and the lifetime plugin."""
    data = tmp_path_factory.mktemp("ui-warden")
    k = fresh_prefix()
    ioc = SimIOC(KILL_PORT, prefix=k).start()
    config = {
        "archive": f"sqlite:///{data / 'archive.db'}",
        "timezone": "America/New_York",
        "serve": {"host": "127.0.0.1", "port": _free_port()},
        "objects": [
            {"name": "yi2-wcm3", "type": "WcmControl", "prefix": f"{k}yi2-wcm3:",
             "mode": "monitor"},
            {"name": "ring-yellow", "type": "ringSpec", "prefix": f"{k}ring-yellow:",
             "mode": "scan", "period": 1.0, "offset": 0.2},
            {"name": "magnet", "type": "generic", "prefix": f"{k}phenix:magnet:",
             "attributes": {"status": "status"}, "mode": "monitor"},
        ],
        "plugins": [{"name": "lifetime", "interval": 1}],
    }
    path = data / "warden.yaml"
    path.write_text(yaml.safe_dump(config))
    out = data / "output.txt"
    with out.open("w") as stdout:
        proc = subprocess.Popen([sys.executable, "-m", "warden", "run", str(path), "--public"],
                                env={**os.environ, "WARDEN_API_KEY": KEY}, stdout=stdout,
                                stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{config['serve']['port']}"
    try:
        wait_for(lambda: "serving" in out.read_text() or proc.poll() is not None, timeout=60)
        assert proc.poll() is None, out.read_text()
        caput(f"{k}{MAGNET}", "ON")
        yield {"url": url, "ioc": ioc, "pv": lambda name: f"{k}{name}"}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        ioc.kill()


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium driven by Selenium, with a profile of its own."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("no /usr/bin/chromium and /usr/bin/chromedriver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="warden-ui-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-quic", "--no-first-run", "--disable-component-update",
                 "--disable-sync", f"--user-data-dir={profile}", "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def until(driver, predicate, timeout: float = 20.0):
    """``predicate(driver)`` once it is true (an element redrawn meanwhile: look again)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, timeout, poll_frequency=0.1,
                         ignored_exceptions=[StaleElementReferenceException])
    return wait.until(predicate)


def rows(driver) -> dict[str, dict]:
    """The live table as the reader sees it: object -> state, values by attribute, age (read
    in one go: the page redraws rows as values arrive)."""
    return dict(driver.execute_script("""
        return [...document.querySelectorAll("#objects tbody tr")].map((row) => {
          const values = {};
          for (const v of row.querySelectorAll(".value")) {
            values[v.dataset.attr] = v.lastChild.textContent;
          }
          return [row.dataset.object, {state: row.querySelector(".state").textContent, values,
                                       age: row.querySelector(".age").textContent}];
        });"""))


def text(driver, element_id: str) -> str:
    return driver.execute_script(f"return document.getElementById('{element_id}').innerText")


def shown(driver, element_id: str) -> bool:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id).is_displayed()


def open_day_plot(driver, name: str) -> int:
    """Click ``name``'s row; return the points (or bins) its day plot drew."""
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, f'tr[data-object="{name}"] td.name').click()
    plot = driver.find_element(By.ID, "dayplot")
    until(driver, lambda d: text(d, "detail-title") == name and int(
        plot.get_attribute("data-points") or 0) > 0)
    return int(plot.get_attribute("data-points"))


# -- in the browser ----------------------------------------------------------------------------
@browser_only
def test_page_asks_for_the_key_then_shows_every_object(browser, warden_server, tmp_path_factory):
    browser.get(warden_server["url"])  # / -> /warden/
    assert browser.current_url.endswith("/warden/")
    until(browser, lambda d: shown(d, "key-form"))
    assert not shown(browser, "main")
    from selenium.webdriver.common.by import By

    field = browser.find_element(By.ID, "key-input")
    field.send_keys("notthekey")
    field.submit()
    until(browser, lambda d: "refused" in text(d, "key-message"))
    assert not shown(browser, "main")
    field.clear()
    field.send_keys(API_KEY)
    field.submit()
    until(browser, lambda d: shown(d, "main"))
    names = [o["name"] for o in warden_server["config"]["objects"]]
    table = until(browser, lambda d: (t := rows(d)) and all(t[n]["values"] for n in names) and t)
    plugins = [p["name"] for p in warden_server["config"].get("plugins") or []]
    assert list(table) == names + plugins  # (a plugin's outputs are an object too)
    assert all(table[n]["state"] == "connected" for n in names)
    assert float(table["yi2-wcm3"]["values"]["wcmBeam"]) > 0
    # live through the token the key bought, and the day plot reads the archive
    until(browser, lambda d: text(d, "live") == "live")
    assert open_day_plot(browser, "yi2-wcm3") > 0
    assert "rows" in text(browser, "plot-info")
    n = len(names + plugins)
    until(browser, lambda d: text(d, "st-connected") == f"{n} / {n}")
    until(browser, lambda d: int(text(d, "st-rows").replace(",", "") or 0) > 0)  # archived
    shot = tmp_path_factory.mktemp("ui-screenshots") / "ui.png"
    browser.save_screenshot(str(shot))
    print(f"screenshot of the page: {shot}")


@browser_only
def test_a_value_changes_within_two_seconds_of_upstream(browser, public_warden):
    browser.get(public_warden["url"] + "/warden/")
    until(browser, lambda d: rows(d).get("magnet", {}).get("values", {}).get("status") == "ON")
    until(browser, lambda d: text(d, "live") == "live")
    assert not shown(browser, "key-form")  # a public server: no key to read
    for value in ("STANDBY", "OFF"):
        caput(public_warden["pv"](MAGNET), value)
        until(browser, lambda d, v=value: rows(d)["magnet"]["values"]["status"] == v, timeout=2)


@browser_only
def test_the_day_plot_zooms(browser, public_warden):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    browser.get(public_warden["url"] + "/warden/")
    until(browser, lambda d: "yi2-wcm3" in rows(d))
    open_day_plot(browser, "yi2-wcm3")
    plot = browser.find_element(By.ID, "dayplot")

    def shown() -> list[float]:
        """The plot's range: its start and end times."""
        return [float(plot.get_attribute(k)) for k in ("data-start", "data-end")]

    day = shown()
    assert day[1] - day[0] in (82800, 86400, 90000)  # a local day
    # a live refresh of the whole day is still being read when the reader zooms: its answer
    # (held back 2 s here) comes after the zoom's and must not undo the zoom
    browser.execute_script("""
        const fetched = window.fetch;
        window.wholeDay = { asked: 0, answered: 0 };
        window.fetch = async (url, options) => {
          const response = await fetched(url, options);
          if (!url.includes("/series?") || url.includes("start=")) return response;
          window.wholeDay.asked += 1;
          await new Promise((done) => setTimeout(done, 2000));
          const json = response.json.bind(response);
          response.json = async () => {  // counted once the page has used the answer
            const data = await json();
            setTimeout(() => { window.wholeDay.answered += 1; });
            return data;
          };
          return response;
        };
        loadDetail();""")
    # drag over the last hour or so, up to a little past now, in plot pixels (see app.js: a
    # drag into the margins reaches the day's start or end); kept on the plot at any time of day
    left, right, width = 70, 10, plot.size["width"]
    now = left + (time.time() - day[0]) / (day[1] - day[0]) * (width - left - right)
    right_px = min(int(now) + 20, width - 2)
    left_px = max(right_px - 60, 2)
    ActionChains(browser).move_to_element_with_offset(plot, right_px - width // 2, 0) \
        .click_and_hold().move_by_offset(left_px - right_px, 0).release().perform()

    def zoomed(d) -> bool:
        start, end = shown()
        return end - start < 7200

    until(browser, zoomed)
    until(browser, lambda d: d.execute_script(
        "return window.wholeDay.asked > 0 && window.wholeDay.answered === window.wholeDay.asked"))
    start, end = shown()
    assert day[0] <= start < time.time() < end <= day[1] and end - start < 7200
    until(browser, lambda d: int(plot.get_attribute("data-points")) > 0)
    browser.find_element(By.ID, "reset-zoom").click()
    until(browser, lambda d: shown() == day)


@browser_only
def test_plugins_switch_with_the_key_only(browser, public_warden):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.expected_conditions import alert_is_present

    browser.get(public_warden["url"] + "/warden/")

    def lifetime(d) -> str:
        return d.execute_script("""
            const row = [...document.querySelectorAll("#plugins tbody tr")]
              .find((r) => r.cells[0].textContent === "lifetime");
            return row ? row.cells[1].textContent : "";""")

    def click(d) -> bool:
        d.find_element(By.XPATH, "//table[@id='plugins']//tr[td[1]='lifetime']//button").click()
        return True

    until(browser, lambda d: lifetime(d) in ("enabled", "running"))
    until(browser, click)
    alert = until(browser, alert_is_present())  # the page asks for the key
    alert.send_keys("notthekey")
    alert.accept()
    until(browser, lambda d: "refused" in text(d, "plugin-message"))
    assert lifetime(browser) in ("enabled", "running")
    until(browser, click)
    alert = until(browser, alert_is_present())
    alert.send_keys(KEY)
    alert.accept()
    until(browser, lambda d: lifetime(d) == "stopped")


@browser_only
def test_a_dead_ioc_shows_as_disconnected(browser, public_warden):
    browser.get(public_warden["url"] + "/warden/")
    until(browser, lambda d: rows(d).get("yi2-wcm3", {}).get("state") == "connected")
    public_warden["ioc"].kill()
    upstream = {"yi2-wcm3", "ring-yellow", "magnet"}  # (not the plugin's outputs)
    until(browser, lambda d: all(rows(d)[n]["state"] == "disconnected" for n in upstream),
          timeout=30)
    until(browser, lambda d: set(text(d, "st-disconnected").split(", ")) == upstream)
    assert text(browser, "st-connected") == f"{len(rows(browser)) - 3} / {len(rows(browser))}"


# -- the page's routes over HTTP ---------------------------------------------------------------
def apikey(key: str) -> dict:
    return {"Authorization": f"Apikey {key}"}


def test_root_redirects_to_the_page_and_tiled_keeps_its_own(warden_server):
    url = warden_server["url"]
    r = httpx.get(url + "/", follow_redirects=True)
    assert r.status_code == 200 and str(r.url).endswith("/warden/")
    assert "Beamline Warden" in r.text
    assert httpx.get(url + "/warden/static/app.js").status_code == 200
    assert httpx.get(url + "/ui/").status_code == 200  # Tiled's browser


def test_reads_need_the_key_and_a_stream_a_fresh_token(warden_server):
    api = warden_server["url"] + "/api/v1/warden/ui"
    assert httpx.get(f"{api}/overview").status_code == 401
    assert httpx.get(f"{api}/overview", headers=apikey("wrong")).status_code == 401
    assert httpx.post(f"{api}/token").status_code == 401
    assert httpx.get(f"{api}/events").status_code == 401
    assert httpx.get(f"{api}/events?token=made-up").status_code == 401
    overview = httpx.get(f"{api}/overview", headers=apikey(API_KEY)).json()
    config = warden_server["config"]
    assert overview["objects"] == [o["name"] for o in config["objects"] + config["plugins"]]
    token = httpx.post(f"{api}/token", headers=apikey(API_KEY)).json()["token"]
    with httpx.stream("GET", f"{api}/events?token={token}") as r:
        assert r.status_code == 200
        first = next(line for line in r.iter_lines() if line.startswith("data: "))
    assert '"yi2-wcm3"' in first
    assert httpx.get(f"{api}/events?token={token}").status_code == 401  # used


def test_series_and_exports_answer_bad_input_with_4xx(warden_server):
    api = warden_server["url"] + "/api/v1/warden/ui"
    h = apikey(API_KEY)
    for query, status in [("object=nope", 404), ("object=yi2-wcm3&day=2026-02-30", 400),
                          ("object=yi2-wcm3&bins=0", 400), ("object=yi2-wcm3&bins=x", 400),
                          ("object=yi2-wcm3&start=10&end=5", 400),
                          ("object=yi2-wcm3&start=nan", 400)]:
        r = httpx.get(f"{api}/series?{query}", headers=h)
        assert r.status_code == status, (query, r.text)
        assert r.json()["detail"]
    for query in ("object=yi2-wcm3&day=x&format=csv", "object=yi2-wcm3&day=2001-11-06&format=xls"):
        assert httpx.get(f"{api}/export?{query}", headers=h).status_code == 400


def test_exports_are_the_day_as_archived(warden_server):
    from catalog.ascii import export_day
    from catalog.query import Archive

    url, api = warden_server["url"], warden_server["url"] + "/api/v1/warden/ui"
    h = apikey(API_KEY)
    day = httpx.get(f"{api}/overview", headers=h).json()["today"]
    archive = Archive.from_uri(url, api_key=API_KEY)
    r = httpx.get(f"{api}/export?object=yi2-dvm&day={day}&format=ascii", headers=h)
    assert r.status_code == 200
    assert f'filename="yi2-dvm.{day}.dat"' in r.headers["content-disposition"]
    expected = export_day(archive, day, object="yi2-dvm")
    assert r.text[:len(expected) // 2] == expected[:len(expected) // 2]  # (the day grows)
    csv = httpx.get(f"{api}/export?object=yi2-dvm&day={day}&format=csv", headers=h).text
    assert csv.splitlines()[0] == "time,dvmBeam" and len(csv.splitlines()) > 2
    series = httpx.get(f"{api}/series?object=yi2-dvm&day={day}&bins=3", headers=h).json()
    dvm = series["attributes"]["dvmBeam"]
    assert sum(1 for _ in dvm["t"]) <= 3 and series["rows"] > 3
    assert min(dvm["min"]) <= min(dvm["mean"]) <= max(dvm["mean"]) <= max(dvm["max"])


# -- the reduction -----------------------------------------------------------------------------
def test_bins_agree_with_pandas():
    rng = np.random.default_rng(1)
    t = np.sort(rng.uniform(0, 1000, 5000))
    v = rng.normal(size=5000)
    v[::97] = np.nan
    got = reduce_bins(t, v, 0.0, 1000.0, 50)
    df = pd.DataFrame({"bin": (t // 20).astype(int), "v": v}).dropna().groupby("bin")["v"]
    assert np.allclose(got["mean"], df.mean()) and np.allclose(got["min"], df.min())
    assert np.allclose(got["max"], df.max())
    assert np.allclose(got["t"], df.mean().index * 20 + 10)
    few = reduce_bins(t[:10], v[:10], 0.0, 1000.0, 50)  # (v[0] is NaN)
    assert few["t"] == t[1:10].tolist() and few["v"] == v[1:10].tolist()


def test_a_server_with_a_page_open_stops():
    """An event stream never ends on its own: stopping the server ends it, and the server."""
    import threading

    from tiled.adapters.mapping import MapAdapter

    from catalog.latest import LatestStore
    from catalog.server import TiledServer, warden_app
    from catalog.ui import mount_ui

    store = LatestStore(["yi2-wcm3"])
    app = warden_app(MapAdapter({}), store, "America/New_York", KEY, public=True)
    mount_ui(app, store, "America/New_York", KEY, public=True)
    server = TiledServer(app)
    url = server.start()
    opened, ended = threading.Event(), threading.Event()

    def listen() -> None:
        try:
            with httpx.stream("GET", f"{url}/api/v1/warden/ui/events", timeout=60) as r:
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        opened.set()
        except httpx.HTTPError:
            pass
        ended.set()

    threading.Thread(target=listen, daemon=True).start()
    assert opened.wait(30)
    server.stop()
    assert not server._thread.is_alive()  # (stop waits 10 s for it)
    assert ended.wait(10)


def test_the_feed_sends_what_changed_and_tokens_open_once():
    import asyncio

    from catalog.ui.feed import LatestFeed, StreamTokens

    class Store:
        objects = ["a", "b"]
        values = {"a": 1, "b": 2}

        def get(self, name):
            return {"object": name, "value": self.values[name]}

    async def two_events(feed, change):
        stream, seen = feed.events(), []
        seen.append(await anext(stream))
        change()
        seen.append(await anext(stream))
        await stream.aclose()
        return seen

    store = Store()
    first, second = asyncio.run(two_events(LatestFeed(store, interval=0.01),
                                           lambda: store.values.update(b=3)))
    assert '"a"' in first and '"b"' in first
    assert '"a"' not in second and '"b":{"object":"b","value":3}' in second
    tokens = StreamTokens()
    token = tokens.issue()
    assert tokens.redeem(token) and not tokens.redeem(token) and not tokens.redeem("made-up")
    expired = StreamTokens(ttl=0)
    assert not expired.redeem(expired.issue())

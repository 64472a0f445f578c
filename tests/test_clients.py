"""The clients against a real service: the IPython profile, the notebooks, the day plots.

One module-scoped service runs the ``sim`` source on a clock 60 times faster than real time,
from 23:58 on 6 Nov 2001 to 00:08 on 7 Nov (ten real seconds): two archive days, a new fill
at 00:06:40, and ``yi2-wcm3`` disconnected from 00:01 to 00:03. Its Tiled server stays up
for the IPython session, the notebooks and the plots.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import API_KEY, ROOT

from catalog.plot import PlotError, plot_day, render_day_png
from catalog.query import UnknownObjectError
from plans.clock import Clock
from warden.config import load_config
from warden.service import WardenService
from warden_devices.machine import RhicMachine

ZONE = ZoneInfo("America/New_York")
START = dt.datetime(2001, 11, 6, 23, 58, tzinfo=ZONE)
RATE = 60.0  # clock seconds per real second
RUN = 10.0  # real seconds: ten minutes of clock time
OFFLINE = ("yi2-wcm3", dt.datetime(2001, 11, 7, 0, 1, tzinfo=ZONE),
           dt.datetime(2001, 11, 7, 0, 3, tzinfo=ZONE))
NEW_FILL = dt.datetime(2001, 11, 7, 0, 6, 40, tzinfo=ZONE)  # fill 34001 starts
DAY1, DAY2 = "2001-11-06", "2001-11-07"


def clients_config(tmp: Path) -> dict:
    return {
        "archive": f"sqlite:///{tmp / 'archive.db'}",
        "timezone": ZONE.key,
        "flush_interval": 10,  # clock seconds: a sixth of a real second
        "objects": [
            {"name": "yi2-wcm3", "type": "WcmControl", "source": "sim", "mode": "monitor"},
            {"name": "bo2-wcm3", "type": "WcmControl", "source": "sim", "mode": "monitor"},
            {"name": "ring-yellow", "type": "ringSpec", "source": "sim", "mode": "scan",
             "period": 20, "offset": 1},
        ],
    }


def set_connected(device, connected: bool) -> None:
    """Make a simulated device's signals (dis)connected, as a lost IOC would."""
    for sig in device.component_names:
        signal = getattr(device, sig)
        signal._metadata["connected"] = connected
        signal._run_subs(sub_type=signal.SUB_META, **signal._metadata)


def take_offline(service: WardenService, clock: Clock) -> None:
    """Disconnect one object from OFFLINE[1] to OFFLINE[2] (clock time), withholding updates."""
    name, t0, t1 = OFFLINE
    device = next(d for d in service.devices if d.name == name)
    withheld = {pv: s for pv, s in service.sim._signals.items() if pv.startswith(f"{name}:")}
    while clock.time() < t0.timestamp():
        time.sleep(0.01)
    for pv in withheld:
        del service.sim._signals[pv]
    set_connected(device, False)
    while clock.time() < t1.timestamp():
        time.sleep(0.01)
    set_connected(device, True)
    service.sim._signals.update(withheld)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The service run across midnight, then kept serving; yields url, archive, paths."""
    tmp = tmp_path_factory.mktemp("clients")
    config_path = tmp / "warden.yaml"
    config_path.write_text(yaml.safe_dump(clients_config(tmp)))
    clock = Clock(ZONE, rate=RATE)
    service = WardenService(load_config(config_path), clock=clock, api_key=API_KEY, port=0)
    service.sim.update_period = 0.1  # six clock seconds between beam updates
    # fill 34000 from 23:46:40 (the machine numbers fills from its epoch), 34001 from 00:06:40
    service.sim.machine = RhicMachine(epoch=NEW_FILL.timestamp() - 1200, first_fill=34000)
    url = service.start()
    try:
        clock.set(START)
        offline = threading.Thread(target=take_offline, args=(service, clock), daemon=True)
        offline.start()
        threading.Timer(RUN, service.stop).start()
        service.run()
        service.writer.join()
        assert service.writer.errors == 0
        offline.join(timeout=1)
        yield {"url": url, "archive": service.archive(), "config": config_path, "tmp": tmp}
    finally:
        service.close()


def client_env(served, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "WARDEN_SERVER": served["url"],
        "WARDEN_API_KEY": API_KEY,
        "WARDEN_CONFIG": str(served["config"]),
        "IPYTHONDIR": str(served["tmp"] / "ipython"),
        **extra,
    }


def test_the_service_made_two_days_a_fill_change_and_a_disconnect(served):
    archive = served["archive"]
    assert archive.days() == [DAY1, DAY2]
    assert len(archive.day("yi2-wcm3", DAY1)) >= 5 and len(archive.day("yi2-wcm3", DAY2)) >= 20
    assert archive.day("ring-yellow", DAY2)["fillNumber"].unique().tolist() == [34000, 34001]
    log = archive.connections("yi2-wcm3", DAY2)
    assert log["connected"].tolist()[-2:] == [False, True]


# -- the IPython profile and the notebooks ------------------------------------------------------
IPYTHON_CODE = """
import json, threading
df = day("yi2-wcm3", "2001-11-07")
now = latest("yi2-wcm3")
names = []
RE.subscribe(lambda name, doc: names.append(name))
sim.start()
stop = threading.Event()
threading.Timer(1.0, stop.set).start()
RE(monitor_plan(stop, flush_interval=0.25))
sim.stop()
fig = plot_day("yi2-wcm3", "2001-11-07", path=PNG)
print("RESULT " + json.dumps({
    "rows": len(df), "last": float(df["wcmBeam"].iloc[-1]), "columns": list(df.columns),
    "latest": now["attributes"]["wcmBeam"]["value"], "connected": now["connected"],
    "objects": objects(), "days": days(), "devices": sorted(devices),
    "device": [yi2_wcm3.name, type(yi2_wcm3).__name__, ring_yellow.name],
    "RE": type(RE).__name__, "runs": type(runs).__name__,
    "documents": sorted(set(names)), "axes": len(fig.axes),
}))
"""


def run_ipython(served, png: Path) -> subprocess.CompletedProcess:
    """``ipython --profile-dir=<a copy of profile_collection> -c IPYTHON_CODE``."""
    profile = served["tmp"] / "profile_collection"  # a copy: IPython writes into its profile
    shutil.copytree(ROOT / "profile_collection", profile,
                    ignore=shutil.ignore_patterns("history.sqlite*", "log", "pid", "security"))
    code = f"PNG = {str(png)!r}\n" + IPYTHON_CODE
    return subprocess.run(
        [sys.executable, "-m", "IPython", f"--profile-dir={profile}", "--no-banner",
         "--HistoryManager.enabled=False", "-c", code],
        env=client_env(served, MPLBACKEND="Agg"), capture_output=True, text=True, timeout=120,
    )


def run_notebook(name: str, env: dict[str, str]):
    """Execute a notebook top to bottom in a fresh kernel with ``env``; return it."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    client = NotebookClient(nb, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT)}})
    client.execute(env=env)  # passed on to the kernel manager's start_kernel
    return nb


@pytest.fixture(scope="module")
def sessions(served):
    """The IPython session and both notebooks, run at once (they only read the archive).

    Each test takes its own result (``.result()`` re-raises a session's failure).
    """
    png = served["tmp"] / "ipython.png"
    with ThreadPoolExecutor(3) as pool:
        futures = {
            "ipython": pool.submit(run_ipython, served, png),
            "query_by_day": pool.submit(run_notebook, "query_by_day.ipynb", client_env(served)),
            "fill_report": pool.submit(run_notebook, "fill_report.ipynb",
                                       client_env(served, WARDEN_DAY=DAY2)),
        }
        wait(futures.values())
    return {"png": png, **futures}


def test_ipython_profile_gives_devices_archive_helpers_and_the_plan(served, sessions):
    out, png = sessions["ipython"].result(), sessions["png"]
    text = out.stdout + out.stderr
    lines = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
    assert lines and "Traceback" not in text, text
    got = json.loads(lines[-1].removeprefix("RESULT "))

    archive = served["archive"]
    df = archive.day("yi2-wcm3", DAY2)
    assert got["rows"] == len(df) and got["last"] == pytest.approx(df["wcmBeam"].iloc[-1])
    assert got["columns"] == ["time", "wcmBeam", "bunchIntensity"]
    assert got["latest"] == pytest.approx(archive.latest("yi2-wcm3")["attributes"]["wcmBeam"]
                                          ["value"])
    assert got["connected"] is True
    assert got["objects"] == ["yi2-wcm3", "bo2-wcm3", "ring-yellow"]
    assert got["devices"] == sorted(got["objects"])
    assert got["days"] == [DAY1, DAY2]
    assert got["device"] == ["yi2-wcm3", "FakeWcmControl", "ring-yellow"]
    assert (got["RE"], got["runs"]) == ("RunEngine", "CatalogOfBlueskyRuns")
    assert {"start", "descriptor", "event_page", "stop"} <= set(got["documents"])
    assert got["axes"] == 1
    assert png_size(png) == (1000, 500)  # the profile's default 10 x 5 in, at 100 dpi
    assert "warden profile: 3 devices" in out.stdout


# -- the notebooks ------------------------------------------------------------------------------

def stdout_of(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("name") == "stdout")


def images_of(cell) -> list[bytes]:
    return [base64.b64decode(o["data"]["image/png"]) for o in cell.get("outputs", [])
            if "image/png" in o.get("data", {})]


def test_committed_notebooks_have_no_outputs():
    import nbformat

    for name in ("query_by_day.ipynb", "fill_report.ipynb"):
        nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, name


def test_query_by_day_notebook(served, sessions):
    nb = sessions["query_by_day"].result()
    code = [c for c in nb.cells if c.cell_type == "code"]
    text = "".join(stdout_of(c) for c in code)
    assert f"days: {DAY1} {DAY2}" in text
    assert "objects: yi2-wcm3 bo2-wcm3 ring-yellow" in text
    rows = int(re.search(r"^rows: (\d+)$", text, re.M).group(1))
    assert rows == len(served["archive"].day("yi2-wcm3", DAY2))
    currents = next(c for c in code if "both rings" in c.source or "bo2-wcm3" in c.source)
    assert len(images_of(currents)) == 1
    heat = next(c for c in code if "pcolormesh" in c.source)
    assert f"bunch intensity array: ({rows}, 120)" in stdout_of(heat)
    assert len(images_of(heat)) == 1 and images_of(heat)[0].startswith(b"\x89PNG")
    compare = next(c for c in code if "compared days" in c.source)
    assert f"compared days: {DAY1} {DAY2}" in stdout_of(compare)
    assert len(images_of(compare)) == 1


def test_fill_report_notebook(served, sessions):
    nb = sessions["fill_report"].result()
    text = "".join(stdout_of(c) for c in nb.cells if c.cell_type == "code")
    assert f"day: {DAY2}" in text
    assert "fills: 2" in text
    expected = [34000, 34001]
    table = text[text.index(" fill "):].splitlines()
    assert table[0].split() == ["fill", "start", "end", "duration", "peak", "integrated",
                                "readings"]
    rows = [line.split() for line in table[1:3]]
    assert [int(r[0]) for r in rows] == expected
    wcm = served["archive"].day("yi2-wcm3", DAY2)
    assert max(float(r[4]) for r in rows) == pytest.approx(wcm["wcmBeam"].max(), abs=1e-3)
    assert all(float(r[5]) > 0 for r in rows)
    assert sum(int(r[6]) for r in rows) == len(wcm)
    assert len(images_of(nb.cells[-1])) == 1


# -- plots --------------------------------------------------------------------------------------
def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (and check the signature)."""
    head = Path(path).read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", head
    return struct.unpack(">II", head[16:24])


def test_render_day_png_writes_a_png_of_the_size_asked(served, tmp_path):
    path = render_day_png(served["archive"], "yi2-wcm3", DAY2, None, tmp_path / "wcm.png",
                          900, 500)
    assert path == tmp_path / "wcm.png"
    assert png_size(path) == (900, 500)
    from PIL import Image

    with Image.open(path) as image:
        image.verify()
    path = render_day_png(served["archive"], "ring-yellow", DAY2, ["beamEnergy", "fillNumber"],
                          tmp_path / "ring.png", 640, 1000)
    assert png_size(path) == (640, 1000)


def test_day_plot_has_local_times_units_title_and_a_gap(served):
    archive = served["archive"]
    fig = plot_day(archive, "yi2-wcm3", DAY2)
    ax = fig.axes[0]
    assert "yi2-wcm3" in fig.get_suptitle() and "07 Nov 2001" in fig.get_suptitle()
    assert ax.get_ylabel() == "wcmBeam [10$^{11}$ p]"
    assert ax.get_xlabel() == "local time, America/New_York (EST)"
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()
    ticks = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert ticks and all(t.startswith("00:0") for t in ticks), ticks  # local, not 05:0x UTC
    y = ax.lines[0].get_ydata()
    assert np.isnan(y).sum() == 1  # the line breaks where the object was lost
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["wcmBeam", "disconnected"]
    assert len(ax.patches) == 1
    x0, x1 = (ax.patches[0].get_x(), ax.patches[0].get_x() + ax.patches[0].get_width())
    import matplotlib.dates as mdates

    lost, back = (mdates.num2date(x, tz=ZONE) for x in (x0, x1))
    assert (lost.hour, lost.minute) == (0, 1) and (back.hour, back.minute) == (0, 3)
    # ring-yellow stood still from 23:58: today's first rows carry yesterday's time
    assert archive.day("ring-yellow", DAY2)["time"].iloc[0].date().isoformat() == DAY1
    ring = plot_day(archive, "ring-yellow", DAY2)
    left = mdates.num2date(ring.axes[0].get_xlim()[0], tz=ZONE)
    assert left == dt.datetime(2001, 11, 7, tzinfo=ZONE)


def test_arrays_plot_as_sums_text_and_unknown_attributes_are_clear_errors(served):
    archive = served["archive"]
    fig = plot_day(archive, "yi2-wcm3", DAY2, ["bunchIntensity"])
    line = fig.axes[0].lines[0]
    assert line.get_label() == "Σ bunchIntensity"
    df = archive.day("yi2-wcm3", DAY2)
    sums = pd.Series(line.get_ydata()).dropna().to_numpy()
    np.testing.assert_allclose(sums, df["wcmBeam"], rtol=0.05, atol=0.05)
    fig = plot_day(archive, "ring-yellow", DAY2)
    assert [a.get_ylabel() for a in fig.axes] == ["beamEnergy [GeV]", "fillNumber"]
    with pytest.raises(PlotError, match="ring-yellow.ringState is text"):
        plot_day(archive, "ring-yellow", DAY2, ["ringState"])
    with pytest.raises(PlotError, match="has no attribute 'nope'"):
        plot_day(archive, "yi2-wcm3", DAY2, ["nope"])
    with pytest.raises(UnknownObjectError):
        plot_day(archive, "nope", DAY2)
    with pytest.raises(PlotError, match="width must be"):
        render_day_png(archive, "yi2-wcm3", DAY2, None, "x.png", 10, 500)
    empty = plot_day(archive, "yi2-wcm3", "2001-01-01")
    assert "no readings of yi2-wcm3 on 2001-01-01" in empty.axes[0].texts[0].get_text()


def test_cli_plot_writes_a_png(served, tmp_path, monkeypatch, capsys):
    from warden.cli import main

    try:
        main(["plot", "--help"])
    except SystemExit as exit_:
        if exit_.code != 0:
            pytest.skip("no `warden plot` subcommand yet")
    capsys.readouterr()
    monkeypatch.setenv("WARDEN_API_KEY", API_KEY)
    out = tmp_path / "cli.png"
    code = main(["plot", "yi2-wcm3", DAY2, "wcmBeam", "-o", str(out), "--width", "800",
                 "--height", "400", "--server", served["url"]])
    assert code == 0 and png_size(out) == (800, 400)
    assert main(["plot", "yi2-wcm3", DAY2, "nope", "-o", str(out),
                 "--server", served["url"]]) == 2
    assert "no attribute 'nope'" in capsys.readouterr().err

"""The benchmark harness runs, prints well-formed JSON and loses nothing (speed is not tested).

``python -m benchmarks --quick`` runs every figure at small size as a subprocess; the figures are
the harness's to judge, this only checks their shape and that every offered value was archived.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIGURES = {"ingest", "latest", "day_read", "memory", "storage", "real_ca"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    results = tmp_path_factory.mktemp("bench-results")
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--results-dir", str(results)],
        cwd=ROOT, capture_output=True, text=True, timeout=280,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    figures = [json.loads(line) for line in lines]  # every line is one JSON object
    files = list(results.glob("*.json"))
    return figures, files


@pytest.mark.timeout(300)
def test_quick_run_prints_one_json_object_per_figure(quick_run):
    figures, files = quick_run
    assert all(isinstance(f, dict) and "figure" in f for f in figures)
    assert {f["figure"] for f in figures} == FIGURES
    assert len(files) == 1
    saved = json.loads(files[0].read_text())
    assert saved["quick"] is True
    assert [f["figure"] for f in saved["figures"]] == [f["figure"] for f in figures]
    for f in figures:
        assert isinstance(f.get("targets", {}), dict)


@pytest.mark.timeout(300)
def test_quick_run_loses_nothing(quick_run):
    figures, _ = quick_run
    by_name = {f["figure"]: f for f in figures}
    warden = by_name["ingest"]["warden"]
    assert warden["offered"] > 0
    assert warden["drained"] is True
    assert warden["lost"] == 0 and warden["archived"] == warden["offered"]
    assert by_name["ingest"]["naive"]["archived"] > 0
    assert by_name["ingest"]["ceiling"]["max_per_s"] > 0
    memory = by_name["memory"]
    assert memory["lost"] == 0 and memory["archived"] == memory["offered"]
    assert by_name["storage"]["archived_values"] == memory["archived"]
    assert by_name["storage"]["bytes_per_value"] > 0
    day = by_name["day_read"]
    assert day["rows_read"] == day["rows"] == day["rows_sqlite"]
    latest = by_name["latest"]
    assert latest["all_latest_items"] == latest["objects"]
    ca = by_name["real_ca"]
    assert ca["warden"]["values_in_window"] > 0
    assert ca["ceiling_pyepics"]["values_in_window"] > 0
    assert ca["warden"]["drained"] is True

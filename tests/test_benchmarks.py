"""The benchmark harness runs, prints well-formed JSON and loses nothing (speed is not tested).

``python -m benchmarks --quick`` runs every figure at small size as a subprocess; the figures are
the harness's to judge, this only checks their shape and that every offered value was archived.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
FIGURES = {"ingest", "latest", "day_read", "retrieval", "memory", "storage", "real_ca",
           "shards"}


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
    retrieval = by_name["retrieval"]
    counts = retrieval["counts"]
    assert counts["getdata_json"] == counts["archive_day"] == retrieval["rows"]
    assert counts["mean_60"] == counts["archive_day_bin_60s"] == 1440  # a day of minutes
    assert retrieval["closed_day_parquet"]["rows"] == retrieval["rows"]
    latest = by_name["latest"]
    assert latest["all_latest_items"] == latest["objects"]
    ca = by_name["real_ca"]
    assert ca["warden"]["values_in_window"] > 0
    assert ca["ceiling_pyepics"]["values_in_window"] > 0
    assert ca["warden"]["drained"] is True
    shards = by_name["shards"]
    for side in (shards["single"], shards["sharded"]):  # both across midnight
        assert side["offered"] > 0 and side["drained"] is True
        assert side["lost"] == 0 and side["doubled_rows"] == 0
        assert sum(side["midnight"]["rows_after_by_day"].values()) > 0


def test_freshness_is_timed_to_the_first_publication_at_least_as_new():
    """The harness's matcher, settled now and then, against the rule applied by hand: an
    update is fresh from the first publication of its object's entry after it, whether its
    page is emitted before or after that publication."""
    import random

    from benchmarks.ingest import LatencyProbe

    latest = LatencyProbe(["a", "b", "c"], m=1)
    latest.since = latest.warm_until = 0.0  # count every row, none as warm-up
    for obj in "ab":  # "c" is configured but has no stream
        latest("descriptor", {"uid": f"d-{obj}", "name": obj})
    rng = random.Random(1)
    unpublished = {"a": [], "b": []}  # update times not in a publication yet
    unpaged = {"a": [], "b": []}  # update times not in an emitted page yet
    newest = {}
    expected = []
    for step in range(2000):
        t = 2e9 + step * 0.01  # upstream time (s since 1970)
        last = step == 1999
        for obj in "ab":
            if not last and rng.random() < 0.5:  # an update
                unpublished[obj].append(t)
                unpaged[obj].append(t)
                newest[obj] = t
        at = t + 0.0005  # mid-millisecond: no rounding doubt in the 1 ms bins
        published = [o for o in "ab" if unpublished[o] and (last or rng.random() < 0.4)]
        latest.published({o: {"attributes": {"a0": {"value": 1.0, "timestamp": newest[o]}}}
                          for o in published}, at)
        for obj in published:
            expected += [round((at - ts) * 1000 - 0.5) for ts in unpublished[obj]]
            unpublished[obj] = []
        if last or rng.random() < 0.2:  # a flush: a page of each object's new rows
            for obj in "ab":
                if unpaged[obj]:
                    latest("event_page", {"descriptor": f"d-{obj}",
                                          "timestamps": {"a0": unpaged[obj]}})
                    unpaged[obj] = []
        if step % 97 == 0:
            latest.settle()
    latest.settle()
    counts = latest.fresh.counts
    assert len(expected) > 1000 and int(counts.sum()) == len(expected)
    assert np.repeat(np.arange(len(counts)), counts).tolist() == sorted(expected)


def test_persistence_is_timed_to_the_first_archived_time_at_least_as_new():
    """The harness's persistence matcher against the rule applied by hand: a row is archived
    when the writer first records an archived time of its object at least as new, read from
    the shared file (here a stand-in holding what the writer recorded)."""
    import random

    from benchmarks.ingest import LatencyProbe

    class Recorded:  # SharedLatest.archived: the newest record per object, written after
        def __init__(self):
            self.rows: dict[str, tuple[float, float]] = {}

        def archived(self, after: float):
            return [(o, t, at) for o, (t, at) in self.rows.items() if at > after]

    probe = LatencyProbe(["a", "b"], m=1)
    probe.since = probe.warm_until = 0.0
    probe._shared = shared = Recorded()
    for obj in "ab":
        probe("descriptor", {"uid": f"d-{obj}", "name": obj})
    rng = random.Random(2)
    unarchived = {"a": [], "b": []}
    expected = []
    worst = {}  # the largest lag of the rows of each second
    for step in range(1500):
        t = 2e9 + step * 0.01
        last = step == 1499
        for obj in "ab":
            if not last and rng.random() < 0.5:  # a row, emitted in a page at once
                probe("event_page", {"descriptor": f"d-{obj}", "timestamps": {"a0": [t]}})
                unarchived[obj].append(t)
        at = t + 0.0005
        for obj in "ab":
            if unarchived[obj] and (last or rng.random() < 0.3):  # a batch committed
                shared.rows[obj] = (unarchived[obj][-1], at)
                expected += [round((at - ts) * 1000 - 0.5) for ts in unarchived[obj]]
                for ts in unarchived[obj]:
                    worst[int(ts)] = max(at - ts, worst.get(int(ts), 0.0))
                unarchived[obj] = []
        probe.read_archived()  # (one read per batch: no two records of an object in one)
        if step % 89 == 0:
            probe.settle()
    probe.settle()
    counts = probe.persist.counts
    assert len(expected) > 1000 and int(counts.sum()) == len(expected)
    assert np.repeat(np.arange(len(counts)), counts).tolist() == sorted(expected)
    assert probe.values_written == len(expected)
    assert probe.persist_by_second == pytest.approx(worst)
    assert len(probe.unarchived()) == 0

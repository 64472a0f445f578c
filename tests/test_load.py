"""Load: the service ingests while two clients hammer ``latest`` and ``day`` over loopback.

Runs ``python -m benchmarks load --quick`` (100 objects x 5 attributes at 5,000 values/s) for
``WARDEN_LOAD_SECONDS`` (default 30; the 10-minute run at the ingest benchmark's size is
``python -m benchmarks load``). It checks what must hold whatever the machine: every request
answered, every offered reading archived exactly once, the archive drained afterwards. The
latency figures (p99 under load against idle) are reported, not asserted (a timed test on a
shared 2-core machine would flake); docs/reliability.md gives the measured ones.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SECONDS = float(os.environ.get("WARDEN_LOAD_SECONDS", "30"))


@pytest.mark.timeout(600)
def test_under_load_every_request_is_answered_and_no_reading_is_lost(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks", "load", "--quick", "--load-duration", str(SECONDS),
         "--results-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=580,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]  # a failed request
    (load,) = [json.loads(x) for x in out.stdout.splitlines() if x.startswith("{")]
    assert load["offered"] >= 0.9 * 5_000 * SECONDS  # the driver kept its rate
    assert load["drained"] is True and load["writer_errors"] == 0
    assert load["lost"] == 0 and load["archived"] == load["offered"]
    assert load["latest_load"]["n"] > 100 and load["day_load"]["n"] >= 3
    print(f"\nload: latest p99 {load['latest_idle']['p99_ms']:.1f} ms idle, "
          f"{load['latest_load']['p99_ms']:.1f} ms under load "
          f"({load['latest_p99_load_over_idle']}x); day p99 "
          f"{load['day_p99_load_over_idle']}x; persistence p99 "
          f"{load['persistence_lag']['p99_s']} s")

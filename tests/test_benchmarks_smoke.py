"""The benchmark harness runs end to end on a tiny load (no timings are checked here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_harness_prints_a_table(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    args = ["--messages", "200", "--peer-messages", "50", "--only", "agentcomm"]
    args += ["--rounds", "1", "--idle-seconds", "0.5", "--json", str(out)]
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "agentcomm benchmarks" in proc.stdout
    assert "agentcomm SQLite, concurrent" in proc.stdout
    rows = json.loads(out.read_text())["rows"]
    assert rows and all(r["unit"] != "error" for r in rows), rows
    assert not any(r["key"].startswith(("raw.", "peer.")) for r in rows)


@pytest.mark.slow
def test_pool_rows_run_on_a_tiny_configuration(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    args = ["--only", "pools", "--pool-records", "300", "--pool-ops", "20"]
    args += ["--pool-sends", "100", "--rounds", "1", "--json", str(out)]
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    rows = {r["key"]: r for r in json.loads(out.read_text())["rows"]}
    assert all(r["unit"] != "error" for r in rows.values()), rows
    for kind in ("send", "join", "snapshot", "wait_for"):
        assert rows[f"pools.cost.{kind}.small"]["unit"] == "µs"
        big = rows[f"pools.cost.{kind}.big"]
        assert big["ratios"][0]["value"] is not None and big["messages"] == 20
    assert rows["pools.seed.send"]["ratios"][0]["value"] is not None
    assert rows["pools.throughput.sqlite"]["unit"] == "msg/s"
    assert rows["pools.throughput.redis"]["unit"] in ("msg/s", "skipped")

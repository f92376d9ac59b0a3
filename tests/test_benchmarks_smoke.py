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

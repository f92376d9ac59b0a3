"""The docs site builds with `mkdocs build --strict`: every page in the nav, no broken link or
anchor, every docstring of the API reference rendered without a warning."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.docs

ROOT = Path(__file__).resolve().parent.parent


def test_docs_site_builds_strict(tmp_path: Path) -> None:
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-d", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    reference = (site / "reference" / "agentcomm" / "index.html").read_text()
    for name in ("agentcomm.connect", "agentcomm.Hub.agents", "agentcomm.Message.ack"):
        assert f'id="{name}"' in reference, name
    assert (site / "guides" / "mailboxes" / "index.html").is_file()
    assert (site / "dashboard" / "index.html").is_file()

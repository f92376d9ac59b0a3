"""The `agentcomm` console script: runs the CLI, or says how to install it."""

from __future__ import annotations

import sys


def main() -> None:
    """Run the `agentcomm` command; without the `cli` extra, explain how to get it."""
    try:
        from ._cli import main as cli_main
    except ImportError as exc:  # typer or rich missing: the CLI is an optional extra
        missing = getattr(exc, "name", None) or "typer/rich"
        sys.stderr.write(
            f"The agentcomm command needs {missing!r}, which is not installed: "
            "pip install 'agentcomm[cli]'.\n"
        )
        raise SystemExit(1) from None
    cli_main()

"""Command line: run the registered benchmarks and print one table (optionally JSON too)."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import platform
import sqlite3
import sys
import time
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from . import core
from .core import Config, Row

# Each module registers its benchmarks on import; this order is the order of the table.
MODULES = (
    "raw",
    "mailbox",
    "backlog",
    "latency",
    "peers",
    "shared_memory",
    "topics",
    "references",
    "sandbox",
    "on_redis",
    "pools",
    "server",
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="agentcomm benchmarks: one table, baselines and peers measured in one run.",
    )
    p.add_argument(
        "--only",
        metavar="SUBSTRING",
        action="append",
        default=[],
        help="run only benchmarks whose name contains this (repeatable)",
    )
    p.add_argument(
        "--messages",
        type=int,
        default=20_000,
        metavar="N",
        help="messages per raw and agentcomm benchmark (default: 20,000)",
    )
    p.add_argument(
        "--peer-messages",
        type=int,
        default=None,
        metavar="N",
        help="messages per peer benchmark (default: --messages; peers do ~500/s)",
    )
    p.add_argument(
        "--latency-messages",
        type=int,
        default=1_000,
        metavar="N",
        help="messages timed across processes (default: 1,000, at most --messages)",
    )
    p.add_argument(
        "--idle-seconds",
        type=float,
        default=3.0,
        metavar="S",
        help="how long the idle consumer's CPU use is measured (default: 3)",
    )
    p.add_argument(
        "--kv-ops",
        type=int,
        default=10_000,
        metavar="N",
        help="operations per shared-memory row (default: 10,000)",
    )
    p.add_argument(
        "--topic-messages",
        type=int,
        default=100_000,
        metavar="N",
        help="publishes per topics fan-out and SQLite row (default: 100,000)",
    )
    p.add_argument(
        "--pool-records",
        type=int,
        default=100_000,
        metavar="N",
        help="records in the big pool of the pool op-cost and seed-reference rows "
        "(default: 100,000)",
    )
    p.add_argument(
        "--pool-ops",
        type=int,
        default=400,
        metavar="N",
        help="ops timed per kind and pool size in the pool op-cost rows (default: 400)",
    )
    p.add_argument(
        "--pool-sends",
        type=int,
        default=2_000,
        metavar="N",
        help="sends per pool throughput row (default: 2,000)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=3,
        metavar="R",
        help="rounds of the fast benchmarks; each row is the median (default: 3)",
    )
    p.add_argument(
        "--tmp",
        metavar="DIR",
        default=None,
        help="where the fresh database directories are made (default: system temp)",
    )
    p.add_argument("--json", metavar="PATH", default=None, help="also write the results here")
    p.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    p.add_argument(
        "--check", action="store_true", help="exit with status 1 if a row misses its target"
    )
    args = p.parse_args(argv)
    counts = ("messages", "latency_messages", "kv_ops", "topic_messages", "pool_ops")
    for name in (*counts, "pool_sends", "rounds"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.pool_records < 12:
        p.error("--pool-records must be >= 12 (a pool's first records: opened + 11 joins)")
    if args.peer_messages is not None and args.peer_messages < 10:
        p.error("--peer-messages must be >= 10")
    return args  # fmt: skip


def _figure(value: float, unit: str) -> str:
    if unit == "error":
        return "[red]ERROR[/red]"
    if unit == "skipped":
        return "[yellow]skipped[/yellow]"
    if unit in ("msg/s", "ops/s", "deliveries/s"):
        return f"{value:,.0f} {unit}"
    if unit == "µs":
        return f"{value:.2f} µs"
    if unit == "ms":
        return f"{value:.3f} ms"
    if unit == "%":
        return f"{value:.2f} %"
    if unit == "x":
        return f"{value:.2f}x"
    if unit == "MB/s":
        return f"{value:,.0f} MB/s"
    return f"{value:g} {unit}"


def _targets(row: Row) -> str:
    lines = []
    if row.at_least is not None:
        lines.append(f">= {_figure(row.at_least, row.unit)}")
    if row.at_most is not None:
        lines.append(f"<= {_figure(row.at_most, row.unit)}")
    lines += [f">= {r.at_least:g}x {r.label}" for r in row.ratios if r.at_least is not None]
    lines += [f"<= {r.at_most:g}x {r.label}" for r in row.ratios if r.at_most is not None]
    return "\n".join(lines) or "-"


def _ratios(row: Row) -> str:
    lines = []
    for r in row.ratios:
        got = row.computed.get(r.label)
        lines.append(f"{got:.2f}x {r.label}" if got is not None else f"n/a ({r.label} not run)")
    return "\n".join(lines) or "-"


def _status(row: Row) -> str:
    if row.unit == "error":
        return "[red]ERROR[/red]"
    if row.unit == "skipped":
        return "[yellow]skip[/yellow]"
    if not row.has_target:
        return "[dim]info[/dim]"
    passed = row.passed
    if passed is None:
        return "[yellow]n/a[/yellow]"
    return "[green]PASS[/green]" if passed else "[red]FAIL[/red]"


def _short(value: float, unit: str) -> str:
    if unit in ("msg/s", "ops/s", "deliveries/s"):
        return f"{value / 1000:,.1f}k" if value >= 1000 else f"{value:,.0f}"
    return _figure(value, unit)


def _note(row: Row) -> str:
    if row.rounds > 1 and row.unit != "skipped":
        lo, hi = min(row.samples), max(row.samples)
        spread = f"{row.rounds} runs, {_short(lo, row.unit)} .. {_short(hi, row.unit)}"
        return f"{row.note}; {spread}" if row.note else spread
    return row.note


def environment() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "cores": core.cpu_count(),
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }


def render(rows: list[Row], env: dict[str, Any]) -> Table:
    table = Table(
        title="agentcomm benchmarks",
        caption=(
            f"Python {env['python']}, SQLite {env['sqlite']}, {env['cores']} cores, "
            f"{env['date']}. 200-byte JSON payloads; each SQLite row on a fresh file."
        ),
        show_lines=True,
    )
    table.add_column("Benchmark", max_width=36)
    table.add_column("Msgs", justify="right")
    table.add_column("Result", justify="right")
    table.add_column("Target")
    table.add_column("Ratio", max_width=30)
    table.add_column("Status", justify="center")
    table.add_column("Notes", style="dim", ratio=1)
    for row in rows:
        msgs = f"{row.messages:,}" if row.messages is not None else "-"
        table.add_row(
            row.name, msgs, _figure(row.value, row.unit), _targets(row), _ratios(row),
            _status(row), _note(row),
        )  # fmt: skip
    return table


def to_json(rows: list[Row], env: dict[str, Any], config: Config) -> dict[str, Any]:
    return {
        "environment": env,
        "config": dataclasses.asdict(config),
        "rows": [
            {
                "key": r.key,
                "name": r.name,
                "value": r.value,
                "unit": r.unit,
                "messages": r.messages,
                "rounds": r.rounds,
                "samples": r.samples,
                "at_least": r.at_least,
                "at_most": r.at_most,
                "ratios": [
                    {"baseline": x.baseline, "label": x.label, "at_least": x.at_least,
                     "at_most": x.at_most, "value": r.computed.get(x.label)}
                    for x in r.ratios
                ],
                "passed": r.passed if r.has_target else None,
                "note": r.note,
            }
            for r in rows
        ],
    }  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    for module in MODULES:
        importlib.import_module(f"{__package__}.{module}")
    benches = [
        b for b in core.registry
        if not args.only or any(s.lower() in b.name.lower() for s in args.only)
    ]  # fmt: skip
    if args.list:
        for b in core.registry:
            print(b.name)
        return 0
    if not benches:
        print(f"No benchmark matches {args.only}; see --list.", file=sys.stderr)
        return 2
    config = Config(
        messages=args.messages,
        peer_messages=args.peer_messages or args.messages,
        latency_messages=args.latency_messages,
        idle_seconds=args.idle_seconds,
        rounds=args.rounds,
        tmp_root=args.tmp,
        kv_ops=args.kv_ops,
        topic_messages=args.topic_messages,
        pool_records=args.pool_records,
        pool_ops=args.pool_ops,
        pool_sends=args.pool_sends,
    )
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    err = Console(stderr=True)
    started = time.perf_counter()
    rows = core.run(benches, config, lambda line: err.print(f"[dim]{line}[/dim]"))
    env = environment()
    env["seconds"] = round(time.perf_counter() - started, 1)
    console.print(render(rows, env))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(to_json(rows, env, config), f, indent=2)
    failed = [r.name for r in rows if r.passed is False or r.unit == "error"]
    return 1 if args.check and failed else 0


if __name__ == "__main__":
    sys.exit(main())

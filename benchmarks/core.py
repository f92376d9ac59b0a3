"""The harness: a registry of benchmark functions, the rows they return, and shared helpers.

A benchmark is a function `(Config) -> list[Row]` registered with `@benchmark(name)`. The runner
calls every selected benchmark once per round (interleaved, so machine noise hits baselines and
contenders alike), takes the median of each row over its rounds, then computes ratios between
rows and checks targets.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import msgspec

__all__ = [
    "PAYLOAD_BYTES",
    "Bench",
    "Config",
    "Ratio",
    "Row",
    "benchmark",
    "cpu_count",
    "drain_ratio",
    "fresh_dir",
    "payload",
    "payloads",
    "registry",
    "run",
]

PAYLOAD_BYTES = 200

_json = msgspec.json.Encoder()


@dataclass(frozen=True)
class Config:
    """What the command line asked for."""

    messages: int = 20_000
    peer_messages: int = 20_000
    latency_messages: int = 1_000
    idle_seconds: float = 3.0
    rounds: int = 3
    tmp_root: str | None = None
    kv_ops: int = 10_000
    topic_messages: int = 100_000
    pool_records: int = 100_000
    pool_ops: int = 400
    pool_sends: int = 2_000


@dataclass(frozen=True)
class Ratio:
    """`row.value / <baseline row>.value`, optionally checked against bounds."""

    baseline: str  # the key of another row
    label: str  # how the table names the baseline
    at_least: float | None = None
    at_most: float | None = None


@dataclass
class Row:
    """One line of the table."""

    key: str  # stable identifier, used by ratios and in the JSON output
    name: str
    value: float
    unit: str  # "msg/s", "ms", "%", "x"
    messages: int | None = None
    at_least: float | None = None
    at_most: float | None = None
    ratios: list[Ratio] = field(default_factory=list)
    note: str = ""
    rounds: int = 1
    samples: list[float] = field(default_factory=list)
    computed: dict[str, float | None] = field(default_factory=dict)  # ratio label -> value

    def checks(self) -> list[bool]:
        """The outcome of every target that could be evaluated."""
        out: list[bool] = []
        if self.at_least is not None:
            out.append(self.value >= self.at_least)
        if self.at_most is not None:
            out.append(self.value <= self.at_most)
        for r in self.ratios:
            got = self.computed.get(r.label)
            if r.at_least is not None and got is not None:
                out.append(got >= r.at_least)
            if r.at_most is not None and got is not None:
                out.append(got <= r.at_most)
        return out

    @property
    def has_target(self) -> bool:
        return (
            self.at_least is not None
            or self.at_most is not None
            or any(r.at_least is not None or r.at_most is not None for r in self.ratios)
        )

    @property
    def passed(self) -> bool | None:
        """True or False against the targets; None when the row has none to check."""
        checks = self.checks()
        return all(checks) if checks else None


BenchFn = Callable[[Config], list[Row]]


@dataclass(frozen=True)
class Bench:
    """A registered benchmark."""

    name: str
    fn: BenchFn
    repeat: bool  # False: run once whatever --rounds says (the slow peers)


registry: list[Bench] = []


def benchmark(name: str, *, repeat: bool = True) -> Callable[[BenchFn], BenchFn]:
    """Register `fn` under `name` (what `--only` matches); order of registration = run order."""

    def register(fn: BenchFn) -> BenchFn:
        registry.append(Bench(name, fn, repeat))
        return fn

    return register


def run(benches: list[Bench], config: Config, progress: Callable[[str], None]) -> list[Row]:
    """Run `benches` for `config.rounds` interleaved rounds; one median row per key."""
    samples: dict[str, list[Row]] = {}
    order: list[str] = []
    for round_no in range(config.rounds):
        for bench in benches:
            if round_no > 0 and not bench.repeat:
                continue
            progress(f"round {round_no + 1}/{config.rounds}: {bench.name}")
            started = time.perf_counter()
            try:
                got = bench.fn(config)
            except Exception as exc:  # one broken benchmark must not cost the whole table
                progress(f"  FAILED: {traceback.format_exc()}")
                got = [Row(f"error.{bench.name}", bench.name, math.nan, "error", note=repr(exc))]
            for row in got:
                if row.key not in samples:
                    samples[row.key] = []
                    order.append(row.key)
                samples[row.key].append(row)
            progress(f"  done in {time.perf_counter() - started:.1f} s")
    rows = [_median_row(samples[key]) for key in order]
    by_key = {row.key: row for row in rows}
    for row in rows:
        for r in row.ratios:
            base = by_key.get(r.baseline)
            row.computed[r.label] = (
                row.value / base.value if base is not None and base.value else None
            )
    return rows


def _median_row(rows: list[Row]) -> Row:
    values = [r.value for r in rows]
    ranked = sorted(range(len(rows)), key=lambda i: values[i])
    chosen = rows[ranked[(len(rows) - 1) // 2]]  # the lower median, with that run's note
    return replace(chosen, rounds=len(rows), samples=values, computed={})


# --- helpers for benchmarks ---------------------------------------------------------------------


def payload(i: int, **fields: Any) -> dict[str, Any]:
    """A JSON object of exactly PAYLOAD_BYTES bytes when encoded, carrying `i` and `fields`."""
    body: dict[str, Any] = {"i": i, **fields, "pad": ""}
    size = len(_json.encode(body))
    body["pad"] = "x" * (PAYLOAD_BYTES - size)
    return body


def payloads(n: int) -> tuple[list[dict[str, Any]], list[bytes]]:
    """`n` distinct payloads, as objects and as their 200-byte JSON encodings."""
    objs = [payload(i) for i in range(n)]
    encoded = [_json.encode(o) for o in objs]
    assert all(len(e) == PAYLOAD_BYTES for e in encoded)
    return objs, encoded


@contextlib.contextmanager
def fresh_dir(config: Config, label: str) -> Iterator[Path]:
    """A new empty directory for one benchmark's database files, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix=f"agentcomm-bench-{label}-", dir=config.tmp_root) as d:
        yield Path(d)


def drain_ratio(stamps: list[float], start: float) -> tuple[float, float, float]:
    """From per-message completion times of a drain that began at `start`: the rates over the
    first and the last 10% of it, and last / first."""
    n = len(stamps)
    tenth = max(n // 10, 1)
    first = tenth / max(stamps[tenth - 1] - start, 1e-9)
    last_start = stamps[n - tenth - 1] if n > tenth else start
    last = tenth / max(stamps[-1] - last_start, 1e-9)
    return first, last, last / first


def cpu_count() -> int:
    """Cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def peer(module: str) -> Any:
    """Import a peer library (the `bench` extra), or fail its rows with how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise RuntimeError(
            f"{module} is not installed: pip install -e '.[bench]' (make bench does this)."
        ) from exc

"""The benchmark runner: ``python -m benchmarks [NAME ...] [--quick] [--minutes N] [--broker B] [--out F]``.

Owns the registry of benchmarks, the printed table and the JSON results file
(machine info, timestamp, and each benchmark's rows). A benchmark that fails
is reported in both and makes the exit status 1; the others still run.

Every result says which code it measured: ``code_provenance()`` (the git commit's short sha
and whether the work tree was dirty, i.e. ``git status --porcelain`` printed anything) is read
once at the start, goes into the JSON's ``machine`` and heads everything printed on stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import confluent_kafka

from benchmarks import Options, Result, Row
from benchmarks import apps as apps_benchmark
from benchmarks import bus as bus_benchmark
from benchmarks import devices as devices_benchmark
from benchmarks import idle as idle_benchmark
from benchmarks import model_serving as model_serving_benchmark
from benchmarks import node_layer as node_layer_benchmark
from benchmarks import soak as soak_benchmark

Benchmark = Callable[[Options], Result]

REGISTRY: dict[str, Benchmark] = {
    "bus": bus_benchmark.run,
    "node_layer": node_layer_benchmark.run,
    "model_serving": model_serving_benchmark.run,
    "devices": devices_benchmark.run,
    "apps": apps_benchmark.run,
    "idle": idle_benchmark.run,
    "soak": soak_benchmark.run,
}
# Long runs of a whole platform, left out of a plain `python -m benchmarks`: name them.
NOT_BY_DEFAULT = frozenset({"soak"})

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "latest.json"
REPO = Path(__file__).resolve().parent.parent
_HEADER = ("benchmark", "metric", "unit", "platform", "bare", "platform/bare", "n", "note")
_RIGHT_ALIGNED = {"platform", "bare", "platform/bare", "n"}


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def code_provenance() -> dict[str, Any]:
    """The commit the benchmarks run from (short sha) and whether the work tree differs from it."""
    commit = _git("rev-parse", "--short", "HEAD")
    porcelain = _git("status", "--porcelain")
    changed = [line for line in (porcelain or "").splitlines() if line.strip()]
    return {
        "git_commit": commit.strip() if commit else None,
        "git_dirty": None if porcelain is None else bool(changed),
        # What made it dirty (git status --porcelain lines), so a reader can judge whether it matters.
        "git_changed_paths": len(changed),
        "git_changes": changed[:50],
    }


def provenance_line(machine: dict[str, Any]) -> str:
    """``code: commit abc1234, dirty (3 changed paths)``: the header of everything printed."""
    commit = machine.get("git_commit") or "unknown (not a git checkout?)"
    dirty = machine.get("git_dirty")
    if dirty is None:
        state = "dirty: unknown"
    elif dirty:
        state = f"dirty ({machine.get('git_changed_paths')} changed paths, see git_changes in the JSON)"
    else:
        state = "clean"
    return f"code: commit {commit}, {state}"


def machine_info() -> dict[str, Any]:
    return {
        **code_provenance(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "confluent_kafka": confluent_kafka.__version__,
        "librdkafka": confluent_kafka.libversion()[0],
        # Benchmarks share the machine; a busy one explains outliers.
        "load_average": [round(load, 2) for load in os.getloadavg()],
    }


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _cells(benchmark: str, row: Row) -> tuple[str, ...]:
    ratio = row.ratio
    return (
        benchmark,
        row.metric,
        row.unit,
        _number(row.platform),
        _number(row.bare),
        "-" if ratio is None else f"{ratio:.2f}",
        str(row.samples),
        row.note,
    )


def format_table(results: Sequence[Result]) -> str:
    lines = [_HEADER, *(_cells(result.name, row) for result in results for row in result.rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(_HEADER))]
    rendered = []
    for line in lines:
        cells = [
            cell.rjust(width) if name in _RIGHT_ALIGNED else cell.ljust(width)
            for name, cell, width in zip(_HEADER, line, widths, strict=True)
        ]
        rendered.append("  ".join(cells).rstrip())
    rendered.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(rendered)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Run the platform's benchmarks; print a table and write JSON results.",
    )
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=f"benchmarks to run (default all but {', '.join(sorted(NOT_BY_DEFAULT))}: "
        f"{', '.join(name for name in REGISTRY if name not in NOT_BY_DEFAULT)})",
    )
    parser.add_argument("--quick", action="store_true", help="fewer messages: a run of seconds")
    parser.add_argument(
        "--minutes", type=int, default=None, help="soak: minutes to record (default 120; --quick 2)"
    )
    parser.add_argument(
        "--broker",
        choices=("kafka", "tansu"),
        default=None,
        help="broker of the benchmarks that can start either; default: each one's own "
        "(devices: its own; soak: kafka; idle: both, one after the other)",
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"JSON results file (default {DEFAULT_OUT})"
    )
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in REGISTRY]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(REGISTRY)}")
    if args.minutes is not None and args.minutes <= 0:
        parser.error("--minutes must be above 0")
    return args


def _exit_on_sigterm(signum: int, _frame: FrameType | None) -> None:
    # SystemExit unwinds the benchmark's ``finally`` blocks, which stop its broker and threads.
    sys.exit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    options = Options(quick=args.quick, minutes=args.minutes, broker=args.broker)
    names: list[str] = list(dict.fromkeys(args.names)) or [n for n in REGISTRY if n not in NOT_BY_DEFAULT]
    started = datetime.now(UTC)
    results: list[Result] = []
    machine = machine_info()
    header = provenance_line(machine)
    print(f"measuring {header}", file=sys.stderr, flush=True)
    report: dict[str, Any] = {
        "timestamp": started.isoformat(timespec="seconds"),
        "quick": options.quick,
        "options": {"minutes": options.minutes, "broker": options.broker},
        "machine": machine,
        "benchmarks": {},
    }
    failed = False
    for name in names:
        print(f"running {name}{' (quick)' if options.quick else ''} ...", file=sys.stderr, flush=True)
        began = time.perf_counter()
        try:
            result = REGISTRY[name](options)
        except Exception as exc:
            failed = True
            traceback.print_exc()
            report["benchmarks"][name] = {
                "name": name,
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(),
            }
            continue
        results.append(result)
        report["benchmarks"][name] = {
            **result.to_dict(),
            "elapsed_s": round(time.perf_counter() - began, 2),
        }
    print(header)
    for result in results:
        for table in result.tables:
            print(f"\n[{result.name}] {table}\n")
    print(format_table(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nresults written to {args.out}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

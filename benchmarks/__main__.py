"""The benchmark runner: ``python -m benchmarks [NAME ...] [--quick] [--out FILE]``.

Owns the registry of benchmarks, the printed table and the JSON results file
(machine info, timestamp, and each benchmark's rows). A benchmark that fails
is reported in both and makes the exit status 1; the others still run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import signal
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
from benchmarks import model_serving as model_serving_benchmark
from benchmarks import node_layer as node_layer_benchmark

Benchmark = Callable[[Options], Result]

REGISTRY: dict[str, Benchmark] = {
    "bus": bus_benchmark.run,
    "node_layer": node_layer_benchmark.run,
    "model_serving": model_serving_benchmark.run,
    "devices": devices_benchmark.run,
    "apps": apps_benchmark.run,
}

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "latest.json"
_HEADER = ("benchmark", "metric", "unit", "platform", "bare", "platform/bare", "n", "note")
_RIGHT_ALIGNED = {"platform", "bare", "platform/bare", "n"}


def machine_info() -> dict[str, Any]:
    return {
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
        help=f"benchmarks to run (default all: {', '.join(REGISTRY)})",
    )
    parser.add_argument("--quick", action="store_true", help="fewer messages: a run of seconds")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"JSON results file (default {DEFAULT_OUT})"
    )
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in REGISTRY]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(REGISTRY)}")
    return args


def _exit_on_sigterm(signum: int, _frame: FrameType | None) -> None:
    # SystemExit unwinds the benchmark's ``finally`` blocks, which stop its broker and threads.
    sys.exit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    options = Options(quick=args.quick)
    names: list[str] = list(dict.fromkeys(args.names)) or list(REGISTRY)
    started = datetime.now(UTC)
    results: list[Result] = []
    report: dict[str, Any] = {
        "timestamp": started.isoformat(timespec="seconds"),
        "quick": options.quick,
        "machine": machine_info(),
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
    print(format_table(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nresults written to {args.out}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

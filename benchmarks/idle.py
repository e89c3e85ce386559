"""The ``idle`` benchmark: what the demo platform costs when nobody uses it, on Kafka and on Tansu.

For each broker (``kafka``, then ``tansu``; ``--broker`` picks one) the run starts its own
platform with ``aiot up --detach --demo --broker B`` in a fresh temporary AIOT_HOME (see
``benchmarks.demo_platform``): two agents, the platform's services, the three sample models, the
twelve simulated devices (two cameras among them) and the three sample apps, each app running at
its location. Nobody calls the platform after that: "idle" is the demo's own steady work
(heartbeats, logs, readings and frames, the apps' decisions and model calls, polling).

It waits 180 s (quick: 30 s) for the platform to settle, then until the rest of the machine is
quiet (``wait_until_quiet``: 10 s probes until the machine's busy cores minus the platform's are
at most 0.3, for up to 10 minutes; quick: 30 s), then measures one window of 60 s (quick: 15 s)
with ``CpuMeter``:

* CPU, in cores: the CPU time (user + system) every process of the home used in the window,
  summed over all of them, the broker included, divided by the window's wall-clock length; per
  group and per process as well;
* RSS, in MB (MiB): summed over the same processes at the end of the window, and per process.
  RSS counts pages shared between processes once per process; PSS (read just after the window,
  shared pages divided among their sharers) is in the RSS row's note and the JSON.

Targets (reported, not asserted): at most 0.25 cores and at most 1.5 GB (1,536 MiB) RSS.
The rows are one CPU and one RSS row per broker, with the groups' shares in the note; the
printed list has every process, the busiest first. Nothing else measures in the window (no
``aiot status``; the benchmark process only sleeps), but the machine is shared: the CPU row's
note and the JSON keep the other work in the window (the machine's busy cores minus the
platform's), the wait for quiet and the load average.

``aiot down`` always runs after each broker's window, even on error, and then no process of that
home may be left (the row ``processes left after down``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import Options, Result, Row
from benchmarks.demo_platform import (
    BROKERS,
    GROUPS,
    CpuMeter,
    DemoPlatform,
    Interval,
    process_table,
    pss_mb,
    say,
    wait_until_quiet,
)

TARGET_CORES = 0.25
TARGET_RSS_MB = 1.5 * 1024


@dataclass(frozen=True)
class Plan:
    settle_s: float
    window_s: float
    quiet_timeout_s: float


FULL = Plan(settle_s=180.0, window_s=60.0, quiet_timeout_s=600.0)
QUICK = Plan(settle_s=30.0, window_s=15.0, quiet_timeout_s=30.0)


def _log(message: str) -> None:
    say("idle", message)


def _verdict(value: float, target: float) -> str:
    if value <= target:
        return f"target ≤ {target:g}: met"
    return f"target ≤ {target:g}: NOT met (+{value - target:.3g}, {value / target:.2f}x)"


def _groups_note(interval: Interval, unit: str) -> str:
    values = interval.cores_by_group() if unit == "cores" else interval.rss_by_group()
    digits = 3 if unit == "cores" else 0
    return ", ".join(f"{group} {values[group]:.{digits}f}" for group in GROUPS if values[group])


def rows_of(broker: str, up_s: float, interval: Interval, pss: float | None, others: float) -> list[Row]:
    cores, rss = interval.cores(), interval.rss_mb()
    count = len(interval.processes)
    top = ", ".join(f"{p.label} {p.cpu_s / interval.seconds:.3f}" for p in interval.by_cpu()[:3])
    return [
        Row(
            metric=f"{broker}: idle CPU, all processes",
            unit="cores",
            platform=cores,
            samples=count,
            note=f"{_verdict(cores, TARGET_CORES)}; {_groups_note(interval, 'cores')}; top: {top}; "
            f"other work on the machine {others:.2f}",
        ),
        Row(
            metric=f"{broker}: idle RSS, all processes",
            unit="MB",
            platform=rss,
            samples=count,
            note=f"{_verdict(rss, TARGET_RSS_MB)}; {_groups_note(interval, 'mb')}"
            + ("" if pss is None else f"; PSS {pss:.0f}"),
        ),
        Row(metric=f"{broker}: aiot up --detach --demo", unit="s", platform=up_s, samples=1),
    ]


def measure(broker: str, plan: Plan, params: dict[str, Any], rows: list[Row], tables: list[str]) -> None:
    """One broker's platform: up, settle, the window, down; its rows go to ``rows``."""
    scratch = Path(tempfile.mkdtemp(prefix=f"aiot-bench-idle-{broker}-")).resolve()
    platform = DemoPlatform(scratch / "home", broker)
    failed = True
    try:
        _log(f"{broker}: aiot up --detach --demo in {platform.home}")
        up_s = platform.up_demo()
        _log(f"{broker}: up in {up_s:.1f}s; settling for {plan.settle_s:.0f}s")
        time.sleep(plan.settle_s)
        quiet = wait_until_quiet(platform, "idle", timeout_s=plan.quiet_timeout_s)
        meter = CpuMeter(platform)
        load_before = os.getloadavg()
        meter.start()
        time.sleep(plan.window_s)
        interval = meter.read()
        load_after = os.getloadavg()
        pss = pss_mb(platform)  # after the window, not in it: reading smaps costs CPU
        status = platform.status()  # after the window: were services restarting meanwhile?
        restarts = sum(s.get("restarts", 0) for s in status["services"]) if status else None
        _log(
            f"{broker}: {interval.cores():.3f} cores, {interval.rss_mb():.0f} MB over {interval.seconds:.1f}s"
        )
        params[broker] = {
            "home": str(platform.home),
            "up_s": round(up_s, 2),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in load_after],
            "restarts_at_end": restarts,
            "quiet_wait_s": round(quiet.waited_s, 1),
            "other_work_cores_before": round(quiet.others_cores, 3),
            "other_work_cores_in_window": round(max(0.0, interval.machine_busy_cores - interval.cores()), 3),
            "services_at_end": len(status["services"]) if status else None,
            **interval.to_dict(),
            "pss_mb": None if pss is None else round(sum(pss.values()), 1),
            "pss_mb_by_process": None if pss is None else {k: round(v, 1) for k, v in sorted(pss.items())},
        }
        others = max(0.0, interval.machine_busy_cores - interval.cores())
        title = (
            f"idle, {broker}: {interval.seconds:.0f}s window after {plan.settle_s:.0f}s settling "
            f"(+{quiet.waited_s:.0f}s waiting for a quiet machine); other work on the machine "
            f"{others:.2f} cores in the window, load average {load_before[0]:.2f} → {load_after[0]:.2f}; "
            f"restarts so far {restarts}"
        )
        tables.append(process_table(interval, title))
        rows += rows_of(broker, up_s, interval, None if pss is None else sum(pss.values()), others)
        failed = False
    finally:
        left = platform.down_and_check()
        rows.append(
            Row(f"{broker}: processes left after down", left.unit, left.platform, samples=1, note=left.note)
        )
        if failed:
            _log(f"{broker}: kept {platform.home} for its logs")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


def run(options: Options) -> Result:
    plan = QUICK if options.quick else FULL
    brokers = [options.broker] if options.broker else list(BROKERS)
    params: dict[str, Any] = {
        "brokers": brokers,
        "settle_s": plan.settle_s,
        "window_s": plan.window_s,
        "targets": {"cpu_cores": TARGET_CORES, "rss_mb": TARGET_RSS_MB},
    }
    rows: list[Row] = []
    tables: list[str] = []
    errors: dict[str, str] = {}
    for broker in brokers:
        try:
            measure(broker, plan, params, rows, tables)
        except Exception as exc:  # the other broker still runs; the row says what failed
            errors[broker] = f"{type(exc).__name__}: {exc}"
            _log(f"{broker}: FAILED: {errors[broker]}")
            rows.append(Row(f"{broker}: idle CPU, all processes", "cores", None, note=f"FAILED: {exc}"[:300]))
    params["errors"] = errors
    if errors and len(errors) == len(brokers):
        raise RuntimeError(f"every broker failed: {errors}")
    return Result(name="idle", rows=rows, params=params, tables=tables)

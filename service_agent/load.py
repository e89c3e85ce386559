"""A node's load, measured with psutil: announced to the node manager, and answered on ``GET /load``."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Literal

import psutil

from platform_core.nodes import LoadSample


class LoadMeter:
    """CPU and memory of the whole machine, or of the agent's own service processes."""

    def __init__(self, scope: Literal["machine", "services"]) -> None:
        self.scope = scope
        self._tracked: dict[int, psutil.Process] = {}
        psutil.cpu_percent(interval=None)  # primes the counter; the first reading is otherwise 0

    def sample(self, node_id: str, pids: Iterable[int], capacity: int, services: int) -> LoadSample:
        memory = psutil.virtual_memory()
        total_mb = memory.total / 2**20
        processes = self._processes(pids)
        if self.scope == "machine":
            cpu = psutil.cpu_percent(interval=None)
            used_mb = (memory.total - memory.available) / 2**20
        else:
            cpu, used_mb = 0.0, 0.0
            for process in processes:
                try:
                    cpu += process.cpu_percent(interval=None)
                    used_mb += process.memory_info().rss / 2**20
                except psutil.Error:
                    continue
            cpu /= psutil.cpu_count() or 1
        return LoadSample(
            node_id=node_id,
            cpu_percent=round(min(cpu, 100.0), 1),
            memory_used_mb=round(used_mb, 1),
            memory_total_mb=round(total_mb, 1),
            services=services,
            processes=len(processes),
            capacity=capacity,
        )

    def _processes(self, pids: Iterable[int]) -> list[psutil.Process]:
        """Each service's process tree; Process objects are kept so cpu_percent measures between calls.

        The machine's parent links are read once per sample (one pass over /proc), not once per
        service: ``Process.children`` reads every process's parent each time it is called.
        """
        roots = list(pids)
        if not roots:
            self._tracked = {}
            return []
        children: dict[int, list[int]] = defaultdict(list)
        for process in psutil.process_iter(["ppid"]):
            parent = process.info["ppid"]
            if parent:
                children[parent].append(process.pid)
        found: dict[int, psutil.Process] = {}
        pending = roots
        while pending:
            pid = pending.pop()
            if pid in found:
                continue
            try:
                found[pid] = self._tracked.get(pid) or psutil.Process(pid)
            except psutil.Error:
                continue
            pending.extend(children.get(pid, ()))
        self._tracked = found
        return list(found.values())

"""Benchmarks of the platform against real components, and the types their runner prints.

Run them with ``python -m benchmarks [NAME ...] [--quick] [--out FILE]``
(``docs/benchmarks.md`` explains every metric). Each benchmark is one module
here that starts whatever it measures (the ``bus`` benchmark starts its own
embedded broker on 127.0.0.1) and stops it again, even on error.

This module owns the result types every benchmark returns: a ``Result`` holds
``Row``s, and a row compares the platform's code path with a bare baseline, so
the runner can print the platform/bare ratio next to both numbers.

Adding a benchmark:

1. Create ``benchmarks/NAME.py`` with ``def run(options: Options) -> Result``.
   Bound every loop by a count and a deadline, bind servers to 127.0.0.1, and
   release everything you started in a ``finally`` (or an ``ExitStack``).
2. Honour ``options.quick``: a run of a few seconds that exercises every path.
   Progress goes to stderr; a table of its own goes in ``Result.tables``, so the runner
   prints it under the header that names the measured commit.
3. Register it in ``REGISTRY`` in ``benchmarks/__main__.py``.
4. Add its metrics and one real run's numbers to ``docs/benchmarks.md``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Options:
    """What the runner passes to every benchmark.

    ``minutes`` and ``broker`` come from ``--minutes`` and ``--broker``; None means the
    benchmark's own default. Only the benchmarks that say so read them.
    """

    quick: bool = False
    minutes: int | None = None
    # The broker a benchmark that can run on either starts ("kafka" or "tansu"); None: its default.
    broker: str | None = None


@dataclass(frozen=True)
class Row:
    """One metric, measured through the platform and, where it exists, without it."""

    metric: str
    unit: str
    platform: float | None
    bare: float | None = None
    samples: int = 0
    note: str = ""

    @property
    def ratio(self) -> float | None:
        """platform / bare: above 1 a latency is worse, below 1 a throughput is worse."""
        if self.platform is None or not self.bare:
            return None
        return self.platform / self.bare

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio}


@dataclass
class Result:
    """What one benchmark returns: its rows and the parameters it ran with.

    ``tables`` are plain-text tables of its own (a per-minute table, a list of processes) that
    the runner prints above the rows, under the same header; the numbers in them are in
    ``params`` too, so the JSON leaves them out.
    """

    name: str
    rows: list[Row] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    tables: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "params": self.params,
            "rows": [row.to_dict() for row in self.rows],
        }

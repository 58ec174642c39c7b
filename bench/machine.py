"""The machine and date every figure is printed with: a number without its machine is not a claim."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import resource
import time
from pathlib import Path

import numpy as np
import scipy


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


def describe() -> dict[str, str]:
    """CPU, cores, RAM, Python/numpy/scipy versions and the UTC date of this run."""
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "cores": str(os.cpu_count()),
        "ram": f"{_ram_gib():.1f} GiB",
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "os": f"{platform.system()} {platform.release()}",
    }


def machine_line(info: dict[str, str]) -> str:
    """The line a benchmark section names its machine and date with (`describe`'s fields)."""
    return (
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['ram']}; {info['os']}; Python {info['python']},"
        f" numpy {info['numpy']}; {info['date']}."
    )


class OtherLoad:
    """CPU used by every other process while a timing runs, in cores.

    The cores are shared: a timing taken while another job ran is an upper bound, and the
    load average cannot tell (it still counts this benchmark's own evaluation pool for minutes).
    Busy jiffies from /proc/stat minus this process's own CPU time is what others took.
    """

    def __enter__(self) -> "OtherLoad":
        self._start = (_busy_seconds(), _own_cpu_seconds(), time.perf_counter())
        self.cores = float("nan")
        return self

    def __exit__(self, *exc: object) -> None:
        busy, own, wall = (b - a for a, b in zip(self._start, (_busy_seconds(), _own_cpu_seconds(), time.perf_counter())))
        self.cores = max(0.0, (busy - own) / wall) if wall > 0 else float("nan")


def _busy_seconds() -> float:
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return float("nan")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime

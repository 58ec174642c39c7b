"""The benchmark's 60-second smoke run: it must keep working as the engine changes.

Runs `python -m bench --quick` as CI does, without the downloaded corpus (tests/data/ music and
synthetic noise), and checks that the report, the plot and every kind of row come out.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_benchmark_writes_report_and_plot(tmp_path: Path) -> None:
    out = tmp_path / "out"
    md = tmp_path / "BENCHMARKS.md"

    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out), "--write-md", str(md)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
    )

    assert proc.returncode == 0, proc.stderr[-3000:]
    report = md.read_text()
    assert report == (out / "BENCHMARKS.md").read_text()
    assert proc.stdout.strip() == report.strip()
    for row in (
        "| music 10s 16k dry clean |",
        "| music 10s 8k synthetic-room -10dB |",
        "| music 5s 16k dry +0dB |",
        "| music 15s 16k dry -5dB |",
        "| ooc 10s 16k dry clean |",
        "| noise 10s 16k dry -60dBFS |",
        "| silence 10s 8k dry |",
        "| 10s 16k dry |",
        "registration, one core",
        "median ms",
        "peak RSS",
    ):
        assert row in report, row
    png = (out / "accuracy_vs_snr.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    assert (out / "results.json").is_file()

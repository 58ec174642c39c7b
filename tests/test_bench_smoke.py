"""The benchmarks' smoke runs: they must keep working as the engine changes.

Runs `python -m bench --quick` and `python -m bench.streams --quick` as CI does, without the
downloaded corpus (tests/data/ music, synthetic noise and speech), and checks that the reports,
the plot and every kind of row come out.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.streams import CONDITIONS

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


def test_quick_stream_benchmark_serves_the_tree_and_a_baseline(tmp_path: Path) -> None:
    out = tmp_path / "streams"

    try:
        proc = subprocess.run(
            [sys.executable, "-m", "bench.streams", "--quick", "--baseline-rev", "HEAD", "--out", str(out)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=240,
        )
    finally:
        for tree in (out / "worktrees").glob("*"):
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)

    assert proc.returncode == 0, proc.stderr[-3000:]
    report = (out / "streams.md").read_text()
    assert proc.stdout.strip() == report.strip()
    rows = json.loads((out / "streams.json").read_text())["rows"]
    engines = sorted({r["engine"] for r in rows})
    assert len(engines) == 2 and engines[0].startswith("baseline HEAD")
    assert {(r["kind"], r["scene"]) for r in rows} == set(CONDITIONS)
    clean = [r for r in rows if (r["kind"], r["scene"]) == ("known", "clean")]
    assert [r["right"] for r in clean] == [r["streams"] for r in clean]  # the plain case works in both
    assert "| no music | crowd noise, no music |" in report

"""The benchmarks' smoke runs: they must keep working as the engine changes.

Runs `python -m bench --quick` and `python -m bench.streams --quick` as CI does, without the
downloaded corpus (tests/data/ music, synthetic noise and speech), each with HEAD as the
baseline revision (a git worktree, removed afterwards), and checks that the reports, the plot
and every kind of row come out for both engines.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.streams import CONDITIONS

ROOT = Path(__file__).resolve().parent.parent


def _remove_worktrees(out: Path) -> None:
    for tree in (out / "worktrees").glob("*"):
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)


def _run_removing_worktrees(arguments: list[str], out: Path, timeout: int) -> subprocess.CompletedProcess:
    """`python -m <arguments>` from the checkout; the baseline worktrees it made under `out` are
    removed afterwards, pass or fail, so that git does not keep them registered."""
    try:
        return subprocess.run([sys.executable, "-m", *arguments], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    finally:
        _remove_worktrees(out)


def test_quick_benchmark_writes_report_and_plot(tmp_path: Path) -> None:
    out = tmp_path / "out"
    md = tmp_path / "BENCHMARKS.md"

    proc = _run_removing_worktrees(["bench", "--quick", "--baseline-rev", "HEAD", "--out", str(out), "--write-md", str(md)], out, 180)

    assert proc.returncode == 0, proc.stderr[-3000:]
    report = md.read_text()
    assert report == (out / "BENCHMARKS.md").read_text()
    assert proc.stdout.strip() == report.strip()
    for row in (
        "| music 10s 16k dry clean |",
        "| music 10s 8k synthetic-room -10dB |",
        "| music 5s 16k dry +0dB |",
        "| music 15s 16k dry -5dB |",
        "| music 10s 16k reverb RT60<=1.5 s, crowd 0 dB |",
        "| music 10s 16k speed -2 % at +5 dB |",
        "| music 10s 16k two songs -5 dB | baseline HEAD |",
        "| ooc 10s 16k dry clean |",
        "| ooc 10s 16k room: small speaker",
        "| speech 10s 16k talk in a room, no music |",
        "| noise 10s 16k dry -60dBFS |",
        "| silence 10s 8k dry |",
        "| 10s 16k dry |",
        "top-1, baseline HEAD | top-1, working tree |",
        "registration, one core",
        "median ms",
        "peak RSS",
    ):
        assert row in report, row
    png = (out / "accuracy_vs_snr.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    assert (out / "results.json").is_file()
    rows = [line.split("\t") for line in (out / "queries.tsv").read_text().splitlines()]
    assert rows[0][:6] == ["engine", "condition", "truth", "other", "guess", "confidence"]
    engines = {r[0] for r in rows[1:]}
    assert len(engines) == 2 and "baseline HEAD" in engines
    clean = [r for r in rows[1:] if r[1] == "music 10s 16k dry clean"]
    assert clean and all(r[2] == r[4] and r[6] == "1" for r in clean)  # both engines name the plain case


def test_quick_stream_benchmark_serves_the_tree_and_a_baseline(tmp_path: Path) -> None:
    out = tmp_path / "streams"

    proc = _run_removing_worktrees(["bench.streams", "--quick", "--baseline-rev", "HEAD", "--out", str(out)], out, 240)

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

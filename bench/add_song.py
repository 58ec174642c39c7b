"""What adding one song to a big catalog costs: `python -m function register FILE` into a copy of
the catalog, in a process of its own as a user runs it (loading the catalog included).

    python -m bench.add_song CATALOG_DIR SONG_FILE [--scratch DIR]

Prints one JSON object: the catalog's songs and index bytes before, the command's wall seconds
and peak RSS, and the bytes it wrote (files new or changed under the catalog). The copy is
deleted afterwards; CATALOG_DIR itself is never written.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _files(root: Path) -> dict[Path, tuple[int, int, int]]:
    """Every file's (inode, size, mtime): a file written or replaced changes it."""
    return {p: (p.stat().st_ino, p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def measure(catalog_dir: Path, song: Path, scratch: Path) -> dict:
    copy = scratch / "catalog"
    shutil.copytree(catalog_dir, copy)
    try:
        before = _files(copy)
        songs = len(json.loads((copy / "catalog.json").read_text())["songs"])
        started = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "function", "register", str(song), "--catalog", str(copy), "--workers", "1", "--quiet"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            raise SystemExit(f"register failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
        after = _files(copy)
        written = [p for p, state in after.items() if before.get(p) != state]
        return {
            "songs_before": songs,
            "index_bytes_before": sum(size for _, size, _ in before.values()),
            "wall_seconds": round(wall, 2),
            # The register process is this process's only child.
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
            "bytes_written": sum(after[p][1] for p in written),
            "files_written": sorted(str(p.relative_to(copy)) for p in written),
            "register_output": proc.stdout.strip().splitlines()[-1:],
        }
    finally:
        shutil.rmtree(copy, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.add_song", description=__doc__.split("\n\n")[0])
    parser.add_argument("catalog", type=Path)
    parser.add_argument("song", type=Path)
    parser.add_argument("--scratch", type=Path, help="where the copy goes (default: a temporary folder)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.scratch) as scratch:
        print(json.dumps(measure(args.catalog, args.song, Path(scratch)), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

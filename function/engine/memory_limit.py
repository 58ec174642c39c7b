"""How much memory this instance has, and whether a catalog's mirror fits in it.

On Cloud Run the filesystem is memory: a gs:// catalog mirrored to the local temp dir counts
against the instance's limit, and an instance that passes it is killed mid-download, leaving
only "Memory limit exceeded" in the logs. So the mirror checks first (GcsLocation.mirror) and
refuses with a CatalogError naming both figures, which /health reports as a 503.
"""

from __future__ import annotations

from pathlib import Path

from function.engine.config import CONFIG
from function.engine.songs import CatalogError

# What the process needs beside the mirror's files. bench/coldstart.py measured a cold instance
# (one query at a time) holding 221 MiB beyond the mirror with 10,000 songs in one segment and
# 509 MiB with 100,000 in ten: Python with numpy, scipy and the storage client, a query's working
# arrays, each segment's tables and the song list. `needed_bytes` gives 1,103 and 7,435 MiB where
# 895 and 7,249 MiB were measured: ~200 MiB to spare for concurrent requests' queries and audio.
PROCESS_BYTES = 400 * 2**20
# Each segment's offsets table, rebuilt in memory at load (uint32 per hash), and the counts it
# is rebuilt from.
SEGMENT_BYTES = 8 << CONFIG.hash_bits
# The song list parsed from catalog.json (Song objects, the id index) per byte of it.
MANIFEST_FACTOR = 8
# Cgroup v1 writes "no limit" as a page-rounded 2^63 - 1.
_NO_LIMIT = 2**62

CGROUP_LIMIT_FILES = (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))
MEMINFO = Path("/proc/meminfo")


def instance_memory_bytes(
    limit_files: tuple[Path, ...] = CGROUP_LIMIT_FILES, meminfo: Path = MEMINFO
) -> int | None:
    """The memory this process may use: its cgroup's limit (v2, then v1), or the machine's
    when that is smaller or there is none (a Cloud Run gen2 instance is a VM of its memory
    size; gen1's sandbox reports its limit as MemTotal). None if neither can be read."""
    found: list[int] = []
    for path in limit_files:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < _NO_LIMIT:
            found.append(int(text))
        break  # the first file present is this cgroup version's answer ("max": no limit)
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    return min(found) if found else None


def needed_bytes(file_bytes: int, segments: int, manifest_bytes: int) -> int:
    """Memory a catalog takes once loaded from a mirror in memory: its files, its segments'
    tables, its song list (catalog.json of `manifest_bytes`) and the process serving it."""
    return file_bytes + segments * SEGMENT_BYTES + MANIFEST_FACTOR * manifest_bytes + PROCESS_BYTES


def check_fits(uri: str, needed: int, limit_bytes: int | None) -> None:
    """CatalogError unless `needed` bytes (`needed_bytes`) fit in `limit_bytes` (None: unknown,
    so not refused)."""
    if limit_bytes is not None and needed > limit_bytes:
        raise CatalogError(
            f"{uri}: the catalog needs {needed / 2**20:,.0f} MiB of memory to load (its files are"
            f" downloaded into memory on Cloud Run) and this instance has {limit_bytes / 2**20:,.0f} MiB:"
            " deploy with more memory (README, Deploy: memory for a catalog size) or split the catalog"
        )

"""python -m bench.coldstart --corpus DIR --out DIR [--sizes 1000,10000,100000] [--instance-gib 2] [--write-md FILE]

A cold instance per catalog size and source: a fresh process (bench/probe.py --cold) loads the
catalog from a local directory, or downloads it from gs:// (a fake-gcs-server this starts,
keeping objects in files) into a mirror on /dev/shm, as Cloud Run's in-memory /tmp would hold
it, then answers the 10-s 0-dB latency queries and music not in the catalog. Each process runs
in a memory cgroup of its own, whose peak counts the process and every tmpfs page it wrote (a
mirror); a gs:// load that fits --instance-gib runs under that limit, so "served by a 2 GiB
instance" is what happened, not an estimate. The real catalog is the test split's songs;
bigger ones add synthetic songs (bench/catalog_build.scaled_catalog). Adding one song to the
10,000-song catalog is timed by bench/add_song.py.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from bench import catalog_build, corpus, machine, queries, speed
from bench.harness import running_fake_gcs
from function.engine.config import CONFIG
from function.engine.memory_limit import needed_bytes

ROOT = Path(__file__).resolve().parent.parent
CGROUP_ROOT = Path("/sys/fs/cgroup/memory")  # cgroup v1's memory controller
MIRROR_TMPDIR = Path("/dev/shm")  # memory, as Cloud Run's filesystem is
LATENCY_QUERIES = 60
MIB = 2**20


@contextmanager
def memory_cgroup(limit_bytes: int | None) -> Iterator[Path | None]:
    """A child memory cgroup (cgroup v1, as root) for one process, optionally limited; None where
    there is none to make (the table then shows VmHWM alone)."""
    if not (CGROUP_ROOT / "cgroup.procs").is_file() or not os.access(CGROUP_ROOT, os.W_OK):
        yield None
        return
    group = CGROUP_ROOT / f"bench-coldstart-{uuid.uuid4().hex[:8]}"
    group.mkdir()
    try:
        if limit_bytes is not None:
            (group / "memory.limit_in_bytes").write_text(str(limit_bytes))
        yield group
    finally:
        # Pages still charged (a mirror not yet deleted) move to the parent on rmdir.
        for _ in range(50):
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.1)


def _evict(directory: Path) -> None:
    """Drop a local catalog's files from the page cache, so its load reads the disk as a cold
    instance's would (and its pages are charged to the probe's cgroup, not found cached)."""
    for path in directory.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def probe(uri: str, queries_file: Path, env: dict[str, str], limit_bytes: int | None, budget: bool = True) -> dict:
    """bench/probe.py --cold in a fresh single-threaded process inside its own memory cgroup
    (`budget`: whether queries keep to CONFIG.postings_budget)."""
    with memory_cgroup(limit_bytes) as group:
        def join() -> None:  # in the child, before exec: the whole process is charged to the group
            if group is not None:
                (group / "cgroup.procs").write_text(str(os.getpid()))

        command = [sys.executable, "-m", "bench.probe", "--cold", uri, str(queries_file)]
        proc = subprocess.run(
            [*command, str(limit_bytes or "none"), "budget" if budget else "no-budget"],
            capture_output=True, text=True, env={**env, **speed.SINGLE_THREAD}, cwd=ROOT, preexec_fn=join, check=False,
        )
        cgroup_peak = int((group / "memory.max_usage_in_bytes").read_text()) if group else None
        oom = group is not None and "oom_kill 1" in (group / "memory.oom_control").read_text()
    if proc.returncode != 0:
        return {"failed": f"exit {proc.returncode}{' (OOM-killed)' if oom else ''}: {proc.stderr.strip()[-300:]}",
                "cgroup_peak_bytes": cgroup_peak, "limit_bytes": limit_bytes}
    return {**json.loads(proc.stdout), "cgroup_peak_bytes": cgroup_peak, "limit_bytes": limit_bytes}


def upload(catalog_dir: Path, bucket: object, prefix: str) -> float:
    """Copy a catalog into the bucket (arrays before catalog.json, as a save does); seconds taken."""
    started = time.perf_counter()
    files = sorted((p for p in catalog_dir.rglob("*") if p.is_file() and p.name != "bench.json"), key=lambda p: p.name == "catalog.json")
    for path in files:
        bucket.blob(f"{prefix}/{path.relative_to(catalog_dir)}").upload_from_filename(str(path))
    return time.perf_counter() - started


def add_one_song(catalog_dir: Path, song: Path, scratch: Path) -> dict:
    """python -m bench.add_song in its own process (its peak RSS is its register child's alone)."""
    scratch.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [sys.executable, "-m", "bench.add_song", str(catalog_dir), str(song), "--scratch", str(scratch)],
        capture_output=True, text=True, cwd=ROOT, check=True,
    )
    return json.loads(proc.stdout)


def _row(source: str, r: dict) -> str:
    mib = lambda b: "-" if b is None else f"{b / MIB:,.0f}"  # noqa: E731
    limit = "-" if r.get("limit_bytes") is None else f"{r['limit_bytes'] / 2**30:g} GiB"
    if "failed" in r:
        return f"| {source} | {r['songs_planned']:,} | failed: {r['failed']} | | | | | | | | | | | {mib(r['cgroup_peak_bytes'])} | | | | | | {limit} |"
    lat = sorted(r["latency_ms"])
    p95 = lat[min(len(lat) - 1, int(round(0.95 * (len(lat) - 1))))]
    mirror = r["mirror_bytes"]
    beyond = "-" if r["cgroup_peak_bytes"] is None else mib(r["cgroup_peak_bytes"] - mirror)
    return (
        f"| {source} | {r['songs']:,} | {r['segments']} | {r['index_bytes'] / MIB:,.0f} | {r['index_bytes'] / r['audio_minutes'] / 1024:,.0f} KiB"
        f" | {r['start_s']:.1f} | {r['download_s']:.1f} | {r['load_s']:.2f} | {r['cold_query_ms']:,.0f} | {statistics.median(lat):,.0f} | {p95:,.0f}"
        f" | {r['other_cores']:.1f} | {r['correct']}/{r['queries']} ({100 * r['correct'] / r['queries']:.0f} %) | {r['false_matches']}/{r['unknown_queries']}"
        f" | {mib(r['cgroup_peak_bytes'])} | {r['peak_rss_mib']:,.0f} | {r['rss_anon_mib']:,.0f} | {r['rss_shmem_mib']:,.0f}"
        f" | {mib(mirror) if mirror else '-'} | {beyond} | {limit} |"
    )


def markdown(info: dict, command: str, results: list[tuple[str, dict]], uploads: dict[int, float], added: dict | None, notes: list[str]) -> str:
    lines = [
        "## Cold starts and memory per catalog size",
        "",
        machine.machine_line(info),
        "",
        f"Command: `{command}`",
        "",
        "Each row is a fresh single-threaded process: *start* is from its exec to the catalog's first read (the"
        " interpreter and its imports); *download* is catalog.json and every segment from"
        " fake-gcs-server (on loopback, objects in files) into a mirror in /dev/shm, as Cloud Run's in-memory"
        " /tmp holds it; *load* is opening the mirrored (or local) files; *first query* pages the mapped index in."
        " Latency is over the 10-s 0-dB queries of the test split's songs (*other cores*: CPU other processes"
        " took meanwhile, of 2: above 0, the timings are upper bounds); *found* counts those named correctly,"
        " *false* names given to music not in the catalog. *cgroup peak* is the process's memory cgroup at its"
        " highest (anonymous memory plus every page cache or tmpfs page it touched, the mirror included); VmHWM"
        " is its RSS peak (mapped pages counted, tmpfs or not); *anon* and *shmem* are its RSS after the queries:"
        " its own memory, and the tmpfs pages it has mapped (a copy of the index would be anon); *peak - mirror* is what the instance holds beyond"
        " the catalog's files. Local catalogs were dropped from the page cache first. A gs:// row with a limit ran"
        f" in a cgroup of that size (no swap: past it, the process is killed). Postings budget {CONFIG.postings_budget:,}"
        " per query (CONFIG.postings_budget): a query reads at most that many postings, its rarest hashes first.",
        "",
        "| source | songs | segments | index MiB | index per audio min | start s | download s | load s | first query ms | p50 ms | p95 ms"
        " | other cores | found (0 dB) | false | cgroup peak MiB | VmHWM MiB | anon MiB | shmem MiB | mirror MiB | peak - mirror MiB | limit |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        *(_row(source, r) for source, r in results),
        "",
    ]
    for source, r in results:
        if "failed" not in r and source == "gs://":
            total = r["start_s"] + r["download_s"] + r["load_s"] + r["cold_query_ms"] / 1000
            lines.append(f"- Cold start from gs://, {r['songs']:,} songs: {total:.1f} s from exec to the first answer.")
    lines.append("")
    if uploads:
        lines.append("Uploading each catalog to fake-gcs-server (not part of a cold start): "
                     + ", ".join(f"{n:,} songs {s:.0f} s" for n, s in uploads.items()) + ".")
        lines.append("")
    if added is not None:
        lines += [
            f"Adding one song to the {added['songs_before']:,}-song catalog (`python -m bench.add_song`, one worker):"
            f" {added['wall_seconds']} s wall, peak RSS {added['peak_rss_mib']:,.0f} MiB,"
            f" {added['bytes_written'] / MIB:.1f} MiB written ({', '.join(added['files_written'])}).",
            "",
        ]
    lines += [f"- {note}" for note in notes]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.coldstart", description=__doc__.split("\n\n")[1])
    p.add_argument("--corpus", type=Path, required=True)
    p.add_argument("--out", type=Path, default=Path("bench/out/coldstart"))
    p.add_argument("--sizes", default="1000,10000,100000", help="catalog sizes in songs, comma-separated")
    p.add_argument("--gcs-sizes", help="sizes also loaded from gs:// (default: every size)")
    p.add_argument("--instance-gib", type=float, default=2.0, help="the limit a gs:// load runs under when it fits")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--write-md", type=Path)
    args = p.parse_args(argv)
    command = "python -m bench.coldstart " + shlex.join(sys.argv[1:] if argv is None else argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    gcs_sizes = sizes if args.gcs_sizes is None else [int(s) for s in args.gcs_sizes.split(",")]
    out = args.out  # as given: the cached catalogs' keys include the real catalog's path
    out.mkdir(parents=True, exist_ok=True)
    info = machine.describe()
    print(" | ".join(f"{k}: {v}" for k, v in info.items()), file=sys.stderr)

    data = corpus.load(args.corpus, args.seed, False, "test")
    real, truth, _ = catalog_build.real_catalog(data.catalog, out)
    catalogs = {n: catalog_build.scaled_catalog(real, n, out, args.seed).resolve() for n in sizes}
    plan = queries.plan(data, LATENCY_QUERIES, args.seed)
    latency = speed.latency_queries(plan, truth, LATENCY_QUERIES, out.resolve() / "latency_queries.npz")

    results: list[tuple[str, dict]] = []
    for n, directory in catalogs.items():
        print(f"cold start, local: {n} songs ...", file=sys.stderr)
        _evict(directory)
        results.append(("local", {"songs_planned": n, **probe(str(directory), latency, dict(os.environ), None)}))
    biggest = max(catalogs)
    print(f"local, no postings budget: {biggest} songs ...", file=sys.stderr)
    _evict(catalogs[biggest])
    without = probe(str(catalogs[biggest]), latency, dict(os.environ), None, budget=False)
    results.append(("local, no postings budget", {"songs_planned": biggest, **without}))

    uploads: dict[int, float] = {}
    if gcs_sizes:
        with running_fake_gcs(out.resolve(), out.resolve() / "fake-gcs") as url:
            from google.cloud import storage

            env = {**os.environ, "STORAGE_EMULATOR_HOST": url, "GOOGLE_CLOUD_PROJECT": "bench-coldstart", "TMPDIR": str(MIRROR_TMPDIR)}
            os.environ.update({k: env[k] for k in ("STORAGE_EMULATOR_HOST", "GOOGLE_CLOUD_PROJECT")})
            bucket = storage.Client().create_bucket(f"coldstart-{uuid.uuid4().hex[:8]}")
            for n in gcs_sizes:
                directory = catalogs[n]
                print(f"uploading {n} songs to fake-gcs-server ...", file=sys.stderr)
                uploads[n] = upload(directory, bucket, f"catalog-{n}")
                files = [p for p in directory.rglob("*") if p.is_file() and p.name != "bench.json"]
                segments = len({p.parent for p in files if p.name == "postings.npy"})
                manifest_bytes = (directory / "catalog.json").stat().st_size
                needed = needed_bytes(sum(p.stat().st_size for p in files), segments, manifest_bytes)
                limit = int(args.instance_gib * 2**30) if needed <= args.instance_gib * 2**30 else None
                print(f"cold start, gs://: {n} songs ...", file=sys.stderr)
                results.append(("gs://", {"songs_planned": n, **probe(f"gs://{bucket.name}/catalog-{n}", latency, env, limit)}))
                for blob in bucket.list_blobs(prefix=f"catalog-{n}/"):  # the emulator's files go with it
                    blob.delete()

    added = None
    if 10000 in catalogs:
        print("adding one song to the 10,000-song catalog ...", file=sys.stderr)
        added = add_one_song(catalogs[10000], data.held_out[0].path, out.resolve() / "add-song")
    notes = [
        f"Synthetic songs are built {catalog_build.BUILD_BATCH:,} to a segment (bench/catalog_build.py), as a register"
        " run of that many songs would write them; the 100,000-song catalog is 10 segments, each read by every query.",
    ]
    text = markdown(info, command, results, uploads, added, notes)
    print(text)
    (out / "coldstart.md").write_text(text)
    (out / "coldstart.json").write_text(json.dumps({"machine": info, "results": results, "uploads": uploads, "add_song": added}, indent=1))
    if args.write_md:
        args.write_md.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

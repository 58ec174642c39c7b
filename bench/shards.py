"""Catalog shards: do 2 shards answer as the one catalog they were split from, and what does the
fan-out cost?

`python -m bench.shards --corpus /tmp/corpus [--split test] [--catalog DIR] [--write-md FILE]`

Registers the corpus's catalog tracks (or takes `--catalog`, a catalog of them), splits it into
2 shards (`python -m function catalog --split 2`'s code), serves each with its own
functions-framework process on loopback, and replays the same queries through a Recogniser on
the whole catalog in this process and through one on the 2 shards (both steps of every vote
asked of both shards in parallel, over HTTP with keep-alive). Queries: a 10-s excerpt of every
catalogued track of the split, clean and under the split's street/ambient noise at 0 dB, one of
every track held out of the catalog, and 10-s stretches of the split's noise recordings.
An answer is equal when the best guess (song, offset, confidence, score) is the same.
Latency is a whole recognition (fingerprint and every vote) as the webhook times it; the
fan-out's shards share this machine's cores with it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from bench import corpus, machine
from bench.audio import WORK_RATE, mix, noise_segment, read_audio, to_pcm16
from bench.harness import running_function
from function.engine.catalog import Catalog
from function.engine.recogniser import Recogniser
from function.engine.shards import Shards, shard_uri, split
from function.progress import Progress

SHARDS = 2
EXCERPT_SECONDS = 10.0
TOKEN = "bench-shards-token-0123456789"


def queries(material: corpus.Corpus, seed: int) -> list[tuple[str, np.ndarray]]:
    """(kind, int16 samples at WORK_RATE) of every query, in a fixed order."""
    rng = np.random.default_rng(seed)
    noise = [str(p) for p in material.noise]
    found = []
    for kind, tracks in (("music", material.known), ("ooc", material.held_out)):
        for t in tracks:
            start = float(rng.uniform(0, max(0.0, min(t.seconds, 180.0) - EXCERPT_SECONDS - 1)))
            clean = read_audio(str(t.path), start, EXCERPT_SECONDS)
            found.append((f"{kind} clean", to_pcm16(clean)))
            if kind == "music":
                found.append((f"{kind} 0 dB", to_pcm16(mix(clean, noise_segment(noise, rng, len(clean))[0], 0.0))))
    for _ in range(4 * len(noise)):
        found.append(("noise", to_pcm16(noise_segment(noise, rng, int(EXCERPT_SECONDS * WORK_RATE))[0])))
    return found


def _timed(recogniser: Recogniser, samples: np.ndarray) -> tuple[tuple, float]:
    started = time.perf_counter()
    match, confidence = recogniser.best_guess(samples, WORK_RATE)
    return (match, confidence), (time.perf_counter() - started) * 1000


def _percentiles(ms: list[float]) -> str:
    return f"{np.percentile(ms, 50):.1f} / {np.percentile(ms, 95):.1f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.shards", description=__doc__.splitlines()[0])
    p.add_argument("--corpus", type=Path, required=True)
    p.add_argument("--split", choices=corpus.SPLITS, default=corpus.DEFAULT_SPLIT)
    p.add_argument("--catalog", type=Path, help="a catalog of the corpus's catalog tracks (default: register them anew)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--write-md", type=Path, help="also write the report here (scripts/benchmarks.sh)")
    args = p.parse_args(argv)
    material = corpus.load(args.corpus, args.seed, quick=False, split=args.split)
    m = machine.describe()
    print(" ".join(f"{k}={v}" for k, v in m.items()), file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="bench-shards-") as scratch_dir, ExitStack() as stack:
        scratch = Path(scratch_dir)
        full = str(args.catalog) if args.catalog else str(scratch / "catalog")
        if args.catalog is None:
            print(f"registering {len(material.catalog)} tracks ...", file=sys.stderr, flush=True)
            Recogniser.open(full, create=True).register([str(t.path) for t in material.catalog], progress=True)
        catalog = Catalog(full)
        started = time.perf_counter()
        split(catalog, str(scratch / "shards"), SHARDS)
        split_seconds = time.perf_counter() - started
        urls = []
        for i in range(SHARDS):
            env = {
                **os.environ,
                "STORAGE_BACKEND": "local",
                "DATA_DIR": str(scratch / f"data-{i}"),
                "CATALOG_URI": shard_uri(str(scratch / "shards"), i),
                "SHARD_TOKEN": TOKEN,
                "CATALOG_SHARDS": "",
                "LOG_LEVEL": "WARNING",
            }
            urls.append(stack.enter_context(running_function(env, scratch / f"shard-{i}.log", healthy=True)).url)
        single, sharded = Recogniser(catalog), Recogniser(Shards(tuple(urls), TOKEN))
        # The catalog the shards answer as: this one, read with their N instances' budget.
        catalog.budget = sharded.catalog.budget
        held = [len(Catalog(shard_uri(str(scratch / "shards"), i)).songs) for i in range(SHARDS)]

        replay = queries(material, args.seed)
        _timed(sharded, replay[0][1])  # connections opened before the timing
        equal, by_kind, single_ms, sharded_ms = 0, {}, [], []
        bar = Progress(len(replay), "queries")
        for kind, samples in replay:
            one, a = _timed(single, samples)
            many, b = _timed(sharded, samples)
            single_ms.append(a)
            sharded_ms.append(b)
            same = one == many
            equal += same
            seen = by_kind.setdefault(kind, [0, 0])
            seen[0] += same
            seen[1] += 1
            bar.step()

    kinds = ", ".join(f"{kind} {e}/{n}" for kind, (e, n) in by_kind.items())
    command = f"python -m bench.shards --corpus {args.corpus} --split {args.split}" + (f" --catalog {args.catalog}" if args.catalog else "")
    text = "\n".join(
        [
            "## Catalog shards (`python -m bench.shards`)",
            "",
            f"{m['date']}; {m['cpu']}, {m['cores']} cores, {m['ram']}. Command: `{command}`. The catalog: {len(catalog.songs):,} songs"
            f" ({catalog.postings_count:,} postings; the {args.split} split's {len(material.catalog)} catalogued"
            f" tracks{', and synthetic songs' if len(catalog.songs) > len(material.catalog) else ''}) split into {SHARDS} shards of"
            f" {' and '.join(map(str, held))} songs (in {split_seconds:.1f} s), each served by its own functions-framework"
            " process on loopback; every query recognised through the whole catalog in-process and through the"
            " fan-out to both shards (2 HTTP round trips to each per vote, up to 4 votes per recognition). The"
            " shards share this machine's cores with the recogniser that asks them.",
            "",
            "| | queries | answers equal to the single catalog's | latency p50 / p95 (ms) |",
            "| --- | --- | --- | --- |",
            f"| single catalog | {len(replay)} | | {_percentiles(single_ms)} |",
            f"| 2 shards, fan-out | {len(replay)} | {equal}/{len(replay)} ({kinds}) | {_percentiles(sharded_ms)} |",
            "",
        ]
    )
    print(text)
    if args.write_md:
        args.write_md.parent.mkdir(parents=True, exist_ok=True)
        args.write_md.write_text(text)
        print(f"written to {args.write_md}", file=sys.stderr)
    return 0 if equal == len(replay) else 1


if __name__ == "__main__":
    raise SystemExit(main())

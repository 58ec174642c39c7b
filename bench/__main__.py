"""python -m bench --corpus DIR --out DIR [--split test] [--quick] [--queries-per-condition N] [--seed 1] [--write-md FILE]

Registers the catalog of the corpus (cached under --out), evaluates every query condition of a split
on at most two processes, measures registration and query speed single-threaded, and prints the
report; the report, a results JSON and the accuracy-vs-SNR plot are written under --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import shlex
import sys
import time
from pathlib import Path

from bench import accuracy, catalog_build, corpus, evaluate, machine, queries, report, speed
from function.engine.catalog import Catalog
from function.engine.recogniser import DEFAULT_THRESHOLD


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[1])
    p.add_argument("--corpus", type=Path, help="fetched corpus (music/, noise/, speech/, ir/); --quick falls back to tests/data")
    p.add_argument("--out", type=Path, default=Path("bench/out"), help="report, plot and cached catalogs")
    p.add_argument("--quick", action="store_true", help="a ~60-s smoke run: few songs, few queries")
    p.add_argument("--queries-per-condition", type=int, help="excerpts per group (default 150, quick 5)")
    p.add_argument("--split", choices=corpus.SPLITS, default=corpus.DEFAULT_SPLIT, help="dev: for tuning; test: for reporting")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--write-md", type=Path, help="also write the report here (e.g. BENCHMARKS.md)")
    p.add_argument("--processes", type=int, default=evaluate.MAX_PROCESSES, help="query evaluation processes (at most 2)")
    return p.parse_args(argv)


def _write_rows(rows: list[evaluate.Row], path: Path) -> None:
    """Every query's outcome, to find which songs and conditions fail without rerunning."""
    lines = ["condition\ttruth\tguess\tconfidence\taccepted\toffset_error\trepeat_offset"]
    for r in rows:
        error = "" if r.offset_error is None else f"{r.offset_error:.2f}"
        lines.append(f"{r.condition.name}\t{r.truth or ''}\t{r.guess or ''}\t{r.confidence:.4f}\t{int(r.accepted)}\t{error}\t{int(r.repeat_offset)}")
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    n = args.queries_per_condition or (5 if args.quick else 150)
    info = machine.describe()
    print(" | ".join(f"{k}: {v}" for k, v in info.items()), file=sys.stderr)

    data = corpus.load(args.corpus, args.seed, args.quick, args.split)
    print(data.describe(), file=sys.stderr)
    catalog_dir, truth_of, built = catalog_build.real_catalog(data.catalog, args.out)
    stats = Catalog(str(catalog_dir)).stats()

    excerpts = queries.plan(data, n, args.seed)
    rows = evaluate.run(str(catalog_dir), truth_of, excerpts, args.processes)
    results = accuracy.summarise(rows)
    _write_rows(rows, args.out / "queries.tsv")

    speed_tracks = data.catalog[: 3 if args.quick else 15]
    print(f"registration speed: {len(speed_tracks)} tracks, one core ...", file=sys.stderr)
    registration = catalog_build.registration_speed(speed_tracks, args.out / "registration-scratch")

    latency_file = speed.latency_queries(excerpts, truth_of, 10 if args.quick else 60, args.out / "latency_queries.npz")
    sizes = [0, 200] if args.quick else [0, 1000, 10000]
    sqlite_max = 2_000_000 if args.quick else 40_000_000
    scaling = speed.scaling(catalog_dir, sizes, args.out, latency_file, args.seed, sqlite_max)

    run = report.Run(
        machine=info,
        command="python -m bench " + shlex.join(sys.argv[1:] if argv is None else argv),
        corpus=data.describe() + f"; catalog built in {built['built_seconds']:.0f} s on {built['workers']} processes",
        catalog=stats,
        threshold=DEFAULT_THRESHOLD,
        results=results,
        curves=accuracy.curves(results),
        registration=registration,
        scaling=scaling,
    )
    text = report.markdown(run)
    print(text)
    (args.out / "BENCHMARKS.md").write_text(text)
    report.plot(run.curves, results, args.out / "accuracy_vs_snr.png")
    if args.write_md:
        args.write_md.write_text(text)
        shutil.copyfile(args.out / "accuracy_vs_snr.png", args.write_md.parent / "accuracy_vs_snr.png")
    (args.out / "results.json").write_text(json.dumps(dataclasses.asdict(run), indent=1, default=str))
    print(f"done in {time.perf_counter() - started:.0f} s; report, plot and results.json in {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

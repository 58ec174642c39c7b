"""python -m bench --corpus DIR --out DIR [--split test] [--baseline-rev d02d65c] [--quick] [--queries-per-condition N] [--seed 1] [--write-md FILE]

Renders every query condition of a split once (at most two processes) and puts the same queries
to a baseline revision and to the working tree, each registering its own catalog of the corpus
(cached under --out); measures the working tree's registration and query speed single-threaded,
and prints the report. The report, a results JSON, every query's outcome per engine
(queries.tsv, to tune a threshold from the dev split's rows without rerunning) and the
accuracy-vs-SNR plot are written under --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import shutil
import sys
import time
from pathlib import Path

from bench import accuracy, catalog_build, corpus, evaluate, machine, queries, report, revisions, speed
from function.engine.catalog import Catalog

DEFAULT_BASELINE = "d02d65c"  # the engine before the wearer work: fingerprint, catalog format 2


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[1])
    p.add_argument("--corpus", type=Path, help="fetched corpus (music/, noise/, speech/, ir/); --quick falls back to tests/data")
    p.add_argument("--out", type=Path, default=Path("bench/out"), help="report, plot, catalogs and the baseline's worktree")
    p.add_argument("--quick", action="store_true", help="a ~60-s smoke run: few songs, few queries")
    p.add_argument("--queries-per-condition", type=int, help="excerpts per group (default 150, quick 5)")
    p.add_argument("--split", choices=corpus.SPLITS, default=corpus.DEFAULT_SPLIT, help="dev: for tuning; test: for reporting")
    p.add_argument("--baseline-rev", default=DEFAULT_BASELINE, help=f"git revision to compare with (default {DEFAULT_BASELINE})")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--write-md", type=Path, help="also write the report here (e.g. BENCHMARKS.md)")
    p.add_argument("--processes", type=int, default=evaluate.MAX_PROCESSES, help="query rendering processes (at most 2)")
    return p.parse_args(argv)


def _write_rows(rows: list[evaluate.Row], path: Path) -> None:
    """Every query's outcome per engine, to find which songs and conditions fail, or to set a
    threshold, without rerunning."""
    lines = ["engine\tcondition\ttruth\tother\tguess\tconfidence\taccepted\tsource\toffset_error\trepeat_offset"]
    for r in rows:
        error = "" if r.offset_error is None else f"{r.offset_error:.2f}"
        lines.append(
            f"{r.engine}\t{r.condition.name}\t{r.truth or ''}\t{r.other or ''}\t{r.guess or ''}\t{r.confidence:.4f}"
            f"\t{int(r.accepted)}\t{r.unit}\t{error}\t{int(r.repeat_offset)}"
        )
    path.write_text("\n".join(lines) + "\n")


def _source(engine: revisions.Engine) -> str:
    """Where an engine's code came from, for the report."""
    if engine.tree == revisions.ROOT:
        return f"{engine.name} at {engine.tree}"
    return f"commit {engine.key[:12]}, checked out at {engine.tree}"


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    n = args.queries_per_condition or (5 if args.quick else 150)
    info = machine.describe()
    print(" | ".join(f"{k}: {v}" for k, v in info.items()), file=sys.stderr)

    data = corpus.load(args.corpus, args.seed, args.quick, args.split)
    print(data.describe(), file=sys.stderr)
    engines = [revisions.baseline(args.baseline_rev, args.out), revisions.working_tree()]
    catalogs = {e.name: revisions.catalog(e, data.catalog, args.out) for e in engines}
    working_dir, working_truth = catalogs[engines[-1].name]

    excerpts = queries.plan(data, n, args.seed)
    directories = {name: directory for name, (directory, _) in catalogs.items()}
    with evaluate.engines_running(engines, directories, args.out) as running:
        rows = evaluate.run(running, {name: truth for name, (_, truth) in catalogs.items()}, excerpts, data, args.processes)
        described = [{"name": e.name, "source": _source(e), "module": r.module, "threshold": r.threshold} for e, r in zip(engines, running)]
    results = accuracy.summarise(rows)
    _write_rows(rows, args.out / "queries.tsv")

    speed_tracks = data.catalog[: 3 if args.quick else 15]
    print(f"registration speed: {len(speed_tracks)} tracks, one core ...", file=sys.stderr)
    registration = catalog_build.registration_speed(speed_tracks, args.out / "registration-scratch")

    latency_file = speed.latency_queries(excerpts, working_truth, 10 if args.quick else 60, args.out / "latency_queries.npz")
    sizes = [0, 200] if args.quick else [0, 1000, 10000]
    sqlite_max = 2_000_000 if args.quick else 40_000_000
    scaling = speed.scaling(working_dir, sizes, args.out, latency_file, args.seed, sqlite_max)

    run = report.Run(
        machine=info,
        command="python -m bench " + shlex.join(sys.argv[1:] if argv is None else argv),
        corpus=data.describe(),
        engines=described,
        catalog=Catalog(str(working_dir)).stats(),
        results=results,
        curves=accuracy.curves(results),
        registration=registration,
        scaling=scaling,
    )
    text = report.markdown(run)
    print(text)
    (args.out / "BENCHMARKS.md").write_text(text)
    report.plot(run, args.out / "accuracy_vs_snr.png")
    if args.write_md:
        args.write_md.write_text(text)
        shutil.copyfile(args.out / "accuracy_vs_snr.png", args.write_md.parent / "accuracy_vs_snr.png")
    (args.out / "results.json").write_text(json.dumps(dataclasses.asdict(run), indent=1, default=str))
    print(f"done in {time.perf_counter() - started:.0f} s; report, plot, queries.tsv and results.json in {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

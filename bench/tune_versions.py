"""Set the version thresholds on the dev split: when is a new recording another version of a song?

`python -m bench.tune_versions --corpus /tmp/corpus --split dev [--songs 12] [--record]`

Registration (function/engine/register_run.py, group_versions) calls a new recording a version of
a registered song when the vote of its first two minutes' catalog landmarks names that song with
at least EngineConfig.version_min_confidence and lands at least version_min_share of them on one
offset. This measures both on the split only: `--songs` of its catalogued tracks are registered
alone, each is remade as bench.versions' recordings (MP3, AAC, a remaster, an edit that starts
15 s in), and every remade recording votes against the catalog as registration would (the
positives); every track of the split that is not in that catalog (its other catalogued tracks
and its unknown music) votes too (the negatives: another song, never a version). Printed, and
with --record written to bench/tuning/versions-<split>.md: the lowest confidence and share of
each kind of version, the highest of the other songs, and what the configured thresholds do.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from bench import corpus, machine
from bench.versions import VERSIONS, make_versions
from function.engine.config import CONFIG
from function.engine.recogniser import Recogniser
from function.engine.register_run import RegisterResult, analyse_file, version_vote
from function.progress import Progress

RECORDS = Path(__file__).resolve().parent / "tuning"


def evidence(recogniser: Recogniser, path: Path) -> tuple[str | None, float, float]:
    """(song named, confidence, share of the landmarks on its pile) of one recording's vote, as
    group_versions takes it (register_run.version_vote)."""
    item = analyse_file(str(path))
    if isinstance(item, RegisterResult):
        raise SystemExit(f"{path}: {item.error}")
    v, landmarks = version_vote(recogniser.catalog, item)
    if v is None:
        return None, 0.0, 0.0
    return v.head.song_id, v.confidence, v.score / landmarks


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.tune_versions", description=__doc__.splitlines()[0])
    p.add_argument("--corpus", type=Path, required=True)
    p.add_argument("--split", choices=corpus.SPLITS, default="dev")
    p.add_argument("--songs", type=int, default=12)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("bench/out/tune_versions"))
    p.add_argument("--record", action="store_true", help=f"also write the report to {RECORDS}/versions-<split>.md")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    material = corpus.load(args.corpus, args.seed, quick=False, split=args.split)
    rng = np.random.default_rng(args.seed)
    chosen = set(rng.permutation(len(material.known))[: args.songs].tolist())
    songs = [material.known[i] for i in sorted(chosen)]
    others = [t for i, t in enumerate(material.known) if i not in chosen] + material.held_out
    catalog_dir = args.out / f"catalog-{args.split}-{args.seed}-{args.songs}"
    recogniser = Recogniser.open(str(catalog_dir), create=True)
    if not recogniser.catalog.songs:
        recogniser.register([str(t.path) for t in songs], workers=2)
    by_path = {str(Path(src).resolve()): s.song_id for s in recogniser.catalog.songs for src in s.sources}

    bar = Progress(len(songs) * len(VERSIONS) + len(others), "recordings")
    positives: dict[str, list[tuple[bool, float, float]]] = {kind: [] for kind in VERSIONS}
    for t in songs:
        for kind, path in make_versions(t, args.out / "files" / t.package).items():
            if kind == "original":
                continue
            named, confidence, share = evidence(recogniser, path)
            positives[kind].append((named == by_path[str(t.path.resolve())], confidence, share))
            bar.step()
    negatives = []
    for t in others:
        negatives.append(evidence(recogniser, t.path)[1:])
        bar.step()

    def grouped(confidence: float, share: float) -> bool:
        return confidence >= CONFIG.version_min_confidence and share >= CONFIG.version_min_share

    rows = []
    for kind, found in positives.items():
        right = [f for f in found if f[0]]
        rows.append(
            f"| {kind} | {len(found)} | {len(right)} | {min(c for _, c, _ in found):.3f} | {min(s for _, _, s in found):.3f} |"
            f" {sum(r and grouped(c, s) for r, c, s in found)} |"
        )
    conf = np.array([c for c, _ in negatives])
    share = np.array([s for _, s in negatives])
    m = machine.describe()
    text = "\n".join(
        [
            f"## Version thresholds on the {args.split} split (`python -m bench.tune_versions --corpus CORPUS --split {args.split}"
            f" --songs {args.songs} --seed {args.seed}`)",
            "",
            f"{m['date']}; {m['cpu']}, {m['cores']} cores. {len(songs)} catalogued tracks of the {args.split} split registered"
            f" alone; each remade as {', '.join(VERSIONS)} (bench.versions); {len(others)} other tracks of the split"
            " (catalogued elsewhere, and unknown music) as other songs. Each recording's first two minutes of catalog"
            " landmarks vote against the catalog as registration does.",
            f"Configured: version_min_confidence {CONFIG.version_min_confidence:g}, version_min_share {CONFIG.version_min_share:g}.",
            "",
            "| version | recordings | voted for their song | lowest confidence | lowest share | grouped at the configured thresholds |",
            "| --- | --- | --- | --- | --- | --- |",
            *rows,
            "",
            f"Other songs: {len(negatives)}; highest confidence {conf.max():.3f} (median {np.median(conf):.3f}), highest share"
            f" {share.max():.4f} (median {np.median(share):.4f}); grouped at the configured thresholds:"
            f" {sum(grouped(c, s) for c, s in negatives)}.",
            "",
        ]
    )
    print(text)
    if args.record:
        RECORDS.mkdir(exist_ok=True)
        (RECORDS / f"versions-{args.split}.md").write_text(text)
    print("done", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

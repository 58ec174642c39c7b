"""Versions of one song in the catalog: are they grouped, and is the song named from each?

`python -m bench.versions --corpus /tmp/corpus --split test [--songs 12] [--baseline-rev d02d65c]`

A real library holds a song more than once: FLAC and MP3 of one album, a remaster, a radio edit.
For `--songs` of the split's catalogued tracks this makes four more recordings with ffmpeg (MP3
128 kbit/s, AAC in M4A, a "remaster" with another EQ, compression and level, and an "edit" that
drops the first 15 s and ends after two minutes), registers them beside the whole catalog with
each engine's own CLI, and queries 10-s excerpts of every recording, clean and under the split's
street/ambient noise at 0 dB. An answer is right when it names the song: for the working tree
the song all its versions are grouped under; for a revision that does not group versions, any
of the song's recordings (it cannot know they are one song, but naming any is still right).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench import corpus, machine, revisions
from bench.audio import WORK_RATE, mix, noise_segment, read_audio, to_pcm16
from bench.evaluate import engines_running
from function.progress import Progress

# How each version is made from the original file: ffmpeg output options and the file suffix.
VERSIONS: dict[str, tuple[str, list[str]]] = {
    "mp3 128k": (".mp3", ["-c:a", "libmp3lame", "-b:a", "128k"]),
    "aac m4a": (".m4a", ["-c:a", "aac", "-b:a", "128k"]),
    "remaster": (
        ".flac",
        ["-af", "equalizer=f=120:t=q:w=1:g=4,equalizer=f=3000:t=q:w=1:g=-3,acompressor=threshold=-18dB:ratio=3,volume=2dB"],
    ),
    "edit": (".flac", ["-ss", "15", "-t", "120"]),
}
EDIT_START = 15.0
EXCERPT_SECONDS = 10.0
SNRS: tuple[float | None, ...] = (None, 0.0)


def _ffmpeg(arguments: list[str]) -> None:
    if shutil.which("ffmpeg") is None:
        raise SystemExit("bench.versions needs ffmpeg (with libmp3lame) on PATH")
    subprocess.run(["ffmpeg", "-v", "error", "-y", *arguments], check=True)


def make_versions(track: corpus.Track, folder: Path) -> dict[str, Path]:
    """{kind: file} for the original and each of VERSIONS, made once under `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    made = {"original": track.path}
    for kind, (suffix, options) in VERSIONS.items():
        target = folder / f"{track.path.stem} ({kind}){suffix}"
        if not target.is_file():
            _ffmpeg(["-i", str(track.path), *options, str(target)])
        made[kind] = target
    return made


def _as_wav(path: Path, scratch: Path) -> str:
    """A file soundfile reads (M4A is not one), for cutting the query excerpts."""
    if path.suffix.lower() in (".wav", ".flac", ".ogg"):
        return str(path)
    wav = scratch / (path.name + ".wav")
    _ffmpeg(["-i", str(path), "-ac", "1", "-ar", str(WORK_RATE), str(wav)])
    return str(wav)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.versions", description=__doc__.splitlines()[0])
    p.add_argument("--corpus", type=Path, required=True)
    p.add_argument("--split", choices=corpus.SPLITS, default=corpus.DEFAULT_SPLIT)
    p.add_argument("--songs", type=int, default=12)
    p.add_argument("--baseline-rev", default="d02d65c")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("bench/out/versions"))
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    material = corpus.load(args.corpus, args.seed, quick=False, split=args.split)
    rng = np.random.default_rng(args.seed)
    songs = [material.known[i] for i in sorted(rng.permutation(len(material.known))[: args.songs])]
    recordings = {t.path: make_versions(t, args.out / "files" / t.package) for t in songs}
    extra = [corpus.Track(f, "versions", t.seconds) for t in songs for k, f in recordings[t.path].items() if k != "original"]
    engines = [revisions.baseline(args.baseline_rev, args.out), revisions.working_tree()]
    catalogs, truths = {}, {}
    for engine in engines:
        catalogs[engine.name], truths[engine.name] = revisions.catalog(engine, material.catalog + extra, args.out)

    queries, meta = [], []
    with tempfile.TemporaryDirectory(prefix="bench-versions-") as scratch_dir:
        scratch = Path(scratch_dir)
        for t in songs:
            for kind, path in recordings[t.path].items():
                source = _as_wav(path, scratch)
                length = t.seconds - (EDIT_START if kind == "edit" else 0.0)
                start = float(rng.uniform(0, max(0.0, min(length, 120.0) - EXCERPT_SECONDS - 1)))
                clean = read_audio(source, start, EXCERPT_SECONDS)
                noise, _ = noise_segment([str(n) for n in material.noise], rng, len(clean))
                for snr in SNRS:
                    x = clean if snr is None else mix(clean, noise, snr)
                    queries.append(to_pcm16(x))
                    meta.append((t.path, kind, snr))
        batch = scratch / "versions.npz"
        np.savez(batch, rates=np.full(len(queries), WORK_RATE), **{f"q{i}": q for i, q in enumerate(queries)})
        answers = {}
        bar = Progress(len(engines), "engines")
        with engines_running(engines, catalogs, args.out) as running:
            for engine in running:
                engine.send(batch)
                answers[engine.name] = engine.answers()
                bar.step()

    rows = []
    for engine in engines:
        truth = truths[engine.name]
        grouped = sum(truth[str(f.resolve())] == truth[str(t.path.resolve())] for t in songs for f in recordings[t.path].values())
        for kind in ["original", *VERSIONS]:
            for snr in SNRS:
                right, confidences = 0, []
                for (original, k, s), (guess, confidence, _, accepted) in zip(meta, answers[engine.name]):
                    if (k, s) != (kind, snr):
                        continue
                    song_ids = {truth[str(f.resolve())] for f in recordings[original].values()}
                    if accepted and guess in song_ids:
                        right += 1
                    confidences.append(confidence)
                label = "clean" if snr is None else f"{snr:+g} dB"
                rows.append(
                    f"| {engine.name} | {kind} | {label} | {right}/{len(songs)} | {np.median(confidences):.2f} |"
                    f" {grouped}/{len(songs) * len(recordings[songs[0].path])} |"
                )
    m = machine.describe()
    text = "\n".join(
        [
            "## Versions of one song in the catalog (`python -m bench.versions`)",
            "",
            f"{m['date']}; {m['cpu']}, {m['cores']} cores. Command: `python -m bench.versions --corpus {args.corpus}"
            f" --split {args.split} --songs {args.songs} --baseline-rev {args.baseline_rev}`. {len(songs)} songs of the"
            f" {args.split} split, each registered as 5 recordings beside the {len(material.catalog)}-track catalog;"
            " one 10-s excerpt of each recording, clean and at 0 dB. \"Grouped\": recordings whose catalog entry is"
            " their song's (the baseline keeps every recording as its own song).",
            "",
            "| engine | recording queried | condition | named right (accepted) | median confidence | grouped |",
            "| --- | --- | --- | --- | --- | --- |",
            *rows,
            "",
        ]
    )
    print(text)
    (args.out / "versions.md").write_text(text)
    print(f"written to {args.out / 'versions.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

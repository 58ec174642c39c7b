"""Build the benchmark corpus from Debian packages, so that BENCHMARKS.md can be reproduced from a
clone:

    python -m bench.corpus_build /tmp/corpus      # ~650 MB downloaded, ~700 MB written, ~1 min

Debian ships real recorded music (game soundtracks: orchestral, electronic, rock), ambient
recordings, speech and room responses under free licences (each package's debian/copyright),
from an archive every machine here reaches through apt, CI included; the audio is never committed.
bench/corpus_manifest.tsv lists what is taken from which package. For each package this
`apt-get download`s its .deb into a temporary folder (nothing is installed), unpacks it with
`dpkg-deb -x`, and copies the listed files to OUT/<kind>/<package>/ — the layout bench/corpus.py
reads and splits by package — then lists them in OUT/index.tsv (kind, package, file).

index.tsv is rewritten after every package, so it is also the record of what is done: a second run
skips every package whose files are listed and present, and a run that stopped resumes at the
package it was on. A file is written under a temporary name and renamed, so no half-written file
ever sits under a name the benchmarks read. Needs apt-get (with current package lists: `apt-get
update`) and dpkg-deb, only when something is left to build.
"""

from __future__ import annotations

import argparse
import fnmatch
import glob
import os
import posixpath
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile

MANIFEST = Path(__file__).resolve().with_name("corpus_manifest.tsv")
KINDS = ("music", "noise", "speech", "ir")
HEADER = ("kind", "package", "path", "mix_with")
INDEX_HEADER = ("kind", "package", "file")
TOOLS = ("apt-get", "dpkg-deb")
GLOB_CHARACTERS = "*?["


class BuildError(Exception):
    """A step that cannot go on; its message is the one line the command prints."""


@dataclass(frozen=True)
class Entry:
    """One manifest line: the file(s) `path` of Debian package `package`, as corpus `kind`.

    `path` is absolute inside the package, may glob (`*`) a folder's files, or name members of a
    zip inside the package as `archive!member`. `mix_with` names stems in the path's folder that
    are summed with it into one track: Frets on Fire ships a song's band and its guitar apart.
    """

    kind: str
    package: str
    path: str
    mix_with: tuple[str, ...] = ()


def read_manifest(path: Path = MANIFEST) -> list[Entry]:
    """The entries of a manifest (tab-separated, `#` lines are comments), checked line by line so
    that a typo fails before anything is downloaded."""
    entries: list[Entry] = []
    header_seen = False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = tuple(line.split("\t"))
        if not header_seen:
            if fields != HEADER:
                raise BuildError(f"{path}:{number}: header must be {' '.join(HEADER)}, got {' '.join(fields)}")
            header_seen = True
            continue
        if len(fields) != len(HEADER):
            raise BuildError(f"{path}:{number}: {len(fields)} fields, expected {len(HEADER)}")
        kind, package, file, mix_with = fields
        if kind not in KINDS:
            raise BuildError(f"{path}:{number}: kind {kind!r} is not one of {', '.join(KINDS)}")
        if not file.startswith("/"):
            raise BuildError(f"{path}:{number}: the path inside the package must be absolute: {file}")
        entries.append(Entry(kind, package, file, tuple(s for s in mix_with.split("+") if s)))
    return entries


def plan(entries: list[Entry]) -> dict[str, list[Entry]]:
    """The entries by package, packages in name order: one download and unpacking each."""
    by_package: dict[str, list[Entry]] = {}
    for entry in sorted(entries, key=lambda e: e.package):
        by_package.setdefault(entry.package, []).append(entry)
    return by_package


def target(entry: Entry, found: str) -> str:
    """Where `found` (a path inside the package, or a zip member) that `entry` matched goes,
    relative to the corpus folder: `<kind>/<package>/<name>`.

    A globbed file keeps the folders below the glob in its name (fillets-ng's clips in different
    levels share file names); a mix is named after its song's folder (every stem is song.ogg).
    """
    if entry.mix_with:
        name = posixpath.basename(posixpath.dirname(found)) + ".flac"
    elif "!" in entry.path:
        name = posixpath.basename(found)
    else:
        fixed = posixpath.dirname(entry.path.split("*", 1)[0])
        name = posixpath.relpath(found, fixed).replace("/", "_")
    return f"{entry.kind}/{entry.package}/{name}"


def expected_target(entry: Entry) -> str | None:
    """The target of an entry naming one file, known before its package is fetched; None for a
    glob, whose files only the package can tell."""
    if any(c in entry.path for c in GLOB_CHARACTERS):
        return None
    return target(entry, entry.path.split("!", 1)[-1])


def mix_stems(stems: list[Path], destination: Path) -> None:
    """Sum `stems` sample by sample (cut to the shortest), scaled down only if the sum clips, into
    16-bit FLAC: the song as the band plays it, the guitar included."""
    signals = [soundfile.read(str(p)) for p in stems]
    rate = signals[0][1]
    if any(r != rate for _, r in signals):
        raise BuildError(f"stems of {destination.name} differ in sample rate: {', '.join(map(str, stems))}")
    length = min(len(s) for s, _ in signals)
    mix = signals[0][0][:length].copy()
    for signal, _ in signals[1:]:
        mix += signal[:length]
    mix /= max(1.0, float(np.abs(mix).max()))
    part = destination.with_name(destination.name + ".part")
    soundfile.write(str(part), mix, rate, format="FLAC", subtype="PCM_16")
    os.replace(part, destination)


def _copy(source, destination: Path) -> None:
    """Copy the open binary `source` to `destination` through a temporary name."""
    part = destination.with_name(destination.name + ".part")
    with source, open(part, "wb") as sink:
        shutil.copyfileobj(source, sink)
    os.replace(part, destination)


def take(root: Path, entry: Entry, out: Path) -> list[str]:
    """Write the files `entry` names from the package unpacked at `root` into the corpus at `out`;
    their targets. A package that no longer has them is an error, not an empty part of the corpus."""
    targets: list[str] = []
    if "!" in entry.path:
        archive, pattern = entry.path.split("!", 1)
        with zipfile.ZipFile(root / archive.lstrip("/")) as zipped:
            for member in sorted(m for m in zipped.namelist() if fnmatch.fnmatchcase(m, pattern)):
                targets.append(target(entry, member))
                _make_parent(out / targets[-1])
                _copy(zipped.open(member), out / targets[-1])
    else:
        for found in sorted(glob.glob(glob.escape(str(root)) + entry.path)):
            if not os.path.isfile(found):
                continue
            inside = "/" + os.path.relpath(found, root)
            targets.append(target(entry, inside))
            _make_parent(out / targets[-1])
            if entry.mix_with:
                folder = Path(found).parent
                mix_stems([Path(found), *(folder / stem for stem in entry.mix_with)], out / targets[-1])
            else:
                _copy(open(found, "rb"), out / targets[-1])
    if not targets:
        raise BuildError(f"{entry.package} has nothing at {entry.path} (has the package changed?)")
    if len(set(targets)) != len(targets):
        raise BuildError(f"{entry.path} of {entry.package} gives two files one name")
    return targets


def _make_parent(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)


def _progress(message: str) -> None:
    print(f"corpus_build: {message}", file=sys.stderr, flush=True)


def _read_index(out: Path) -> dict[str, list[tuple[str, str, str]]]:
    """The rows of an existing index.tsv by package (none if there is no index)."""
    path = out / "index.tsv"
    if not path.is_file():
        return {}
    rows: dict[str, list[tuple[str, str, str]]] = {}
    for line in path.read_text(encoding="utf-8").splitlines()[1:]:
        kind, package, file = line.split("\t")
        rows.setdefault(package, []).append((kind, package, file))
    return rows


def _write_index(out: Path, rows: dict[str, list[tuple[str, str, str]]]) -> None:
    part = out / "index.tsv.part"
    lines = ["\t".join(INDEX_HEADER)] + ["\t".join(r) for r in sorted(r for rs in rows.values() for r in rs)]
    part.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(part, out / "index.tsv")


def is_built(entries: list[Entry], rows: list[tuple[str, str, str]], out: Path) -> bool:
    """Whether one package's `entries` are in the corpus at `out`, by its index `rows`: every file
    listed is present, every single-file entry is listed, and every glob has some file listed."""
    listed = {file for _, _, file in rows}
    if not listed or not all((out / file).is_file() for file in listed):
        return False
    for entry in entries:
        expected = expected_target(entry)
        if expected is None:
            if not any(file.startswith(f"{entry.kind}/{entry.package}/") for file in listed):
                return False
        elif expected not in listed:
            return False
    return True


def _run(command: list[str], cwd: Path, hint: str) -> None:
    """Run a tool quietly; on failure, a one-line error with the tool's own last complaint."""
    proc = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        complaint = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise BuildError(f"`{' '.join(command)}` failed: {complaint}{hint}")


def _fetch_package(package: str, entries: list[Entry], out: Path) -> list[str]:
    """Download and unpack `package` in a temporary folder (removed afterwards, pass or fail) and
    take its entries' files; their targets."""
    with tempfile.TemporaryDirectory(prefix="corpus_build-") as temporary:
        folder = Path(temporary)
        _run(["apt-get", "download", "-q", package], folder, " (run `apt-get update` if the package lists are old)")
        debs = sorted(folder.glob(f"{package}_*.deb"))
        if not debs:
            raise BuildError(f"apt-get download {package} left no .deb in {folder}")
        version = urllib.parse.unquote(debs[0].name.split("_")[1])
        _progress(f"  {package} {version}: {debs[0].stat().st_size / 1e6:.1f} MB, unpacking")
        unpacked = folder / "root"
        _run(["dpkg-deb", "-x", str(debs[0]), str(unpacked)], folder, "")
        return [file for entry in entries for file in take(unpacked, entry, out)]


def build(out: Path, entries: list[Entry]) -> dict[str, list[tuple[str, str, str]]]:
    """Build (or complete) the corpus at `out` from `entries`; its index rows by package."""
    packages = plan(entries)
    previous = _read_index(out)
    index = {p: rows for p, rows in previous.items() if p in packages and is_built(packages[p], rows, out)}
    todo = [p for p in packages if p not in index]
    if todo:
        missing = [tool for tool in TOOLS if shutil.which(tool) is None]
        if missing:
            raise BuildError(
                f"{' and '.join(missing)} not found: the corpus is built from Debian packages with apt-get and dpkg-deb"
            )
    out.mkdir(parents=True, exist_ok=True)
    for number, package in enumerate(packages, 1):
        if package in index:
            _progress(f"[{number}/{len(packages)}] {package}: {len(index[package])} files already there, skipped")
            continue
        _progress(f"[{number}/{len(packages)}] {package}: downloading")
        files = _fetch_package(package, packages[package], out)
        index[package] = sorted((file.split("/", 1)[0], package, file) for file in files)
        _write_index(out, index)
        kinds = "/".join(sorted({e.kind for e in packages[package]}))
        _progress(f"[{number}/{len(packages)}] {package}: {len(files)} {kinds} files")
    _write_index(out, index)
    return index


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.corpus_build", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the corpus folder, e.g. /tmp/corpus (created if missing)")
    args = parser.parse_args(argv)
    try:
        index = build(args.out.resolve(), read_manifest())
    except BuildError as error:
        print(f"corpus_build: {error}", file=sys.stderr)
        return 1
    counts = {kind: sum(1 for rows in index.values() for k, _, _ in rows if k == kind) for kind in KINDS}
    _progress("done: " + ", ".join(f"{n} {kind}" for kind, n in counts.items()) + f" in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

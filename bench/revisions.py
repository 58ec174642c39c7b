"""The source trees a benchmark measures side by side, and each one's own catalog.

The working tree is measured as it is on disk; a baseline revision is checked out with
`git worktree add` under the benchmark's output folder, so any two revisions compare, even ones
whose modules are laid out differently. Each tree registers the catalog with its own CLI
(`python -m function register`), so a revision is measured with its own catalog format, and
the catalog is cached by the tree's key (its commit, or the working tree's source) and the
track list. Used by bench/streams.py (engines served over HTTP) and `python -m bench` (engines
answering single windows through bench/engine_runner.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bench import corpus

ROOT = Path(__file__).resolve().parent.parent
# An engine's whole environment besides what a benchmark sets for it: nothing from this shell
# (a MIN_AUDIO_SECONDS or PYTHONPATH here would change what is measured).
PASSED_ENVIRONMENT = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")


@dataclass(frozen=True)
class Engine:
    name: str  # "working tree (...)" or "baseline <rev>"
    tree: Path
    key: str  # what its catalog depends on: the commit, or the working tree's source


def engine_env() -> dict[str, str]:
    return {k: os.environ[k] for k in PASSED_ENVIRONMENT if k in os.environ}


def git(*arguments: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *arguments], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def working_tree() -> Engine:
    """The tree this code runs from, keyed on its service source as it is on disk now."""
    h = hashlib.sha256()
    for path in sorted([*ROOT.glob("function/**/*.py"), ROOT / "main.py"]):
        h.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    changed = git("status", "--porcelain", "--", "function", "main.py")
    name = f"working tree ({git('rev-parse', '--short', 'HEAD')}{' + uncommitted changes' if changed else ''})"
    return Engine(name, ROOT, h.hexdigest()[:12])


def baseline(rev: str, out: Path) -> Engine:
    """The revision checked out under `out`, reused while it is that revision."""
    commit = git("rev-parse", "--verify", f"{rev}^{{commit}}")
    tree = (out / "worktrees" / commit[:12]).resolve()
    if not (tree / ".git").exists() or git("rev-parse", "HEAD", cwd=tree) != commit:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)
        shutil.rmtree(tree, ignore_errors=True)
        git("worktree", "prune")
        tree.parent.mkdir(parents=True, exist_ok=True)
        git("worktree", "add", "--detach", str(tree), commit)
    return Engine(f"baseline {rev}", tree, commit)


def _run_cli(engine: Engine, arguments: list[str], log: Path) -> str:
    """`python -m function ...` in the engine's own tree; its stdout, or exit with the log."""
    proc = subprocess.run(
        [sys.executable, "-m", "function", *arguments], cwd=engine.tree, env=engine_env(), capture_output=True, text=True
    )
    with log.open("a") as f:
        f.write(f"$ python -m function {shlex.join(arguments[:1])} ...\n{proc.stdout}{proc.stderr}\n")
    if proc.returncode != 0:
        raise SystemExit(f"{engine.name}: python -m function {arguments[0]} failed (exit {proc.returncode}); see {log}")
    return proc.stdout


def catalog_truth(text: str) -> dict[str, str]:
    """{registered file, resolved: song_id} from `python -m function catalog --json`: one JSON
    song per line, or one document (a list of songs, or an object holding "songs"); a song names
    its files in `sources` (and its versions' under `versions`), or one file in `source` or `path`."""
    try:
        document = json.loads(text)
        songs = document.get("songs", [document]) if isinstance(document, dict) else document
    except json.JSONDecodeError:
        songs = [json.loads(line) for line in text.splitlines() if line.strip()]
    truth = {}
    for song in songs:
        files = song.get("sources") or [song[k] for k in ("source", "path") if song.get(k)]
        # Another recording of a song (catalog format 3) is listed under it and named as it.
        files += [file for version in song.get("versions", []) for file in version["sources"]]
        for file in files:
            truth[str(Path(file).resolve())] = song["song_id"]
    return truth


def catalog(engine: Engine, tracks: list[corpus.Track], out: Path) -> tuple[Path, dict[str, str]]:
    """The engine's catalog of `tracks` (registered once per engine key and track list) and its
    {file: song_id}."""
    key = hashlib.sha256(json.dumps([engine.key, *(f"{t.path}:{t.path.stat().st_size}" for t in tracks)]).encode())
    folder = (out / "catalogs" / key.hexdigest()[:16]).resolve()
    log = folder / "cli.log"
    if not (folder / "registered").is_file():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        print(f"{engine.name}: registering {len(tracks)} tracks into {folder} ...", file=sys.stderr)
        _run_cli(engine, ["register", *(str(t.path.resolve()) for t in tracks), "--catalog", str(folder / "catalog"), "--quiet"], log)
        (folder / "registered").write_text(engine.name + "\n")
    truth = catalog_truth(_run_cli(engine, ["catalog", "--json", "--catalog", str(folder / "catalog")], log))
    missing = [t.path for t in tracks if str(t.path.resolve()) not in truth]
    if missing:
        raise SystemExit(f"{engine.name}: {len(missing)} tracks are not in its catalog, e.g. {missing[0]}")
    return folder / "catalog", truth

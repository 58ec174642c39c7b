"""`python -m function register | recognise | catalog | remove | simulate | omi-app` (a stable interface).

Every failure is one line on stderr naming the file, catalog or setting, and a non-zero exit:
1 when some of the work failed (a file that does not decode), 2 when the command could not run
at all (no catalog, a catalog path that is not a directory, no cloud credentials). A reader that
stops reading (`| head`) ends the command quietly.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from function import omi_app, simulate
from function.engine.decode import DecodeError, decode_query_file
from function.engine.songs import CatalogError
from function.engine.recogniser import Recogniser
from function.engine.shards import split
from function.webhook.naming import NAME_AT

DEFAULT_CATALOG = "./data/catalog"
RAW_SUFFIXES = (".pcm", ".raw")
ADC_LOGIN = "run `gcloud auth application-default login` (or set GOOGLE_APPLICATION_CREDENTIALS)"


class CommandError(Exception):
    """A command cannot run; the message (one line) says why and names the path or setting."""


def _catalog_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--catalog",
        default=os.environ.get("CATALOG_URI") or DEFAULT_CATALOG,
        help="catalog directory or gs://bucket/prefix (default: $CATALOG_URI, else ./data/catalog)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per line on stdout")


def _check_catalog_path(uri: str, create: bool) -> None:
    """Refuse a local catalog path that cannot be one before any work is done (registration
    fingerprints every file first): a file, a path through a file or, to register, a place this
    user cannot write."""
    if uri.startswith("gs://"):
        return
    path = Path(uri)
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        what = "is a file, not a catalog directory" if existing == path else f"{existing} is a file, not a directory"
        raise CommandError(f"--catalog {uri}: {what}")
    if create and not os.access(existing, os.W_OK | os.X_OK):
        raise CommandError(f"--catalog {uri}: cannot write in {existing}")


def _register(args: argparse.Namespace) -> int:
    _check_catalog_path(args.catalog, create=True)
    recogniser = Recogniser.open(args.catalog, create=True)
    started = time.perf_counter()
    results = recogniser.register(args.paths, workers=args.workers, progress=not args.quiet)
    elapsed = time.perf_counter() - started
    for r in results:
        if args.json:
            print(json.dumps(r.to_dict()), flush=True)
        elif r.status == "error":
            print(f"error      {r.error}", file=sys.stderr)
        else:
            version = f"  (a version of {r.version_of})" if r.version_of else ""
            print(f"{r.status:<10} {r.song_id}  {r.artist} - {r.title}{version}")
    counts = {s: sum(r.status == s for r in results) for s in ("added", "duplicate", "error")}
    audio = sum(r.duration_seconds for r in results)
    print(
        f"{len(results)} files in {elapsed:.1f}s: {counts['added']} added, {counts['duplicate']} duplicate,"
        f" {counts['error']} errors; {audio / max(elapsed, 1e-9):.0f}x real time;"
        f" catalog {args.catalog}: {len(recogniser.songs)} songs ({len(recogniser.catalog.songs)} recordings)",
        file=sys.stderr,
    )
    return 0 if results and counts["error"] < len(results) else 1


def _recognise(args: argparse.Namespace) -> int:
    _check_catalog_path(args.catalog, create=False)
    recogniser = Recogniser.open(args.catalog)
    failures = 0
    for path in args.files:
        started = time.perf_counter()
        try:
            samples, rate = decode_query_file(path, args.sample_rate)
            match = recogniser.recognise(samples, rate)
            error = None
        except DecodeError as exc:
            match, error = None, str(exc)
            failures += 1
        elapsed_ms = round((time.perf_counter() - started) * 1000, 1)
        if args.json:
            record = {"file": path, "match": match.to_dict() if match else None, "elapsed_ms": elapsed_ms}
            if match:
                record["webhook_would_name"] = match.confidence >= NAME_AT
            if error:
                record["error"] = error
            print(json.dumps(record), flush=True)
        elif error:
            print(f"error: {error}", file=sys.stderr)  # the message names the file
        elif match:
            print(f"{path}: {match.artist} - {match.title} {_where(match.offset_seconds)}"
                  f" (confidence {match.confidence:.2f}, score {match.score}, {elapsed_ms:.0f} ms){_naming_note(match.confidence)}")
        else:
            print(f"{path}: no match ({elapsed_ms:.0f} ms){_raw_rate_note(path, args.sample_rate)}")
    return 1 if failures else 0


def _where(offset_seconds: float) -> str:
    """Where the file is in the song; a negative offset means the song starts inside the file."""
    if offset_seconds < 0:
        return f"starting {-offset_seconds:.1f}s into the file"
    return f"at {offset_seconds:.1f}s"


def _naming_note(confidence: float) -> str:
    """The CLI answers from its own threshold; the webhook names a song only from NAME_AT."""
    if confidence >= NAME_AT:
        return ""
    return f"  (below the webhook's naming threshold {NAME_AT:g}: the webhook would not name it yet)"


def _raw_rate_note(path: str, sample_rate: int | None) -> str:
    """Raw PCM carries no rate: read at the wrong one, it is another speed and pitch, which
    matches nothing."""
    if not path.lower().endswith(RAW_SUFFIXES):
        return ""
    return f"  (read as {sample_rate} Hz raw PCM: if that is not its rate, pass the right --sample-rate)"


def _catalog(args: argparse.Namespace) -> int:
    _check_catalog_path(args.catalog, create=args.compact)
    if (args.split is None) != (args.out is None):
        raise CommandError("--split N and --out PREFIX go together")
    if args.split is not None and args.split < 1:
        raise CommandError(f"--split must be at least 1, got {args.split}")
    recogniser = Recogniser.open(args.catalog)
    if args.compact:
        before = len(recogniser.catalog.segments)
        started = time.perf_counter()
        compacted = recogniser.compact()
        after = len(recogniser.catalog.segments)
        what = f"{before} segments merged into {after}" if compacted else f"nothing to merge ({before} segments, no removed songs)"
        print(f"compact: {what} in {time.perf_counter() - started:.1f}s", file=sys.stderr)
    if args.split is not None:
        return _split(recogniser, args.split, args.out)
    if args.json:
        for song in recogniser.songs:
            print(json.dumps(song))
        return 0
    for song in recogniser.songs:
        print(f"{song['song_id']}  {song['duration_seconds']:7.1f}s  {song['artist']} - {song['title']}")
        for version in song["versions"]:
            print(f"  version {version['song_id']}  {version['duration_seconds']:7.1f}s  {', '.join(version['sources'])}")
    stats = recogniser.catalog.stats()
    print(
        f"{stats['songs']} songs ({stats['recordings']} recordings), {stats['duration_seconds'] / 60:.1f} min, {stats['hashes']} hashes,"
        f" {stats['bytes'] / 1e6:.1f} MB in {stats['segments']} segments"
    )
    return 0


def _split(recogniser: Recogniser, shards: int, prefix: str) -> int:
    for i in range(shards):
        _check_catalog_path(f"{prefix.rstrip('/')}/{i}", create=True)
    started = time.perf_counter()
    written = split(recogniser.catalog, prefix, shards)
    for shard in written:
        state = shard.state()
        print(f"{shard.uri}: {state['songs']} songs ({state['recordings']} recordings), {state['postings']} hashes")
    print(f"split {recogniser.catalog.uri} into {shards} shards in {time.perf_counter() - started:.1f}s", file=sys.stderr)
    return 0


def _remove(args: argparse.Namespace) -> int:
    _check_catalog_path(args.catalog, create=False)
    recogniser = Recogniser.open(args.catalog)
    unknown = [s for s in args.song_ids if s not in recogniser.catalog]
    removed = recogniser.remove(args.song_ids)
    for s in unknown:
        print(f"not in catalog: {s}", file=sys.stderr)
    print(f"removed {removed} songs; {len(recogniser.catalog.songs)} left", file=sys.stderr)
    return 1 if unknown else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m function", description="Song recognition for Omi.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("register", help="add audio files or folders (recursive) to the catalog")
    p.add_argument("paths", nargs="+")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _catalog_arg(p)
    p.set_defaults(run=_register)

    p = sub.add_parser("recognise", aliases=["recognize"], help="name the song in audio files")
    p.add_argument("files", nargs="+")
    p.add_argument("--sample-rate", type=int, default=None, help="rate of raw .pcm/.raw PCM16 files")
    _catalog_arg(p)
    p.set_defaults(run=_recognise)

    p = sub.add_parser("catalog", help="list the registered songs")
    p.add_argument("--compact", action="store_true", help="first merge the catalog's segments into one, without removed songs")
    p.add_argument("--split", type=int, metavar="N", help="write the catalog as N shard catalogs, OUT/0 .. OUT/N-1 (see README, Shards)")
    p.add_argument("--out", metavar="PREFIX", help="where --split writes: a directory or gs://bucket/prefix")
    _catalog_arg(p)
    p.set_defaults(run=_catalog)

    p = sub.add_parser("remove", help="remove songs by id")
    p.add_argument("song_ids", nargs="+")
    _catalog_arg(p)
    p.set_defaults(run=_remove)

    p = sub.add_parser("simulate", help="replay an audio file as an Omi device streams it")
    simulate.add_arguments(p)
    p.set_defaults(run=simulate.run)

    p = sub.add_parser("omi-app", help="print the Omi app manifest for a deployed function URL")
    omi_app.add_arguments(p)
    p.set_defaults(run=omi_app.run)
    return parser


def _one_line(text: str, limit: int = 400) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _cloud_reason(exc: Exception, catalog: str | None) -> str | None:
    """One line for a Google Cloud failure (no credentials, refused credentials, an API error),
    or None if `exc` is not one."""
    try:
        from google.api_core.exceptions import GoogleAPIError
        from google.auth.exceptions import DefaultCredentialsError, GoogleAuthError, RefreshError
    except ImportError:  # pragma: no cover - the cloud libraries are in requirements.txt
        return None
    where = f"{catalog}: " if catalog else ""
    if isinstance(exc, DefaultCredentialsError):
        return f"{where}no Google Cloud credentials: {ADC_LOGIN}"
    if isinstance(exc, RefreshError):
        return f"{where}Google Cloud refused the credentials ({_one_line(exc, 160)}): {ADC_LOGIN}"
    if isinstance(exc, GoogleAuthError):
        return f"{where}Google Cloud authentication failed: {_one_line(exc, 200)}"
    if isinstance(exc, GoogleAPIError):
        return f"{where}{_one_line(exc)}"
    return None


def _stdout_gone() -> None:
    """The reader went away (`| head`): point stdout at /dev/null so that the interpreter's
    final flush does not raise again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _fail(message: str, status: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return status


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    catalog = getattr(args, "catalog", None)
    try:
        status = args.run(args)
        sys.stdout.flush()  # here, where a reader that went away is caught, not at exit
        return status
    except BrokenPipeError:
        _stdout_gone()
        return 0
    except KeyboardInterrupt:
        return 130
    except (CatalogError, CommandError) as exc:
        return _fail(_one_line(exc), 2)
    except OSError as exc:
        # A path that is missing, not a directory or not writable, or a network failure.
        name = exc.filename if exc.filename is not None else catalog
        reason = (exc.strerror or "").lower() if exc.strerror else _one_line(exc)
        return _fail(f"{name}: {reason}" if name else reason, 2)
    except Exception as exc:
        reason = _cloud_reason(exc, catalog)
        if reason is None:
            raise
        return _fail(reason, 2)

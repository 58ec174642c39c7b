"""`python -m function register | recognise | catalog | remove | simulate | omi-app | link` (a stable interface).

Every failure is one line on stderr naming the file, catalog or setting, and a non-zero exit:
1 when some of the work failed (a file that does not decode), 2 when the command could not run
at all (no catalog, a catalog path that is not a directory, no cloud credentials, a file to
register that is missing). A reader that stops reading (`| head`) ends the command quietly. A
wrong option prints the usage of the command it was given to, not the list of commands.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

from function import omi_app, simulate
from function.config import UID_PATTERN, ConfigError, Settings
from function.engine.decode import AUDIO_SUFFIXES, DecodeError, decode_query_file
from function.engine.register_run import expand_paths
from function.engine.songs import CatalogError
from function.engine.recogniser import Recogniser
from function.engine.shards import split
from function.progress import plural
from function.webhook.naming import NAME_AT
from function.webhook.user_links import history_link

DEFAULT_CATALOG = "./data/catalog"
# Where `functions-framework` serves locally (the quick start's port) when no PUBLIC_URL is set.
LOCAL_BASE_URL = "http://localhost:8080"
RAW_SUFFIXES = (".pcm", ".raw")
ADC_LOGIN = "run `gcloud auth application-default login` (or set GOOGLE_APPLICATION_CREDENTIALS)"


class CommandError(Exception):
    """A command cannot run; the message (one line) says why and names the path or setting."""


def _files_to_register(paths: list[str]) -> list[str]:
    """Every audio file the paths name, or a CommandError before anything is fingerprinted or a
    catalog is created: a cloud URL (registration reads local files), a path that does not exist,
    or nothing to register at all. The paths are named as given."""
    remote = [p for p in paths if "://" in p]
    if remote:
        raise CommandError(f"{', '.join(remote)}: register reads local files and folders, not URLs: copy it from Cloud Storage first (gcloud storage cp)")
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise CommandError(f"{', '.join(missing)}: no such file or folder")
    files = expand_paths(paths)
    if not files:
        readable = " ".join(sorted(AUDIO_SUFFIXES))
        raise CommandError(f"{', '.join(paths)}: no audio files (registration reads {readable})")
    return files


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
        if not uri[len("gs://") :].split("/", 1)[0]:
            raise CommandError(f"--catalog {uri}: names no bucket (gs://BUCKET/PREFIX)")
        return
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:/", uri):
        # A mistyped URL (gs:/bucket) would otherwise become a local folder named "gs:".
        raise CommandError(f"--catalog {uri}: neither a local directory nor a gs://BUCKET/PREFIX URL")
    path = Path(uri)
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        what = "is a file, not a catalog directory" if existing == path else f"{existing} is a file, not a directory"
        raise CommandError(f"--catalog {uri}: {what}")
    if create and not os.access(existing, os.W_OK | os.X_OK):
        raise CommandError(f"--catalog {uri}: cannot write in {existing}")


def _register(args: argparse.Namespace) -> int:
    files = _files_to_register(args.paths)
    _check_catalog_path(args.catalog, create=True)
    recogniser = Recogniser.open(args.catalog, create=True)
    started = time.perf_counter()
    results = recogniser.register(files, workers=args.workers, progress=not args.quiet)
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
        f"{plural(len(results), 'file')} in {elapsed:.1f}s: {counts['added']} added, {plural(counts['duplicate'], 'duplicate')},"
        f" {plural(counts['error'], 'error')}; {audio / max(elapsed, 1e-9):.0f}x real time;"
        f" catalog {args.catalog}: {plural(len(recogniser.songs), 'song')} ({plural(len(recogniser.catalog.songs), 'recording')})",
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
        what = (
            f"{plural(before, 'segment')} merged into {after}"
            if compacted
            else f"nothing to merge ({plural(before, 'segment')}, no removed songs)"
        )
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
        f"{plural(stats['songs'], 'song')} ({plural(stats['recordings'], 'recording')}), {stats['duration_seconds'] / 60:.1f} min,"
        f" {plural(stats['hashes'], 'hash', 'hashes')}, {stats['bytes'] / 1e6:.1f} MB in {plural(stats['segments'], 'segment')}"
    )
    return 0


def _split(recogniser: Recogniser, shards: int, prefix: str) -> int:
    for i in range(shards):
        _check_catalog_path(f"{prefix.rstrip('/')}/{i}", create=True)
    started = time.perf_counter()
    written = split(recogniser.catalog, prefix, shards)
    for shard in written:
        state = shard.state()
        print(
            f"{shard.uri}: {plural(state['songs'], 'song')} ({plural(state['recordings'], 'recording')}),"
            f" {plural(state['postings'], 'hash', 'hashes')}"
        )
    print(f"split {recogniser.catalog.uri} into {plural(shards, 'shard')} in {time.perf_counter() - started:.1f}s", file=sys.stderr)
    return 0


def _remove(args: argparse.Namespace) -> int:
    _check_catalog_path(args.catalog, create=False)
    recogniser = Recogniser.open(args.catalog)
    unknown = [s for s in args.song_ids if s not in recogniser.catalog]
    removed = recogniser.remove(args.song_ids)
    for s in unknown:
        print(f"not in catalog: {s}", file=sys.stderr)
    print(f"removed {plural(removed, 'song')}; {plural(len(recogniser.catalog.songs), 'song')} left", file=sys.stderr)
    return 1 if unknown else 0


def _link(args: argparse.Namespace) -> int:
    """The uid's own history link, keyed with the secret the deployment keys it with (taken from
    this environment, as the function takes it), so an operator or a developer can open their
    own /me page without waiting for the day's first notification."""
    if not UID_PATTERN.fullmatch(args.uid):
        raise CommandError(f"--uid {args.uid!r} is not an Omi uid ([A-Za-z0-9_-], at most 128 characters)")
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        raise CommandError(str(exc)) from None
    base = (args.base_url or settings.public_url or LOCAL_BASE_URL).rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise CommandError(f"--base-url must be an http(s) URL, got {base!r}")
    link = history_link(base, settings.link_secret, args.uid)
    if link is None:
        raise CommandError(
            "no link secret: set USER_LINK_SECRET (or OMI_APP_SECRET, which it is derived from) to the deployment's"
        )
    print(link)
    return 0


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

    p = sub.add_parser(
        "link",
        help="print a user's own history link (/me/UID?key=...), keyed with USER_LINK_SECRET (else OMI_APP_SECRET)",
    )
    p.add_argument("--uid", required=True, help="the Omi user id")
    p.add_argument("--base-url", help=f"where the function is served (default: $PUBLIC_URL, else {LOCAL_BASE_URL})")
    p.set_defaults(run=_link)

    for command in sub.choices.values():
        command.set_defaults(usage_of=command)
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
    args, unknown = build_parser().parse_known_args(argv)
    if unknown:
        args.usage_of.error(f"unrecognized arguments: {' '.join(unknown)}")
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

"""`python -m function register | recognise | catalog | remove | simulate | omi-app` (a stable interface)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from function import omi_app, simulate
from function.engine.decode import DecodeError, decode_query_file
from function.engine.catalog import CatalogError
from function.engine.recogniser import Recogniser

DEFAULT_CATALOG = "./data/catalog"


def _catalog_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--catalog",
        default=os.environ.get("CATALOG_URI") or DEFAULT_CATALOG,
        help="catalog directory or gs://bucket/prefix (default: $CATALOG_URI, else ./data/catalog)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per line on stdout")


def _register(args: argparse.Namespace) -> int:
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
            if error:
                record["error"] = error
            print(json.dumps(record), flush=True)
        elif error:
            print(f"{path}: error: {error}", file=sys.stderr)
        elif match:
            print(
                f"{path}: {match.artist} - {match.title} at {match.offset_seconds:.1f}s"
                f" (confidence {match.confidence:.2f}, score {match.score}, {elapsed_ms:.0f} ms)"
            )
        else:
            print(f"{path}: no match ({elapsed_ms:.0f} ms)")
    return 1 if failures else 0


def _catalog(args: argparse.Namespace) -> int:
    recogniser = Recogniser.open(args.catalog)
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
        f" {stats['bytes'] / 1e6:.1f} MB"
    )
    return 0


def _remove(args: argparse.Namespace) -> int:
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except CatalogError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

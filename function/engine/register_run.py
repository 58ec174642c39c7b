"""A registration run: analyse files in parallel, de-duplicate by content, add, save once."""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from typing import Iterator

from function.engine.catalog import Catalog, Fingerprinted
from function.progress import Progress
from function.engine.recogniser import RegisterResult, analyse_file


def _analysed(files: list[str], workers: int) -> Iterator[Fingerprinted | RegisterResult]:
    if workers <= 1 or len(files) <= 1:
        yield from map(analyse_file, files)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(analyse_file, files, chunksize=1)


def register_files(
    catalog: Catalog, files: list[str], workers: int | None = None, progress: bool = False
) -> list[RegisterResult]:
    """One result per file, in input order; bad files come back as errors, never raise."""
    workers = workers or os.cpu_count() or 1
    bar = Progress(len(files), "registering", enabled=progress and bool(files))
    results: list[RegisterResult] = []
    pending: dict[str, Fingerprinted] = {}
    for path, item in zip(files, _analysed(files, workers)):
        if isinstance(item, RegisterResult):
            results.append(item)
            bar.step()
            continue
        song = item.song
        duplicate = song.song_id in catalog or song.song_id in pending
        if song.song_id in catalog:
            catalog.add_source(song.song_id, song.sources[0])
        elif song.song_id in pending:
            sources = pending[song.song_id].song.sources
            if song.sources[0] not in sources:
                sources.append(song.sources[0])
        else:
            pending[song.song_id] = item
        results.append(
            RegisterResult(
                file=path,
                status="duplicate" if duplicate else "added",
                song_id=song.song_id,
                title=song.title,
                artist=song.artist,
                duration_seconds=song.duration_seconds,
            )
        )
        bar.step(song.duration_seconds)
    catalog.add(list(pending.values()))
    if pending or any(r.status == "duplicate" for r in results) or not catalog.location.exists():
        catalog.save()
    return results

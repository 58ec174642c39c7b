"""Put every query to each engine (a baseline revision and the working tree), one row per query
and engine.

Queries are rendered once, on at most two processes, and the same int16 samples go to every
engine: each engine is a bench/engine_runner.py process in its own source tree (see
bench/revisions.py), loading the catalog its own CLI registered, so two revisions with different
module layouts and catalog formats answer side by side. An engine answers with its best guess
whatever the confidence (what a recogniser without rejection answers) and whether it accepts
it, by its own threshold.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import lru_cache
from itertools import islice
from pathlib import Path
from typing import Iterator

import numpy as np
from scipy.signal import stft

from bench import revisions
from bench.audio import read_audio
from bench.corpus import Corpus
from bench.queries import Condition, Excerpt, Query, render
from bench.speed import SINGLE_THREAD
from function.progress import Progress

MAX_PROCESSES = 2  # the benchmark machine has two shared cores
RUNNER = Path(__file__).resolve().parent / "engine_runner.py"
OFFSET_TOLERANCE = 0.5
SAME_MATERIAL_CORRELATION = 0.8  # log-spectrogram correlation of a literal repeat; see _same_material
ALIGN_SECONDS = 0.1
ALIGN_STEP = 320  # 20 ms at WORK_RATE


@dataclass(frozen=True)
class Row:
    engine: str
    condition: Condition
    truth: str | None  # song_id the query comes from (this engine's id); None if not in the catalog
    other: str | None  # a two-song query's other song_id
    guess: str | None  # best-voted song_id (the no-rejection answer), None if nothing voted
    confidence: float
    accepted: bool  # the engine's answer: the guess, if confidence >= its threshold
    unit: str  # the track, recording or excerpt an interval counts as one (Query.unit)
    offset_error: float | None  # |returned - true| seconds, when the guess is the right song
    repeat_offset: bool  # a wrong offset that lands on a literal repeat of the same music


class EngineProcess:
    """One engine's bench/engine_runner.py: loads its catalog, then answers batches of queries."""

    def __init__(self, engine: revisions.Engine, catalog: Path, log: Path) -> None:
        self.name = engine.name
        self.log = log
        with log.open("wb") as f:
            self._process = subprocess.Popen(
                [sys.executable, str(RUNNER), str(engine.tree), str(catalog)],
                cwd=engine.tree,
                env={**revisions.engine_env(), **SINGLE_THREAD},
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=f,
                text=True,
            )
        hello = self._read()
        self.module: str = hello["module"]
        self.threshold: float = hello["threshold"]

    def _read(self) -> dict:
        line = self._process.stdout.readline()
        if not line:
            raise SystemExit(f"{self.name}: the engine runner exited (code {self._process.wait()}); see {self.log}")
        return json.loads(line)

    def send(self, batch: Path) -> None:
        self._process.stdin.write(f"{batch}\n")
        self._process.stdin.flush()

    def answers(self) -> list[tuple[str | None, float, float | None, bool]]:
        return [tuple(a) for a in self._read()["answers"]]

    def close(self) -> None:
        """End of input: the runner finishes and exits (if it has not died already)."""
        try:
            self._process.stdin.close()
        except BrokenPipeError:
            pass
        self._process.wait()


@contextmanager
def engines_running(engines: list[revisions.Engine], catalogs: dict[str, Path], logs: Path) -> Iterator[list[EngineProcess]]:
    """A runner per engine, each with the catalog its own CLI registered; stopped afterwards."""
    with ExitStack() as stack:
        running = []
        for i, engine in enumerate(engines):
            process = EngineProcess(engine, catalogs[engine.name], logs / f"engine-{i}.log")
            stack.callback(process.close)
            running.append(process)
        yield running


def _log_spectrogram(x: np.ndarray) -> np.ndarray:
    _, _, z = stft(x, nperseg=1024, noverlap=512)
    return np.log(np.abs(z) + 1e-6).ravel()


@lru_cache(maxsize=256)
def _same_material(path: str, t1: float, t2: float, seconds: float) -> bool:
    """Game music loops: an offset is also right if the song at it sounds like the song at the
    true one. Literal repeats correlate above 0.85 in log-spectrogram once aligned to a few ms
    (hence the search around `t2`, whose resolution is a fingerprint frame); random passages of
    one piece share key and timbre but stayed below 0.65 on this corpus. Cached: both engines
    often return the same offset."""
    a = read_audio(path, t1, seconds)
    b = read_audio(path, max(0.0, t2 - ALIGN_SECONDS), seconds + 2 * ALIGN_SECONDS)
    reference = _log_spectrogram(a)
    best = -1.0
    for shift in range(0, len(b) - len(a) + 1, ALIGN_STEP):
        best = max(best, float(np.corrcoef(reference, _log_spectrogram(b[shift : shift + len(a)]))[0, 1]))
    return best >= SAME_MATERIAL_CORRELATION


def _row(engine: str, q: Query, answer: tuple, truth_of: dict[str, str]) -> Row:
    guess, confidence, offset, accepted = answer
    truth = truth_of.get(str(Path(q.source).resolve())) if q.condition.positive and q.source else None
    other = truth_of.get(str(Path(q.second).resolve())) if q.second else None
    offset_error, repeat = None, False
    if guess is not None and truth is not None and guess == truth:
        offset_error = abs(offset - q.start_seconds)
        if offset_error > OFFSET_TOLERANCE:
            repeat = _same_material(q.source, q.start_seconds, offset, q.condition.seconds)
    return Row(engine, q.condition, truth, other, guess, confidence, accepted, q.unit, offset_error, repeat)


_material: Corpus | None = None


def _init(material: Corpus) -> None:
    global _material
    _material = material


def _render(excerpt: Excerpt) -> list[Query]:
    return render(excerpt, _material)


def _rendered(excerpts: list[Excerpt], material: Corpus, processes: int) -> Iterator[list[Query]]:
    """Each excerpt's queries in order, rendered on `processes` processes at most a few excerpts
    ahead of the engines (rendered queries waiting for them would pile up in memory)."""
    if processes <= 1:
        _init(material)
        yield from map(_render, excerpts)
        return
    with ProcessPoolExecutor(processes, initializer=_init, initargs=(material,)) as pool:
        pending = iter(excerpts)
        ahead = deque(pool.submit(_render, e) for e in islice(pending, 2 * processes))
        while ahead:
            queries = ahead.popleft().result()
            for e in islice(pending, 1):
                ahead.append(pool.submit(_render, e))
            yield queries


def run(
    engines: list[EngineProcess],
    truth_of: dict[str, dict[str, str]],
    excerpts: list[Excerpt],
    material: Corpus,
    processes: int = MAX_PROCESSES,
) -> list[Row]:
    """Rows for every query of every excerpt and every engine, in the excerpts' order;
    `truth_of[engine name]` maps a resolved music path to that engine's song_id."""
    total = sum(len(e.conditions) for e in excerpts)
    bar = Progress(total, "queries", enabled=True)
    rows: list[Row] = []
    processes = max(1, min(processes, MAX_PROCESSES))
    with tempfile.TemporaryDirectory(prefix="bench-queries-") as scratch_dir:
        scratch = Path(scratch_dir)
        for k, queries in enumerate(_rendered(excerpts, material, processes)):
            batch = scratch / f"{k}.npz"
            np.savez(batch, rates=np.array([q.condition.rate for q in queries]), **{f"q{i}": q.samples for i, q in enumerate(queries)})
            for engine in engines:
                engine.send(batch)
            for engine in engines:
                rows += [_row(engine.name, q, a, truth_of[engine.name]) for q, a in zip(queries, engine.answers())]
            os.remove(batch)
            for q in queries:
                bar.step(q.condition.seconds)
    return rows

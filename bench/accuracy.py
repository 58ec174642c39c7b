"""Accuracy figures from the per-query rows: per engine and condition, per SNR curve, and false
matches.

Intervals count tracks, not excerpts. Excerpts of one track share its sound: a song the engine
cannot name fails every excerpt drawn from it, and a song that draws false matches draws them
again, so n excerpts of a few tracks hold far less evidence than n independent queries, and a
per-excerpt interval would be too narrow. Accuracy: a cluster bootstrap over units (tracks, or
noise recordings), BOOTSTRAP resamples; where every query of a condition came out the same the
bootstrap has no spread, and the interval is Clopper-Pearson on units instead (all U units
right, or none). False matches: Clopper-Pearson on the units with any false match among all
units of the condition. A unit is Query.unit: the music file, the noise recording, or the
excerpt itself for speech and talk (its speech clips are drawn afresh each time).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import beta

from bench.evaluate import OFFSET_TOLERANCE, Row
from bench.queries import Condition

BOOTSTRAP = 2000
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class ConditionResult:
    engine: str
    condition: Condition
    n: int
    units: int  # distinct tracks, recordings or excerpts behind the n queries
    rate: float  # positives: top-1 accuracy (the right song, accepted); negatives: false-match rate
    interval: tuple[float, float]  # 95 %, counted per unit (module docstring)
    no_rejection: float  # the same for the best guess whatever its confidence
    wrong_song: float  # positives: a confident answer naming another song (two songs: neither)
    other_song: float | None  # two songs: the other song named
    nothing: float  # nothing accepted
    offset_ok: float | None  # of the hits: offset within OFFSET_TOLERANCE
    offset_ok_or_repeat: float | None  # ... or on a literal repeat of the same music
    false_matches: int  # negatives: queries with an accepted answer
    false_units: int  # negatives: distinct units behind them


@dataclass(frozen=True)
class Curve:
    """Accuracy against SNR for one engine and (length, rate, room); `crossing`: the 50 % point in dB."""

    engine: str
    label: str
    snrs: list[float]
    rate: list[float]
    no_rejection: list[float]
    crossing: float | None
    crossing_no_rejection: float | None


def clopper_pearson(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact two-sided interval for a proportion: honest at 0 or n successes."""
    if n == 0:
        return (float("nan"), float("nan"))
    tail = (1 - level) / 2
    low = 0.0 if successes == 0 else float(beta.ppf(tail, successes, n - successes + 1))
    high = 1.0 if successes == n else float(beta.ppf(1 - tail, successes + 1, n - successes))
    return (low, high)


def cluster_interval(success: list[bool], units: list[str]) -> tuple[float, float]:
    """95 % interval of the success rate, resampling whole units (module docstring)."""
    names = sorted(set(units))
    index = {u: i for i, u in enumerate(names)}
    hits = np.zeros(len(names))
    counts = np.zeros(len(names))
    for ok, u in zip(success, units):
        hits[index[u]] += ok
        counts[index[u]] += 1
    if hits.sum() in (0, counts.sum()):
        return clopper_pearson(int(len(names) if hits.sum() else 0), len(names))
    draw = np.random.default_rng(BOOTSTRAP_SEED).integers(len(names), size=(BOOTSTRAP, len(names)))
    rates = hits[draw].sum(axis=1) / counts[draw].sum(axis=1)
    low, high = np.percentile(rates, [2.5, 97.5])
    return (float(low), float(high))


def _result(engine: str, c: Condition, rs: list[Row]) -> ConditionResult:
    n = len(rs)
    units = [r.unit for r in rs]
    nothing = sum(not r.accepted for r in rs) / n
    if c.positive:
        right = [r.accepted and r.guess == r.truth for r in rs]
        other = [r.accepted and r.other is not None and r.guess == r.other for r in rs]
        hits = [r for r, ok in zip(rs, right) if ok]
        ok = [r.offset_error is not None and r.offset_error <= OFFSET_TOLERANCE for r in hits]
        ok_rep = [a or r.repeat_offset for a, r in zip(ok, hits)]
        return ConditionResult(
            engine, c, n, len(set(units)),
            rate=sum(right) / n,
            interval=cluster_interval(right, units),
            no_rejection=sum(r.guess == r.truth for r in rs) / n,
            wrong_song=sum(r.accepted and not a and not b for r, a, b in zip(rs, right, other)) / n,
            other_song=sum(other) / n if c.two_songs else None,
            nothing=nothing,
            offset_ok=float(np.mean(ok)) if hits else None,
            offset_ok_or_repeat=float(np.mean(ok_rep)) if hits else None,
            false_matches=0,
            false_units=0,
        )
    false = [r for r in rs if r.accepted]
    false_units = len({r.unit for r in false})
    return ConditionResult(
        engine, c, n, len(set(units)),
        rate=len(false) / n,
        interval=clopper_pearson(false_units, len(set(units))),
        no_rejection=sum(r.guess is not None for r in rs) / n,
        wrong_song=0.0,
        other_song=None,
        nothing=nothing,
        offset_ok=None,
        offset_ok_or_repeat=None,
        false_matches=len(false),
        false_units=false_units,
    )


def summarise(rows: list[Row]) -> list[ConditionResult]:
    """One result per engine and condition, conditions in the order they first appear."""
    groups: dict[tuple[Condition, str], list[Row]] = {}
    for r in rows:
        groups.setdefault((r.condition, r.engine), []).append(r)
    return [_result(engine, c, rs) for (c, engine), rs in groups.items()]


def crossing(snrs: list[float], accuracy: list[float], level: float = 0.5) -> float | None:
    """The SNR where accuracy first falls below `level`, interpolated linearly between the two
    measured SNRs around it; -inf if it never falls below, +inf if it starts below."""
    order = np.argsort(snrs)[::-1]  # from the cleanest down
    s, a = np.asarray(snrs)[order], np.asarray(accuracy)[order]
    if len(s) == 0:
        return None
    if a[0] < level:
        return float("inf")
    for i in range(1, len(s)):
        if a[i] < level:
            return float(s[i - 1] + (a[i - 1] - level) * (s[i] - s[i - 1]) / (a[i - 1] - a[i]))
    return float("-inf")


def curves(results: list[ConditionResult]) -> list[Curve]:
    """Accuracy vs SNR for each engine and (length, rate, room) of the in-catalog music."""
    by_curve: dict[tuple, list[ConditionResult]] = {}
    for r in results:
        c = r.condition
        if c.positive and c.snr is not None:
            by_curve.setdefault((r.engine, c.seconds, c.rate, c.room), []).append(r)
    out = []
    for (engine, seconds, rate, room), rs in by_curve.items():
        snrs = [r.condition.snr for r in rs]
        accuracy, loose = [r.rate for r in rs], [r.no_rejection for r in rs]
        label = f"{seconds:g}s {rate // 1000}k {room}"
        out.append(Curve(engine, label, snrs, accuracy, loose, crossing(snrs, accuracy), crossing(snrs, loose)))
    return out

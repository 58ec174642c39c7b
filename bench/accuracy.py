"""Accuracy figures from the per-query rows: per condition, per SNR curve, and false matches."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bench.evaluate import OFFSET_TOLERANCE, Row
from bench.queries import Condition


@dataclass(frozen=True)
class ConditionResult:
    condition: Condition
    n: int
    ours: float  # positives: top-1 accuracy; negatives: false-match rate
    baseline: float  # the same for the no-rejection answer
    wrong_song: float  # positives: a confident answer naming another song
    offset_ok: float | None  # of our hits: offset within OFFSET_TOLERANCE
    offset_ok_or_repeat: float | None  # ... or on a literal repeat of the same music
    interval: tuple[float, float]  # 95 % Wilson interval of `ours`


@dataclass(frozen=True)
class Curve:
    """Accuracy against SNR for one (length, rate, room); `crossing`: the 50 % point in dB."""

    label: str
    snrs: list[float]
    ours: list[float]
    baseline: list[float]
    crossing: float | None
    crossing_baseline: float | None


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % interval that stays honest at 0 or n successes, where the normal one collapses."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def summarise(rows: list[Row]) -> list[ConditionResult]:
    """One result per condition, in the order conditions first appear."""
    groups: dict[Condition, list[Row]] = {}
    for r in rows:
        groups.setdefault(r.condition, []).append(r)
    out = []
    for c, rs in groups.items():
        n = len(rs)
        if c.positive:
            hits = [r for r in rs if r.accepted and r.guess == r.truth]
            ours = len(hits)
            baseline = sum(r.guess == r.truth for r in rs)
            wrong = sum(r.accepted and r.guess != r.truth for r in rs) / n
            ok = [r.offset_error is not None and r.offset_error <= OFFSET_TOLERANCE for r in hits]
            ok_rep = [a or r.repeat_offset for a, r in zip(ok, hits)]
            offset_ok = float(np.mean(ok)) if hits else None
            offset_ok_rep = float(np.mean(ok_rep)) if hits else None
        else:
            ours = sum(r.accepted for r in rs)
            baseline = sum(r.guess is not None for r in rs)
            wrong, offset_ok, offset_ok_rep = 0.0, None, None
        out.append(ConditionResult(c, n, ours / n, baseline / n, wrong, offset_ok, offset_ok_rep, wilson(ours, n)))
    return out


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
    """Accuracy vs SNR for each (length, rate, room) of the in-catalog music."""
    by_curve: dict[tuple, list[ConditionResult]] = {}
    for r in results:
        c = r.condition
        if c.positive and c.snr is not None:
            by_curve.setdefault((c.seconds, c.rate, c.room), []).append(r)
    out = []
    for (seconds, rate, room), rs in by_curve.items():
        snrs = [r.condition.snr for r in rs]
        ours, base = [r.ours for r in rs], [r.baseline for r in rs]
        label = f"{seconds:g}s {rate // 1000}k {room}"
        out.append(Curve(label, snrs, ours, base, crossing(snrs, ours), crossing(snrs, base)))
    return out

"""The results as a Markdown report (printed and written to BENCHMARKS.md) and a PNG plot.

Accuracy is reported for every engine of the run side by side (a baseline revision, then the
working tree), each accepting by its own threshold; the speed and size sections are the
working tree's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from bench.accuracy import ConditionResult, Curve  # noqa: E402
from bench.queries import DRY  # noqa: E402

CLEAN_X = 15.0  # where "no added noise" sits on the SNR axis of the plot
BUSY_CORES = 0.25  # CPU other processes used during a timing, in cores: above this, say so
UNITS = {"music": "tracks", "ooc": "tracks", "noise": "recordings", "speech": "excerpts", "silence": "inputs"}


@dataclass(frozen=True)
class Run:
    machine: dict[str, str]
    command: str
    corpus: str
    engines: list[dict]  # name, source, module, threshold; the baseline first, the working tree last
    catalog: dict  # the working tree's
    results: list[ConditionResult]
    curves: list[Curve]
    registration: dict[str, float]
    scaling: list[dict]

    @property
    def names(self) -> list[str]:
        return [e["name"] for e in self.engines]

    @property
    def working_tree(self) -> str:
        return self.engines[-1]["name"]


def _pct(x: float | None) -> str:
    return "-" if x is None or np.isnan(x) else f"{100 * x:.1f} %"


def _with_interval(r: ConditionResult | None) -> str:
    if r is None:
        return "-"
    low, high = r.interval
    return f"{_pct(r.rate)} ({100 * low:.1f}-{100 * high:.1f})"


def _db(x: float | None) -> str:
    if x is None:
        return "-"
    if np.isinf(x):
        return "above +10 dB" if x > 0 else "below -10 dB"
    return f"{x:+.1f} dB"


def _count(units: int, kind: str) -> str:
    """"3 tracks", "1 recording": what a false-match interval counts for queries of `kind`."""
    word = UNITS[kind]
    return f"{units} {word if units != 1 else word[:-1]}"


def _short(name: str) -> str:
    """An engine's column label: "baseline d02d65c", "working tree"."""
    return name.split(" (")[0]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _find(results: list[ConditionResult], engine: str, **match) -> ConditionResult | None:
    for r in results:
        if r.engine == engine and all(getattr(r.condition, k) == v for k, v in match.items()):
            return r
    return None


def _size(run: Run, songs: int) -> dict | None:
    return next((s for s in run.scaling if s["songs"] == songs), None)


def _accuracy_targets(run: Run, engine: str) -> list[tuple[str, str, str, bool]]:
    """(figure, target, measured, met) of the issue's accuracy targets on 10-s queries."""
    ten = dict(kind="music", seconds=10.0, rate=16000, room=DRY, scene=None)
    rows = []
    for snr, target in ((None, 0.995), (5.0, 0.98), (0.0, 0.95)):
        r = _find(run.results, engine, snr=snr, **ten)
        if r:
            rows.append((f"top-1 accuracy, {r.condition.name}", f">= {_pct(target)}", _pct(r.rate), r.rate >= target))
    curve = next((c for c in run.curves if c.engine == engine and c.label == "10s 16k dry"), None)
    if curve and curve.crossing is not None:
        rows.append(("50 % point, 10s 16k dry", "<= -9 dB", _db(curve.crossing), curve.crossing <= -9))
    gaps = []
    for r in run.results:
        c = r.condition
        if r.engine == engine and c.positive and c.scene is None and c.seconds == 10.0 and c.rate == 8000:
            wide = _find(run.results, engine, kind="music", seconds=10.0, rate=16000, room=c.room, snr=c.snr, scene=None)
            if wide:
                gaps.append(wide.rate - r.rate)
    if gaps:
        # Paired queries (the 8 kHz one is the 16 kHz one downsampled): the mean gap is the
        # figure; one condition's gap of a few queries in 150 is within chance.
        mean, worst = float(np.mean(gaps)), max(gaps)
        rows.append((f"8 kHz vs 16 kHz, mean gap (16k minus 8k) over {len(gaps)} 10-s conditions", "<= 2 points", f"{100 * mean:.1f} points", mean <= 0.02))
        rows.append(("8 kHz vs 16 kHz, worst 10-s condition", "<= 2 points", f"{100 * worst:.1f} points", worst <= 0.02))
    negatives = [r for r in run.results if r.engine == engine and not r.condition.positive]
    if negatives:
        n = sum(r.n for r in negatives)
        rate = sum(r.false_matches for r in negatives) / n
        rows.append((f"false matches, all {n} non-catalog queries", "<= 0.5 %", _pct(rate), rate <= 0.005))
    return rows


def _speed_targets(run: Run) -> list[tuple[str, str, str, bool]]:
    """(figure, target, measured, met) of the speed and size targets, for the working tree."""
    rtf = run.registration["real_time_factor"]
    rows = [("registration, one core, decoding included", ">= 300x real time", f"{rtf:.0f}x", rtf >= 300)]
    for songs, limit in ((1000, 30.0), (10000, 100.0)):
        s = _size(run, songs)
        if s:
            median = float(np.median(s["latency_ms"]))
            rows.append((f"10-s query, median, {songs:,} songs", f"<= {limit:.0f} ms", f"{median:.1f} ms", median <= limit))
    real = run.scaling[0] if run.scaling else None
    if real:
        per_min = real["index_bytes"] / real["audio_minutes"] / 1000
        rows.append(("index size per minute of audio (real catalog)", "<= 25 kB", f"{per_min:.1f} kB", per_min <= 25))
        biggest = run.scaling[-1]
        per_min = biggest["index_bytes"] / biggest["audio_minutes"] / 1000
        rows.append((f"index size per minute of audio ({biggest['songs']:,} songs)", "<= 25 kB", f"{per_min:.1f} kB", per_min <= 25))
        # The slope between the two sizes: what each further minute costs, fixed tables aside.
        slope = (biggest["index_bytes"] - real["index_bytes"]) / max(biggest["audio_minutes"] - real["audio_minutes"], 1e-9) / 1000
        rows.append(("index size per further minute of audio (slope)", "<= 25 kB", f"{slope:.1f} kB", slope <= 25))
    return rows


def _targets(run: Run) -> list[list[str]]:
    """Each target with every engine's measure; "met" judges the working tree."""
    measured = {name: {f: (v, met) for f, _, v, met in _accuracy_targets(run, name)} for name in run.names}
    rows = []
    for figure, target, _, _ in _accuracy_targets(run, run.working_tree):
        values = [measured[name].get(figure, ("-", False))[0] for name in run.names]
        rows.append([figure, target, *values, "met" if measured[run.working_tree][figure][1] else "MISSED"])
    for figure, target, value, met in _speed_targets(run):
        rows.append([figure, target, *(["-"] * (len(run.names) - 1)), value, "met" if met else "MISSED"])
    return rows


def _positive_rows(run: Run, conditions: list) -> list[list[str]]:
    rows = []
    for c in conditions:
        by = [_find(run.results, name, **_key(c)) for name in run.names]
        mine = by[-1]
        rows.append([
            c.name,
            str(mine.n),
            str(mine.units),
            *(_with_interval(r) for r in by),
            _pct(mine.no_rejection),
            " / ".join(_pct(r.wrong_song) if r else "-" for r in by),
            _pct(mine.offset_ok_or_repeat),
        ])
    return rows


def _key(c) -> dict:
    return dict(kind=c.kind, seconds=c.seconds, rate=c.rate, snr=c.snr, room=c.room, level_dbfs=c.level_dbfs, scene=c.scene)


def _conditions(run: Run, keep) -> list:
    """The working tree's conditions that `keep` accepts, in the order they were run."""
    return [r.condition for r in run.results if r.engine == run.working_tree and keep(r.condition)]


def markdown(run: Run) -> str:
    m = run.machine
    short = [_short(name) for name in run.names]
    engines = "; ".join(f"**{_short(e['name'])}**: {e['source']}, `{e['module']}`, threshold {e['threshold']:g}" for e in run.engines)
    lines = [
        "# Benchmarks",
        "",
        f"Measured {m['date']} on {m['cpu']}, {m['cores']} cores, {m['ram']} RAM, {m['os']}; "
        f"Python {m['python']}, numpy {m['numpy']}, scipy {m['scipy']}.",
        "",
        f"Command: `{run.command}`",
        "",
        f"{run.corpus}. Working tree's catalog: {run.catalog['songs']} songs, {run.catalog['duration_seconds'] / 3600:.2f} h, "
        f"{run.catalog['hashes']:,} postings, {run.catalog['bytes'] / 1e6:.1f} MB.",
        "",
        f"Engines, put to the same rendered queries in the same run: {engines}. Each registered the "
        "catalog with its own CLI and accepts its best guess when the confidence reaches its own "
        "threshold. No rejection: the working tree's best guess whatever its confidence, as "
        "abracadabra answers. For lookups, the baseline is abracadabra's storage (an SQLite table "
        "without an index on the hash, so each query scans it) and a numpy linear scan.",
        "",
        "Intervals are 95 % and count tracks, not excerpts (excerpts of one track share its sound): "
        "accuracy by a cluster bootstrap over tracks (Clopper-Pearson on tracks where every query "
        "came out the same); false matches by Clopper-Pearson on the tracks, recordings or excerpts "
        "with any false match among all of them.",
        "",
        "## Targets (10-s queries)",
        "",
        *_table(["figure", "target", *short, ""], _targets(run)),
        "",
        "## Accuracy of in-catalog queries: recorded noise and rooms",
        "",
        "Top-1: the right song, accepted. Offset: the returned offset within 0.5 s of the true one, or "
        "(game music loops) on a literal repeat of the true offset's music.",
        "",
    ]
    header = ["condition", "queries", "tracks", *(f"top-1, {s}" for s in short), f"{short[-1]}, no rejection",
              f"wrong song ({' / '.join(short)})", f"offset ok or repeat, {short[-1]}"]
    grid = _conditions(run, lambda c: c.positive and c.scene is None)
    lines += _table(header, _positive_rows(run, grid))
    lines += [
        "",
        "## The wearer's scenes, single 10-s windows (bench/wearer.py)",
        "",
        "Rendered as bench/streams.py plays them, cut to one window: simulated rooms (living room, café, "
        "medium hall; RT60 <= 1.5 s), a small speaker, talk, a crowd (an ambient recording and babble), the "
        "wearer's voice, Opus, speed. The split's recorded rooms at 0 dB (from the grid above) are repeated "
        "here for comparison.",
        "",
    ]
    scenes = _conditions(run, lambda c: c.positive and c.scene is not None and not c.two_songs)
    recorded = _conditions(run, lambda c: c.positive and c.scene is None and c.reverb and c.snr == 0.0 and c.seconds == 10.0 and c.rate == 16000)
    lines += _table(header, _positive_rows(run, scenes + recorded))
    lines += [
        "",
        "## Two catalogued songs at once",
        "",
        "The song the excerpt was drawn for, and another catalogued song at 0 dB or 5 dB below it: "
        "which one is named, if any.",
        "",
    ]
    rows = []
    for c in _conditions(run, lambda c: c.positive and c.two_songs):
        for name in run.names:
            r = _find(run.results, name, **_key(c))
            rows.append([c.name, _short(name), str(r.n), _with_interval(r), _pct(r.other_song), _pct(r.nothing), _pct(r.wrong_song)])
    lines += _table(["condition", "engine", "queries", "drawn (louder) song named", "other song named", "nothing named", "a third song"], rows)
    lines += ["", "## 50 % points (accuracy against SNR, linear interpolation)", ""]
    rows = []
    for c in (c for c in run.curves if c.engine == run.working_tree):
        by = [next((d for d in run.curves if d.engine == name and d.label == c.label), None) for name in run.names]
        rows.append([c.label, *(_db(d.crossing) if d else "-" for d in by), _db(c.crossing_no_rejection)])
    lines += _table(["curve", *short, f"{short[-1]}, no rejection"], rows)
    lines += [
        "",
        "## False matches on queries not in the catalog",
        "",
        "Per engine: accepted answers (queries), the distinct tracks, recordings or excerpts behind them, "
        "and the 95 % interval on the rate per track (recording, excerpt).",
        "",
    ]
    rows = []
    for c in _conditions(run, lambda c: not c.positive):
        by = [_find(run.results, name, **_key(c)) for name in run.names]
        cells = []
        for r in by:
            low, high = r.interval
            cells += [f"{r.false_matches} ({_count(r.false_units, c.kind)})", f"{100 * low:.1f}-{100 * high:.1f} %"]
        rows.append([c.name, str(by[-1].n), _count(by[-1].units, c.kind), *cells])
    lines += _table(
        ["condition", "queries", "from", *(h for s in short for h in (f"false matches, {s}", f"95 % per unit, {s}"))], rows
    )
    reg = run.registration
    lines += [
        "",
        "## Speed and size (working tree)",
        "",
        f"Registration, one core (workers=1), decoding and saving included: {reg['songs']} songs, "
        f"{reg['audio_seconds'] / 60:.1f} min of audio in {reg['wall_seconds']:.1f} s = "
        f"{reg['songs_per_second']:.2f} songs/s, {reg['real_time_factor']:.0f}x real time "
        f"(other processes used {reg['other_cores']:.2f} of the {run.machine['cores']} cores meanwhile).",
        "",
        "Query latency: 10-s 16 kHz queries at 0 dB SNR, one thread, each catalog size in a fresh process "
        "(the first, cold query excluded). Catalogs beyond the real one add synthetic songs: real songs' "
        "landmarks at their own times, their anchor frequencies permuted as a block (one derangement "
        "within each band per song, bench/catalog_build.py): a copy repeats where its model does, so "
        "chance votes pile up as on real music, and never truly matches. Found: those queries named right; "
        "false: as many 10-s queries of music not in the catalog, at 0 dB, named anyway. Postings: those a "
        "query retrieves (hashes with more than the matcher's cap are skipped). Peak RSS: the query "
        "process's high-water mark, "
        "including the memory-mapped index pages it touched (file-backed, shared, reclaimable). Lookup: "
        "fetching every query hash's postings; ratios are the scan's median over ours. Other jobs: CPU "
        "that other processes took during the timing (the two cores are shared).",
        "",
    ]
    rows = []
    for s in run.scaling:
        lat = np.asarray(s["latency_ms"])
        ours = float(np.median(s["lookup_ms"]))
        linear = float(np.median(s["linear_scan_ms"]))
        sqlite = float(np.median(s["sqlite_scan_ms"])) if s["sqlite_scan_ms"] else None
        rows.append([
            f"{s['songs']:,}",
            f"{s['postings']:,}",
            f"{s['index_bytes'] / 1e6:.1f} MB",
            f"{s['index_bytes'] / s['audio_minutes'] / 1000:.1f} kB",
            f"{np.median(lat):.1f}",
            f"{np.percentile(lat, 95):.1f}",
            f"{s['cold_query_ms']:.0f}",
            f"{np.median(s['postings_per_query']):,.0f}",
            f"{s['correct']}/{s['queries']}",
            f"{s['false_matches']}/{s['unknown_queries']}",
            f"{s['peak_rss_mib']:.0f} MiB",
            f"{ours:.2f}",
            f"{linear:.1f} ({linear / ours:.0f}x)",
            "not run" if sqlite is None else f"{sqlite:.0f} ({sqlite / ours:.0f}x)",
            f"{s['other_cores']:.2f}",
        ])
    lines += _table(
        ["songs", "postings", "index", "per audio min", "median ms", "p95 ms", "cold ms", "postings/query",
         "found", "false", "peak RSS", "lookup ms (ours)", "linear scan ms", "SQLite scan ms (abracadabra)", "other jobs (cores)"],
        rows,
    )
    others = [run.registration["other_cores"]] + [s["other_cores"] for s in run.scaling]
    if max(others) > BUSY_CORES:
        lines += ["", f"**The machine was busy**: other processes used up to {max(others):.2f} of the "
                  f"{run.machine['cores']} shared cores while a speed figure was taken, so those timings are upper "
                  "bounds; rerun on an idle machine for the engine's own figures."]
    lines += ["", "![Top-1 accuracy against SNR, each engine, and the working tree without rejection](accuracy_vs_snr.png)", ""]
    return "\n".join(lines)


def plot(run: Run, path: Path) -> None:
    """Accuracy against SNR, one panel per engine and one line per (length, rate, room); the
    working tree's no-rejection answer dotted for the main curve."""
    fig, axes = plt.subplots(1, len(run.names), figsize=(7 * len(run.names), 5), sharey=True, squeeze=False)
    for ax, name in zip(axes[0], run.names):
        for curve in (c for c in run.curves if c.engine == name):
            seconds, rate, room = curve.label.split()
            clean = _find(run.results, name, kind="music", seconds=float(seconds[:-1]), rate=int(rate[:-1]) * 1000, room=room, snr=None, scene=None)
            xs = ([CLEAN_X] if clean else []) + curve.snrs
            ys = ([clean.rate] if clean else []) + curve.rate
            style = "-" if rate == "16k" else "--"  # 8 kHz dashed: its gap to 16 kHz is a target
            ax.plot(xs, np.asarray(ys) * 100, style, marker="o" if room == DRY else "s", label=curve.label)
            if curve.label == "10s 16k dry" and name == run.working_tree:
                loose = ([clean.no_rejection] if clean else []) + curve.no_rejection
                ax.plot(xs, np.asarray(loose) * 100, ":", color="grey", label="10s 16k dry, no rejection")
        ax.axhline(50, color="k", lw=0.5)
        ax.set_xticks([CLEAN_X, 10, 5, 0, -5, -10], ["clean", "+10", "+5", "0", "-5", "-10"])
        ax.invert_xaxis()
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("SNR (dB), real recorded noise")
        ax.set_ylim(0, 101)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
    axes[0][0].set_ylabel("top-1 accuracy (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

"""Every field of EngineConfig says where its value comes from, and a tuned one was tuned on dev.

A tuned value must name its split, the command that set it and the run's committed output
(bench/tuning/), which must mention the field; the split must be dev, so no figure reported on
the test split is one the engine was fitted to. A field added without saying where its value
comes from fails here.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from function.engine.config import CONFIG, EngineConfig
from function.webhook import naming

ROOT = Path(__file__).resolve().parent.parent
# Tuned fields whose dev tuning run predates committed records (232 dev windows, November 2026):
# each is to be run again with its output under bench/tuning/ (smooth_frames is frozen into the
# catalog: its run registers the catalog again for each value). The list may only shrink.
AWAITING_DEV_RUN = {"smooth_frames"}


def test_every_field_says_where_its_value_comes_from() -> None:
    for f in fields(EngineConfig):
        kinds = [k for k in ("tuned", "chosen") if k in f.metadata]
        assert len(kinds) == 1, f"{f.name}: metadata must say tuned(...) or chosen(...), got {dict(f.metadata)}"
        assert isinstance(f.metadata["frozen"], bool), f.name
        if "chosen" in f.metadata:
            assert f.metadata["chosen"].strip(), f"{f.name}: chosen() needs its reason"


def test_tuned_fields_were_tuned_on_dev_with_a_committed_record() -> None:
    unrecorded = set()
    for f in fields(EngineConfig):
        tuning = f.metadata.get("tuned")
        if tuning is None:
            continue
        assert tuning["command"].strip(), f"{f.name}: no command recorded"
        if f.name in AWAITING_DEV_RUN:
            unrecorded.add(f.name)
            continue
        assert tuning["split"] == "dev", f"{f.name}: tuned on {tuning['split']!r}, not on the dev split"
        assert tuning["record"], f"{f.name}: tuned on dev, but its run's output is not committed"
        records = [tuning["record"]] if isinstance(tuning["record"], str) else list(tuning["record"])
        texts = []
        for name in records:
            record = ROOT / name
            assert record.parent == ROOT / "bench" / "tuning" and record.is_file(), f"{f.name}: {record} is missing"
            texts.append(record.read_text())
            assert "dev split" in texts[-1], f"{record} does not say it ran on the dev split"
        value = f"{f.name} {getattr(CONFIG, f.name):g}"
        assert any(value in t for t in texts), f"{records} do not show {value}"
    assert unrecorded == AWAITING_DEV_RUN, "a field listed as awaiting its dev run is no longer tuned, or has moved"


def test_the_webhooks_threshold_is_in_the_same_record() -> None:
    """NAME_AT is read off the same run as the engine's threshold (function/webhook/naming.py)."""
    text = (ROOT / "bench" / "tuning" / "naming-dev.md").read_text()
    assert f"NAME_AT {naming.NAME_AT:g}" in text

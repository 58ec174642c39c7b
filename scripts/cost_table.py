"""Write the README's cost table from what tests/test_operation_costs.py counted.

    OPERATION_COUNTS_OUT=operation_counts.json python -m pytest -q tests/test_operation_costs.py
    python scripts/cost_table.py operation_counts.json

The table sits between two marker lines in README.md and is replaced whole, so no figure in it is
ever typed by hand.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
START = "<!-- cost-table: written by scripts/cost_table.py from operation_counts.json; do not edit -->"
END = "<!-- /cost-table -->"
STREAMS = ("music", "no_music", "app_music", "app_no_music")


def _pair(values: list[str]) -> str:
    return f"{values[0]} / {values[1]}"


def render(report: dict) -> str:
    per = {**report["per_chunk"], **report["per_app_post"]}
    app_seconds = report["app_batch_seconds"]
    requests = {s: report["chunks_per_user_hour"] / (app_seconds if s.startswith("app") else 1) for s in STREAMS}
    regional = report["usd_per_user_hour"]
    multi = report["usd_per_user_hour_firestore_multi_region"]
    rounded = report["usd_per_user_hour_if_each_request_rounds_to_100ms"]

    def row(label: str, value) -> str:
        cells = [value(s) for s in STREAMS]
        return f"| {label} | {_pair(cells[:2])} | {_pair(cells[2:])} |"

    lines = [
        START,
        "| per active user-hour | developer setting (1-s POSTs): music / no music | app (5-s POSTs): music / no music |",
        "| --- | --- | --- |",
        row("requests per hour", lambda s: f"{requests[s]:.0f}"),
        row("Firestore document reads per request", lambda s: f"{per[s]['firestore_reads']:.2f}"),
        row("Firestore document writes per request", lambda s: f"{per[s]['firestore_writes']:.2f}"),
        row("Firestore TTL deletes per request", lambda s: f"{per[s]['firestore_ttl_deletes']:.2f}"),
        row("Cloud Storage operations per request", lambda s: f"{per[s]['gcs_class_a'] + per[s]['gcs_class_b']:.0f}"),
        row("request time, measured (s)", lambda s: f"{per[s]['request_seconds']:.3f}"),
        row("$ Firestore, regional (Terraform default)", lambda s: f"{regional[s]['firestore']:.4f}"),
        row("$ Cloud Run", lambda s: f"{regional[s]['cloud_run']:.4f}"),
        row("**$ total, regional Firestore**", lambda s: f"**{regional[s]['total']:.4f}**"),
        row("$ total, multi-region Firestore (nam5)", lambda s: f"{multi[s]['total']:.4f}"),
        row("$ total if every request is billed 100 ms", lambda s: f"{rounded[s]['total']:.4f}"),
        "",
        f"Recognitions in the streams: " + "; ".join(
            f"{name.replace('_', ' ')} {sum(r == 'match' for r in report['recognitions'][name])} matches"
            f" in {len(report['recognitions'][name])} attempts"
            for name in STREAMS
        ) + f". Digital silence: {report['silence']}.",
        END,
    ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python scripts/cost_table.py operation_counts.json", file=sys.stderr)
        return 2
    report = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    text = README.read_text(encoding="utf-8")
    if START not in text or END not in text:
        print(f"error: {README} has no cost-table markers", file=sys.stderr)
        return 1
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    README.write_text(head + render(report) + tail, encoding="utf-8")
    print(f"wrote the cost table into {README}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""One JSON object per line on stdout: the format Cloud Logging parses into structured entries.

`severity` and `message` are the fields Cloud Logging knows; everything else lands in
`jsonPayload` where it can be filtered on (uid, bytes, seconds, song, latency_ms). Callers pass
only what they mean to publish, and bytes values are replaced by their length so a slip can
never put someone's audio in the log.
"""

from __future__ import annotations

import json
import sys
import threading
import traceback

SEVERITIES = ("DEBUG", "INFO", "NOTICE", "WARNING", "ERROR", "CRITICAL")

_threshold = SEVERITIES.index("INFO")
_write_lock = threading.Lock()


def configure(level: str) -> None:
    """Drop lines below `level` (LOG_LEVEL); an unknown name keeps everything from INFO up."""
    global _threshold
    name = level.upper()
    _threshold = SEVERITIES.index(name) if name in SEVERITIES else SEVERITIES.index("INFO")


def _safe(value: object) -> object:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(value)} bytes>"
    return value


def log(severity: str, message: str, exc: BaseException | None = None, **fields: object) -> None:
    """Write one structured line; with `exc`, its traceback goes in `stack_trace`, the field
    Error Reporting groups on."""
    severity = severity.upper()
    rank = SEVERITIES.index(severity) if severity in SEVERITIES else SEVERITIES.index("INFO")
    if rank < _threshold:
        return
    entry: dict[str, object] = {"severity": severity, "message": message}
    entry.update({k: _safe(v) for k, v in fields.items() if v is not None})
    if exc is not None:
        entry["stack_trace"] = "".join(traceback.format_exception(exc))
    line = json.dumps(entry, ensure_ascii=False, default=str)
    with _write_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

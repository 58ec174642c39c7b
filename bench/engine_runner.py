"""One revision's recogniser in a process of its own, so `python -m bench` can put two revisions
of the engine to the same queries.

    python bench/engine_runner.py TREE CATALOG

Run as a script, never with -m, and it imports nothing from bench/: TREE (a source tree, the
working tree or a baseline revision's git worktree) takes the place of this file's folder at
the head of sys.path, so `function` is that tree's package and no module of this checkout can
shadow one of its. The recogniser is imported from where the tree keeps it: function/engine/
now, function/ before the engine moved there; both have the same public API.

Protocol, one JSON object per line. On start, once CATALOG (registered by the tree's own CLI,
bench/revisions.py) is loaded: {"module": ..., "threshold": ...}, the threshold as the
revision's Recogniser defines it. Then, for each line read on stdin, the path of an .npz that
holds `rates` (one per query) and the queries `q0`, `q1`, ... (int16 mono): {"answers": [[song_id
or null, confidence, offset_seconds or null, accepted], ...]}, the best guess whatever its
confidence, and whether the revision accepts it (confidence >= its threshold). The end of
stdin ends the process. Anything the engine prints goes to stderr, never into the protocol.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import numpy as np

MODULES = ("function.engine.recogniser", "function.recogniser")


def _recogniser_module(tree: str):
    sys.path[0] = tree
    for name in MODULES:
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if not (exc.name and name.startswith(exc.name)):
                raise  # the module exists but something it imports does not
    raise SystemExit(f"{tree}: none of {', '.join(MODULES)} can be imported")


def _answers(recogniser, batch: str) -> list[list]:
    out = []
    with np.load(batch) as queries:
        for i, rate in enumerate(queries["rates"]):
            match, confidence = recogniser.best_guess(queries[f"q{i}"], int(rate))
            accepted = match is not None and confidence >= recogniser.threshold
            out.append([
                match.song_id if match else None,
                float(confidence),
                float(match.offset_seconds) if match else None,
                bool(accepted),
            ])
    return out


def main(tree: str, catalog: str) -> int:
    protocol, sys.stdout = sys.stdout, sys.stderr
    module = _recogniser_module(str(Path(tree).resolve()))
    recogniser = module.Recogniser.open(catalog)
    print(json.dumps({"module": module.__name__, "threshold": float(recogniser.threshold)}), file=protocol, flush=True)
    for line in sys.stdin:
        print(json.dumps({"answers": _answers(recogniser, line.strip())}), file=protocol, flush=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__.split("\n\n")[1])
    sys.exit(main(sys.argv[1], sys.argv[2]))

"""openapi.yaml says what the service does: the same paths and methods as edge.ROUTES, a
valid OpenAPI document, and a schemathesis run against a live functions-framework process that
finds no 5xx and no answer the document does not describe."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from openapi_spec_validator import validate
from ruamel.yaml import YAML

from function.webhook.edge import ROUTES
from tests.webhook_support import ROOT, catalog_uri, running_function, tracks  # noqa: F401  (fixtures)

SPEC = ROOT / "openapi.yaml"
SCHEMATHESIS_SECONDS = 30


def spec() -> dict:
    return YAML(typ="safe").load(SPEC.read_text())


def _template(pattern: str) -> str:
    """`/stats/([^/]+)` and `/stats/{uid}` both become `/stats/{}`."""
    return re.sub(r"\([^)]*\)|\{[^}]*\}", "{}", pattern)


def test_the_document_is_valid_openapi() -> None:
    validate(spec())


def test_the_document_has_exactly_the_routes_and_methods_of_the_code() -> None:
    documented = {(_template(path), method.upper()) for path, item in spec()["paths"].items() for method in item}
    served = {(_template(pattern.pattern), method) for pattern, methods in ROUTES for method in methods}

    assert documented == served


def test_schemathesis_finds_nothing_against_the_live_server(tmp_path: Path, catalog_uri: str) -> None:  # noqa: F811
    env = {
        **os.environ,
        "STORAGE_BACKEND": "local",
        "DATA_DIR": str(tmp_path / "data"),
        "CATALOG_URI": catalog_uri,
        "OMI_APP_ID": "",
        "OMI_APP_SECRET": "",
    }
    with running_function(env, tmp_path / "function.log") as served:
        run = subprocess.run(
            # Exempt: a schema cannot say "an even number of bytes", so some schema-valid bodies
            # are rightly refused (odd-length PCM16).
            ["st", "run", str(SPEC), "--url", served.url, "--checks", "all", "--exclude-checks", "positive_data_acceptance", "--max-examples", "15",
             "--phases", "examples,coverage,fuzzing", "--seed", "1", "--workers", "2",
             "--max-time", str(SCHEMATHESIS_SECONDS), "--request-timeout", "10", "--no-color"],
            cwd=tmp_path,  # schemathesis keeps its reports in the working directory
            capture_output=True,
            text=True,
            timeout=SCHEMATHESIS_SECONDS * 3,
            check=False,
        )

    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "passed" in run.stdout.lower()

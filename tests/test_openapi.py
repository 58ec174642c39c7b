"""openapi.yaml says what the service does: the same paths and methods as edge.ROUTES, a
valid OpenAPI document, and a schemathesis run against a live functions-framework process that
finds no 5xx and no answer the document does not describe.

The live server takes audio without credentials (so POST /audio is fuzzed all the way into
storage and the recogniser), holds an ADMIN_TOKEN that schemathesis is given for the operator's
endpoints (its ignored_auth check then proves they refuse a missing or wrong one), and a
USER_LINK_SECRET: a user's own pages are sent the uid and key of a real link most of the time,
so they are exercised both opened (page, songs, deletion) and refused (403). Two uids have a
recognised song before the run, so song lists are checked against real entries."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import httpx
from openapi_spec_validator import validate
from ruamel.yaml import YAML

from function.webhook.edge import ROUTES
from function.webhook.user_links import user_key
from tests.webhook_support import ROOT, Track, catalog_uri, music_pcm, running_function, tracks  # noqa: F401  (fixtures)

SPEC = ROOT / "openapi.yaml"
SCHEMATHESIS_SECONDS = 30
ADMIN_TOKEN = "schemathesis-admin-token"
SHARD_TOKEN = "shard-token-for-the-schemathesis-run"
USER_LINK_SECRET = "schemathesis-link-secret"
# A song is recognised for each before the run, so song lists are checked against real entries:
# READER's songs are read by every uid-taking operation some of the time, DELETER's deleted.
READER_UID, DELETER_UID = "schemathesis-reader", "schemathesis-deleter"


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


def _schemathesis_config() -> str:
    """schemathesis.toml: the admin token for the operator's endpoints; READER_UID for the
    operator's uid paths half of the time; and the uid and key of a user's link, each drawn 70 %
    of the time (the rest generated, mostly refused with 403), READER's for the /me reads and
    DELETER's for the deletion."""
    q = json.dumps

    def drawn(name: str, probability: float) -> str:
        return f"{{ dictionary = {q(name)}, probability = {probability} }}"

    def link(uid_dictionary: str, key_dictionary: str) -> str:
        return f'parameters = {{ "path.uid" = {drawn(uid_dictionary, 0.7)}, "query.key" = {drawn(key_dictionary, 0.7)} }}'

    return "\n".join(
        [
            "[auth.openapi.admin_bearer]",
            f"bearer = {q(ADMIN_TOKEN)}",
            # The server is a catalog shard too, so that its /shard/* endpoints are fuzzed open.
            "[auth.openapi.shard_bearer]",
            f"bearer = {q(SHARD_TOKEN)}",
            "[parameters]",
            f'"path.uid" = {drawn("reader_uid", 0.5)}',
            *(
                f"[dictionaries.{name}]\nvalues = [{q(value)}]"
                for name, value in {
                    "reader_uid": READER_UID,
                    "reader_key": user_key(USER_LINK_SECRET, READER_UID),
                    "deleter_uid": DELETER_UID,
                    "deleter_key": user_key(USER_LINK_SECRET, DELETER_UID),
                }.items()
            ),
            "[[operations]]",
            'include-name-regex = "^GET /me/"',
            link("reader_uid", "reader_key"),
            "[[operations]]",
            'include-name = "DELETE /me/{uid}/history"',
            link("deleter_uid", "deleter_key"),
            "",
        ]
    )


def _recognise_a_song(url: str, uid: str, track: Track) -> None:
    """Deliver 6 s of `track` as Omi does (1-s chunks); the uid's own history then names a song."""
    pcm, step = music_pcm(track, 5.0, 6.0), 16000 * 2
    for first in range(0, len(pcm), step):
        response = httpx.post(
            f"{url}/audio", params={"uid": uid, "sample_rate": 16000}, content=pcm[first : first + step],
            headers={"Content-Type": "application/octet-stream"}, timeout=30,
        )
        assert response.status_code == 200, response.text
    songs = httpx.get(f"{url}/me/{uid}/history", params={"key": user_key(USER_LINK_SECRET, uid)}, timeout=10).json()["songs"]
    assert songs, f"no song recognised for {uid}: the run would check song lists only when empty"


def test_schemathesis_finds_nothing_against_the_live_server(
    tmp_path: Path, catalog_uri: str, tracks: list[Track]  # noqa: F811
) -> None:
    env = {
        **os.environ,
        "STORAGE_BACKEND": "local",
        "DATA_DIR": str(tmp_path / "data"),
        "CATALOG_URI": catalog_uri,
        "OMI_APP_ID": "",
        "OMI_APP_SECRET": "",
        "OMI_SIGNING_SECRET": "",
        "WEBHOOK_TOKEN": "",
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "SHARD_TOKEN": SHARD_TOKEN,
        "CATALOG_SHARDS": "",
        "USER_LINK_SECRET": USER_LINK_SECRET,
        "PUBLIC_URL": "",
    }
    (tmp_path / "schemathesis.toml").write_text(_schemathesis_config())
    with running_function(env, tmp_path / "function.log") as served:
        for uid in (READER_UID, DELETER_UID):
            _recognise_a_song(served.url, uid, tracks[0])
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
    # Without its configuration the run would see only 401s and 403s from the guarded operations.
    assert str(tmp_path / "schemathesis.toml") in run.stdout, run.stdout[:2000]

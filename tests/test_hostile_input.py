"""Whatever arrives, the webhook never answers 5xx, and a request it refuses changes nothing.

Property tests (hypothesis) over query strings, headers, bodies, methods and paths, against the
app on the local backend with WEBHOOK_TOKEN set. "Nothing changed" is checked on the storage
itself: the chunk files and every row of the SQLite database.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.webhook_support import build_client, catalog_uri, tracks  # noqa: F401  (fixtures)

TOKEN = "hostile-input-token-0123456789"
PROPERTY = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

header_text = st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=300)
anything = st.text(max_size=200)
uids = st.one_of(st.sampled_from(["alice", "bob_2", "x" * 128, "x" * 129, "", "a/b", "..", "a b"]), anything)
rates = st.one_of(st.sampled_from(["16000", "8000", "44100", "0", "-16000", "1e4", " 16000 ", ""]), anything)
tokens = st.one_of(st.sampled_from([TOKEN, TOKEN[:-1], TOKEN + "x", ""]), anything)
bodies = st.one_of(st.binary(max_size=4000), st.sampled_from([b"", b"\x00", b"\x00\x00" * 16000]))


@pytest.fixture
def hostile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, catalog_uri: str):  # noqa: F811
    for name, value in {
        "STORAGE_BACKEND": "local",
        "DATA_DIR": str(tmp_path / "data"),
        "CATALOG_URI": catalog_uri,
        "WEBHOOK_TOKEN": TOKEN,
        "MAX_CHUNK_BYTES": "64000",
        "MIN_AUDIO_SECONDS": "600",  # the properties concern the edge, not recognition
        "MAX_BUFFER_SECONDS": "600",
        "OMI_APP_ID": "",
        "OMI_APP_SECRET": "",
    }.items():
        monkeypatch.setenv(name, value)
    client = build_client()
    assert client.get("/health").status_code == 200  # storage opened, so snapshots can read it
    return client, tmp_path / "data"


def snapshot(data: Path) -> tuple:
    files = sorted(str(p.relative_to(data)) for p in (data / "chunks").rglob("*") if p.is_file())
    with sqlite3.connect(data / "state.sqlite3") as db:
        tables = [name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        rows = {t: sorted(map(repr, db.execute(f'SELECT * FROM "{t}"'))) for t in tables}
    return files, rows


def check(response, before: tuple, data: Path) -> None:
    assert response.status_code < 500, response.get_data(as_text=True)
    assert response.is_json, response.get_data(as_text=True)[:200]
    if response.status_code != 200:
        assert "reason" in response.json
        assert snapshot(data) == before


@PROPERTY
@given(uid=uids, rate=rates, token=tokens, body=bodies, extra=st.lists(st.tuples(anything, anything), max_size=3))
def test_any_query_on_audio(hostile, uid: str, rate: str, token: str, body: bytes, extra: list) -> None:
    client, data = hostile
    params = [("token", token), ("sample_rate", rate), ("uid", uid), *extra]
    query = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in params)
    before = snapshot(data)

    response = client.post(f"/audio?{query}", data=body, headers={"Content-Type": "application/octet-stream"})

    check(response, before, data)


@PROPERTY
@given(raw=st.text(st.characters(min_codepoint=0x21, max_codepoint=0xFF), max_size=300), body=bodies)
def test_any_raw_query_string_on_audio(hostile, raw: str, body: bytes) -> None:
    client, data = hostile
    before = snapshot(data)

    response = client.post("/audio", query_string=raw, data=body)

    check(response, before, data)


@PROPERTY
@given(content_type=st.one_of(st.none(), header_text), key=st.one_of(st.none(), header_text), body=bodies,
       headers=st.dictionaries(st.from_regex(r"\A[A-Za-z][A-Za-z0-9-]{0,30}\Z"), header_text, max_size=4))
def test_any_headers_on_audio(hostile, content_type: str | None, key: str | None, body: bytes, headers: dict) -> None:
    client, data = hostile
    sent = {**headers}
    if content_type is not None:
        sent["Content-Type"] = content_type
    if key is not None:
        sent["Idempotency-Key"] = key
    before = snapshot(data)

    response = client.post(f"/audio?token={TOKEN}&sample_rate=16000&uid=alice", data=body, headers=sent)

    check(response, before, data)


@PROPERTY
@given(method=st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]),
       path=st.lists(st.one_of(st.sampled_from(["audio", "stats", "buffer", "history", "metrics", "health", "dashboard", "alice", ""]), anything), min_size=1, max_size=4),
       token=st.one_of(st.none(), tokens), body=bodies)
def test_any_method_and_path(hostile, method: str, path: list, token: str | None, body: bytes) -> None:
    client, data = hostile
    # Never `//...`: the test client would take it for a host name, not a path.
    url = "/" + "/".join(quote(p, safe="") for p in path).lstrip("/")
    if token is not None:
        url += f"?token={quote(token, safe='')}"
    before = snapshot(data)

    response = client.open(url, method=method, data=body)

    assert response.status_code < 500, response.get_data(as_text=True)
    if response.status_code != 200 or method not in ("POST", "DELETE"):
        assert snapshot(data) == before
    if response.status_code >= 400:  # (werkzeug redirects `//audio` to `/audio` with a 308)
        assert response.is_json and "reason" in response.json

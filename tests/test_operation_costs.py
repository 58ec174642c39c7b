"""What one active user costs on Google Cloud, counted rather than guessed.

The README's "Cost per active user-hour" table comes from this test. It streams real audio
through the app's test client (1-s POSTs with Idempotency-Keys, production cadence:
MIN_AUDIO_SECONDS=3, RECOGNITION_STRIDE_SECONDS=2, MAX_BUFFER_SECONDS=60) on the gcp backend
against the real emulators, and counts every request the backend sends at the client transport
layer:

- Cloud Storage: the real `storage.Client` is given a counting `requests.Session` (its public
  `_http` argument), so every JSON-API request is classified as Google bills it: Class A
  (insert, compose, list, patch, rewrite), Class B (get metadata, download) or free (delete).
- Firestore: the real `firestore.Client` gets a gRPC client interceptor on its emulator channel;
  documents read come from the RPC responses (BatchGetDocuments found/missing, RunQuery
  documents, one read minimum per query), documents written and deleted from committed writes.

Both are real client subclasses doing real I/O: nothing stands in for storage or HTTP. They are
installed by replacing `google.cloud.storage.Client` / `google.cloud.firestore.Client` for the
duration of the test, which is what `function/storage/gcp.py` instantiates; if that ever stops
being true the counts drop to zero and the lower bounds below fail instead of passing silently.

Upper bounds per POST, one per scenario at what it measures, are asserted, so a change that adds
one write or one object operation per POST fails here. With OPERATION_COUNTS_OUT=<file> the measured figures, the prices and the
resulting dollars per user-hour are written as JSON, which is how the README table is refreshed:

    OPERATION_COUNTS_OUT=operation_counts.json python -m pytest -q tests/test_operation_costs.py
"""

from __future__ import annotations

import json
import math
import os
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

import grpc
import pytest
import requests
from flask.testing import FlaskClient
from google.cloud import firestore, storage

from function.simulate import load_pcm16
from tests.webhook_support import (  # noqa: F401  (fixtures)
    Track,
    build_client,
    catalog_uri,
    music_pcm,
    post_chunk,
    street_noise,
    tracks,
    webhook_env,
)

RATE = 16000
CHUNK_BYTES = RATE * 2  # one second of PCM16
USER_HOUR_CHUNKS = 3600
APP_BATCH_SECONDS = 5  # an Omi app's audio_bytes trigger: one POST per ~5-s batch

# Public list prices, USD, checked 2025 (Tier-1 regions; free tiers ignored).
PRICE_DATE = "2025 list prices, free tiers ignored"
PRICES: dict[str, float] = {
    # Cloud Storage, Standard class in a region (infra/: the bucket is in var.region, us-central1)
    "gcs_class_a_per_op": 0.005 / 1000,
    "gcs_class_b_per_op": 0.0004 / 1000,
    # Firestore Standard edition in a region, us-central1 (infra/: firestore_location default,
    # beside the function); a multi-region such as nam5 costs twice as much (MULTI_REGION).
    "firestore_read_per_doc": 0.03 / 100_000,
    "firestore_write_per_doc": 0.09 / 100_000,
    "firestore_delete_per_doc": 0.01 / 100_000,
    # Cloud Run request-based billing (CPU only allocated during requests), Tier 1
    "run_vcpu_second": 0.000024,
    "run_gib_second": 0.0000025,
    "run_request": 0.40 / 1_000_000,
}
MULTI_REGION = {
    **PRICES,
    "firestore_read_per_doc": 0.06 / 100_000,
    "firestore_write_per_doc": 0.18 / 100_000,
    "firestore_delete_per_doc": 0.02 / 100_000,
}
RUN_VCPU = 1.0  # the README's deploy command: --cpu=1 --memory=1Gi
RUN_GIB = 1.0
RUN_ROUNDING_SECONDS = 0.1  # Cloud Run rounds billable instance time up to 100 ms

# Per-POST ceilings, one per scenario at what it measures (the counts are deterministic, only
# the times vary): one more operation of any kind per POST breaks them. A plain chunk is one
# write of the user's document (read only by the user's first chunk: the instance then knows
# it); an attempt adds nothing (the append claims, a miss writes nothing); a match adds a
# release, a notification reservation and a history entry (the music stream is three 20-s songs
# back to back: a match every few seconds), and a metrics flush a write per song it counts; the
# first chunk of each user adds a write to today's active-users counter.
MAX_PER_POST: dict[str, dict[str, float]] = {
    "music": {"firestore_reads": 38 / 60, "firestore_writes": 89 / 60},
    "no_music": {"firestore_reads": 1 / 60, "firestore_writes": 61 / 60},
    "app_music": {"firestore_reads": 22 / 12, "firestore_writes": 31 / 12},
    "app_no_music": {"firestore_reads": 1 / 12, "firestore_writes": 13 / 12},
}
# A chunk that triggers no recognition must cost exactly this (plus, once a UTC day per user,
# one write to active_days): the hot path of gcp.py's `append`.
INGEST_ONLY = {"gcs_class_a": 0, "gcs_class_b": 0, "firestore_reads": 0, "firestore_writes": 1}


# --- counting at the transport layer ----------------------------------------------------------
@dataclass
class Ledger:
    """Every billable operation seen so far, by billing class and by API method."""

    ops: Counter[str] = field(default_factory=Counter)
    methods: Counter[str] = field(default_factory=Counter)
    unclassified: list[str] = field(default_factory=list)

    def snapshot(self) -> Counter[str]:
        return Counter(self.ops)

    def record_gcs(self, method: str, url: str) -> None:
        kind, billing = classify_gcs(method, url)
        self.methods[f"gcs {kind}"] += 1
        if billing is None:
            self.unclassified.append(f"{method} {urlsplit(url).path}")
        else:
            self.ops[billing] += 1

    def record_firestore(self, rpc: str, reads: int = 0, writes: int = 0, deletes: int = 0, receipts: int = 0) -> None:
        self.methods[f"firestore {rpc}"] += 1
        self.ops["firestore_rpcs"] += 1
        self.ops["firestore_reads"] += reads
        self.ops["firestore_writes"] += writes
        self.ops["firestore_deletes"] += deletes
        self.ops["chunk_receipts_created"] += receipts


def classify_gcs(method: str, url: str) -> tuple[str, str | None]:
    """(operation, billing class) for one Cloud Storage JSON-API request, as priced at
    https://cloud.google.com/storage/pricing#operations-by-class; None: not priced here, which
    fails the test so that a new kind of request is looked at rather than ignored."""
    parts = urlsplit(url)
    path, query = parts.path, parse_qs(parts.query)
    method = method.upper()
    if method == "DELETE":
        return "delete", "gcs_free"
    if path.startswith("/upload/storage/v1/b/"):
        return "insert", "gcs_class_a"
    if method == "POST" and path.endswith("/compose"):
        return "compose", "gcs_class_a"
    if method == "POST" and ("/rewriteTo/" in path or "/copyTo/" in path):
        return "rewrite", "gcs_class_a"
    if method in ("PATCH", "PUT"):
        return "update", "gcs_class_a"
    if method == "GET" and path.startswith("/download/storage/v1/b/"):
        return "download", "gcs_class_b"
    if method == "GET" and path.startswith("/storage/v1/b/"):
        if path.rstrip("/").endswith("/o"):
            return "list", "gcs_class_a"
        if "/o/" in path:
            return ("download" if query.get("alt") == ["media"] else "get"), "gcs_class_b"
        return "bucket get", "gcs_class_b"
    return "unknown", None


class CountingSession(requests.Session):
    """The storage client's HTTP session: a plain requests.Session that notes each request."""

    def __init__(self, ledger: Ledger) -> None:
        super().__init__()
        self._ledger = ledger

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        # Counted before sending: a request that fails is still an operation Google bills.
        self._ledger.record_gcs(method, url)
        return super().request(method, url, *args, **kwargs)


class _CountedStream:
    """A server-streaming call that reports each response as it is consumed; everything else is
    the real call's (api_core reads its metadata, code and callbacks)."""

    def __init__(self, call: Any, on_response: Callable[[Any], None], on_end: Callable[[], None]) -> None:
        self._call = call
        self._on_response = on_response
        self._on_end = on_end

    def __iter__(self) -> _CountedStream:
        return self

    def __next__(self) -> Any:
        try:
            response = next(self._call)
        except StopIteration:
            self._on_end()
            raise
        self._on_response(response)
        return response

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)


class FirestoreCounter(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Documents read, written and deleted, taken from the real RPCs, following
    https://cloud.google.com/firestore/pricing: a get is one read whether or not the document
    exists, a query reads the documents it returns with a minimum of one, each write in a commit
    is one write (its field transforms included), each delete one delete."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    def intercept_unary_unary(self, continuation: Callable, details: grpc.ClientCallDetails, request: Any) -> Any:
        call = continuation(details, request)
        rpc = details.method.rsplit("/", 1)[-1]
        if rpc == "Commit":
            if call.exception() is None:
                writes = [w for w in request.writes]
                deletes = sum(1 for w in writes if "delete" in w)
                receipts = sum(
                    1 for w in writes if "update" in w and "/chunks/" in w.update.name and w.current_document.exists is False
                )
                self._ledger.record_firestore(rpc, writes=len(writes) - deletes, deletes=deletes, receipts=receipts)
            else:
                self._ledger.record_firestore(f"{rpc} (failed)")
        elif rpc == "GetDocument":
            self._ledger.record_firestore(rpc, reads=1)
        else:
            self._ledger.record_firestore(rpc)
        return call

    def intercept_unary_stream(self, continuation: Callable, details: grpc.ClientCallDetails, request: Any) -> Any:
        call = continuation(details, request)
        rpc = details.method.rsplit("/", 1)[-1]
        self._ledger.record_firestore(rpc)
        charged = 0  # reads are charged as responses arrive: a single get never drains its stream

        def on_response(response: Any) -> None:
            nonlocal charged
            if rpc == "BatchGetDocuments" and ("found" in response or "missing" in response):
                charged += 1
                self._ledger.ops["firestore_reads"] += 1
            elif rpc == "RunQuery" and "document" in response:
                charged += 1
                self._ledger.ops["firestore_reads"] += 1
            elif rpc == "RunAggregationQuery" and "result" in response and not charged:
                charged = 1  # one read per up to 1000 index entries counted
                self._ledger.ops["firestore_reads"] += 1

        def on_end() -> None:
            if rpc in ("RunQuery", "RunAggregationQuery") and not charged:
                self._ledger.ops["firestore_reads"] += 1  # a query that finds nothing costs one read

        return _CountedStream(call, on_response, on_end)


@pytest.fixture
def ledger(monkeypatch: pytest.MonkeyPatch) -> Ledger:
    """Makes every storage and Firestore client built during the test a counting one."""
    found = Ledger()
    real_storage, real_firestore = storage.Client, firestore.Client

    class CountingStorageClient(real_storage):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("_http", CountingSession(found))
            super().__init__(*args, **kwargs)

    class CountingFirestoreClient(real_firestore):  # type: ignore[misc, valid-type]
        def _emulator_channel(self, transport: Any) -> grpc.Channel:
            return grpc.intercept_channel(super()._emulator_channel(transport), FirestoreCounter(found))

    monkeypatch.setattr(storage, "Client", CountingStorageClient)
    monkeypatch.setattr(firestore, "Client", CountingFirestoreClient)
    return found


# --- the streams ------------------------------------------------------------------------------
@dataclass
class Stream:
    """Operations and request times of one user's stream, with the recognitions it ran.
    `chunks` counts POSTs, of `post_seconds` of audio each (1 s on the developer path, a whole
    ~5-s batch on the app path); `per_chunk` is per POST."""

    post_seconds: int = 1
    chunks: int = 0
    ops: Counter[str] = field(default_factory=Counter)
    ingest_only: list[Counter[str]] = field(default_factory=list)
    recognitions: list[str] = field(default_factory=list)
    wall_ingest: list[float] = field(default_factory=list)
    wall_recognition: list[float] = field(default_factory=list)
    cpu_seconds: float = 0.0

    def per_chunk(self) -> dict[str, float]:
        keys = ("gcs_class_a", "gcs_class_b", "gcs_free", "firestore_reads", "firestore_writes", "firestore_deletes")
        out = {k: self.ops[k] / self.chunks for k in keys}
        out["firestore_ttl_deletes"] = self.ops["chunk_receipts_created"] / self.chunks
        out["round_trips"] = (
            sum(self.ops[k] for k in ("gcs_class_a", "gcs_class_b", "gcs_free")) + self.ops["firestore_rpcs"]
        ) / self.chunks
        walls = self.wall_ingest + self.wall_recognition
        out["request_seconds"] = sum(walls) / self.chunks
        out["request_seconds_rounded_100ms"] = (
            sum(math.ceil(w / RUN_ROUNDING_SECONDS) * RUN_ROUNDING_SECONDS for w in walls) / self.chunks
        )
        out["cpu_seconds"] = self.cpu_seconds / self.chunks
        return out


def stream(client: FlaskClient, ledger: Ledger, uid: str, pcm: bytes, post_seconds: int = 1) -> Stream:
    """POST `pcm` as Omi does, noting each request's operations, wall time (what request-based
    Cloud Run bills) and CPU time: the developer path's 1-s chunks, each with an
    Idempotency-Key, or (`post_seconds` > 1) the app path's one POST per batch, without one."""
    out = Stream(post_seconds)
    step = post_seconds * CHUNK_BYTES
    for start in range(0, len(pcm) - step + 1, step):
        before = ledger.snapshot()
        wall, cpu = time.perf_counter(), time.process_time()
        key = str(uuid.uuid4()) if post_seconds == 1 else None
        response = post_chunk(client, uid, pcm[start : start + step], RATE, key=key)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        assert response.status_code == 200, response.get_data(as_text=True)
        delta = ledger.snapshot()
        delta.subtract(before)
        out.chunks += 1
        out.ops.update(delta)
        out.cpu_seconds += cpu
        recognition = response.json.get("recognition")
        if recognition is None:
            out.ingest_only.append(delta)
            out.wall_ingest.append(wall)
        else:
            out.recognitions.append(recognition["status"])
            out.wall_recognition.append(wall)
    return out


def cost_per_user_hour(
    per_chunk: dict[str, float], post_seconds: int = 1, rounded: bool = False, prices: dict[str, float] = PRICES
) -> dict[str, float]:
    """Dollars for an hour of POSTs of `post_seconds` each at `prices`; Cloud Run bills the
    request's wall time at the allocated 1 vCPU and 1 GiB (request-based billing), plus the
    per-request fee."""
    n = USER_HOUR_CHUNKS / post_seconds
    seconds = per_chunk["request_seconds_rounded_100ms" if rounded else "request_seconds"]
    cost = {
        "cloud_storage": n
        * (per_chunk["gcs_class_a"] * prices["gcs_class_a_per_op"] + per_chunk["gcs_class_b"] * prices["gcs_class_b_per_op"]),
        "firestore": n
        * (
            per_chunk["firestore_reads"] * prices["firestore_read_per_doc"]
            + per_chunk["firestore_writes"] * prices["firestore_write_per_doc"]
            + (per_chunk["firestore_deletes"] + per_chunk["firestore_ttl_deletes"]) * prices["firestore_delete_per_doc"]
        ),
        "cloud_run": n
        * (
            seconds * (RUN_VCPU * prices["run_vcpu_second"] + RUN_GIB * prices["run_gib_second"])
            + prices["run_request"]
        ),
    }
    cost["total"] = sum(cost.values())
    return cost


def looped(pcm: bytes, seconds: int) -> bytes:
    """`pcm` repeated to exactly `seconds` of audio (the test recordings are 20 s long)."""
    need = seconds * CHUNK_BYTES
    return (pcm * (need // len(pcm) + 1))[:need]


# --- the test ---------------------------------------------------------------------------------
@pytest.mark.parametrize("backend_env", ["gcp"], indirect=True)
def test_operations_per_chunk_on_the_cloud_backend(
    webhook_env: pytest.MonkeyPatch, ledger: Ledger, tracks: list[Track], street_noise: Path
) -> None:
    # Production cadence, not webhook_env's fast test cadence: these are the figures we publish.
    # The minute of audio is replayed faster than real time, so the per-uid rate limit (memory
    # only, no storage operations) is switched off rather than allowed to answer 429.
    for name, value in {
        "MIN_AUDIO_SECONDS": "3",
        "RECOGNITION_STRIDE_SECONDS": "2",
        "MAX_BUFFER_SECONDS": "60",
        "RATE_LIMIT_AUDIO_SECONDS_PER_SECOND": "0",
    }.items():
        webhook_env.setenv(name, value)
    client = build_client()
    # Warm up outside the counted streams: a freshly started Firestore emulator answers its first
    # call slowly, and the catalog loads on first use; neither is a per-chunk cost.
    assert post_chunk(client, "warm-up", looped(load_pcm16(street_noise, RATE), 1), RATE).status_code == 200
    assert client.get("/health").status_code == 200

    # A minute of digital silence (a muted microphone) is acknowledged without storage at all.
    before = ledger.snapshot()
    for _ in range(60):
        assert post_chunk(client, "muted", bytes(CHUNK_BYTES), RATE).json["status"] == "silent"
    silent = ledger.snapshot()
    silent.subtract(before)
    assert +silent == Counter(), dict(silent)

    # The Cloud Storage counter is live, else "no Cloud Storage operation" below would pass at 0.
    probe = storage.Client(project=os.environ["GOOGLE_CLOUD_PROJECT"]).create_bucket(f"probe-{uuid.uuid4().hex[:12]}")
    probe.blob("probe").upload_from_string(b"x")
    assert ledger.ops["gcs_class_a"] == 1, dict(ledger.ops)
    ledger.ops.clear()
    ledger.methods.clear()
    ledger.unclassified.clear()

    # One minute of music: three registered songs back to back, 20 s each.
    music = b"".join(music_pcm(t, 0.0, 20.0, RATE) for t in tracks[:3])
    played = stream(client, ledger, "listener", music)
    # One minute of a street that plays no catalogued song: a miss, then a retry every stride.
    street = stream(client, ledger, "walker", looped(load_pcm16(street_noise, RATE), 60))
    # The same two minutes as an Omi app delivers them: one POST per 5-s batch.
    app_played = stream(client, ledger, "app-listener", music, post_seconds=APP_BATCH_SECONDS)
    app_street = stream(client, ledger, "app-walker", looped(load_pcm16(street_noise, RATE), 60), post_seconds=APP_BATCH_SECONDS)

    # The counters are really wired to the clients gcp.py uses (else every bound passes at 0).
    assert ledger.unclassified == [], ledger.unclassified
    assert played.chunks == street.chunks == 60
    for s in (played, street):
        assert s.ops["firestore_writes"] >= s.chunks, dict(s.ops)
        # The peaks live in the user's Firestore document: the store never touches Cloud
        # Storage (the counting session is live: see the probe before the streams), nor creates
        # a document per chunk.
        assert s.ops["gcs_class_a"] == s.ops["gcs_class_b"] == s.ops["gcs_free"] == 0, dict(s.ops)
        assert s.ops["chunk_receipts_created"] == 0, dict(s.ops)
    # The streams did what they stand for: music named at almost every first attempt (3 s after
    # the buffer empties; a quiet 3 s may need the next one), the street never, attempted every
    # 2 s over its whole buffer.
    assert played.recognitions.count("match") >= 15 and played.recognitions[0] == "match", played.recognitions
    assert street.recognitions == ["no_match"] * 29, street.recognitions

    # The hot path: a chunk costs one write of the user's document, which the instance knows
    # as it last wrote it (no read), a recognition nothing more (the append claims), a miss
    # nothing after it. The first chunk of each user reads the document, and counts the user in
    # one of today's active_days counters.
    for s in (played, street):
        first, *rest = s.ingest_only
        assert {k: first[k] for k in INGEST_ONLY} == {**INGEST_ONLY, "firestore_reads": 1, "firestore_writes": 2}, dict(first)
        for delta in rest:
            assert {k: delta[k] for k in INGEST_ONLY} == INGEST_ONLY, dict(delta)

    figures = {"music": played.per_chunk(), "no_music": street.per_chunk()}
    # The app path: every POST is a chunk and, past the first 3 s, a recognition; music is named
    # at once after each match empties the buffer.
    assert app_played.chunks == app_street.chunks == 12
    assert app_played.recognitions.count("match") >= 10, app_played.recognitions
    assert app_street.recognitions == ["no_match"] * 12, app_street.recognitions
    app_figures = {"app_music": app_played.per_chunk(), "app_no_music": app_street.per_chunk()}
    for scenario, per_post in {**figures, **app_figures}.items():
        assert per_post["gcs_class_a"] == per_post["gcs_class_b"] == per_post["firestore_deletes"] == 0, per_post
        for key, ceiling in MAX_PER_POST[scenario].items():
            assert per_post[key] <= ceiling + 1e-9, f"{scenario}: {key} {per_post[key]:.3f} per POST > {ceiling:.3f}"
    developer_cost = {name: cost_per_user_hour(f) for name, f in figures.items()}
    app_cost = {name: cost_per_user_hour(f, APP_BATCH_SECONDS) for name, f in app_figures.items()}
    # Storage and Firestore per hour: a fifth of the POSTs, but as many matches (each costs a
    # release, a reservation and a history entry), so less than half the operations.
    for dev, app in (("music", "app_music"), ("no_music", "app_no_music")):
        stored = ("cloud_storage", "firestore")
        assert sum(app_cost[app][k] for k in stored) < 0.45 * sum(developer_cost[dev][k] for k in stored), (app_cost, developer_cost)

    out = os.environ.get("OPERATION_COUNTS_OUT")
    if out:
        report = {
            "what": "Cloud Storage and Firestore operations per 1-s chunk on the gcp backend, counted "
            "against the emulators over 60 s of music (3 songs) and 60 s of street noise, "
            "MIN_AUDIO_SECONDS=3, RECOGNITION_STRIDE_SECONDS=2; Cloud Run seconds are in-process "
            "request wall times against local emulators",
            "command": "OPERATION_COUNTS_OUT=operation_counts.json python -m pytest -q tests/test_operation_costs.py",
            "price_basis": PRICE_DATE,
            "prices_usd": PRICES,
            "cloud_run_assumptions": {"vcpu": RUN_VCPU, "memory_gib": RUN_GIB, "billing": "request-based"},
            "chunks_per_user_hour": USER_HOUR_CHUNKS,
            "recognitions": {
                "music": played.recognitions,
                "no_music": street.recognitions,
                "app_music": app_played.recognitions,
                "app_no_music": app_street.recognitions,
            },
            "per_chunk": figures,
            "app_batch_seconds": APP_BATCH_SECONDS,
            "per_app_post": app_figures,
            "request_seconds": {
                name: {
                    "ingest_mean": sum(s.wall_ingest) / len(s.wall_ingest),
                    "recognition_mean": sum(s.wall_recognition) / max(1, len(s.wall_recognition)),
                }
                for name, s in (("music", played), ("no_music", street))
            },
            "api_calls": dict(sorted(ledger.methods.items())),
            "usd_per_user_hour": {**developer_cost, **app_cost},
            "usd_per_user_hour_firestore_multi_region": {
                **{name: cost_per_user_hour(f, prices=MULTI_REGION) for name, f in figures.items()},
                **{name: cost_per_user_hour(f, APP_BATCH_SECONDS, prices=MULTI_REGION) for name, f in app_figures.items()},
            },
            "silence": "no storage operation at all (asserted over 60 s), only the request",
            "usd_per_user_hour_if_each_request_rounds_to_100ms": {
                **{name: cost_per_user_hour(f, rounded=True) for name, f in figures.items()},
                **{name: cost_per_user_hour(f, APP_BATCH_SECONDS, rounded=True) for name, f in app_figures.items()},
            },
        }
        Path(out).write_text(json.dumps(report, indent=2) + "\n")

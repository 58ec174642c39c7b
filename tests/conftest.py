"""Fixtures shared by every test: the storage backends, the gcp one on real local emulators.

- `emulators` (session): starts the Firestore emulator and fake-gcs-server once, on free ports
  (`running_emulators`, bench/harness.py), only when a test asks for them, and kills them at the
  end of the session. Value: a dict with FIRESTORE_EMULATOR_HOST and STORAGE_EMULATOR_HOST,
  ready to put in the environment.
- `backend_env` (per test, parametrized `local` / `gcp`): sets and returns the environment a
  `Settings.from_env()` needs for that backend. Each test gets its own DATA_DIR, and for gcp its
  own bucket (created) and its own GOOGLE_CLOUD_PROJECT, which the Firestore emulator keeps
  apart, so no state leaks between tests.
- `store` (per test): `open_store(Settings.from_env())` on top of `backend_env`.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Iterator

import pytest

# Started by bench/harness.py, which the load benchmark shares (bench/ never imports tests/);
# re-exported here, where the tests have always imported them from.
from bench.harness import Emulators, free_port, running_emulators  # noqa: F401  (re-exported)
from function.config import Settings
from function.storage import open_store
from function.storage.base import Store


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

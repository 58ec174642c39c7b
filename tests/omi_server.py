"""The Omi API stand-in for the tests: `OmiApi` lives in bench/omi_stand_in.py (the load
benchmark uses it too, and bench/ never imports tests/); this module re-exports it and holds
the `omi_api` fixture. Import the fixture into a test module to use it."""

from __future__ import annotations

from typing import Iterator

import pytest

from bench.omi_stand_in import EXTRACTED_PREFIX, MEMORY_LIMIT, NOTIFICATION_LIMIT, OmiApi, Received, Reply  # noqa: F401  (re-exported)


@pytest.fixture
def omi_api() -> Iterator[OmiApi]:
    api = OmiApi()
    api.start()
    yield api
    api.stop()

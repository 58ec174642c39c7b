"""Where the webhook's state lives: `open_store` picks the backend named by STORAGE_BACKEND."""

from __future__ import annotations

from function.config import Settings
from function.engine.stream import step
from function.storage.base import Fingerprint, Store, StoreUnavailable

__all__ = ["Store", "StoreUnavailable", "open_store"]


def open_store(settings: Settings, fingerprint: Fingerprint = step) -> Store:
    """The backend, keeping of each chunk only what `fingerprint` makes of it: the engine's
    peaks (function/engine/stream.py)."""
    if settings.storage_backend == "gcp":
        # Imported here so the local backend and the core never load a cloud SDK.
        from function.storage.gcp import GcpStore

        return GcpStore(
            settings.gcp_project,
            settings.firestore_database,
            fingerprint,
            history_retention_seconds=settings.history_retention_days * 86400,
        )
    from function.storage.local import LocalStore

    return LocalStore(settings.data_dir, fingerprint, history_retention_seconds=settings.history_retention_days * 86400)

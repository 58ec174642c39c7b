"""Every setting the service reads, from environment variables, in one place.

Each field names its variable and its default; `Settings.from_env` validates them at start-up and
raises `ConfigError` naming the offending variable, so a bad deployment fails loudly at boot
rather than on the first chunk of someone's audio.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from dataclasses import dataclass
from typing import Mapping

UID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
# Omi sends 16000 or 8000 Hz; other rates are accepted (the engine resamples), never refused,
# because a 4xx would make Omi drop the batch and count a failure against the webhook.
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 8000, 48000


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the environment variable."""


@dataclass(frozen=True)
class Settings:
    storage_backend: str = "local"  # STORAGE_BACKEND: "local" (files + SQLite) or "gcp"
    data_dir: str = "./data"  # DATA_DIR: local backend's chunks and SQLite database
    catalog_uri: str = "./data/catalog"  # CATALOG_URI: local directory or gs://bucket/prefix
    # CATALOG_SHARDS: comma-separated http(s) URLs of the catalog's shards (this function deployed
    # once per shard, function/engine/shards.py); when set, songs are named by asking them all
    # instead of loading CATALOG_URI.
    catalog_shards: tuple[str, ...] = ()
    # SHARD_TOKEN: the shards' shared secret: a shard answers /shard/* only with it (as a Bearer
    # token), and the webhook sends it to them. Unset, a shard's endpoints are closed.
    shard_token: str = ""
    gcp_project: str = ""  # GOOGLE_CLOUD_PROJECT
    firestore_database: str = "(default)"  # FIRESTORE_DATABASE
    min_audio_seconds: float = 3.0  # MIN_AUDIO_SECONDS: buffered audio before the first attempt
    max_buffer_seconds: float = 60.0  # MAX_BUFFER_SECONDS: oldest audio dropped past this
    stride_seconds: float = 2.0  # RECOGNITION_STRIDE_SECONDS: new audio before the next attempt after a miss
    lease_seconds: float = 30.0  # RECOGNITION_LEASE_SECONDS: a dead holder's claim expires
    max_chunk_bytes: int = 64 * 16000 * 2  # MAX_CHUNK_BYTES: larger bodies get 413
    omi_app_id: str = ""  # OMI_APP_ID
    omi_app_secret: str = ""  # OMI_APP_SECRET: without id+secret, notifications are only logged
    omi_api_url: str = "https://api.omi.me"  # OMI_API_URL
    notify_timeout_seconds: float = 5.0  # NOTIFY_TIMEOUT_SECONDS
    notify_cooldown_seconds: float = 600.0  # NOTIFY_COOLDOWN_SECONDS: same song, same user
    # NOTIFY_HOURLY_LIMIT: per user and UTC hour; Omi's counter starts at 2 of 10, so its 10th
    # call of an hour is refused: 9 is what Omi really allows.
    notify_hourly_limit: int = 9
    omi_memories: bool = False  # OMI_MEMORIES: also save each notified song as an Omi memory
    webhook_token: str = ""  # WEBHOOK_TOKEN: when set, POST /audio needs it as ?token=
    # OMI_SIGNING_SECRET: comma-separated; when set, POST /audio needs a valid X-Omi-Signature.
    signing_secrets: tuple[str, ...] = ()
    admin_token: str = ""  # ADMIN_TOKEN: operator endpoints (metrics, dashboard, any uid's data)
    user_link_secret: str = ""  # USER_LINK_SECRET: keys of users' own history links
    public_url: str = ""  # PUBLIC_URL: base of the links we send users (else the request's host)
    history_retention_days: float = 90.0  # HISTORY_RETENTION_DAYS
    # ALLOW_UNAUTHENTICATED: the gcp backend refuses to start with open audio unless this says
    # it is on purpose (a test stack, the emulators).
    allow_unauthenticated: bool = False
    max_gap_seconds: float = 40.0  # MAX_GAP_SECONDS: audio after a longer silence starts a new buffer
    rate_limit: float = 8.0  # RATE_LIMIT_AUDIO_SECONDS_PER_SECOND per uid and instance; 0: off
    service_name: str = "omi-song-recognition"  # SERVICE_NAME
    log_level: str = "INFO"  # LOG_LEVEL

    @property
    def notifications_enabled(self) -> bool:
        return bool(self.omi_app_id and self.omi_app_secret)

    @property
    def link_secret(self) -> str:
        """The secret users' history links are keyed with: USER_LINK_SECRET, else one derived
        from the app secret (so an app deployment has links without another secret), else none."""
        if self.user_link_secret:
            return self.user_link_secret
        if self.omi_app_secret:
            return hmac.new(self.omi_app_secret.encode(), b"user-history-links", hashlib.sha256).hexdigest()
        return ""

    @property
    def audio_authenticated(self) -> bool:
        return bool(self.webhook_token or self.signing_secrets)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        d = cls()

        def text(name: str, default: str) -> str:
            return env.get(name, "").strip() or default

        def number(name: str, default: float, low: float, high: float) -> float:
            raw = env.get(name, "").strip()
            if not raw:
                return default
            try:
                value = float(raw)
            except ValueError:
                raise ConfigError(f"{name} must be a number, got {raw!r}") from None
            if not low <= value <= high:
                raise ConfigError(f"{name} must be between {low:g} and {high:g}, got {raw}")
            return value

        def flag(name: str, default: bool) -> bool:
            raw = env.get(name, "").strip().lower()
            if not raw:
                return default
            if raw not in ("true", "false", "1", "0", "yes", "no"):
                raise ConfigError(f"{name} must be true or false, got {raw!r}")
            return raw in ("true", "1", "yes")

        backend = text("STORAGE_BACKEND", d.storage_backend).lower()
        if backend not in ("local", "gcp"):
            raise ConfigError(f"STORAGE_BACKEND must be 'local' or 'gcp', got {backend!r}")
        settings = cls(
            storage_backend=backend,
            data_dir=text("DATA_DIR", d.data_dir),
            catalog_uri=text("CATALOG_URI", d.catalog_uri),
            catalog_shards=tuple(u.strip().rstrip("/") for u in text("CATALOG_SHARDS", "").split(",") if u.strip()),
            shard_token=text("SHARD_TOKEN", d.shard_token),
            gcp_project=text("GOOGLE_CLOUD_PROJECT", d.gcp_project),
            firestore_database=text("FIRESTORE_DATABASE", d.firestore_database),
            min_audio_seconds=number("MIN_AUDIO_SECONDS", d.min_audio_seconds, 1, 600),
            max_buffer_seconds=number("MAX_BUFFER_SECONDS", d.max_buffer_seconds, 1, 3600),
            stride_seconds=number("RECOGNITION_STRIDE_SECONDS", d.stride_seconds, 0, 600),
            lease_seconds=number("RECOGNITION_LEASE_SECONDS", d.lease_seconds, 1, 3600),
            max_chunk_bytes=int(number("MAX_CHUNK_BYTES", d.max_chunk_bytes, 2, 1 << 30)),
            omi_app_id=text("OMI_APP_ID", d.omi_app_id),
            omi_app_secret=text("OMI_APP_SECRET", d.omi_app_secret),
            omi_api_url=text("OMI_API_URL", d.omi_api_url).rstrip("/"),
            notify_timeout_seconds=number("NOTIFY_TIMEOUT_SECONDS", d.notify_timeout_seconds, 0.1, 60),
            notify_cooldown_seconds=number("NOTIFY_COOLDOWN_SECONDS", d.notify_cooldown_seconds, 0, 86400),
            notify_hourly_limit=int(number("NOTIFY_HOURLY_LIMIT", d.notify_hourly_limit, 0, 1000)),
            omi_memories=flag("OMI_MEMORIES", d.omi_memories),
            webhook_token=text("WEBHOOK_TOKEN", d.webhook_token),
            signing_secrets=tuple(s.strip() for s in text("OMI_SIGNING_SECRET", "").split(",") if s.strip()),
            admin_token=text("ADMIN_TOKEN", d.admin_token),
            user_link_secret=text("USER_LINK_SECRET", d.user_link_secret),
            public_url=text("PUBLIC_URL", d.public_url).rstrip("/"),
            history_retention_days=number("HISTORY_RETENTION_DAYS", d.history_retention_days, 1, 36500),
            max_gap_seconds=number("MAX_GAP_SECONDS", d.max_gap_seconds, 1, 86400),
            allow_unauthenticated=flag("ALLOW_UNAUTHENTICATED", d.allow_unauthenticated),
            rate_limit=number("RATE_LIMIT_AUDIO_SECONDS_PER_SECOND", d.rate_limit, 0, 1000),
            service_name=text("SERVICE_NAME", d.service_name),
            log_level=text("LOG_LEVEL", d.log_level).upper(),
        )
        if settings.max_buffer_seconds < settings.min_audio_seconds:
            raise ConfigError("MAX_BUFFER_SECONDS must be at least MIN_AUDIO_SECONDS")
        if backend == "gcp" and not (settings.audio_authenticated or settings.allow_unauthenticated):
            raise ConfigError(
                "STORAGE_BACKEND=gcp needs WEBHOOK_TOKEN or OMI_SIGNING_SECRET (or ALLOW_UNAUTHENTICATED=true on purpose):"
                " a deployed webhook must not take anyone's audio"
            )
        # Neither is a valid state (no Omi app yet: notifications are only logged); one alone is
        # a half-finished configuration, named by the one that is missing.
        if bool(settings.omi_app_id) != bool(settings.omi_app_secret):
            missing, given = ("OMI_APP_SECRET", "OMI_APP_ID") if settings.omi_app_id else ("OMI_APP_ID", "OMI_APP_SECRET")
            raise ConfigError(
                f"{missing} is not set but {given} is: set both (notifications through your Omi app)"
                " or neither (notifications are only logged)"
            )
        if settings.omi_memories and not settings.notifications_enabled:
            raise ConfigError("OMI_MEMORIES=true needs OMI_APP_ID and OMI_APP_SECRET")
        if settings.public_url and not settings.public_url.startswith(("http://", "https://")):
            raise ConfigError(f"PUBLIC_URL must be an http(s) URL, got {settings.public_url!r}")
        for url in settings.catalog_shards:
            if not url.startswith(("http://", "https://")):
                raise ConfigError(f"CATALOG_SHARDS must be comma-separated http(s) URLs, got {url!r}")
        if len(set(settings.catalog_shards)) != len(settings.catalog_shards):
            raise ConfigError("CATALOG_SHARDS names a shard twice: its songs would be counted twice")
        if settings.catalog_shards and not settings.shard_token:
            raise ConfigError("CATALOG_SHARDS needs SHARD_TOKEN: the shards answer nobody without it")
        if not settings.omi_api_url.startswith(("http://", "https://")):
            raise ConfigError(f"OMI_API_URL must be an http(s) URL, got {settings.omi_api_url!r}")
        return settings

"""Settings are validated at start-up, with a message that names the variable; a deployment on the
cloud backend is secure by default."""

from __future__ import annotations

import pytest

from function.config import ConfigError, Settings

GCP = {"STORAGE_BACKEND": "gcp"}


def test_the_cloud_backend_refuses_to_start_with_open_audio() -> None:
    with pytest.raises(ConfigError, match="WEBHOOK_TOKEN or OMI_SIGNING_SECRET"):
        Settings.from_env(GCP)


@pytest.mark.parametrize(
    "extra",
    [{"WEBHOOK_TOKEN": "t"}, {"OMI_SIGNING_SECRET": "s"}, {"ALLOW_UNAUTHENTICATED": "true"}],
    ids=["token", "signing-secret", "open-on-purpose"],
)
def test_the_cloud_backend_starts_with_audio_protected_or_open_on_purpose(extra: dict[str, str]) -> None:
    assert Settings.from_env({**GCP, **extra}).storage_backend == "gcp"


def test_a_deployment_without_an_omi_app_yet_starts_and_only_logs_notifications() -> None:
    # The first deploy of README's "Publish as an Omi app": the app (and so its id and API key)
    # is created after the function exists.
    settings = Settings.from_env({**GCP, "WEBHOOK_TOKEN": "t", "ADMIN_TOKEN": "a", "USER_LINK_SECRET": "l"})

    assert (settings.omi_app_id, settings.omi_app_secret, settings.notifications_enabled) == ("", "", False)
    assert Settings.from_env({**GCP, "WEBHOOK_TOKEN": "t", "OMI_APP_ID": "a", "OMI_APP_SECRET": "s"}).notifications_enabled


@pytest.mark.parametrize(
    "given,missing",
    [({"OMI_APP_ID": "app_id_value"}, "OMI_APP_SECRET"), ({"OMI_APP_SECRET": "sk_value"}, "OMI_APP_ID")],
    ids=["id-alone", "secret-alone"],
)
def test_half_an_omi_app_is_refused_naming_the_missing_half(given: dict[str, str], missing: str) -> None:
    with pytest.raises(ConfigError) as refused:
        Settings.from_env({**GCP, "WEBHOOK_TOKEN": "t", **given})

    message = str(refused.value)
    assert message.startswith(f"{missing} is not set")
    assert "\n" not in message and "_value" not in message


def test_the_embedded_default_needs_no_credential() -> None:
    settings = Settings.from_env({})

    assert (settings.storage_backend, settings.audio_authenticated) == ("local", False)
    assert (settings.notify_hourly_limit, settings.max_gap_seconds, settings.history_retention_days) == (9, 40.0, 90.0)


@pytest.mark.parametrize(
    "env,variable",
    [
        ({"ALLOW_UNAUTHENTICATED": "maybe"}, "ALLOW_UNAUTHENTICATED"),
        ({"OMI_MEMORIES": "true"}, "OMI_MEMORIES"),
        ({"PUBLIC_URL": "songs.example.com"}, "PUBLIC_URL"),
        ({"MAX_GAP_SECONDS": "0"}, "MAX_GAP_SECONDS"),
        ({"HISTORY_RETENTION_DAYS": "abc"}, "HISTORY_RETENTION_DAYS"),
    ],
)
def test_a_bad_value_names_its_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as refused:
        Settings.from_env(env)

    assert str(refused.value).startswith(variable)


def test_signing_secrets_are_a_comma_separated_list() -> None:
    assert Settings.from_env({"OMI_SIGNING_SECRET": " new , old ,"}).signing_secrets == ("new", "old")


def test_history_links_use_their_own_secret_else_one_derived_from_the_app_secret() -> None:
    own = Settings.from_env({"USER_LINK_SECRET": "links", "OMI_APP_ID": "a", "OMI_APP_SECRET": "s"})
    derived = Settings.from_env({"OMI_APP_ID": "a", "OMI_APP_SECRET": "s"})

    assert own.link_secret == "links"
    assert derived.link_secret not in ("", "s")
    assert Settings.from_env({}).link_secret == ""

"""The deployment files agree with the code and with each other, checked offline.

Nothing here reaches Google: cloudbuild.yaml is validated against its published schema bundled in
check-jsonschema, the Terraform is parsed with python-hcl2 (`terraform init`/`validate` would
need the provider registry), and the settings the code reads are derived from function/config.py
so that a new setting the deployment forgets fails here instead of at the first real chunk. What
each path uploads is worked out with gcloud's own .gcloudignore rules (a port of them, checked
against `gcloud meta list-files-for-upload` where gcloud is installed: Cloud Build's python image
has none).
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import hcl2
import pytest
from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
CLOUDBUILD = ROOT / "cloudbuild.yaml"

# Settings that only mean something on a developer's machine or a test stack, so a deployment
# never sets them (ALLOW_UNAUTHENTICATED would open a deployed webhook's audio to anyone).
LOCAL_ONLY_SETTINGS = {"DATA_DIR", "ALLOW_UNAUTHENTICATED"}
SECRET_SETTINGS = {"OMI_APP_SECRET", "WEBHOOK_TOKEN", "OMI_SIGNING_SECRET", "ADMIN_TOKEN", "USER_LINK_SECRET", "SHARD_TOKEN"}
# Bound only while their variable is set (a Secret Manager version cannot be empty; the Omi app's
# key exists only once the app does, which is after the first deploy; the shard token only with
# catalog shards); every other secret always exists, so cloudbuild.yaml can name it.
OPTIONAL_SECRET_SETTINGS = {"OMI_APP_SECRET", "OMI_SIGNING_SECRET", "SHARD_TOKEN"}
# What the gcp backend cannot start without; cloudbuild.yaml must set these. Not OMI_APP_ID: a
# deployment without an Omi app yet starts and only logs notifications.
GCP_REQUIRED_SETTINGS = {
    "STORAGE_BACKEND",
    "CATALOG_URI",
    "GOOGLE_CLOUD_PROJECT",
    "FIRESTORE_DATABASE",
}
# All cloudbuild.yaml may set: where the stack is. It merges into Terraform's configuration, so
# a tuning knob it passed (with its substitution's default) would overwrite Terraform's value.
CLOUDBUILD_SETTINGS = GCP_REQUIRED_SETTINGS | {"SERVICE_NAME"}
# gcloud flags that replace or remove a function's variables or secrets instead of merging.
REPLACING_FLAGS = {"set-env-vars", "env-vars-file", "clear-env-vars", "remove-env-vars"}
REPLACING_SECRET_FLAGS = {"set-secrets", "clear-secrets", "remove-secrets"}


def settings_read_by_code() -> set[str]:
    """Every environment variable name function/config.py passes to its text()/number()/flag() readers."""
    source = (ROOT / "function" / "config.py").read_text()
    return set(re.findall(r"\b(?:text|number|flag)\(\s*[\"']([A-Z][A-Z0-9_]*)[\"']", source))


@lru_cache(maxsize=1)
def terraform() -> dict[str, list]:
    """All blocks of infra/*.tf merged by type (resource, variable, output, locals, ...)."""
    options = hcl2.SerializationOptions(with_comments=False, explicit_blocks=False, strip_string_quotes=True)
    merged: dict[str, list] = {}
    for path in sorted(INFRA.glob("*.tf")):
        with path.open() as f:
            for kind, blocks in hcl2.load(f, serialization_options=options).items():
                merged.setdefault(kind, []).extend(blocks)
    return merged


def resources(kind: str) -> dict[str, dict]:
    return {name: body for block in terraform().get("resource", []) for name, body in block.get(kind, {}).items()}


def variables() -> dict[str, dict]:
    return {name: body for block in terraform().get("variable", []) for name, body in block.items()}


def terraform_locals() -> dict[str, object]:
    return {name: value for block in terraform().get("locals", []) for name, value in block.items()}


def outputs() -> dict[str, dict]:
    return {name: body for block in terraform()["output"] for name, body in block.items()}


def resolve(value: object) -> object:
    """A `${var.x}` reference to that variable's default, anything else as written."""
    match = re.fullmatch(r"\$\{(?:tostring\()?var\.(\w+)\)?\}", value) if isinstance(value, str) else None
    return variables()[match.group(1)].get("default") if match else value


def the_function() -> dict:
    """The webhook (the other google_cloudfunctions2_function is the catalog shards', shards.tf)."""
    functions = resources("google_cloudfunctions2_function")
    assert set(functions) == {"webhook", "shard"}, f"unexpected google_cloudfunctions2_functions: {sorted(functions)}"
    return functions["webhook"]


OPTIONAL_ENVIRONMENT = {"public_url_environment": "PUBLIC_URL", "omi_app_environment": "OMI_APP_ID"}


def function_environment() -> dict[str, str]:
    """The function's plain environment: `merge(local.function_environment, local.<x>_environment,
    ...)`, each of the others being `var.<x> != "" ? { NAME = var.<x> } : {}` (set only when given)."""
    service = the_function()["service_config"][0]
    merged = ", ".join(f"local.{name}" for name in ["function_environment", *OPTIONAL_ENVIRONMENT])
    assert service["environment_variables"] == f"${{merge({merged})}}"
    env = dict(terraform_locals()["function_environment"])
    for local, name in OPTIONAL_ENVIRONMENT.items():
        variable = name.lower()
        optional = terraform_locals()[local]
        assert optional == f'${{var.{variable} != "" ? {{{name} = var.{variable}}} : {{}}}}', optional
        env[name] = f"${{var.{variable}}}"
    return env


def function_secrets() -> dict[str, str]:
    """The function's secret environment, key -> the `google_secret_manager_secret` it reads,
    including the dynamic block (bound only while its secret exists)."""
    service = the_function()["service_config"][0]
    bound: dict[str, str] = {}
    for block in service["secret_environment_variables"]:
        match = re.fullmatch(r"\$\{google_secret_manager_secret\.(\w+)\.secret_id\}", block["secret"])
        assert match, block
        assert block["version"] == "latest" and block["project_id"] == "${var.project_id}"
        bound[block["key"]] = match.group(1)
    for dynamic in service.get("dynamic", []):
        block = dynamic["secret_environment_variables"]
        match = re.fullmatch(r"\$\{google_secret_manager_secret\.(\w+)\}", block["for_each"])
        assert match, block
        content = block["content"][0]
        assert content["secret"] == "${secret_environment_variables.value.secret_id}"
        assert content["version"] == "latest" and content["project_id"] == "${var.project_id}"
        bound[content["key"]] = match.group(1)
    return bound


def cloudbuild() -> dict:
    return YAML(typ="safe").load(CLOUDBUILD.read_text())


def deploy_flags(words: list[str]) -> dict[str, str]:
    """`--name=value` and `--name value` flags after `gcloud functions deploy NAME`."""
    flags: dict[str, str] = {}
    for i, word in enumerate(words):
        if word.startswith("--"):
            name, eq, value = word[2:].partition("=")
            if not eq and i + 1 < len(words) and not words[i + 1].startswith("--"):
                value = words[i + 1]
            flags[name] = value
    return flags


def cloudbuild_deploy_words() -> list[str]:
    steps = [s for s in cloudbuild()["steps"] if s.get("args", [])[:2] == ["functions", "deploy"]]
    assert len(steps) == 1, "cloudbuild.yaml needs exactly one `gcloud functions deploy` step"
    assert steps[0].get("entrypoint") == "gcloud"
    return [str(a) for a in steps[0]["args"]]


def region_variable(value: str) -> str:
    """`${_REGION}` (Cloud Build) and `$REGION`/`"${REGION}"` (shell) both name REGION."""
    match = re.fullmatch(r"\$\{?_?([A-Z][A-Z0-9_]*)\}?", value.strip("\"'"))
    assert match, f"--region should be a variable, got {value!r}"
    return match.group(1)


# --- cloudbuild.yaml ---------------------------------------------------------------------------


def validate_cloudbuild(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.cloudbuild", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )


def test_cloudbuild_matches_its_schema() -> None:
    result = validate_cloudbuild(CLOUDBUILD)

    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_rejects_a_broken_cloudbuild(tmp_path: Path) -> None:
    broken = tmp_path / "cloudbuild.yaml"
    valid = "options:\n  logging: CLOUD_LOGGING_ONLY"
    broken.write_text(CLOUDBUILD.read_text().replace(valid, "options:\n  logging: EVERYWHERE"))

    result = validate_cloudbuild(broken)

    assert result.returncode == 1, result.stdout + result.stderr


def test_cloudbuild_tests_then_deploys_with_cloud_logging_only() -> None:
    config = cloudbuild()
    ids = [step.get("id") for step in config["steps"]]

    assert config["options"]["logging"] == "CLOUD_LOGGING_ONLY"
    assert ids.index("test") < ids.index("deploy")
    assert "bash .ci/run" in config["steps"][ids.index("test")]["args"][-1]


def test_every_substitution_used_in_cloudbuild_has_a_default() -> None:
    config = cloudbuild()
    text = CLOUDBUILD.read_text()
    used = set(re.findall(r"\$\{(_[A-Z0-9_]+)\}", text)) | set(re.findall(r"(?<!\$)\$(_[A-Z0-9_]+)", text))

    assert used, "no user substitutions found"
    assert used <= set(config["substitutions"]), f"no default for {sorted(used - set(config['substitutions']))}"
    assert {"_REGION", "_FUNCTION_NAME", "_BUCKET"} <= used


def pairs(flag_value: str) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in flag_value.split(",") if pair)


def cloudbuild_env_and_secrets(flags: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    env = pairs(flags.get("update-env-vars", "")) | pairs(flags.get("set-env-vars", ""))
    secrets = pairs(flags.get("update-secrets", "")) | pairs(flags.get("set-secrets", ""))
    return env, secrets


def what_the_deploy_loses(flags: dict[str, str]) -> list[str]:
    """What Terraform sets on the function that a deploy with these flags drops or overwrites."""
    env, secrets = cloudbuild_env_and_secrets(flags)
    terraform_env, terraform_secrets = set(function_environment()), set(function_secrets())
    lost = [f"--{flag} replaces or removes variables" for flag in sorted(REPLACING_FLAGS & set(flags))]
    lost += [f"--{flag} replaces or removes secrets" for flag in sorted(REPLACING_SECRET_FLAGS & set(flags))]
    if "set-env-vars" in flags:
        lost += [f"drops {name}" for name in sorted(terraform_env - set(env))]
    if "set-secrets" in flags:
        lost += [f"drops secret {name}" for name in sorted(terraform_secrets - set(secrets))]
    lost += [f"overwrites {name} with a substitution default" for name in sorted(set(env) - CLOUDBUILD_SETTINGS)]
    return lost


def test_cloudbuild_deploys_gen2_python312_omi_webhook_publicly_with_settings_and_secrets() -> None:
    words = cloudbuild_deploy_words()
    flags = deploy_flags(words)
    env, secrets = cloudbuild_env_and_secrets(flags)

    assert words[2] == "${_FUNCTION_NAME}"
    assert {"gen2", "trigger-http", "allow-unauthenticated"} <= set(flags)
    assert flags["entry-point"] == "omi_webhook"
    assert flags["runtime"] == "python312"
    assert region_variable(flags["region"]) == "REGION"
    assert GCP_REQUIRED_SETTINGS <= set(env) <= CLOUDBUILD_SETTINGS
    assert env["STORAGE_BACKEND"] == "gcp"
    assert env["CATALOG_URI"] == "gs://${_BUCKET}/catalog"
    assert env["SERVICE_NAME"] == "${_FUNCTION_NAME}"
    # Secure by default: the admin token and the link key always, the optional signing secret
    # never (it may not exist, and --update-secrets keeps Terraform's binding of it).
    assert set(secrets) == SECRET_SETTINGS - OPTIONAL_SECRET_SETTINGS
    assert all(ref.endswith(":latest") for ref in secrets.values())


def test_cloudbuild_keeps_every_setting_and_secret_terraform_sets() -> None:
    flags = deploy_flags(cloudbuild_deploy_words())

    assert what_the_deploy_loses(flags) == []
    assert {"update-env-vars", "update-secrets"} <= set(flags)


def test_the_keep_check_catches_a_replacing_deploy() -> None:
    flags = deploy_flags(cloudbuild_deploy_words())
    flags["set-env-vars"] = flags.pop("update-env-vars") + ",MIN_AUDIO_SECONDS=${_MIN_AUDIO_SECONDS}"
    flags["set-secrets"] = flags.pop("update-secrets")

    lost = what_the_deploy_loses(flags)

    assert "drops NOTIFY_HOURLY_LIMIT" in lost
    assert "drops HISTORY_RETENTION_DAYS" in lost
    assert "drops secret OMI_SIGNING_SECRET" in lost
    assert "overwrites MIN_AUDIO_SECONDS with a substitution default" in lost


def test_cloudbuild_secret_names_are_the_ones_terraform_creates() -> None:
    _, secrets = cloudbuild_env_and_secrets(deploy_flags(cloudbuild_deploy_words()))
    defaults = cloudbuild()["substitutions"]
    function_name = variables()["function_name"]["default"]
    created = resources("google_secret_manager_secret")

    for key, ref in secrets.items():
        match = re.fullmatch(r"\$\{(_[A-Z0-9_]+)\}:latest", ref)
        assert match, f"{key}: {ref!r} should be a substitution naming the secret"
        secret_id = created[function_secrets()[key]]["secret_id"]
        assert defaults[match.group(1)] == secret_id.replace("${var.function_name}", function_name), key
        assert "count" not in created[function_secrets()[key]], f"{key}'s secret may not exist"
    assert defaults["_FUNCTION_NAME"] == function_name


def test_cloudbuild_deploys_before_and_after_the_omi_app_exists() -> None:
    # The Omi app is created after the first deploy (README, Publish as an Omi app): the build
    # neither needs its id nor names its secret, and --update-* keeps whatever Terraform set.
    env, secrets = cloudbuild_env_and_secrets(deploy_flags(cloudbuild_deploy_words()))
    text = CLOUDBUILD.read_text()

    assert "OMI_APP_ID" not in env and "OMI_APP_SECRET" not in secrets
    assert "_OMI_APP" not in text and "omi-app-secret" not in text
    assert not any("_OMI_APP" in name for name in cloudbuild()["substitutions"])


def test_cloudbuild_refuses_an_upload_without_the_tests_before_testing() -> None:
    steps = cloudbuild()["steps"]
    ids = [step.get("id") for step in steps]
    check = steps[ids.index("check-upload")]

    assert ids.index("check-upload") < ids.index("test") < ids.index("deploy")
    assert "[[ ! -f .ci/run ]]" in check["args"][-1] and "exit 1" in check["args"][-1]


# --- Terraform -----------------------------------------------------------------------------------


def test_settings_are_found_in_config_py() -> None:
    # Guards the regex: if config.py stops using text()/number(), the coverage test below would
    # pass on an empty set.
    names = settings_read_by_code()

    assert {"STORAGE_BACKEND", "CATALOG_URI", "OMI_APP_ID", "OMI_APP_SECRET", "MIN_AUDIO_SECONDS"} <= names
    assert len(names) >= 15


def test_function_is_gen2_python312_with_entry_point_omi_webhook() -> None:
    build = the_function()["build_config"][0]

    assert build["runtime"] == "python312"
    assert build["entry_point"] == "omi_webhook"
    assert "storage_source" in build["source"][0]
    assert "archive_file" in str(terraform().get("data"))


def test_terraform_sets_every_setting_the_code_reads() -> None:
    plain = set(function_environment())
    secret = set(function_secrets())

    missing = settings_read_by_code() - LOCAL_ONLY_SETTINGS - plain - secret
    assert not missing, f"infra/function.tf does not set {sorted(missing)}"
    assert secret == SECRET_SETTINGS
    assert not plain & SECRET_SETTINGS, "secrets must come from Secret Manager, not plain environment"
    assert not (plain | secret) - settings_read_by_code(), "infra/function.tf sets what the code never reads"


def test_terraform_defaults_are_the_codes_defaults() -> None:
    # A tuning variable's default is what the code would do without it (NOTIFY_HOURLY_LIMIT is 9,
    # not Omi's nominal 10, in both places).
    from function.config import Settings

    checked = []
    for name, value in function_environment().items():
        match = re.fullmatch(r"\$\{(?:tostring\()?var\.(\w+)\)?\}", value)
        if not match or "default" not in variables()[match.group(1)] or name == "SERVICE_NAME":
            continue
        default = variables()[match.group(1)]["default"]
        raw = str(default).lower() if isinstance(default, bool) else str(default)
        assert Settings.from_env({name: raw}) == Settings.from_env({}), f"{match.group(1)} = {default!r}"
        checked.append(name)
    assert {"NOTIFY_HOURLY_LIMIT", "HISTORY_RETENTION_DAYS", "MAX_GAP_SECONDS", "OMI_MEMORIES"} <= set(checked)


def test_public_url_is_set_only_when_given() -> None:
    # Its default cannot be the function's own URL (a cycle); empty, the code uses the host the
    # authenticated audio reached.
    assert variables()["public_url"]["default"] == ""
    assert "google_cloudfunctions2_function" not in str(terraform_locals()["public_url_environment"])


def test_terraform_environment_points_at_the_catalog_bucket_and_firestore() -> None:
    env = function_environment()

    assert env["STORAGE_BACKEND"] == "gcp"
    assert env["CATALOG_URI"] == "gs://${google_storage_bucket.songs.name}/catalog"
    assert env["FIRESTORE_DATABASE"] == "${var.firestore_database}"
    assert env["GOOGLE_CLOUD_PROJECT"] == "${var.project_id}"


def test_function_is_sized_for_recognition() -> None:
    service = the_function()["service_config"][0]

    assert resolve(service["available_memory"]) in ("1Gi", "2Gi", "4Gi")
    assert float(resolve(service["available_cpu"])) >= 1
    assert resolve(service["max_instance_request_concurrency"]) > 1
    assert resolve(service["max_instance_count"]) >= 1
    assert 15 <= resolve(service["timeout_seconds"]) <= 60
    assert service["service_account_email"] == "${google_service_account.function.email}"


def test_the_catalog_bucket_keeps_its_objects() -> None:
    """The bucket holds only the catalog (audio lives in Firestore, reaped by TTL): no rule
    may delete from it."""
    bucket = resources("google_storage_bucket")["songs"]

    assert "lifecycle_rule" not in bucket
    assert bucket["uniform_bucket_level_access"] is True


def test_firestore_database_is_native_mode() -> None:
    database = next(iter(resources("google_firestore_database").values()))

    assert database["type"] == "FIRESTORE_NATIVE"
    assert database["name"] == "${var.firestore_database}"


def test_service_account_has_least_privilege() -> None:
    member = "${google_service_account.function.member}"
    project_roles = {r["role"] for r in resources("google_project_iam_member").values() if r["member"] == member}
    bucket_roles = [(r["bucket"], r["role"]) for r in resources("google_storage_bucket_iam_member").values()]
    secret_grants = {
        (r["secret_id"], r["role"])
        for r in resources("google_secret_manager_secret_iam_member").values()
        if r["member"] == member
    }

    assert project_roles == {"roles/datastore.user"}
    # The function only reads the catalog; registering is done from a developer's machine.
    assert bucket_roles == [("${google_storage_bucket.songs.name}", "roles/storage.objectViewer")]
    accessor = "roles/secretmanager.secretAccessor"
    assert secret_grants == {
        ("${google_secret_manager_secret.omi_app_secret[count.index].id}", accessor),
        ("${google_secret_manager_secret.webhook_token.id}", accessor),
        ("${google_secret_manager_secret.admin_token.id}", accessor),
        ("${google_secret_manager_secret.user_link_secret.id}", accessor),
        ("${google_secret_manager_secret.omi_signing_secret[count.index].id}", accessor),
        ("${google_secret_manager_secret.shard_token[count.index].id}", accessor),
    }
    grant_ref = re.compile(r"^\$\{google_secret_manager_secret\.(\w+)(\[count\.index\])?\.id\}$")
    granted = {grant_ref.sub(r"\1", ref) for ref, _ in secret_grants}
    assert granted == set(function_secrets().values()), "grant exactly the secrets the function reads"


def test_the_build_runs_as_its_own_service_account() -> None:
    """New projects and org policies break the default build account: the function names one."""
    build = the_function()["build_config"][0]
    grants = resources("google_project_iam_member")["build"]

    assert build["service_account"] == "${google_service_account.build.id}"
    assert grants["member"] == "${google_service_account.build.member}" and grants["role"] == "${each.value}"
    assert sorted(re.findall(r'"(roles/[^"]+)"', grants["for_each"])) == [
        "roles/artifactregistry.writer",
        "roles/logging.logWriter",
        "roles/storage.objectViewer",
    ]
    assert "${google_project_iam_member.build}" in the_function()["depends_on"]


def test_secrets_come_from_sensitive_variables() -> None:
    versions = resources("google_secret_manager_secret_version")

    # Write-only: the values never enter the Terraform state.
    assert all("secret_data" not in v for v in versions.values())
    assert all(v["secret_data_wo_version"] == "${var.secrets_version}" for v in versions.values())
    assert {v["secret_data_wo"] for v in versions.values()} == {
        "${var.omi_app_secret}",
        "${var.webhook_token}",
        "${var.omi_signing_secret}",
        "${local.admin_token}",
        "${local.user_link_secret}",
        "${local.shard_token}",
    }
    for name in ("omi_app_secret", "webhook_token", "omi_signing_secret", "admin_token", "user_link_secret", "shard_token"):
        assert variables()[name]["sensitive"] is True, name
    assert function_secrets() == {
        "OMI_APP_SECRET": "omi_app_secret",
        "WEBHOOK_TOKEN": "webhook_token",
        "ADMIN_TOKEN": "admin_token",
        "USER_LINK_SECRET": "user_link_secret",
        "OMI_SIGNING_SECRET": "omi_signing_secret",
        "SHARD_TOKEN": "shard_token",
    }


def test_admin_token_and_link_secret_are_generated_when_not_given() -> None:
    generated = resources("random_password")
    provider = terraform()["terraform"][0]["required_providers"][0]

    assert provider["random"]["source"] == "hashicorp/random"
    for name in ("admin_token", "user_link_secret"):
        assert variables()[name]["default"] == ""
        assert terraform_locals()[name] == f'${{var.{name} != "" ? var.{name} : random_password.{name}.result}}'
        assert generated[name]["length"] >= 32
        assert "count" not in resources("google_secret_manager_secret")[name]


def test_the_omi_app_exists_only_when_given() -> None:
    # The first deploy comes before the app: OMI_APP_ID and the app's key (secret, version,
    # grant, binding) follow their variables, and nothing else (cloudbuild.yaml included) names
    # the secret.
    secret = resources("google_secret_manager_secret")["omi_app_secret"]
    version = resources("google_secret_manager_secret_version")["omi_app_secret"]
    grant = resources("google_secret_manager_secret_iam_member")["function_omi_app_secret"]
    follows = "${length(google_secret_manager_secret.omi_app_secret)}"

    assert variables()["omi_app_id"]["default"] == variables()["omi_app_secret"]["default"] == ""
    assert secret["count"] == '${var.omi_app_secret != "" ? 1 : 0}'
    assert version["count"] == grant["count"] == follows
    assert version["secret"] == "${google_secret_manager_secret.omi_app_secret[count.index].id}"
    assert function_secrets()["OMI_APP_SECRET"] == "omi_app_secret"
    assert "OMI_APP_ID" not in terraform_locals()["function_environment"]
    assert function_environment()["OMI_APP_ID"] == "${var.omi_app_id}"


def test_the_signing_secret_exists_only_when_given() -> None:
    # A Secret Manager version cannot be empty: secret, version, grant and binding all follow
    # the variable, and nothing else (cloudbuild.yaml included) names the secret.
    secret = resources("google_secret_manager_secret")["omi_signing_secret"]
    version = resources("google_secret_manager_secret_version")["omi_signing_secret"]
    grant = resources("google_secret_manager_secret_iam_member")["function_omi_signing_secret"]
    follows = "${length(google_secret_manager_secret.omi_signing_secret)}"

    assert variables()["omi_signing_secret"]["default"] == ""
    assert secret["count"] == '${var.omi_signing_secret != "" ? 1 : 0}'
    assert version["count"] == grant["count"] == follows
    assert version["secret"] == "${google_secret_manager_secret.omi_signing_secret[count.index].id}"
    assert function_secrets()["OMI_SIGNING_SECRET"] == "omi_signing_secret"
    assert "omi-signing-secret" not in CLOUDBUILD.read_text()


def test_function_is_publicly_invokable() -> None:
    invokers = resources("google_cloud_run_service_iam_member")

    assert set(invokers) == {"public_invoker", "shard_invoker"}
    assert [invokers["public_invoker"]] == [
        {
            "location": "${google_cloudfunctions2_function.webhook.location}",
            "service": "${google_cloudfunctions2_function.webhook.name}",
            "role": "roles/run.invoker",
            "member": "allUsers",
        }
    ]


def test_catalog_shards_are_wired_to_the_webhook() -> None:
    """catalog_shards = N: N shard functions from the webhook's own source, each reading its
    part of the catalog and the shared token; the webhook asks their URLs with that token."""
    shard = resources("google_cloudfunctions2_function")["shard"]
    webhook = the_function()
    service = shard["service_config"][0]

    assert variables()["catalog_shards"]["default"] == 0
    assert shard["count"] == "${var.catalog_shards}"
    assert shard["build_config"] == webhook["build_config"], "a shard is the same function"
    assert service["environment_variables"]["CATALOG_URI"] == "gs://${google_storage_bucket.songs.name}/shards/${count.index}"
    assert not set(service["environment_variables"]) - settings_read_by_code()
    assert service["service_account_email"] == webhook["service_config"][0]["service_account_email"]
    [token] = service["secret_environment_variables"]
    assert (token["key"], token["secret"]) == ("SHARD_TOKEN", "${google_secret_manager_secret.shard_token[0].secret_id}")
    assert function_secrets()["SHARD_TOKEN"] == "shard_token"
    assert function_environment()["CATALOG_SHARDS"] == "${local.catalog_shards}"
    assert terraform_locals()["catalog_shards"] == '${join(",", google_cloudfunctions2_function.shard[*].url)}'
    assert resources("google_secret_manager_secret")["shard_token"]["count"] == "${var.catalog_shards > 0 ? 1 : 0}"
    assert resources("google_cloud_run_service_iam_member")["shard_invoker"]["count"] == "${var.catalog_shards}"
    # The split writes where the shards read (function/engine/shards.py: shard_uri).
    from function.engine.shards import shard_uri

    assert shard_uri("gs://b/shards", 3) == "gs://b/shards/3"


def test_required_apis_are_enabled() -> None:
    services = set(terraform_locals()["services"])

    assert {
        "cloudfunctions.googleapis.com",
        "run.googleapis.com",
        "cloudbuild.googleapis.com",
        "artifactregistry.googleapis.com",
        "firestore.googleapis.com",
        "secretmanager.googleapis.com",
        "storage.googleapis.com",
    } <= services
    assert resources("google_project_service")["required"]["for_each"] == "${toset(local.services)}"


def test_admin_token_is_a_sensitive_output() -> None:
    output = outputs()["admin_token"]

    assert output["value"] == "${local.admin_token}"
    assert output["sensitive"] is True


@pytest.mark.parametrize("collection", ["chunks", "recognitions"])
def test_firestore_ttl_reaps_expires_at_without_an_index(collection: str) -> None:
    # Chunk receipts and recognitions (top level and under users/<uid>: one collection group)
    # carry expires_at; a TTL policy deletes them, and no index is kept on the field.
    fields = [f for f in resources("google_firestore_field").values() if f["collection"] == collection]

    assert len(fields) == 1, f"no TTL policy on {collection}"
    assert fields[0]["field"] == "expires_at"
    assert fields[0]["database"] == "${var.firestore_database}"
    assert fields[0]["ttl_config"] == [{}]
    assert fields[0]["index_config"] == [{}]


def test_code_stamps_recognitions_with_expires_at() -> None:
    # Guards the TTL above: the field it reaps is the one the gcp store writes.
    source = (ROOT / "function" / "storage" / "gcp.py").read_text()

    assert 'data["expires_at"]' in source
    assert 'collection("recognitions")' in source


def test_a_log_metric_counts_shed_audio() -> None:
    # The webhook answers 200 and drops audio over the per-uid rate; only this metric shows it.
    metric = resources("google_logging_metric")["audio_shed"]
    clauses = re.findall(r'"((?:[^"\\]|\\.)*)"', metric["filter"].replace('\\"', "'"))
    edge = (ROOT / "function" / "webhook" / "edge.py").read_text()

    assert 'event="audio_shed"' in edge, "the webhook no longer logs event=audio_shed"
    assert metric["filter"].startswith('${join(" AND ", [')
    assert set(clauses) >= {
        "resource.type='cloud_run_revision'",
        "resource.labels.service_name='${google_cloudfunctions2_function.webhook.name}'",
        "jsonPayload.event='audio_shed'",
    }
    assert metric["metric_descriptor"][0]["metric_kind"] == "DELTA"
    assert metric["metric_descriptor"][0]["value_type"] == "INT64"
    metric_type = "logging.googleapis.com/user/${google_logging_metric.audio_shed.name}"
    assert outputs()["audio_shed_metric"]["value"] == metric_type


def test_outputs_give_the_omi_urls_with_the_token_kept_secret() -> None:
    webhook_url = outputs()["webhook_url"]
    setup_completed_url = outputs()["setup_completed_url"]

    assert webhook_url["sensitive"] is True
    assert "token=${var.webhook_token}" in webhook_url["value"]
    assert webhook_url["value"].startswith("${google_cloudfunctions2_function.webhook.url}/audio?")
    assert setup_completed_url["value"] == "${google_cloudfunctions2_function.webhook.url}/audio"
    assert "webhook_token" not in setup_completed_url["value"]


def test_variables_are_documented_and_the_example_sets_the_required_ones() -> None:
    declared = variables()
    required = {name for name, body in declared.items() if "default" not in body}
    example = (INFRA / "terraform.tfvars.example").read_text()
    set_in_example = set(re.findall(r"^([a-z_]+)\s*=", example, flags=re.MULTILINE))
    mentioned_in_example = set(re.findall(r"^#?\s*([a-z_]+)\s*=", example, flags=re.MULTILINE))

    assert all(body.get("description") for body in declared.values())
    # Not the Omi app's id and key: the app is created after the first deploy.
    assert required == {"project_id", "webhook_token"}
    assert required <= set_in_example <= set(declared)
    assert {"omi_app_id", "omi_app_secret", "omi_signing_secret", "admin_token", "user_link_secret", "public_url"} <= mentioned_in_example
    assert "secrets_version" in mentioned_in_example


# `terraform fmt` and `plan` need the binary, which neither PyPI nor Debian provides; this image
# has one at /usr/local/bin/terraform and .ci/run also runs the check where it exists. Where it
# does not, these tests show as skipped with the reason, and the parse tests above are the gate.
needs_terraform = pytest.mark.skipif(shutil.which("terraform") is None, reason="terraform is not on PATH (neither PyPI nor Debian has it)")


@needs_terraform
def test_terraform_is_formatted() -> None:
    command = ["terraform", "fmt", "-check", "-recursive", "-diff", str(INFRA)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)

    assert result.returncode == 0, result.stdout + result.stderr


@needs_terraform
def test_terraform_fmt_check_catches_bad_formatting(tmp_path: Path) -> None:
    (tmp_path / "main.tf").write_text('locals {\n  a = "x"\n  bb = "y"\n}\n')

    command = ["terraform", "fmt", "-check", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)

    assert result.returncode == 3


def plan_variables(tmp_path: Path, **values: str) -> subprocess.CompletedProcess:
    """`terraform plan` over infra/variables.tf alone: it evaluates every variable's
    validation and needs neither `terraform init` nor a provider (so no network)."""
    shutil.copy(INFRA / "variables.tf", tmp_path / "variables.tf")
    given = {"project_id": "my-project", "webhook_token": "a-token-of-sixteen-or-more", **values}
    command = ["terraform", f"-chdir={tmp_path}", "plan", "-input=false", "-no-color", "-lock=false"]
    command += [f"-var={name}={value}" for name, value in given.items()]
    return subprocess.run(command, capture_output=True, text=True, check=False, env={**os.environ, "TF_IN_AUTOMATION": "1"})


@needs_terraform
@pytest.mark.parametrize(
    "values",
    [{}, {"omi_app_id": "01JAPP", "omi_app_secret": "sk_app_key"}, {"omi_app_id": "01JAPP", "omi_app_secret": "sk_app_key", "omi_memories": "true"}],
    ids=["no-app-yet", "app", "app-with-memories"],
)
def test_terraform_takes_a_first_deploy_without_the_omi_app_and_one_with_it(tmp_path: Path, values: dict[str, str]) -> None:
    result = plan_variables(tmp_path, **values)

    assert result.returncode == 0, result.stdout + result.stderr


@needs_terraform
@pytest.mark.parametrize(
    "values",
    [{"omi_app_id": "01JAPP"}, {"omi_app_secret": "sk_app_key"}, {"omi_memories": "true"}],
    ids=["id-alone", "key-alone", "memories-without-app"],
)
def test_terraform_refuses_an_incomplete_omi_app_without_printing_its_key(tmp_path: Path, values: dict[str, str]) -> None:
    result = plan_variables(tmp_path, **values)

    assert result.returncode == 1
    assert "omi_app_id and omi_app_secret" in " ".join(result.stderr.split())
    assert "sk_app_key" not in result.stdout + result.stderr


# --- what each path uploads (.gcloudignore, .gcloudignore.cloudbuild) ----------------------------

DEPLOY_IGNORE = ".gcloudignore"  # gcloud run deploy --source . / gcloud functions deploy --source=.
BUILD_IGNORE = ".gcloudignore.cloudbuild"  # gcloud builds submit --ignore-file=.gcloudignore.cloudbuild


def _glob_matches(parts: list[str], path: str | None) -> bool:
    """gcloud's Glob._MatchesHelper (googlecloudsdk/command_lib/util/glob.py): the pattern's
    parts against the path, right to left; `**` spans any number of parts."""
    if not parts:
        return True
    if path is None:
        return False
    part, rest = parts[-1], parts[:-1]
    if path:
        path = os.path.normpath(path)
    remaining, last = os.path.split(path)
    if not last:
        remaining = None
    if part == "**":
        prefixes = _path_prefixes(path)
        if not (rest and rest[0] == ""):
            rest = ["", *rest]
        return any(_glob_matches(rest, prefix) for prefix in prefixes)
    if part == "*" and not rest and remaining and len(remaining) > 1:
        return False
    if not fnmatch.fnmatch(last, part):
        return False
    return _glob_matches(rest, remaining)


def _path_prefixes(path: str) -> list[str]:
    """gcloud's GetPathPrefixes: 'a/b/c' -> ['', 'a', 'a/b', 'a/b/c']."""
    prefixes, rest = [path], True
    while path and rest:
        path, rest = os.path.split(path)
        prefixes.insert(0, path)
    return prefixes


@dataclass(frozen=True)
class IgnorePattern:
    glob: str
    negated: bool
    must_be_dir: bool

    def matches(self, path: str, is_dir: bool) -> bool:
        return (is_dir or not self.must_be_dir) and _glob_matches(self.glob.split("/"), path)


def ignore_patterns(ignore_file: Path, include_depth: int = 1) -> list[IgnorePattern]:
    """gcloud's FileChooser.FromFile: one pattern per line that is not blank or a comment;
    `#!include:FILE` inserts FILE's patterns (one level deep), `!` re-includes, a trailing `/`
    matches directories only. (Escapes and trailing spaces, which gcloud also handles, are not
    used in this repository's files.)"""
    patterns = []
    for line in ignore_file.read_text().splitlines():
        if line.startswith("#"):
            directive = line[1:].lstrip()
            if directive.startswith("!include:") and include_depth:
                patterns += ignore_patterns(ignore_file.parent / directive[len("!include:") :], include_depth - 1)
            continue
        negated = line.startswith("!")
        line = line[1:] if negated else line
        must_be_dir = line.endswith("/")
        line = line.rstrip("/").rstrip(" ")
        if line:
            patterns.append(IgnorePattern(line, negated, must_be_dir))
    return patterns


def uploaded(root: Path, ignore_file: str) -> set[str]:
    """The files gcloud uploads from `root` with `ignore_file`: FileChooser.GetIncludedFiles. For
    each prefix of a path the last pattern matching it decides; an ignored directory is not
    entered, so nothing under it can be re-included."""
    patterns = ignore_patterns(root / ignore_file)

    def included(path: str, is_dir: bool) -> bool:
        for prefix in _path_prefixes(path)[1:]:
            decision = None
            for pattern in patterns:
                if pattern.matches(prefix, prefix != path or is_dir):
                    decision = not pattern.negated
            if decision:
                return False
        return True

    files = set()
    for directory, dirs, names in os.walk(root, followlinks=True):
        relative = os.path.relpath(directory, root)
        relative = "" if relative == "." else relative
        files.update(p for p in (os.path.join(relative, n) for n in names) if included(p, False))
        dirs[:] = [d for d in dirs if included(os.path.join(relative, d), True)]
    return files


# A checkout after a quick start, a test run and a Terraform apply: what must never be uploaded.
JUNK = [
    ".venv/bin/python",
    ".venv/lib/python3.12/site-packages/numpy/__init__.py",
    ".hypothesis/constants/0a48f1b92bf82593",
    ".pytest_cache/v/cache/lastfailed",
    "data/quickstart/catalog/catalog.json",
    "data/quickstart/server.log",
    "data/catalog/g1/postings.npy",
    "__pycache__/main.cpython-312.pyc",
    "function/__pycache__/cli.cpython-312.pyc",
    "function/engine/__pycache__/decode.cpython-312.pyc",
    "tests/__pycache__/test_cli.cpython-312-pytest-9.0.3.pyc",
    "bench/out/worktrees/d02d65cd78eb/main.py",
    "bench/out/streams/report.json",
    "infra/.terraform/providers/registry.terraform.io/hashicorp/google/provider",
    "infra/terraform.tfstate",
    "infra/terraform.tfstate.backup",
    "infra/terraform.tfvars",
    "infra/.build/function-source.zip",
    "omi_song_recognition.egg-info/PKG-INFO",
    ".git/HEAD",
    ".git/objects/ab/cdef",
]
# What a checkout holds, one or more of each kind.
SOURCES = [
    "main.py",
    "requirements.txt",
    "requirements-dev.txt",
    "requirements-bench.txt",
    "pytest.ini",
    "cloudbuild.yaml",
    "openapi.yaml",
    "omi-app.json",
    "README.md",
    "BENCHMARKS.md",
    "accuracy_vs_snr.png",
    ".gitignore",
    DEPLOY_IGNORE,
    BUILD_IGNORE,
    ".ci/run",
    "function/__init__.py",
    "function/engine/decode.py",
    "function/dashboard/page.html",
    "tests/__init__.py",
    "tests/test_cli.py",
    "tests/data/README.md",
    "tests/data/music/Emxx52 - Humanitarian.ogg",
    "scripts/quickstart.sh",
    "bench/__init__.py",
    "bench/harness.py",
    "infra/main.tf",
    "infra/terraform.tfvars.example",
]
FUNCTION_FILES = {"main.py", "requirements.txt", "function/__init__.py", "function/engine/decode.py", "function/dashboard/page.html"}


def a_used_checkout(root: Path) -> Path:
    for name in SOURCES + JUNK:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
    for name in (".gitignore", DEPLOY_IGNORE, BUILD_IGNORE):
        shutil.copy(ROOT / name, root / name)
    return root


def test_a_deploy_uploads_the_function_and_nothing_else(tmp_path: Path) -> None:
    checkout = a_used_checkout(tmp_path)

    assert uploaded(checkout, DEPLOY_IGNORE) == FUNCTION_FILES


def test_cloud_build_uploads_the_checkout_as_git_sees_it_and_no_junk(tmp_path: Path) -> None:
    checkout = a_used_checkout(tmp_path)

    assert uploaded(checkout, BUILD_IGNORE) == set(SOURCES)


def test_this_checkout_deploys_exactly_main_requirements_and_the_function_package() -> None:
    package = {
        str(p.relative_to(ROOT))
        for p in (ROOT / "function").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }

    assert uploaded(ROOT, DEPLOY_IGNORE) == {"main.py", "requirements.txt"} | package


def test_this_checkout_sends_cloud_build_what_its_test_step_runs() -> None:
    files = uploaded(ROOT, BUILD_IGNORE)
    needed = {".ci/run", "cloudbuild.yaml", "pytest.ini", "README.md", "openapi.yaml", "omi-app.json", DEPLOY_IGNORE}
    needed |= {name for name in os.listdir(ROOT) if name.startswith("requirements")}
    needed |= {str(p.relative_to(ROOT)) for p in (ROOT / "infra").glob("*.tf")} | {"infra/terraform.tfvars.example"}
    for folder, pattern in (("tests", "**/*"), ("scripts", "*"), ("bench", "*.py"), ("function", "**/*.py")):
        needed |= {str(p.relative_to(ROOT)) for p in (ROOT / folder).glob(pattern) if p.is_file() and "__pycache__" not in p.parts}

    assert needed - files == set()
    assert not {f for f in files if f.split("/")[0] in ("data", ".venv", ".hypothesis", ".pytest_cache", ".git")}
    assert not {f for f in files if f.startswith("bench/out/") or "__pycache__" in f}
    # .ci/run's test command reads the files the README and cloudbuild.yaml name, and the deploy
    # step after it uploads through .gcloudignore, which therefore travels too.
    assert "bash .ci/run" in CLOUDBUILD.read_text()


def test_the_function_starts_from_exactly_what_a_deploy_uploads(tmp_path: Path) -> None:
    # Every module of the package imports, and functions-framework serves main.py, with nothing
    # but the uploaded files on the path (the installed requirements stand in for the build's).
    for name in uploaded(ROOT, DEPLOY_IGNORE):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, tmp_path / name)
    check = """
import importlib, pkgutil, sys
import function
for module in pkgutil.walk_packages(function.__path__, "function."):
    if not module.name.endswith(".__main__"):  # the CLI itself, which would run
        importlib.import_module(module.name)
import functions_framework
app = functions_framework.create_app("omi_webhook", "main.py")
response = app.test_client().get("/health")
assert response.get_json()["service"] == "omi-song-recognition", response.get_data()
for page in ("/setup", "/privacy"):
    assert app.test_client().get(page).status_code == 200, page
ours = [m for n, m in list(sys.modules.items()) if n.split(".")[0] in ("function", "main")]
assert all(p.startswith(sys.argv[1]) for m in ours for p in ([m.__file__] if m.__file__ else list(m.__path__)))
print("started")
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "CATALOG_URI", "STORAGE_", "FIRESTORE_"))}
    env.update(DATA_DIR=str(tmp_path / "data"), CATALOG_URI=str(tmp_path / "catalog"))

    result = subprocess.run(
        [sys.executable, "-E", "-s", "-c", check, str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == "started"


# Where gcloud is installed (a developer's machine, this CI image; not Cloud Build's python
# image), the port above must agree with gcloud itself, on this checkout and on a used one.
needs_gcloud = pytest.mark.skipif(shutil.which("gcloud") is None, reason="gcloud is not installed")


def gcloud_lists(root: Path, tmp_path: Path) -> set[str]:
    env = {**os.environ, "CLOUDSDK_CONFIG": str(tmp_path / "gcloud-config"), "CLOUDSDK_CORE_DISABLE_PROMPTS": "1"}
    result = subprocess.run(
        ["gcloud", "meta", "list-files-for-upload", str(root)], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    return set(result.stdout.splitlines())


@needs_gcloud
def test_gcloud_uploads_this_checkout_as_the_port_says(tmp_path: Path) -> None:
    assert gcloud_lists(ROOT, tmp_path) == uploaded(ROOT, DEPLOY_IGNORE)


@needs_gcloud
@pytest.mark.parametrize("ignore_file", [DEPLOY_IGNORE, BUILD_IGNORE])
def test_gcloud_uploads_a_used_checkout_as_the_port_says(tmp_path: Path, ignore_file: str) -> None:
    # `list-files-for-upload` has no --ignore-file: the build's file is put in .gcloudignore's place.
    checkout = a_used_checkout(tmp_path / "checkout")
    shutil.copy(ROOT / ignore_file, checkout / DEPLOY_IGNORE)

    assert gcloud_lists(checkout, tmp_path) == uploaded(checkout, DEPLOY_IGNORE)


@needs_gcloud
def test_the_port_follows_gcloud_on_negations_anchors_and_double_stars(tmp_path: Path) -> None:
    checkout = a_used_checkout(tmp_path / "checkout")
    (checkout / DEPLOY_IGNORE).write_text(
        "*.md\n!README.md\n/tests/data/\n**/music/*.ogg\ninfra/*.tf\n!infra/main.tf\nbench\n!bench/harness.py\n"
        "function/**/*.html\n#!include:.gitignore\n.ci/\n"
    )

    assert gcloud_lists(checkout, tmp_path) == uploaded(checkout, DEPLOY_IGNORE)


# --- README --------------------------------------------------------------------------------------


def readme_commands(readme: str, prefix: str) -> list[list[str]]:
    """The commands in the README's ```bash blocks that start with `prefix`, as words."""
    blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.DOTALL)
    lines = [line.strip() for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    return [shlex.split(line, comments=True) for line in lines if line.startswith(prefix)]


def readme() -> str:
    return (ROOT / "README.md").read_text(encoding="utf-8")


def readme_deploy_words(readme: str) -> list[str]:
    commands = readme_commands(readme, "gcloud functions deploy")
    assert len(commands) == 1, "README.md needs one ```bash block with a `gcloud functions deploy` command"
    return commands[0]


def readme_run_deploy_words(readme: str) -> list[str]:
    commands = readme_commands(readme, "gcloud run deploy")
    assert len(commands) == 1, "README.md needs one ```bash block with a `gcloud run deploy` command"
    return commands[0]


def test_readme_and_cloudbuild_deploy_the_same_way() -> None:
    readme_flags = deploy_flags(readme_deploy_words(readme()))
    build = deploy_flags(cloudbuild_deploy_words())

    assert readme_flags["entry-point"] == build["entry-point"] == the_function()["build_config"][0]["entry_point"]
    assert readme_flags["runtime"] == build["runtime"] == the_function()["build_config"][0]["runtime"]
    assert region_variable(readme_flags["region"]) == region_variable(build["region"]) == "REGION"
    assert "gen2" in readme_flags


SIZING_FLAGS = {"memory": "_MEMORY", "cpu": "_CPU", "concurrency": "_CONCURRENCY", "max-instances": "_MAX_INSTANCES", "timeout": "_TIMEOUT"}


def test_readme_deploys_through_the_cloud_run_admin_api_as_the_functions_form_does() -> None:
    """`gcloud run deploy --function` and `gcloud functions deploy` in the README: the same
    function, entry point, runtime, region, identity, sizing, settings and secrets, merged."""
    run_words, functions_words = readme_run_deploy_words(readme()), readme_deploy_words(readme())
    run, functions = deploy_flags(run_words), deploy_flags(functions_words)
    build = the_function()["build_config"][0]
    substitutions = cloudbuild()["substitutions"]

    assert run_words[3] == functions_words[3] == variables()["function_name"]["default"]
    assert run["source"] == "." and functions["source"] == "."
    assert run["function"] == functions["entry-point"] == build["entry_point"]
    assert run["base-image"] == functions["runtime"] == build["runtime"]
    assert region_variable(run["region"]) == region_variable(functions["region"]) == "REGION"
    assert "allow-unauthenticated" in run and "allow-unauthenticated" in functions
    account = resources("google_service_account")["function"]["account_id"].replace("${var.function_name}", run_words[3])
    assert run["service-account"] == functions["service-account"] == f"{account}@$PROJECT.iam.gserviceaccount.com"
    for flag, substitution in SIZING_FLAGS.items():
        assert run[flag] == functions[flag] == str(substitutions[substitution]), flag
    for flags in (run, functions):
        assert what_the_deploy_loses(flags) == []
        assert {"update-env-vars", "update-secrets"} <= set(flags)


def test_both_readme_deploys_set_the_same_settings_and_the_secrets_terraform_creates() -> None:
    run = deploy_flags(readme_run_deploy_words(readme()))
    functions = deploy_flags(readme_deploy_words(readme()))
    created = resources("google_secret_manager_secret")
    function_name = variables()["function_name"]["default"]

    env, secrets = cloudbuild_env_and_secrets(run)
    assert (env, secrets) == cloudbuild_env_and_secrets(functions)
    assert set(env) <= settings_read_by_code(), f"the code reads no {sorted(set(env) - settings_read_by_code())}"
    # FIRESTORE_DATABASE may stay at its default, "(default)", which a shell line cannot carry unquoted.
    assert GCP_REQUIRED_SETTINGS - {"FIRESTORE_DATABASE"} <= set(env) <= CLOUDBUILD_SETTINGS
    assert env["STORAGE_BACKEND"] == "gcp" and env["CATALOG_URI"] == "gs://$BUCKET/catalog"
    assert set(secrets) == SECRET_SETTINGS - OPTIONAL_SECRET_SETTINGS
    for key, ref in secrets.items():
        secret_id = created[function_secrets()[key]]["secret_id"].replace("${var.function_name}", function_name)
        assert ref == f"{secret_id}:latest", key


@dataclass
class SetupBlock:
    """What the README's one-time setup does, read from its commands."""

    variables: dict[str, str]
    apis: set[str]
    accounts: set[str]
    project_roles: set[tuple[str, str]]
    bucket_roles: set[tuple[str, str, str]]
    secrets: set[str]
    secret_roles: set[tuple[str, str, str]]
    ttls: set[tuple[str, str]]


def readme_setup() -> SetupBlock:
    blocks = re.findall(r"```bash\n(.*?)```", readme(), flags=re.DOTALL)
    setup = [b for b in blocks if "gcloud services enable" in b]
    assert len(setup) == 1, "README.md needs one setup block (gcloud services enable ...)"
    names: dict[str, str] = {}
    commands = []
    for line in setup[0].replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if "|" in words:  # `printf %s "$VALUE" | gcloud secrets create NAME --data-file=-`
            words = words[len(words) - words[::-1].index("|") :]
        if words and all(re.fullmatch(r"[A-Z_]+=\S*", w) for w in words):
            names.update(w.split("=", 1) for w in words)
        elif words:
            commands.append(words)

    def expand(value: str) -> str:
        return re.sub(r"\$([A-Z_]+)\b", lambda m: names.get(m.group(1), m.group(0)) if m.group(1) in ("SA", "BUILD_SA") else m.group(0), value)

    block = SetupBlock(names, set(), set(), set(), set(), set(), set(), set())
    for words in commands:
        flags = {k: expand(v) for k, v in deploy_flags(words).items()}
        if words[:3] == ["gcloud", "services", "enable"]:
            block.apis.update(w for w in words[3:] if not w.startswith("-"))
        elif words[:4] == ["gcloud", "iam", "service-accounts", "create"]:
            block.accounts.add(words[4])
        elif words[:3] == ["gcloud", "projects", "add-iam-policy-binding"]:
            block.project_roles.add((flags["member"], flags["role"]))
        elif words[:4] == ["gcloud", "storage", "buckets", "add-iam-policy-binding"]:
            block.bucket_roles.add((words[4], flags["member"], flags["role"]))
        elif words[:3] == ["gcloud", "secrets", "create"]:
            block.secrets.add(words[3])
        elif words[:3] == ["gcloud", "secrets", "add-iam-policy-binding"]:
            block.secret_roles.add((words[3], flags["member"], flags["role"]))
        elif words[:5] == ["gcloud", "firestore", "fields", "ttls", "update"] and "enable-ttl" in flags:
            block.ttls.add((flags["collection-group"], words[5]))
    return block


def test_the_readme_setup_creates_what_the_one_command_deploy_needs_with_terraforms_roles() -> None:
    setup = readme_setup()
    run = deploy_flags(readme_run_deploy_words(readme()))
    _, secrets = cloudbuild_env_and_secrets(run)
    member = f"serviceAccount:{run['service-account']}"
    build_account = run["build-service-account"].removeprefix("projects/$PROJECT/serviceAccounts/")
    accessor = "roles/secretmanager.secretAccessor"

    # The APIs Terraform enables, but Cloud Functions': `gcloud run deploy` does not use its API.
    assert set(terraform_locals()["services"]) - {"cloudfunctions.googleapis.com"} <= setup.apis
    assert {run["service-account"], build_account} == {f"{a}@$PROJECT.iam.gserviceaccount.com" for a in setup.accounts}
    assert setup.variables["SA"] == run["service-account"]
    # The function's account gets exactly what infra/security.tf grants it (see the least
    # privilege test above): Firestore documents, read access to the catalog bucket, its secrets.
    assert {role for who, role in setup.project_roles if who == member} == {"roles/datastore.user"}
    assert setup.bucket_roles == {("gs://$BUCKET", member, "roles/storage.objectViewer")}
    assert "gs://$BUCKET/" in run["update-env-vars"]
    referenced = {ref.removesuffix(":latest") for ref in secrets.values()}
    assert setup.secrets == referenced
    assert setup.secret_roles == {(secret, member, accessor) for secret in referenced}
    # The build's own account, as --build-service-account names it, may build and nothing else.
    assert run["build-service-account"] == f"projects/$PROJECT/serviceAccounts/{setup.variables['BUILD_SA']}"
    assert {role for who, role in setup.project_roles if who == f"serviceAccount:{build_account}"} == {"roles/run.builder"}
    # The TTL policies Terraform sets, so that audio receipts and old history go.
    assert setup.ttls == {(f["collection"], f["field"]) for f in resources("google_firestore_field").values()}


def test_the_readme_setup_comes_before_the_deploy_and_the_catalog_upload_says_how_to_log_in() -> None:
    text = readme()
    setup, deploy = text.index("gcloud services enable"), text.index("gcloud run deploy omi-song-recognition")
    upload = text.index("python -m function register ~/Music --catalog gs://")

    assert setup < deploy < upload
    assert "gcloud auth application-default login" in text[deploy:upload]


def readme_section(title: str) -> str:
    text = readme()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else len(text)]


def test_the_readme_logs_in_before_terraform_runs() -> None:
    deploy = readme_section("Deploy")

    assert deploy.index("gcloud auth application-default login") < deploy.index("terraform init")


def test_the_readme_publishes_through_cloud_run_and_adds_the_app_after_the_first_deploy() -> None:
    publish = readme_section("Publish as an Omi app")
    gcloud = readme_commands(publish, "gcloud ")
    [describe] = readme_commands(publish, "gcloud run services describe")
    [update] = readme_commands(publish, "gcloud run services update")
    env, secrets = cloudbuild_env_and_secrets(deploy_flags(update))
    function_name = variables()["function_name"]["default"]
    created = resources("google_secret_manager_secret")

    assert not [words for words in gcloud if words[1] == "functions"]
    assert describe[4] == update[4] == function_name
    assert deploy_flags(describe)["format"] == "value(status.url)"
    assert set(env) == {"OMI_APP_ID"} and set(secrets) == {"OMI_APP_SECRET", "OMI_SIGNING_SECRET"}
    for key, ref in secrets.items():
        assert ref == created[function_secrets()[key]]["secret_id"].replace("${var.function_name}", function_name) + ":latest"
    # Write-only secrets: a changed value is written only with a higher secrets_version.
    assert "secrets_version" in publish and "secrets_version" in readme_section("Deploy")


def test_the_readme_cites_only_what_a_reader_of_the_repository_has() -> None:
    # The notes on Omi's side of the contract are not in the repository: the README names Omi's
    # public sources instead, and every relative link points at a file of this checkout.
    text = readme()
    links = [target for target in re.findall(r"\]\(([^)#]+)[^)]*\)", text) if "://" not in target]

    assert "CONTRACT" not in text
    assert links and [target for target in links if not (ROOT / target).exists()] == []


EMULATORS = ROOT / "scripts" / "emulators.sh"


def test_the_emulator_stack_reads_its_catalog_from_the_bucket_it_creates() -> None:
    script = EMULATORS.read_text()
    exports = dict(re.findall(r"^export ([A-Z_]+)=(\S+)$", script, flags=re.MULTILINE))

    assert exports["CATALOG_URI"] == "gs://$BUCKET/catalog"
    assert exports["GCS_BUCKET"] == "$BUCKET" and exports["STORAGE_BACKEND"] == "gcp"
    assert '"$PYTHON" - "http://127.0.0.1:$GCS_PORT" "$PROJECT" "$BUCKET"' in script, "the bucket is no longer created"


def test_the_readme_documents_every_emulator_override_and_export() -> None:
    script = EMULATORS.read_text()
    overrides = dict(re.findall(r'^[A-Z_]+="\$\{([A-Z_]+):-([^}]*)\}"$', script, flags=re.MULTILINE))
    exports = re.findall(r"^export ([A-Z_]+)=", script, flags=re.MULTILINE)
    section = readme_section("The cloud path, locally, against the emulators")
    rows = dict(re.findall(r"^\| `([A-Z_]+)` \| `([^`]*)` \|", section, flags=re.MULTILINE))

    assert {"FIRESTORE_EMULATOR_PORT", "GCS_EMULATOR_PORT", "GCS_BUCKET", "EMULATORS_DIR"} <= set(overrides)
    assert rows == overrides
    assert [name for name in exports if f"`{name}" not in section] == []
    assert "python -m function register" in section, "the emulator's bucket starts empty"


def test_the_readme_submits_cloud_build_with_its_own_ignore_file() -> None:
    text = readme()

    commands = re.findall(r"gcloud builds submit --[^`\n]*", text)

    assert commands, "README.md gives no `gcloud builds submit` command"
    assert all(c.startswith("gcloud builds submit --ignore-file=.gcloudignore.cloudbuild ") for c in commands), commands


@pytest.mark.parametrize(
    ("value", "name"),
    [
        ("${_REGION}", "REGION"),
        ("$REGION", "REGION"),
        ('"${REGION}"', "REGION"),
        ("${_FUNCTION_NAME}", "FUNCTION_NAME"),
    ],
)
def test_region_variable_reads_cloud_build_and_shell_forms(value: str, name: str) -> None:
    assert region_variable(value) == name

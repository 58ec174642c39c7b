"""The deployment files agree with the code and with each other, checked offline.

Nothing here reaches Google: cloudbuild.yaml is validated against its published schema bundled in
check-jsonschema, the Terraform is parsed with python-hcl2 (`terraform init`/`validate` would
need the provider registry), and the settings the code reads are derived from function/config.py
so that a new setting the deployment forgets fails here instead of at the first real chunk.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
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
SECRET_SETTINGS = {"OMI_APP_SECRET", "WEBHOOK_TOKEN", "OMI_SIGNING_SECRET", "ADMIN_TOKEN", "USER_LINK_SECRET"}
# Bound only while its variable is set (a Secret Manager version cannot be empty); every other
# secret always exists, so cloudbuild.yaml can name it.
OPTIONAL_SECRET_SETTINGS = {"OMI_SIGNING_SECRET"}
# What the gcp backend cannot start without; cloudbuild.yaml must set these.
GCP_REQUIRED_SETTINGS = {
    "STORAGE_BACKEND",
    "CATALOG_URI",
    "GOOGLE_CLOUD_PROJECT",
    "FIRESTORE_DATABASE",
    "OMI_APP_ID",
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
    functions = resources("google_cloudfunctions2_function")
    assert len(functions) == 1, f"expected one google_cloudfunctions2_function, found {sorted(functions)}"
    return next(iter(functions.values()))


def function_environment() -> dict[str, str]:
    """The function's plain environment: `merge(local.function_environment,
    local.public_url_environment)`, the second being `cond ? { PUBLIC_URL = ... } : {}`."""
    service = the_function()["service_config"][0]
    assert service["environment_variables"] == "${merge(local.function_environment, local.public_url_environment)}"
    env = dict(terraform_locals()["function_environment"])
    optional = terraform_locals()["public_url_environment"]
    assert optional == '${var.public_url != "" ? {PUBLIC_URL = var.public_url} : {}}', optional
    env["PUBLIC_URL"] = "${var.public_url}"
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


def test_cloudbuild_refuses_an_empty_omi_app_id_before_testing() -> None:
    # --update-env-vars would replace Terraform's OMI_APP_ID with an empty one, and the function
    # would refuse to start.
    steps = cloudbuild()["steps"]
    ids = [step.get("id") for step in steps]
    check = steps[ids.index("check-substitutions")]

    assert ids.index("check-substitutions") < ids.index("test") < ids.index("deploy")
    assert '-z "${_OMI_APP_ID}"' in check["args"][-1] and "exit 1" in check["args"][-1]
    assert cloudbuild()["substitutions"]["_OMI_APP_ID"] == ""


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
        ("${google_secret_manager_secret.omi_app_secret.id}", accessor),
        ("${google_secret_manager_secret.webhook_token.id}", accessor),
        ("${google_secret_manager_secret.admin_token.id}", accessor),
        ("${google_secret_manager_secret.user_link_secret.id}", accessor),
        ("${google_secret_manager_secret.omi_signing_secret[count.index].id}", accessor),
    }
    grant_ref = re.compile(r"^\$\{google_secret_manager_secret\.(\w+)(\[count\.index\])?\.id\}$")
    granted = {grant_ref.sub(r"\1", ref) for ref, _ in secret_grants}
    assert granted == set(function_secrets().values()), "grant exactly the secrets the function reads"


def test_secrets_come_from_sensitive_variables() -> None:
    versions = resources("google_secret_manager_secret_version")

    assert {v["secret_data"] for v in versions.values()} == {
        "${var.omi_app_secret}",
        "${var.webhook_token}",
        "${var.omi_signing_secret}",
        "${local.admin_token}",
        "${local.user_link_secret}",
    }
    for name in ("omi_app_secret", "webhook_token", "omi_signing_secret", "admin_token", "user_link_secret"):
        assert variables()[name]["sensitive"] is True, name
    assert function_secrets() == {
        "OMI_APP_SECRET": "omi_app_secret",
        "WEBHOOK_TOKEN": "webhook_token",
        "ADMIN_TOKEN": "admin_token",
        "USER_LINK_SECRET": "user_link_secret",
        "OMI_SIGNING_SECRET": "omi_signing_secret",
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
    invokers = list(resources("google_cloud_run_service_iam_member").values())

    assert invokers == [
        {
            "location": "${google_cloudfunctions2_function.webhook.location}",
            "service": "${google_cloudfunctions2_function.webhook.name}",
            "role": "roles/run.invoker",
            "member": "allUsers",
        }
    ]


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
    assert required == {"project_id", "omi_app_id", "omi_app_secret", "webhook_token"}
    assert required <= set_in_example <= set(declared)
    assert {"omi_signing_secret", "admin_token", "user_link_secret", "public_url"} <= mentioned_in_example


# `terraform fmt` needs the binary, which neither PyPI nor Debian provides; this image has one at
# /usr/local/bin/terraform and .ci/run also runs the check where it exists. Where it does not,
# these two tests are not defined (rather than skipped), and the parse tests above are the gate.
if shutil.which("terraform"):

    def test_terraform_is_formatted() -> None:
        command = ["terraform", "fmt", "-check", "-recursive", "-diff", str(INFRA)]
        result = subprocess.run(command, capture_output=True, text=True, check=False)

        assert result.returncode == 0, result.stdout + result.stderr

    def test_terraform_fmt_check_catches_bad_formatting(tmp_path: Path) -> None:
        (tmp_path / "main.tf").write_text('locals {\n  a = "x"\n  bb = "y"\n}\n')

        command = ["terraform", "fmt", "-check", str(tmp_path)]
        result = subprocess.run(command, capture_output=True, text=True, check=False)

        assert result.returncode == 3


# --- README --------------------------------------------------------------------------------------


def readme_deploy_words(readme: str) -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.DOTALL)
    commands = [
        line
        for block in blocks
        for line in block.replace("\\\n", " ").splitlines()
        if line.strip().startswith("gcloud functions deploy")
    ]
    assert len(commands) == 1, "README.md needs one ```bash block with a `gcloud functions deploy` command"
    return shlex.split(commands[0], comments=True)


def test_readme_and_cloudbuild_deploy_the_same_way() -> None:
    readme = deploy_flags(readme_deploy_words((ROOT / "README.md").read_text(encoding="utf-8")))
    build = deploy_flags(cloudbuild_deploy_words())

    assert readme["entry-point"] == build["entry-point"] == the_function()["build_config"][0]["entry_point"]
    assert readme["runtime"] == build["runtime"] == the_function()["build_config"][0]["runtime"]
    assert region_variable(readme["region"]) == region_variable(build["region"]) == "REGION"
    assert "gen2" in readme


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

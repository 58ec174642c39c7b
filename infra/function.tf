locals {
  # Every setting function/config.py reads, except DATA_DIR (local backend only), PUBLIC_URL and
  # OMI_APP_ID (below) and the secrets (secret_environment_variables); tests/test_deploy_files.py
  # fails when a new setting is missing here. cloudbuild.yaml merges into these, never replaces them.
  function_environment = {
    STORAGE_BACKEND                     = "gcp"
    CATALOG_URI                         = "gs://${google_storage_bucket.songs.name}/catalog"
    CATALOG_SHARDS                      = local.catalog_shards # shards.tf; empty: CATALOG_URI
    GOOGLE_CLOUD_PROJECT                = var.project_id
    FIRESTORE_DATABASE                  = var.firestore_database
    MIN_AUDIO_SECONDS                   = tostring(var.min_audio_seconds)
    MAX_BUFFER_SECONDS                  = tostring(var.max_buffer_seconds)
    MAX_GAP_SECONDS                     = tostring(var.max_gap_seconds)
    RECOGNITION_STRIDE_SECONDS          = tostring(var.recognition_stride_seconds)
    RECOGNITION_LEASE_SECONDS           = tostring(var.recognition_lease_seconds)
    MAX_CHUNK_BYTES                     = tostring(var.max_chunk_bytes)
    OMI_API_URL                         = var.omi_api_url
    NOTIFY_TIMEOUT_SECONDS              = tostring(var.notify_timeout_seconds)
    NOTIFY_COOLDOWN_SECONDS             = tostring(var.notify_cooldown_seconds)
    NOTIFY_HOURLY_LIMIT                 = tostring(var.notify_hourly_limit)
    OMI_MEMORIES                        = tostring(var.omi_memories)
    HISTORY_RETENTION_DAYS              = tostring(var.history_retention_days)
    RATE_LIMIT_AUDIO_SECONDS_PER_SECOND = tostring(var.rate_limit_audio_seconds_per_second)
    SERVICE_NAME                        = var.function_name
    LOG_LEVEL                           = var.log_level
  }
  # PUBLIC_URL only when given, rather than as an empty variable (which the code would read as
  # unset anyway): without it the code builds users' links from the host the audio reached,
  # which it trusts because the audio is authenticated (webhook_token is required). Its default
  # cannot be the function's own URL: the function would refer to itself.
  public_url_environment = var.public_url != "" ? { PUBLIC_URL = var.public_url } : {}
  # OMI_APP_ID only with an Omi app, like its secret OMI_APP_SECRET (security.tf): the first
  # deploy comes before the app exists, and the function then only logs notifications.
  omi_app_environment = var.omi_app_id != "" ? { OMI_APP_ID = var.omi_app_id } : {}
}

resource "google_cloudfunctions2_function" "webhook" {
  name     = var.function_name
  location = var.region

  build_config {
    runtime         = "python312"
    entry_point     = "omi_webhook"
    service_account = google_service_account.build.id
    source {
      storage_source {
        bucket = google_storage_bucket.source.name
        object = google_storage_bucket_object.source.name
      }
    }
  }

  service_config {
    available_memory                 = var.memory
    available_cpu                    = var.cpu
    max_instance_request_concurrency = var.concurrency
    max_instance_count               = var.max_instances
    min_instance_count               = var.min_instances
    timeout_seconds                  = var.timeout_seconds
    ingress_settings                 = "ALLOW_ALL"
    all_traffic_on_latest_revision   = true
    service_account_email            = google_service_account.function.email

    environment_variables = merge(local.function_environment, local.public_url_environment, local.omi_app_environment)

    secret_environment_variables {
      key        = "WEBHOOK_TOKEN"
      project_id = var.project_id
      secret     = google_secret_manager_secret.webhook_token.secret_id
      version    = "latest"
    }

    secret_environment_variables {
      key        = "ADMIN_TOKEN"
      project_id = var.project_id
      secret     = google_secret_manager_secret.admin_token.secret_id
      version    = "latest"
    }

    secret_environment_variables {
      key        = "USER_LINK_SECRET"
      project_id = var.project_id
      secret     = google_secret_manager_secret.user_link_secret.secret_id
      version    = "latest"
    }

    # Only while var.omi_app_secret is set (see security.tf), as OMI_APP_ID is only with
    # var.omi_app_id: notifications through the Omi app.
    dynamic "secret_environment_variables" {
      for_each = google_secret_manager_secret.omi_app_secret
      content {
        key        = "OMI_APP_SECRET"
        project_id = var.project_id
        secret     = secret_environment_variables.value.secret_id
        version    = "latest"
      }
    }

    # Only while var.omi_signing_secret is set (see security.tf): then every POST /audio must be
    # signed by Omi as well as carry the token.
    dynamic "secret_environment_variables" {
      for_each = google_secret_manager_secret.omi_signing_secret
      content {
        key        = "OMI_SIGNING_SECRET"
        project_id = var.project_id
        secret     = secret_environment_variables.value.secret_id
        version    = "latest"
      }
    }

    # Only with catalog shards (shards.tf): the secret the webhook and its shards share.
    dynamic "secret_environment_variables" {
      for_each = google_secret_manager_secret.shard_token
      content {
        key        = "SHARD_TOKEN"
        project_id = var.project_id
        secret     = secret_environment_variables.value.secret_id
        version    = "latest"
      }
    }
  }

  depends_on = [
    google_project_service.required,
    google_project_iam_member.build,
    google_firestore_database.state,
    google_secret_manager_secret_version.omi_app_secret,
    google_secret_manager_secret_version.webhook_token,
    google_secret_manager_secret_version.admin_token,
    google_secret_manager_secret_version.user_link_secret,
    google_secret_manager_secret_version.omi_signing_secret,
    google_secret_manager_secret_iam_member.function_omi_app_secret,
    google_secret_manager_secret_iam_member.function_webhook_token,
    google_secret_manager_secret_iam_member.function_admin_token,
    google_secret_manager_secret_iam_member.function_user_link_secret,
    google_secret_manager_secret_iam_member.function_omi_signing_secret,
    google_secret_manager_secret_version.shard_token,
    google_secret_manager_secret_iam_member.function_shard_token,
  ]
}

# Omi's backend calls the webhook without Google credentials, so the service must be public;
# the webhook token in the URL (and Omi's signature, with omi_signing_secret) authenticates the
# caller, and ADMIN_TOKEN guards the operator endpoints.
resource "google_cloud_run_service_iam_member" "public_invoker" {
  location = google_cloudfunctions2_function.webhook.location
  service  = google_cloudfunctions2_function.webhook.name
  role     = "roles/run.invoker"
  member   = "allUsers"
}

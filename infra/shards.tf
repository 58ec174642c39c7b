# Catalog shards (README, "Shards"): with catalog_shards = N > 0 the function's source is deployed
# N more times, each instance holding one part of the catalog in memory
# (gs://<bucket>/shards/<i>, written by `python -m function catalog --split N --out
# gs://<bucket>/shards`), and the webhook names songs by asking them all (CATALOG_SHARDS) instead
# of loading gs://<bucket>/catalog. The webhook and its shards share SHARD_TOKEN; a shard answers
# nothing else (its /audio and operator endpoints have no credentials of theirs, and it never
# opens storage beyond its own /tmp). With 0 (the default) none of this exists.

variable "catalog_shards" {
  description = "Catalog shards: 0 serves the whole catalog from the webhook itself; N > 0 deploys N shard services, each holding the songs of gs://<bucket>/shards/<i> (README, Shards: split with `python -m function catalog --split N --out gs://<bucket>/shards`)."
  type        = number
  default     = 0

  validation {
    condition     = var.catalog_shards >= 0 && var.catalog_shards <= 32 && floor(var.catalog_shards) == var.catalog_shards
    error_message = "catalog_shards must be a whole number from 0 to 32."
  }
}

variable "shard_memory" {
  description = "Memory per shard instance: its part of the index (about 1/N of the catalog's bytes: 10,000 songs are about 1 GB) plus about 300 MB for the process."
  type        = string
  default     = "2Gi"
}

variable "shard_cpu" {
  description = "vCPUs per shard instance; a shard's share of a vote is CPU-bound."
  type        = string
  default     = "1"
}

variable "shard_min_instances" {
  description = "Instances of each shard kept warm. A cold shard loads its part of the catalog before it answers, and every recognition waits for the slowest shard: 1 keeps recognition fast, at N always-on instances."
  type        = number
  default     = 0
}

variable "shard_max_instances" {
  description = "Upper bound on each shard's instances: every recognition asks every shard, so keep it at the webhook's max_instances."
  type        = number
  default     = 10
}

variable "shard_token" {
  description = "The secret the webhook and its shards share (SHARD_TOKEN). Empty: generated and kept in the Terraform state."
  type        = string
  sensitive   = true
  default     = ""

  validation {
    condition     = var.shard_token == "" || (length(var.shard_token) >= 16 && can(regex("^[A-Za-z0-9_-]+$", var.shard_token)))
    error_message = "shard_token must be empty (generated) or at least 16 URL-safe characters (letters, digits, _ and -)."
  }
}

resource "random_password" "shard_token" {
  count = var.catalog_shards > 0 ? 1 : 0

  length  = 43
  special = false
}

locals {
  shard_token = var.shard_token != "" ? var.shard_token : one(random_password.shard_token[*].result)
  # What the webhook reads as CATALOG_SHARDS: empty (the whole catalog, CATALOG_URI) without shards.
  catalog_shards = join(",", google_cloudfunctions2_function.shard[*].url)
}

resource "google_secret_manager_secret" "shard_token" {
  count = var.catalog_shards > 0 ? 1 : 0

  secret_id = "${var.function_name}-shard-token"

  replication {
    auto {}
  }

  depends_on = [google_project_service.required]
}

resource "google_secret_manager_secret_version" "shard_token" {
  count = length(google_secret_manager_secret.shard_token)

  secret                 = google_secret_manager_secret.shard_token[count.index].id
  secret_data_wo         = local.shard_token
  secret_data_wo_version = var.secrets_version
}

# The webhook and the shards run as the function's service account: the shards read the catalog
# bucket (their part of it) and this one secret.
resource "google_secret_manager_secret_iam_member" "function_shard_token" {
  count = length(google_secret_manager_secret.shard_token)

  secret_id = google_secret_manager_secret.shard_token[count.index].id
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.function.member
}

resource "google_cloudfunctions2_function" "shard" {
  count = var.catalog_shards

  name     = "${var.function_name}-shard-${count.index}"
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
    available_memory                 = var.shard_memory
    available_cpu                    = var.shard_cpu
    max_instance_request_concurrency = var.concurrency
    max_instance_count               = var.shard_max_instances
    min_instance_count               = var.shard_min_instances
    timeout_seconds                  = 30
    ingress_settings                 = "ALLOW_ALL"
    all_traffic_on_latest_revision   = true
    service_account_email            = google_service_account.function.email

    environment_variables = {
      CATALOG_URI  = "gs://${google_storage_bucket.songs.name}/shards/${count.index}"
      DATA_DIR     = "/tmp/data" # never used by a shard's endpoints; writable if anything opens it
      SERVICE_NAME = "${var.function_name}-shard-${count.index}"
      LOG_LEVEL    = var.log_level
    }

    secret_environment_variables {
      key        = "SHARD_TOKEN"
      project_id = var.project_id
      secret     = google_secret_manager_secret.shard_token[0].secret_id
      version    = "latest"
    }
  }

  depends_on = [
    google_project_service.required,
    google_project_iam_member.build,
    google_secret_manager_secret_version.shard_token,
    google_secret_manager_secret_iam_member.function_shard_token,
  ]
}

# The webhook calls its shards without Google credentials (plain HTTP, engine code that imports
# no cloud SDK): SHARD_TOKEN is what admits it.
resource "google_cloud_run_service_iam_member" "shard_invoker" {
  count = var.catalog_shards

  location = google_cloudfunctions2_function.shard[count.index].location
  service  = google_cloudfunctions2_function.shard[count.index].name
  role     = "roles/run.invoker"
  member   = "allUsers"
}

output "shard_urls" {
  description = "The catalog shards' URLs (the webhook's CATALOG_SHARDS); empty without shards."
  value       = google_cloudfunctions2_function.shard[*].url
}

output "shard_catalog_prefix" {
  description = "Where the shards read their catalogs: `python -m function catalog --catalog gs://<bucket>/catalog --split <catalog_shards> --out <this>`."
  value       = "gs://${google_storage_bucket.songs.name}/shards"
}

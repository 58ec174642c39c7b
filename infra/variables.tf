variable "project_id" {
  description = "Google Cloud project that hosts the function, its bucket, Firestore database and secrets."
  type        = string
}

variable "region" {
  description = "Region of the function and both buckets. Pick one close to the Omi backend (it runs in the US)."
  type        = string
  default     = "us-central1"
}

variable "function_name" {
  description = "Name of the Cloud Run function; also the prefix of its secrets and service account."
  type        = string
  default     = "omi-song-recognition"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{3,22}[a-z0-9]$", var.function_name))
    error_message = "function_name must be 5-24 lowercase letters, digits or hyphens, starting with a letter (it prefixes the service account id, which is capped at 30 characters)."
  }
}

variable "bucket_name" {
  description = "Bucket for the fingerprint catalog (catalog/), which the function reads; the audio buffers live in Firestore. Empty: <project_id>-omi-songs."
  type        = string
  default     = ""
}

variable "firestore_database" {
  description = "Firestore database (native mode) holding per-user buffer state, history and metrics."
  type        = string
  default     = "(default)"
}

variable "create_firestore_database" {
  description = "Create the Firestore database. Set false if the project already has one of that name (a project has at most one (default))."
  type        = bool
  default     = true
}

variable "firestore_location" {
  description = "Firestore location, which cannot be changed later: the function's region by default (half the price per operation of a multi-region such as nam5 or eur3, and nearer the function; a multi-region adds availability the transient audio buffers do not need). See the README's cost table."
  type        = string
  default     = "us-central1"
}

variable "omi_app_id" {
  description = "Your Omi app's id (OMI_APP_ID), used in the notification API path. Empty until the app exists (README, Publish as an Omi app: it is created after the first deploy): the function then starts without it and only logs notifications. Set together with omi_app_secret."
  type        = string
  default     = ""

  # Here rather than on omi_app_secret: a failed validation prints the values of its own
  # variable, and the secret's must never reach a terminal or a CI log.
  validation {
    condition     = (var.omi_app_id == "") == (var.omi_app_secret == "")
    error_message = "omi_app_id and omi_app_secret go together: set both (notifications through your Omi app) or neither (no app yet: notifications are only logged)."
  }
}

variable "omi_app_secret" {
  description = "Your Omi app's API key (OMI_APP_SECRET, the Bearer key of the integration API), stored in Secret Manager, never in the function's plain environment. Empty until the app exists: then no secret is created (Secret Manager cannot store an empty one) and OMI_APP_SECRET is not set. Write-only: after changing a value already applied, bump secrets_version."
  type        = string
  sensitive   = true
  default     = ""
}

variable "webhook_token" {
  description = "Shared token the webhook requires in its URL (?token=...; the webhook_url output carries it). It authenticates every sender, signing or not; add omi_signing_secret when Omi issues your app one. Generate with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
  type        = string
  sensitive   = true

  validation {
    condition     = length(var.webhook_token) >= 16 && can(regex("^[A-Za-z0-9_-]+$", var.webhook_token))
    error_message = "webhook_token must be at least 16 URL-safe characters (letters, digits, _ and -)."
  }
}

variable "omi_signing_secret" {
  description = "Omi's webhook signing secret for your app (OMI_SIGNING_SECRET). When set, every POST /audio must carry a valid X-Omi-Signature; during a rotation give both, comma-separated (new,old). Empty: no signature check, and no secret is created (Secret Manager cannot store an empty one)."
  type        = string
  sensitive   = true
  default     = ""

  validation {
    condition     = var.omi_signing_secret == "" || can(regex("[^,[:space:]]", var.omi_signing_secret))
    error_message = "omi_signing_secret must be empty or hold at least one secret (comma-separated)."
  }
}

variable "admin_token" {
  description = "Token of the operator endpoints (/metrics, /dashboard, /stats, /history, DELETE /buffer), sent as `Authorization: Bearer <token>` or ?token=. Empty: Terraform generates one and keeps it in its state; read it with `terraform output -raw admin_token`."
  type        = string
  sensitive   = true
  default     = ""

  validation {
    condition     = var.admin_token == "" || (length(var.admin_token) >= 16 && can(regex("^[A-Za-z0-9_-]+$", var.admin_token)))
    error_message = "admin_token must be empty (generated) or at least 16 URL-safe characters (letters, digits, _ and -)."
  }
}

variable "user_link_secret" {
  description = "Key of users' private history links (/me/<uid>?key=...). Empty: Terraform generates one and keeps it in its state, so links survive a rotation of omi_app_secret (the code would otherwise derive the key from the app secret). Changing it invalidates every link already sent."
  type        = string
  sensitive   = true
  default     = ""

  validation {
    condition     = var.user_link_secret == "" || length(var.user_link_secret) >= 16
    error_message = "user_link_secret must be empty (generated) or at least 16 characters."
  }
}

variable "public_url" {
  description = "Base URL of the links sent to users (PUBLIC_URL), e.g. a custom domain. Empty: not set, and the function uses the host each authenticated audio request reached (its own URL). It cannot default to the function's URL: the function would refer to itself."
  type        = string
  default     = ""

  validation {
    condition     = var.public_url == "" || can(regex("^https?://", var.public_url))
    error_message = "public_url must be empty or an http(s) URL."
  }
}

variable "omi_api_url" {
  description = "Base URL of the Omi API for notifications."
  type        = string
  default     = "https://api.omi.me"
}

variable "min_audio_seconds" {
  description = "Buffered audio needed before a recognition is attempted."
  type        = number
  default     = 3
}

variable "max_buffer_seconds" {
  description = "Most audio kept per user; the oldest goes first."
  type        = number
  default     = 60
}

variable "recognition_stride_seconds" {
  description = "New audio needed after a miss before the next attempt."
  type        = number
  default     = 2
}

variable "recognition_lease_seconds" {
  description = "How long a recognition claim lasts if its instance dies; keep it above the slowest recognition."
  type        = number
  default     = 30
}

variable "max_chunk_bytes" {
  description = "Largest accepted request body (bytes); larger gets 413. Default: 64 s of 16 kHz PCM16."
  type        = number
  default     = 2048000
}

variable "notify_timeout_seconds" {
  description = "Timeout of one call to the Omi notification API."
  type        = number
  default     = 5
}

variable "notify_cooldown_seconds" {
  description = "The same song is not notified again to the same user within this time."
  type        = number
  default     = 600
}

variable "notify_hourly_limit" {
  description = "Notifications per user per UTC hour. Omi's counter starts at 2 of 10, so it refuses the 10th call of an hour: 9 is what Omi really allows."
  type        = number
  default     = 9

  validation {
    condition     = var.notify_hourly_limit >= 0 && var.notify_hourly_limit <= 1000
    error_message = "notify_hourly_limit must be between 0 and 1000."
  }
}

variable "omi_memories" {
  description = "Also save each notified song as an Omi memory (the app needs the create_facts action)."
  type        = bool
  default     = false

  validation {
    condition     = !var.omi_memories || var.omi_app_id != ""
    error_message = "omi_memories = true needs omi_app_id and omi_app_secret: memories are written through your Omi app (the function would refuse to start)."
  }
}

variable "history_retention_days" {
  description = "Days a recognition stays in users' history and in /metrics. Each recognition carries expires_at; a Firestore TTL policy deletes it after that (usually within a day of expiry)."
  type        = number
  default     = 90

  validation {
    condition     = var.history_retention_days >= 1 && var.history_retention_days <= 36500
    error_message = "history_retention_days must be between 1 and 36500."
  }
}

variable "max_gap_seconds" {
  description = "Audio arriving after a longer silence starts a new buffer instead of joining the old one."
  type        = number
  default     = 40

  validation {
    condition     = var.max_gap_seconds >= 1 && var.max_gap_seconds <= 86400
    error_message = "max_gap_seconds must be between 1 and 86400."
  }
}

variable "rate_limit_audio_seconds_per_second" {
  description = "Per uid and instance: audio beyond this many seconds per wall-clock second, sustained, is acknowledged (200) and dropped, and logged as event audio_shed (the audio_shed_metric output counts it); 0 disables."
  type        = number
  default     = 8
}

variable "log_level" {
  description = "Log level of the function's structured logs."
  type        = string
  default     = "INFO"
}

variable "memory" {
  description = "Memory per instance (Cloud Run's form: 512Mi, 2Gi). The gs:// catalog is downloaded into the instance's in-memory filesystem, so it needs the catalog's files plus ~0.4 GiB: 1Gi serves up to ~9,000 songs, 2Gi up to ~24,000, 8Gi (with cpu 2) 100,000 (README, Deploy: memory for a catalog size). An instance whose catalog does not fit refuses it: /health answers 503 naming both sizes. Above 4Gi Cloud Run needs cpu >= 2, above 8Gi >= 4."
  type        = string
  default     = "1Gi"

  validation {
    condition     = can(regex("^[1-9][0-9]*(Mi|Gi)$", var.memory)) && try((endswith(var.memory, "Gi") ? tonumber(trimsuffix(var.memory, "Gi")) * 1024 : tonumber(trimsuffix(var.memory, "Mi"))) >= 512, false) && try((endswith(var.memory, "Gi") ? tonumber(trimsuffix(var.memory, "Gi")) * 1024 : tonumber(trimsuffix(var.memory, "Mi"))) <= 32768, false)
    error_message = "memory must be Cloud Run's form (e.g. 1Gi, 1536Mi) between 512Mi (the process and a ~1,000-song catalog) and 32Gi."
  }
}

variable "cpu" {
  description = "vCPUs per instance; recognition is CPU-bound, and a concurrency above 1 needs at least 1 vCPU."
  type        = string
  default     = "1"
}

variable "concurrency" {
  description = "Requests one instance serves at once. Most requests are 1-s appends that wait on storage, so several share a CPU well."
  type        = number
  default     = 8
}

variable "max_instances" {
  description = "Upper bound on instances, and so on cost."
  type        = number
  default     = 10
}

variable "min_instances" {
  description = "Instances kept warm; 1 avoids a cold start (and a slow first chunk) at the price of an always-on instance."
  type        = number
  default     = 0
}

variable "timeout_seconds" {
  description = "Request timeout. Omi's client waits 15-30 s and retries after that, so a request must finish well within 15 s."
  type        = number
  default     = 30
}

variable "secrets_version" {
  description = "Bump (2, 3, ...) whenever you change a secret variable's value after it was applied (a new omi_app_secret, a rotated omi_signing_secret or webhook_token): they are write-only (secret_data_wo), kept out of the Terraform state, so Terraform cannot see that a variable changed. A secret set for the first time (omi_app_secret after a deploy without it) is written without a bump."
  type        = number
  default     = 1
}

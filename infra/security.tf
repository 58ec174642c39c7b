# The function runs as its own identity with only what it uses: documents in Firestore, the
# catalog in its bucket (read only), and its own secrets. Not the default compute account, which
# is an Editor.
resource "google_service_account" "function" {
  account_id   = "${var.function_name}-fn"
  display_name = "Omi song recognition webhook"
}

# The build runs as its own identity too: new projects and organisation policies no longer give
# the default Cloud Build or compute account the roles a function build needs.
resource "google_service_account" "build" {
  account_id   = "${var.function_name}-build"
  display_name = "Builds the Omi song recognition webhook"
}

resource "google_project_iam_member" "build" {
  for_each = toset(["roles/logging.logWriter", "roles/artifactregistry.writer", "roles/storage.objectViewer"])

  project = var.project_id
  role    = each.value
  member  = google_service_account.build.member
}

resource "google_project_iam_member" "function_datastore" {
  project = var.project_id
  role    = "roles/datastore.user"
  member  = google_service_account.function.member
}

resource "google_storage_bucket_iam_member" "function_objects" {
  bucket = google_storage_bucket.songs.name
  role   = "roles/storage.objectViewer"
  member = google_service_account.function.member
}

# The Omi app's API key is optional, like the signing secret below: the app is created after the
# first deploy (README, Publish as an Omi app), and a Secret Manager version cannot be empty. So
# this secret, its grant and the function's OMI_APP_SECRET exist only while var.omi_app_secret is
# set (count 0 otherwise; the count reveals only whether it is set), and cloudbuild.yaml never
# names it: its --update-secrets keeps the binding.
resource "google_secret_manager_secret" "omi_app_secret" {
  count = var.omi_app_secret != "" ? 1 : 0

  secret_id = "${var.function_name}-omi-app-secret"

  replication {
    auto {}
  }

  depends_on = [google_project_service.required]
}

resource "google_secret_manager_secret_version" "omi_app_secret" {
  count = length(google_secret_manager_secret.omi_app_secret)

  secret                 = google_secret_manager_secret.omi_app_secret[count.index].id
  secret_data_wo         = var.omi_app_secret
  secret_data_wo_version = var.secrets_version
}

resource "google_secret_manager_secret" "webhook_token" {
  secret_id = "${var.function_name}-webhook-token"

  replication {
    auto {}
  }

  depends_on = [google_project_service.required]
}

resource "google_secret_manager_secret_version" "webhook_token" {
  secret                 = google_secret_manager_secret.webhook_token.id
  secret_data_wo         = var.webhook_token
  secret_data_wo_version = var.secrets_version
}

resource "google_secret_manager_secret_iam_member" "function_omi_app_secret" {
  count = length(google_secret_manager_secret.omi_app_secret)

  secret_id = google_secret_manager_secret.omi_app_secret[count.index].id
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.function.member
}

resource "google_secret_manager_secret_iam_member" "function_webhook_token" {
  secret_id = google_secret_manager_secret.webhook_token.id
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.function.member
}

# The operator's token and the key of users' history links: given in their variables or, when
# those are empty, generated once and kept in the state (43 letters and digits: 256 bits). Always
# created, so the function always has ADMIN_TOKEN (the operator endpoints are never open) and
# Cloud Build can bind both by name.
resource "random_password" "admin_token" {
  length  = 43
  special = false
}

resource "random_password" "user_link_secret" {
  length  = 43
  special = false
}

locals {
  admin_token      = var.admin_token != "" ? var.admin_token : random_password.admin_token.result
  user_link_secret = var.user_link_secret != "" ? var.user_link_secret : random_password.user_link_secret.result
}

resource "google_secret_manager_secret" "admin_token" {
  secret_id = "${var.function_name}-admin-token"

  replication {
    auto {}
  }

  depends_on = [google_project_service.required]
}

resource "google_secret_manager_secret_version" "admin_token" {
  secret                 = google_secret_manager_secret.admin_token.id
  secret_data_wo         = local.admin_token
  secret_data_wo_version = var.secrets_version
}

resource "google_secret_manager_secret_iam_member" "function_admin_token" {
  secret_id = google_secret_manager_secret.admin_token.id
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.function.member
}

# Generated rather than left to the code's fallback (a key derived from OMI_APP_SECRET), so that
# rotating the app secret does not break every history link users have been sent.
resource "google_secret_manager_secret" "user_link_secret" {
  secret_id = "${var.function_name}-user-link-secret"

  replication {
    auto {}
  }

  depends_on = [google_project_service.required]
}

resource "google_secret_manager_secret_version" "user_link_secret" {
  secret                 = google_secret_manager_secret.user_link_secret.id
  secret_data_wo         = local.user_link_secret
  secret_data_wo_version = var.secrets_version
}

resource "google_secret_manager_secret_iam_member" "function_user_link_secret" {
  secret_id = google_secret_manager_secret.user_link_secret.id
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.function.member
}

# Omi's signing secret is optional: Omi signs deliveries only for an app it issued one to. A
# Secret Manager version cannot be empty, and a placeholder would have to mean "no secret" to the
# code, so this secret, its grant and the function's OMI_SIGNING_SECRET exist only while
# var.omi_signing_secret is set (count 0 otherwise; the count reveals only whether it is set).
# cloudbuild.yaml therefore never names it and deploys with --update-secrets, which keeps it.
resource "google_secret_manager_secret" "omi_signing_secret" {
  count = var.omi_signing_secret != "" ? 1 : 0

  secret_id = "${var.function_name}-omi-signing-secret"

  replication {
    auto {}
  }

  depends_on = [google_project_service.required]
}

resource "google_secret_manager_secret_version" "omi_signing_secret" {
  count = length(google_secret_manager_secret.omi_signing_secret)

  secret                 = google_secret_manager_secret.omi_signing_secret[count.index].id
  secret_data_wo         = var.omi_signing_secret
  secret_data_wo_version = var.secrets_version
}

resource "google_secret_manager_secret_iam_member" "function_omi_signing_secret" {
  count = length(google_secret_manager_secret.omi_signing_secret)

  secret_id = google_secret_manager_secret.omi_signing_secret[count.index].id
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.function.member
}

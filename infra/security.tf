# The function runs as its own identity with only what it uses: documents in Firestore, objects
# in its one bucket, and its two secrets. Not the default compute account, which is an Editor.
resource "google_service_account" "function" {
  account_id   = "${var.function_name}-fn"
  display_name = "Omi song recognition webhook"
}

resource "google_project_iam_member" "function_datastore" {
  project = var.project_id
  role    = "roles/datastore.user"
  member  = google_service_account.function.member
}

resource "google_storage_bucket_iam_member" "function_objects" {
  bucket = google_storage_bucket.songs.name
  role   = "roles/storage.objectAdmin"
  member = google_service_account.function.member
}

resource "google_secret_manager_secret" "omi_app_secret" {
  secret_id = "${var.function_name}-omi-app-secret"

  replication {
    auto {}
  }

  depends_on = [google_project_service.required]
}

resource "google_secret_manager_secret_version" "omi_app_secret" {
  secret      = google_secret_manager_secret.omi_app_secret.id
  secret_data = var.omi_app_secret
}

resource "google_secret_manager_secret" "webhook_token" {
  secret_id = "${var.function_name}-webhook-token"

  replication {
    auto {}
  }

  depends_on = [google_project_service.required]
}

resource "google_secret_manager_secret_version" "webhook_token" {
  secret      = google_secret_manager_secret.webhook_token.id
  secret_data = var.webhook_token
}

resource "google_secret_manager_secret_iam_member" "function_omi_app_secret" {
  secret_id = google_secret_manager_secret.omi_app_secret.id
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.function.member
}

resource "google_secret_manager_secret_iam_member" "function_webhook_token" {
  secret_id = google_secret_manager_secret.webhook_token.id
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.function.member
}

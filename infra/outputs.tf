output "function_url" {
  description = "Base URL of the deployed function."
  value       = google_cloudfunctions2_function.webhook.url
}

output "webhook_url" {
  description = "The webhook URL for Omi: Settings > Developer > Realtime audio bytes, or your app's webhook_url (Omi appends &sample_rate=...&uid=...). Contains the token: `terraform output -raw webhook_url`."
  value       = "${google_cloudfunctions2_function.webhook.url}/audio?token=${var.webhook_token}"
  sensitive   = true
}

output "setup_completed_url" {
  description = "The app manifest's setup_completed_url (Omi calls it with ?uid=...)."
  value       = "${google_cloudfunctions2_function.webhook.url}/audio"
}

output "catalog_uri" {
  description = "Where the function reads the fingerprint catalog; upload yours here."
  value       = "gs://${google_storage_bucket.songs.name}/catalog"
}

output "bucket" {
  description = "Bucket holding the catalog (catalog/): register into gs://<bucket>/catalog."
  value       = google_storage_bucket.songs.name
}

output "service_account_email" {
  description = "Identity the function runs as."
  value       = google_service_account.function.email
}

output "admin_token" {
  description = "Token of the operator endpoints (/metrics, /dashboard, /stats, /history, DELETE /buffer): `Authorization: Bearer <token>` or ?token=. Generated unless var.admin_token is set: `terraform output -raw admin_token`."
  value       = local.admin_token
  sensitive   = true
}

output "dashboard_url" {
  description = "The operator dashboard, opened with the admin token: <dashboard_url>?token=$(terraform output -raw admin_token)."
  value       = "${google_cloudfunctions2_function.webhook.url}/dashboard"
}

output "audio_shed_metric" {
  description = "Cloud Monitoring metric type counting audio dropped over the per-uid rate (log lines with jsonPayload.event=audio_shed): chart it or alert on it in Metrics Explorer."
  value       = "logging.googleapis.com/user/${google_logging_metric.audio_shed.name}"
}

output "function_url" {
  description = "Base URL of the deployed function."
  value       = google_cloudfunctions2_function.webhook.url
}

output "webhook_url" {
  description = "Paste into the Omi app: Settings > Developer > Realtime audio bytes (Omi appends &sample_rate=...&uid=...). Contains the token: `terraform output -raw webhook_url`."
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
  description = "Bucket holding buffers/ (deleted after a day) and catalog/ (kept)."
  value       = google_storage_bucket.songs.name
}

output "service_account_email" {
  description = "Identity the function runs as."
  value       = google_service_account.function.email
}

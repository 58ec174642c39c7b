locals {
  bucket_name = var.bucket_name != "" ? var.bucket_name : "${var.project_id}-omi-songs"
  services = [
    "artifactregistry.googleapis.com", # the function's container image
    "cloudbuild.googleapis.com",       # builds the function from source
    "cloudfunctions.googleapis.com",
    "firestore.googleapis.com",
    "iam.googleapis.com",
    "logging.googleapis.com", # the audio_shed log-based metric (monitoring.tf)
    "run.googleapis.com",     # a 2nd gen function is a Cloud Run service
    "secretmanager.googleapis.com",
    "storage.googleapis.com",
  ]
}

resource "google_project_service" "required" {
  for_each = toset(local.services)

  service = each.value
  # Other workloads in the project may use the same APIs: never switch them off on destroy.
  disable_on_destroy = false
}

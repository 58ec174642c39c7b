# The fingerprint catalog (catalog/), which the function only reads. The audio buffers are
# Firestore documents (function/storage/gcp.py), not objects here.
resource "google_storage_bucket" "songs" {
  name                        = local.bucket_name
  location                    = var.region
  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"

  depends_on = [google_project_service.required]
}

# The function's source archive, uploaded under its content hash so that a code change makes a
# new object and so a new deployment.
resource "google_storage_bucket" "source" {
  name                        = "${local.bucket_name}-source"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"

  depends_on = [google_project_service.required]
}

data "archive_file" "source" {
  type        = "zip"
  source_dir  = "${path.module}/.."
  output_path = "${path.module}/.build/function-source.zip"
  excludes = [
    ".build",
    ".ci",
    ".git",
    ".pytest_cache",
    ".venv",
    "bench",
    "data",
    "infra",
    "scripts",
    "tests",
    "**/__pycache__/**",
  ]
}

resource "google_storage_bucket_object" "source" {
  name   = "function-source-${data.archive_file.source.output_md5}.zip"
  bucket = google_storage_bucket.source.name
  source = data.archive_file.source.output_path
}

resource "google_firestore_database" "state" {
  count = var.create_firestore_database ? 1 : 0

  name        = var.firestore_database
  location_id = var.firestore_location
  type        = "FIRESTORE_NATIVE"
  # Destroying the stack must not silently delete users' history.
  deletion_policy = "ABANDON"

  depends_on = [google_project_service.required]
}

# Chunk documents (users/<uid>/chunks/<key>) are what versions before the user document held the
# buffer wrote, one per delivery, with its audio: nothing writes or reads them any more, and this
# TTL on `expires_at` reaps those a deployment upgraded from such a version still has.
resource "google_firestore_field" "chunk_receipts_ttl" {
  project    = var.project_id
  database   = var.firestore_database
  collection = "chunks"
  field      = "expires_at"

  ttl_config {}

  # TTL fields need no single-field index: keep writes cheap.
  index_config {}

  depends_on = [google_firestore_database.state]
}

# Recognitions (recognitions/<id> for /metrics and users/<uid>/recognitions/<id> for the user's
# history) carry `expires_at` = recognised + history_retention_days. The field's collection is a
# collection group, so one policy covers both; Firestore deletes expired documents, usually within
# a day of expiry. Created after the chunks policy: field operations on one new database can
# conflict.
resource "google_firestore_field" "recognitions_ttl" {
  project    = var.project_id
  database   = var.firestore_database
  collection = "recognitions"
  field      = "expires_at"

  ttl_config {}

  # Nothing queries expires_at: no single-field index, so the two writes per recognition stay cheap.
  index_config {}

  depends_on = [google_firestore_database.state, google_firestore_field.chunk_receipts_ttl]
}

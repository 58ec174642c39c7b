# Audio the webhook acknowledged but dropped because one uid sent more than
# rate_limit_audio_seconds_per_second (it answers 200 "shed", not 429: Omi ignores Retry-After, so
# a refusal would lose the audio just the same and count against the webhook). Each shed POST logs
# one structured line with jsonPayload.event "audio_shed" (severity WARNING, with uid and seconds);
# this counts them. Chart or alert on the metric type in the audio_shed_metric output; the uid is
# deliberately not a label (one time series per user), so find it in the log lines themselves.
resource "google_logging_metric" "audio_shed" {
  name        = "${var.function_name}/audio_shed"
  description = "POSTs to /audio acknowledged and dropped over the per-uid audio rate (jsonPayload.event=audio_shed)."
  filter = join(" AND ", [
    "resource.type=\"cloud_run_revision\"", # a 2nd gen function logs as its Cloud Run service
    "resource.labels.service_name=\"${google_cloudfunctions2_function.webhook.name}\"",
    "jsonPayload.event=\"audio_shed\"",
  ])

  metric_descriptor {
    metric_kind  = "DELTA"
    value_type   = "INT64"
    unit         = "1"
    display_name = "Audio shed over the rate limit (${var.function_name})"
  }

  depends_on = [google_project_service.required]
}

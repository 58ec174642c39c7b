#!/usr/bin/env bash
# From clone to "it named the song" on the embedded default: no cloud account, no download.
#   1. installs the requirements,
#   2. registers the music in MUSIC_DIR (default: the test excerpts) into a local catalog,
#   3. serves the function with functions-framework on 127.0.0.1:$PORT (local files + SQLite),
#   4. streams one song with real street noise at +5 dB SNR exactly as an Omi device would
#      (1-s POSTs with Idempotency-Keys), and prints the notification the user would see.
# Usage: bash scripts/quickstart.sh [MUSIC_DIR] [SONG_TO_PLAY]
set -euo pipefail
cd "$(dirname "$0")/.."

MUSIC_DIR=${1:-tests/data/music}
SONG=${2:-$(find "$MUSIC_DIR" -type f \( -name '*.ogg' -o -name '*.flac' -o -name '*.wav' -o -name '*.mp3' \) | sort | head -n 1)}
PORT=${PORT:-8080}
export STORAGE_BACKEND=local
export DATA_DIR=${DATA_DIR:-./data/quickstart}
if [[ -z "${CATALOG_URI:-}" ]]; then
    # The demo's own catalog is rebuilt on every run, so it always matches this code's format.
    export CATALOG_URI=$DATA_DIR/catalog
    rm -rf "$CATALOG_URI"
fi
UID_NAME=quickstart-$$

python3 -m pip install -q --disable-pip-version-check -r requirements.txt
mkdir -p "$DATA_DIR"

echo "== registering $MUSIC_DIR into $CATALOG_URI"
python3 -m function register "$MUSIC_DIR" --catalog "$CATALOG_URI"

echo "== serving the function on http://127.0.0.1:$PORT (log: $DATA_DIR/server.log)"
python3 -m functions_framework --target omi_webhook --source main.py --host 127.0.0.1 --port "$PORT" \
    >"$DATA_DIR/server.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
for _ in $(seq 50); do
    python3 -c "import httpx,sys; sys.exit(httpx.get('http://127.0.0.1:$PORT/health').status_code != 200)" \
        2>/dev/null && break
    sleep 0.2
done

echo "== streaming '$SONG' with street noise at +5 dB, as an Omi device does"
python3 -m function simulate "$SONG" --url "http://127.0.0.1:$PORT/audio" --uid "$UID_NAME" \
    --noise tests/data/noise/city.ogg --snr 5

echo "== what the user sees"
python3 - "$PORT" "$UID_NAME" <<'PY'
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

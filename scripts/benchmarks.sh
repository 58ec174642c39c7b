#!/usr/bin/env bash
# Regenerate BENCHMARKS.md: every section is written by the command named in it, on the test
# split (the dev split tunes, the test split reports), beside the baseline revision measured in
# the same run. About 90 minutes on 2 cores with nothing else running (the first run also builds
# a 100,000-song catalog for bench.coldstart: ~8 minutes, 7 GB of disk, 6.6 GB more for fake-gcs-server).
#   bash scripts/benchmarks.sh /tmp/corpus [BASELINE_REV]
set -euo pipefail
cd "$(dirname "$0")/.."
corpus=${1:?usage: bash scripts/benchmarks.sh CORPUS_DIR [BASELINE_REV]}
baseline=${2:-d02d65c}
out=bench/out
python -m bench --corpus "$corpus" --split test --baseline-rev "$baseline" --queries-per-condition 40 \
    --out "$out/test" --write-md "$out/recognition.md"
python -m bench.streams --corpus "$corpus" --split test --baseline-rev "$baseline" --streams-per-condition 24 \
    --out "$out/streams"
python -m bench.at_rest --corpus "$corpus" --split test --baseline-rev "$baseline" --minutes 10 --out "$out/at_rest"
python -m bench.versions --corpus "$corpus" --split test --songs 12 --baseline-rev "$baseline" --out "$out/versions"
python -m bench.load --corpus "$corpus" --out "$out/load.md"
python -m bench.shards --corpus "$corpus" --split test --write-md "$out/shards.md"
python -m bench.coldstart --corpus "$corpus" --out "$out/coldstart" --sizes 1000,10000,100000
python -m bench.shards_scale --corpus "$corpus" --out "$out/coldstart" --songs 100000 --shards 10
{
    cat "$out/recognition.md"
    echo
    cat "$out/streams/streams.md"
    echo
    cat "$out/at_rest/at_rest.md"
    echo
    cat "$out/versions/versions.md"
    echo
    cat "$out/load.md"
    echo
    cat "$out/shards.md"
    echo
    cat "$out/coldstart/coldstart.md"
    echo
    cat "$out/coldstart/shards_scale.md"
    echo
    echo "(BENCHMARKS.md is written by \`bash scripts/benchmarks.sh CORPUS_DIR\`: each section above is the output of the command it names.)"
} > BENCHMARKS.md
cp "$out/test/accuracy_vs_snr.png" accuracy_vs_snr.png
echo "BENCHMARKS.md written" >&2

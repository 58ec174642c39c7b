"""A catalog changed under a running process: refused or reloaded, never a crash and never half.

Every test here drives real files (and, for gs://, the fake-gcs-server emulator) with real
songs, and the concurrency tests run the writer or the reader in a real second process: a
memory-mapped file truncated under a process is a SIGBUS that no in-process test could survive.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import soundfile

from function.engine import recogniser as engine
from function.engine.catalog import Catalog
from function.engine.catalog_location import GcsLocation
from function.engine.decode import decode_file
from function.engine.memory_limit import instance_memory_bytes, needed_bytes
from function.engine.recogniser import Recogniser
from function.engine.song_tags import read_tags
from function.engine.songs import CatalogError
from tests.webhook_support import build_client

ROOT = Path(__file__).resolve().parent.parent
MUSIC = sorted((Path(__file__).resolve().parent / "data" / "music").glob("*.ogg"))


def title(path: Path) -> str:
    return read_tags(str(path)).title


def query(path: Path) -> tuple[np.ndarray, int]:
    """Ten seconds of a song from 5 s in, at its own rate (the recogniser resamples)."""
    samples, rate = decode_file(path)
    return samples[5 * rate : 15 * rate], rate


def registered(uri: str, *songs: Path) -> Recogniser:
    rec = Recogniser.open(uri, create=True)
    results = rec.register([str(p) for p in songs], workers=1)
    assert [r.status for r in results] == ["added"] * len(songs)
    return rec


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "function", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def segments(root: Path) -> list[str]:
    return sorted(p.name for p in root.glob("s*") if p.is_dir())


# --- 1. a partial or truncated catalog is refused before it is mapped -----------------------------


def _truncate_postings(postings: Path, header: int) -> None:
    postings.write_bytes(postings.read_bytes()[: header + 40])


def _header_only(postings: Path, header: int) -> None:
    postings.write_bytes(postings.read_bytes()[:header])


def _longer(postings: Path, header: int) -> None:
    postings.write_bytes(postings.read_bytes() + bytes(4096))


@pytest.mark.parametrize("damage", [_truncate_postings, _header_only, _longer], ids=["truncated", "header-only", "longer"])
def test_a_postings_file_of_the_wrong_size_is_refused_naming_the_file_and_both_sizes(tmp_path: Path, damage) -> None:
    uri = tmp_path / "catalog"
    registered(str(uri), MUSIC[0])
    [postings] = uri.glob("s*/postings.npy")
    expected = postings.stat().st_size
    header = expected - 4 * json.loads((uri / "catalog.json").read_text())["segments"][0]["postings"]
    damage(postings, header)

    with pytest.raises(CatalogError) as refused:
        Catalog(str(uri))

    message = str(refused.value)
    assert "corrupt" in message and str(postings) in message
    assert f"{postings.stat().st_size} bytes" in message and str(expected) in message


CHILD = r"""
import json, sys
from function.engine import recogniser as engine
from function.engine.decode import decode_file

uri, *songs = sys.argv[1:]
queries = []
for path in songs:
    samples, rate = decode_file(path)
    queries.append((samples[5 * rate : 15 * rate], rate))
held = None
for command in sys.stdin:
    try:
        if command.strip() == "get":
            held = engine.get_recogniser(uri)
        answer = [getattr(held.recognise(q, rate), "title", None) for q, rate in queries]
    except engine.CatalogError as exc:
        answer = {"error": str(exc)}
    print(json.dumps(answer), flush=True)
"""


class Child:
    """A second process that loads the catalog through get_recogniser and recognises on demand:
    `get` asks get_recogniser again first, `held` uses the recogniser it got last."""

    def __init__(self, uri: Path, songs: list[Path]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(uri), *map(str, songs)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def ask(self, command: str) -> list | dict:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            self.process.wait(timeout=10)
            code = self.process.returncode
            died = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit {code}"
            raise AssertionError(f"the recognising process died ({died}): {self.process.stderr.read()[-2000:]}")
        return json.loads(line)

    def close(self) -> int:
        self.process.stdin.close()
        return self.process.wait(timeout=30)


def test_a_catalog_copied_over_while_a_process_recognises_is_refused_then_reloaded_never_a_crash(tmp_path: Path) -> None:
    live, new = tmp_path / "catalog", tmp_path / "new"
    registered(str(live), MUSIC[0])
    registered(str(new), MUSIC[1], MUSIC[2])
    assert segments(live) == segments(new) == ["s000001"]  # `cp -r new/. catalog/` overwrites in place
    postings, replacement = live / "s000001" / "postings.npy", (new / "s000001" / "postings.npy").read_bytes()
    child = Child(live, [MUSIC[0], MUSIC[1]])
    try:
        before = child.ask("get")
        # `cp` opens the mapped file with O_TRUNC and is part-way through writing the new one.
        with open(postings, "r+b") as f:
            f.truncate(0)
            f.write(replacement[: len(replacement) // 2])
        in_flight = child.ask("held")
        during = child.ask("get")
        subprocess.run(["cp", "-r", f"{new}/.", f"{live}/"], check=True)
        after = child.ask("get")
    finally:
        code = child.close()

    assert code == 0
    assert before == [title(MUSIC[0]), None]
    assert "changed under this process" in in_flight["error"] and str(postings) in in_flight["error"]
    assert "corrupt" in during["error"] and str(postings) in during["error"]
    assert f"{len(replacement) // 2} bytes" in during["error"]
    assert after == [None, title(MUSIC[1])]


def test_a_recogniser_refuses_to_read_postings_truncated_after_it_mapped_them(tmp_path: Path) -> None:
    uri = tmp_path / "catalog"
    registered(str(uri), MUSIC[0])
    [postings] = uri.glob("s*/postings.npy")
    child = Child(uri, [MUSIC[0]])
    try:
        assert child.ask("get") == [title(MUSIC[0])]
        os.truncate(postings, 0)
        answer = child.ask("held")
    finally:
        code = child.close()

    assert code == 0
    assert "changed under this process" in answer["error"] and "0 bytes" in answer["error"]


# --- 2. readers never see half a catalog -------------------------------------------------------------

WRITER = r"""
import sys, time
from function.engine.recogniser import Recogniser

uri, song, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
rec = Recogniser.open(uri)
saves, deadline = 0, time.monotonic() + seconds
while time.monotonic() < deadline:
    [added] = rec.register([song], workers=1)
    rec.remove([added.song_id])
    saves += 2
print(saves)
"""

# Every compaction rewrites the reader's song into a new segment and drops the one before.
COMPACTING_WRITER = r"""
import sys, time
from function.engine.recogniser import Recogniser

uri, song, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
rec = Recogniser.open(uri)
compactions, deadline = 0, time.monotonic() + seconds
while time.monotonic() < deadline:
    [added] = rec.register([song], workers=1)
    rec.compact()
    rec.remove([added.song_id])
    rec.compact()
    compactions += 2
print(compactions)
"""


def test_recognising_in_a_loop_while_register_runs_never_sees_half_a_catalog(tmp_path: Path) -> None:
    uri = tmp_path / "catalog"
    registered(str(uri), MUSIC[0])
    samples, rate = query(MUSIC[0])
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(uri), str(MUSIC[1]), "6"], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    loads, errors = 0, []
    while writer.poll() is None:
        try:
            match = Recogniser.open(str(uri)).recognise(samples, rate)
            assert match is not None and match.title == title(MUSIC[0])
            loads += 1
        except CatalogError as exc:
            errors.append(str(exc))
    saves = int(writer.stdout.read())

    assert writer.returncode == 0
    assert errors == []
    assert saves >= 20 and loads >= 20, (saves, loads)


def test_recognising_in_a_loop_while_segments_are_merged_never_fails(tmp_path: Path) -> None:
    uri = tmp_path / "catalog"
    registered(str(uri), MUSIC[0])
    samples, rate = query(MUSIC[0])
    held = Recogniser.open(str(uri))  # its segment is merged away and deleted under it
    writer = subprocess.Popen(
        [sys.executable, "-c", COMPACTING_WRITER, str(uri), str(MUSIC[1]), "6"], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    loads, errors = 0, []
    while writer.poll() is None:
        try:
            for recogniser in (Recogniser.open(str(uri)), held):
                match = recogniser.recognise(samples, rate)
                assert match is not None and match.title == title(MUSIC[0])
            loads += 1
        except CatalogError as exc:
            errors.append(str(exc))
    compactions = int(writer.stdout.read())

    assert writer.returncode == 0
    assert errors == []
    assert compactions >= 6 and loads >= 20, (compactions, loads)
    assert "s000001" not in segments(uri)


def test_a_reader_overtaken_by_two_saves_reads_the_manifest_again(tmp_path: Path) -> None:
    uri = str(tmp_path / "catalog")
    writer = registered(uri, MUSIC[0], MUSIC[1])
    writer.remove([writer.catalog.songs[1].song_id])  # a tombstone, which a compaction drops

    class Overtaken(Catalog):
        """A reader that another process overtakes, for certain, with two saves between
        reading catalog.json and opening the segments it names: a compaction that drops them,
        and a save that deletes them."""

        manifests = 0

        def _manifest(self) -> dict:
            manifest = super()._manifest()
            Overtaken.manifests += 1
            if Overtaken.manifests == 1:
                writer.compact()
                writer.catalog.save()
            return manifest

    reader = Overtaken(uri)

    assert Overtaken.manifests == 2
    assert reader.generation == 4 and [s.name for s in reader.segments] == ["s000002"]
    assert [s.song_id for s in reader.songs] == [s.song_id for s in writer.catalog.songs]


def test_segments_a_compaction_drops_stay_until_the_next_save_for_readers_that_just_read_its_manifest(tmp_path: Path) -> None:
    uri = tmp_path / "catalog"
    rec = registered(str(uri), MUSIC[0])
    rec.register([str(MUSIC[1])], workers=1)
    assert segments(uri) == ["s000001", "s000002"]

    rec.compact()
    after_compaction = segments(uri)
    rec.register([str(MUSIC[2])], workers=1)

    assert after_compaction == ["s000001", "s000002", "s000003"]
    assert segments(uri) == ["s000003", "s000004"]
    assert [s["name"] for s in json.loads((uri / "catalog.json").read_text())["segments"]] == ["s000003", "s000004"]


# --- 3. a running process picks up a new generation ------------------------------------------------


def test_a_running_recogniser_names_a_song_registered_after_it_loaded_once_the_interval_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = str(tmp_path / "catalog")
    registered(uri, MUSIC[0])
    monkeypatch.setattr(engine, "RELOAD_CHECK_SECONDS", 3600.0)
    first = engine.get_recogniser(uri)
    assert first.recognise(*query(MUSIC[1])) is None

    added = run_cli("register", str(MUSIC[1]), "--catalog", uri, "--workers", "1", "--quiet")
    assert added.returncode == 0, added.stderr
    within_interval = engine.get_recogniser(uri)
    monkeypatch.setattr(engine, "RELOAD_CHECK_SECONDS", 0.0)
    after_interval = engine.get_recogniser(uri)

    assert within_interval is first
    assert after_interval is not first
    assert after_interval.recognise(*query(MUSIC[1])).title == title(MUSIC[1])
    # A recognition that had the old recogniser in hand still finishes on the old generation.
    assert first.recognise(*query(MUSIC[0])).title == title(MUSIC[0])
    assert first.recognise(*query(MUSIC[1])) is None


def test_a_catalog_that_does_not_load_is_not_swapped_in_for_one_that_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = tmp_path / "catalog"
    registered(str(uri), MUSIC[0])
    monkeypatch.setattr(engine, "RELOAD_CHECK_SECONDS", 0.0)
    first = engine.get_recogniser(str(uri))
    manifest = json.loads((uri / "catalog.json").read_text())
    manifest["segments"][0]["postings"] += 1  # a manifest that disagrees with its arrays, written atomically
    (uri / "catalog.json.new").write_text(json.dumps(manifest))
    os.replace(uri / "catalog.json.new", uri / "catalog.json")

    kept = engine.get_recogniser(str(uri))

    assert kept is first
    assert kept.recognise(*query(MUSIC[0])).title == title(MUSIC[0])


@pytest.fixture
def gcs_catalog(emulators: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> str:
    """A gs:// catalog URI in a new bucket of the fake-gcs-server emulator."""
    from google.cloud import storage

    for name, value in emulators.items():
        monkeypatch.setenv(name, value)
    project, bucket = f"test-{uuid.uuid4().hex[:12]}", f"catalog-{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", project)
    storage.Client(project=project).create_bucket(bucket)
    return f"gs://{bucket}/catalog"


def test_a_gcs_catalog_is_reloaded_from_its_manifests_object_generation(gcs_catalog: str, monkeypatch) -> None:
    from google.cloud import storage

    registered(gcs_catalog, MUSIC[0])
    monkeypatch.setattr(engine, "RELOAD_CHECK_SECONDS", 0.0)
    first = engine.get_recogniser(gcs_catalog)
    mirror = first.catalog.location.local_dir
    first_download = (mirror / "s000001" / "postings.npy").stat().st_ino
    same = engine.get_recogniser(gcs_catalog)  # nothing changed: one metadata read, no reload

    Recogniser.open(gcs_catalog).register([str(MUSIC[1])], workers=1)
    Recogniser.open(gcs_catalog).register([str(MUSIC[2])], workers=1)
    grown = engine.get_recogniser(gcs_catalog)
    grown_mirror = segments(mirror)
    kept_download = (mirror / "s000001" / "postings.npy").stat().st_ino
    assert Recogniser.open(gcs_catalog).compact()
    compacted = engine.get_recogniser(gcs_catalog)

    assert same is first
    assert grown.recognise(*query(MUSIC[2])).title == title(MUSIC[2])
    assert grown_mirror == ["s000001", "s000002", "s000003"] and kept_download == first_download  # only new segments are downloaded
    assert compacted.recognise(*query(MUSIC[1])).title == title(MUSIC[1])
    assert first.recognise(*query(MUSIC[0])).title == title(MUSIC[0])  # its mapping outlives its files
    assert compacted.catalog.location is first.catalog.location and segments(mirror) == ["s000004"]
    bucket, prefix = gcs_catalog[len("gs://") :].split("/", 1)
    stored = {b.name for b in storage.Client().bucket(bucket).list_blobs(prefix=prefix + "/")}
    # The merged segments stay in the bucket until the next save, for instances reading the manifest before.
    assert {name.split("/")[1] for name in stored} == {"catalog.json", "s000001", "s000002", "s000003", "s000004"}


def test_a_gcs_catalog_too_big_for_the_instances_memory_is_refused_before_any_download(gcs_catalog: str) -> None:
    from google.cloud import storage

    registered(gcs_catalog, MUSIC[0])
    bucket, prefix = gcs_catalog[len("gs://") :].split("/", 1)
    stored = {blob.name[len(prefix) + 1 :]: blob.size for blob in storage.Client().bucket(bucket).list_blobs(prefix=prefix + "/")}
    manifest = stored.pop("catalog.json")
    needed = needed_bytes(sum(stored.values()), segments=1, manifest_bytes=manifest)
    small = GcsLocation(gcs_catalog, memory_limit=needed - 1)

    with pytest.raises(CatalogError, match=rf"needs {needed / 2**20:,.0f} MiB .* this instance has {(needed - 1) / 2**20:,.0f} MiB"):
        Catalog(gcs_catalog, location=small)

    assert [p.name for p in small.local_dir.iterdir()] == ["catalog.json"]  # no segment downloaded
    assert Catalog(gcs_catalog, location=GcsLocation(gcs_catalog, memory_limit=needed)).songs


def test_a_reload_that_would_not_fit_beside_the_loaded_catalog_is_refused_and_the_loaded_one_serves(gcs_catalog: str) -> None:
    registered(gcs_catalog, MUSIC[0])
    loaded = Catalog(gcs_catalog, location=GcsLocation(gcs_catalog, memory_limit=2**40))
    mirrored = sum(f.stat().st_size for f in (loaded.location.local_dir / "s000001").iterdir())
    rec = Recogniser.open(gcs_catalog)
    rec.register([str(MUSIC[1])], workers=1)
    assert rec.compact()  # s000001 and s000002 merged into s000003: every file is new
    fresh = Catalog(gcs_catalog, location=GcsLocation(gcs_catalog, memory_limit=2**40))
    alone = needed_bytes(
        sum(f.stat().st_size for f in (fresh.location.local_dir / "s000003").iterdir()),
        segments=1,
        manifest_bytes=(fresh.location.local_dir / "catalog.json").stat().st_size,
    )
    loaded.location.memory_limit = alone  # the new catalog alone fits; beside the loaded one it does not

    with pytest.raises(CatalogError, match=f"needs {(alone + mirrored) / 2**20:,.0f} MiB"):
        loaded.reopened()

    assert loaded.songs and (loaded.location.local_dir / "s000001").is_dir()


def test_the_instances_memory_is_its_cgroup_limit_or_the_machines_if_smaller(tmp_path: Path) -> None:
    v2, v1, meminfo = tmp_path / "memory.max", tmp_path / "memory.limit_in_bytes", tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       4194304 kB\nMemFree:        1024 kB\n")  # 4 GiB
    v2.write_text("2147483648\n")
    assert instance_memory_bytes((v2, v1), meminfo) == 2**31
    v2.write_text("max\n")  # no limit: the machine's memory
    assert instance_memory_bytes((v2, v1), meminfo) == 4 * 2**30
    v2.unlink()
    v1.write_text("9223372036854771712\n")  # cgroup v1's "no limit"
    assert instance_memory_bytes((v2, v1), meminfo) == 4 * 2**30
    v1.write_text(str(8 * 2**30))  # a limit above the machine's memory
    assert instance_memory_bytes((v2, v1), meminfo) == 4 * 2**30
    assert instance_memory_bytes((v2, v1), tmp_path / "none") == 8 * 2**30
    assert instance_memory_bytes((tmp_path / "none",), tmp_path / "none") is None


# --- 4. an empty catalog is a state of its own, and nothing registered writes nothing ----------------


def emptied(uri: Path) -> None:
    rec = registered(str(uri), MUSIC[0])
    assert rec.remove([rec.catalog.songs[0].song_id]) == 1


def test_recognising_against_a_catalog_without_songs_is_an_error_not_no_match(tmp_path: Path) -> None:
    uri = tmp_path / "catalog"
    emptied(uri)
    clip = tmp_path / "clip.wav"
    soundfile.write(clip, *query(MUSIC[0]))

    answer = run_cli("recognise", str(clip), "--catalog", str(uri))

    assert answer.returncode != 0
    assert answer.stdout == ""
    assert len(answer.stderr.splitlines()) == 1 and "has no songs" in answer.stderr
    with pytest.raises(CatalogError, match="has no songs"):
        engine.get_recogniser(str(uri))


def test_health_is_503_with_the_reason_when_the_catalog_has_no_songs(tmp_path: Path, monkeypatch) -> None:
    emptied(tmp_path / "catalog")
    for name, value in {"STORAGE_BACKEND": "local", "DATA_DIR": str(tmp_path / "data"), "CATALOG_URI": str(tmp_path / "catalog")}.items():
        monkeypatch.setenv(name, value)

    response = build_client().get("/health")

    assert response.status_code == 503
    assert response.json["reason"].startswith("catalog unavailable") and "has no songs" in response.json["reason"]


def test_registering_only_missing_files_creates_no_catalog(tmp_path: Path) -> None:
    uri = tmp_path / "catalog"

    result = run_cli("register", str(tmp_path / "missing.ogg"), "--catalog", str(uri), "--quiet")

    assert result.returncode != 0
    assert "missing.ogg" in result.stderr
    assert not (uri / "catalog.json").exists()

"""A catalog split into shards answers as the catalog does: two real shard processes on loopback
against the catalog they were split from, on real excerpts in noise and on audio in no catalog;
a shard that is down fails the vote; the shard endpoints refuse callers without the token and
bodies they cannot read."""

from __future__ import annotations

import os
import select
import shutil
import signal
from contextlib import ExitStack
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
import pytest
import soundfile

from bench.harness import running_function
from function.config import ConfigError, Settings
from function.engine.catalog import Catalog
from function.engine.config import CONFIG
from function.engine.decode import decode_file, to_internal
from function.engine.fingerprint import QUERY_DENSITY, fingerprint, with_neighbours
from function.engine.matcher import Vote, vote
from function.engine.recogniser import Recogniser
from function.engine.shards import Shards, encode_piles, shard_of, shard_uri, split
from function.engine.songs import CatalogError
from function.simulate import load_pcm16
from tests.conftest import free_port
from tests.webhook_support import build_client, post_seconds

DATA = Path(__file__).resolve().parent / "data"
MUSIC = sorted((DATA / "music").glob("*.ogg"))
NOISE = DATA / "noise" / "city.ogg"
SPEECH = DATA / "speech" / "talk.ogg"
TOKEN = "shard-token-for-tests-0123456789"
RATE = 16000


@pytest.fixture(scope="module")
def catalogs(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(the full catalog, the prefix of its 2 shards). Songs: each test excerpt's two halves (10
    songs, so that both shards hold some) and a quieter recording of one half, registered as
    its version."""
    audio = tmp_path_factory.mktemp("songs")
    for path in MUSIC:
        samples, rate = decode_file(path)
        half = len(samples) // 2
        soundfile.write(audio / f"{path.stem} (first half).flac", samples[:half], rate)
        soundfile.write(audio / f"{path.stem} (second half).flac", samples[half:], rate)
    first, rate = soundfile.read(audio / f"{MUSIC[-1].stem} (first half).flac")
    soundfile.write(audio / f"{MUSIC[-1].stem} (first half, quieter).flac", 0.7 * first, rate)
    full = str(tmp_path_factory.mktemp("full"))
    # Three register runs, so three segments: a split reads them one at a time.
    songs = sorted(str(f) for f in audio.glob("*.flac") if "quieter" not in f.name)
    runs = (songs[:4], songs[4:], [str(audio / f"{MUSIC[-1].stem} (first half, quieter).flac")])
    results = [r for run in runs for r in Recogniser.open(full, create=True).register(run, workers=1)]
    assert [r.status for r in results] == ["added"] * 11 and sum(r.version_of is not None for r in results) == 1
    assert len(Catalog(full).segments) == 3
    prefix = str(tmp_path_factory.mktemp("shards"))
    split(Catalog(full), prefix, 2)
    return full, prefix


@pytest.fixture(scope="module")
def shard_urls(catalogs: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, ...]]:
    """Two functions-framework processes, each serving one shard."""
    logs = tmp_path_factory.mktemp("shard-logs")
    with ExitStack() as stack:
        urls = []
        for i in range(2):
            env = {
                **os.environ,
                "STORAGE_BACKEND": "local",
                "DATA_DIR": str(logs / f"data-{i}"),
                "CATALOG_URI": shard_uri(catalogs[1], i),
                "SHARD_TOKEN": TOKEN,
                "CATALOG_SHARDS": "",
            }
            urls.append(stack.enter_context(running_function(env, logs / f"shard-{i}.log")).url)
        yield tuple(urls)


def queries() -> list[tuple[str, np.ndarray]]:
    """Excerpts of every song clean, in street noise at +5 and 0 dB (some across the two halves,
    which are two songs), and audio in no catalog: street noise alone, speech."""
    found = []
    for path in MUSIC:
        for noise, snr in ((None, 0.0), (NOISE, 5.0), (NOISE, 0.0)):
            pcm = np.frombuffer(load_pcm16(path, RATE, noise=noise, snr_db=snr), "<i2")
            for start in (1.0, 7.0):
                found.append((f"{path.stem} at {start:g}s, {'clean' if noise is None else f'{snr:+g} dB'}", pcm[int(start * RATE) : int((start + 6) * RATE)]))
    for path in (NOISE, SPEECH):
        pcm = np.frombuffer(load_pcm16(path, RATE), "<i2")
        found += [(f"{path.name} at {s}s", pcm[s * RATE : (s + 8) * RATE]) for s in (0, 10)]
    return found


def test_the_split_keeps_version_groups_together_and_uses_both_shards(catalogs: tuple[str, str]) -> None:
    full, prefix = Catalog(catalogs[0]), catalogs[1]
    shards = [Catalog(shard_uri(prefix, i)) for i in range(2)]

    assert all(s.songs for s in shards)
    assert sorted(s.song_id for c in shards for s in c.songs) == sorted(s.song_id for s in full.songs)
    for i, shard in enumerate(shards):
        order = [full.index_of(s.song_id) for s in shard.songs]
        assert order == sorted(order), "a shard keeps the catalog's order"
        for song in shard.songs:
            assert shard_of(song.version_of or song.song_id, 2) == i
            assert song.version_of is None or song.version_of in shard
    assert sum(c.postings_count for c in shards) == full.postings_count


def test_sharded_answers_equal_the_single_catalogs(catalogs: tuple[str, str], shard_urls: tuple[str, ...]) -> None:
    single = Recogniser.open(catalogs[0])
    sharded = Recogniser(Shards(shard_urls, TOKEN))
    single.catalog.budget = sharded.catalog.budget  # 2 shards read two instances' postings
    assert sharded.catalog.budget == 2 * CONFIG.postings_budget
    named = 0
    for label, samples in queries():
        one, one_confidence = single.best_guess(samples, RATE)
        many, many_confidence = sharded.best_guess(samples, RATE)

        assert many_confidence == one_confidence, label
        assert many == one, label
        named += one_confidence >= CONFIG.threshold
        # And each vote itself, neighbours and all: pile height, surprise and rival.
        hashes, frames = with_neighbours(*fingerprint(to_internal(samples, RATE), QUERY_DENSITY), CONFIG.neighbour_gap_frames)
        assert _seen(vote(sharded.catalog, hashes, frames)) == _seen(vote(single.catalog, hashes, frames)), label
    assert named >= 12, "the queries should name songs often, or the comparison says little"


def _seen(v: Vote | None) -> tuple | None:
    """A vote, its song's public fields only (a shard's copy of a song counts its own landmarks)."""
    return None if v is None else (v.song_index, v.head.public(), v.offset_frames, v.score, v.surprise, v.rival)


def test_a_shard_that_is_down_fails_the_vote(catalogs: tuple[str, str], shard_urls: tuple[str, ...]) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    sharded = Recogniser(Shards((shard_urls[0], dead), TOKEN))
    samples = np.frombuffer(load_pcm16(MUSIC[0], RATE), "<i2")[: 6 * RATE]

    with pytest.raises(CatalogError, match=f"catalog shard {dead} did not answer"):
        sharded.best_guess(samples, RATE)
    with pytest.raises(CatalogError, match="did not answer"):
        sharded.catalog.require_songs()
    wrong_token = Recogniser(Shards(shard_urls, "not-the-token-at-all"))
    with pytest.raises(CatalogError, match="answered 401"):
        wrong_token.best_guess(samples, RATE)


def test_shards_listed_out_of_place_or_from_two_splits_fail_the_vote_rather_than_merge(
    catalogs: tuple[str, str], shard_urls: tuple[str, ...], tmp_path: Path
) -> None:
    samples = np.frombuffer(load_pcm16(MUSIC[0], RATE), "<i2")[: 6 * RATE]
    swapped = Recogniser(Shards((shard_urls[1], shard_urls[0]), TOKEN))
    twice = Recogniser(Shards((shard_urls[0], shard_urls[0]), TOKEN))
    # The catalog changed (one song removed) and was split again: shard 1 of the new split
    # beside shard 0 of the old one is what the shards look like while a re-split is picked up.
    changed = tmp_path / "changed"
    shutil.copytree(catalogs[0], changed)
    catalog = Catalog(str(changed))
    catalog.remove([catalog.songs[-1].song_id])
    catalog.save()
    split(Catalog(str(changed)), str(tmp_path / "resplit"), 2)
    env = {**os.environ, "STORAGE_BACKEND": "local", "DATA_DIR": str(tmp_path / "data"), "SHARD_TOKEN": TOKEN,
           "CATALOG_SHARDS": "", "CATALOG_URI": shard_uri(str(tmp_path / "resplit"), 1)}
    with running_function(env, tmp_path / "resplit.log") as new_shard:
        mixed = Recogniser(Shards((shard_urls[0], new_shard.url), TOKEN))

        with pytest.raises(CatalogError, match="answer from 2 different splits"):
            mixed.best_guess(samples, RATE)
    with pytest.raises(CatalogError, match=f"{shard_urls[1]} is shard 1 of 2, listed as shard 0 of 2"):
        swapped.best_guess(samples, RATE)
    with pytest.raises(CatalogError, match=f"{shard_urls[0]} is shard 0 of 2, listed as shard 1 of 2"):
        twice.best_guess(samples, RATE)


def test_the_webhook_names_songs_through_the_shards_and_reports_them(
    shard_urls: tuple[str, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {
        "STORAGE_BACKEND": "local",
        "DATA_DIR": str(tmp_path / "data"),
        "CATALOG_URI": str(tmp_path / "no-catalog-here"),
        "CATALOG_SHARDS": ",".join(shard_urls),
        "SHARD_TOKEN": TOKEN,
        "MIN_AUDIO_SECONDS": "5",
        "MAX_BUFFER_SECONDS": "8",
        "OMI_APP_ID": "",
        "OMI_APP_SECRET": "",
    }.items():
        monkeypatch.setenv(name, value)
    client = build_client()

    health = client.get("/health")
    assert health.status_code == 200, health.get_json()
    assert [s["url"] for s in health.get_json()["catalog"]["shards"]] == list(shard_urls)
    assert all(s["songs"] > 0 for s in health.get_json()["catalog"]["shards"])
    responses = post_seconds(client, "sharded", load_pcm16(MUSIC[0], RATE, noise=NOISE, snr_db=10.0)[: 2 * 9 * RATE])
    matches = [r.get_json()["recognition"] for r in responses if r.get_json().get("recognition", {}).get("status") == "match"]
    assert matches and matches[0]["title"] == f"{MUSIC[0].stem.split(' - ')[1]} (first half)", [r.get_json() for r in responses]

    monkeypatch.setenv("CATALOG_SHARDS", f"{shard_urls[0]},http://127.0.0.1:{free_port()}")
    down = build_client().get("/health")
    assert down.status_code == 503 and "did not answer" in down.get_json()["reason"]


def test_the_shard_endpoints_need_the_token(shard_urls: tuple[str, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    body = np.arange(10, dtype="<u4").tobytes()
    url = shard_urls[0]

    assert httpx.post(f"{url}/shard/counts", content=body).status_code == 401
    assert httpx.post(f"{url}/shard/counts", content=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(f"{url}/shard/info", headers={"Authorization": f"Bearer {TOKEN}"}).json()["songs"] > 0
    # A function that is no shard (no SHARD_TOKEN) keeps them closed, with the reason.
    monkeypatch.setenv("STORAGE_BACKEND", "local")
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("SHARD_TOKEN", raising=False)
    monkeypatch.delenv("CATALOG_SHARDS", raising=False)
    closed = build_client().post("/shard/counts", data=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert closed.status_code == 403 and "SHARD_TOKEN" in closed.get_json()["reason"]


@pytest.mark.parametrize(
    "path, body, reason",
    [
        ("/shard/counts", b"", "uint32"),
        ("/shard/counts", b"\x01\x02\x03", "uint32"),
        ("/shard/piles", b"\x01", "landmark count"),
        ("/shard/piles", np.array([5], "<u4").tobytes() + b"\x00" * 12, "of 5 landmarks is 45 bytes"),
        ("/shard/piles", encode_piles(np.arange(3), np.arange(3), np.ones(3, bool)) + b"\x00", "got 30"),
    ],
)
def test_a_body_a_shard_cannot_read_is_400(shard_urls: tuple[str, ...], path: str, body: bytes, reason: str) -> None:
    answer = httpx.post(f"{shard_urls[0]}{path}", content=body, headers={"Authorization": f"Bearer {TOKEN}"})

    assert answer.status_code == 400
    assert reason in answer.json()["reason"]


@pytest.mark.parametrize(
    "env, error",
    [
        ({"CATALOG_SHARDS": "https://a.run.app"}, "CATALOG_SHARDS needs SHARD_TOKEN"),
        ({"CATALOG_SHARDS": "a.run.app", "SHARD_TOKEN": TOKEN}, "CATALOG_SHARDS must be comma-separated http"),
        ({"CATALOG_SHARDS": "https://a.run.app,https://a.run.app/", "SHARD_TOKEN": TOKEN}, "names a shard twice"),
    ],
)
def test_shard_settings_are_validated(env: dict[str, str], error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        Settings.from_env(env)
    assert Settings.from_env({"CATALOG_SHARDS": " https://a.run.app/ , https://b.run.app", "SHARD_TOKEN": TOKEN}).catalog_shards == (
        "https://a.run.app",
        "https://b.run.app",
    )


def test_shards_asked_before_a_fork_answer_in_the_forked_worker(shard_urls: tuple[str, ...]) -> None:
    """gunicorn loads main.py (which asks the shards for their info) in its master, then forks
    its workers: a worker must not wait on threads and connections that stayed in the master."""
    shards = Shards(shard_urls, TOKEN)
    assert shards.info()  # the pool's threads and the connections now exist in this process
    shards._info = None  # the worker's first check asks the shards again
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the worker: answer through the pipe, whatever happens
        try:
            os.write(write, b"ok" if shards.info() else b"empty")
        finally:
            os._exit(0)
    os.close(write)
    ready: list[int] = []
    try:
        ready = select.select([read], [], [], 20)[0]
        assert ready, "the forked process got no answer from the shards within 20 s"
        assert os.read(read, 16) == b"ok"
    finally:
        if not ready:
            os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        os.close(read)

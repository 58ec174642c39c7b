"""A catalog split into shards, each held in memory by its own instance of this function, and
the votes of all of them merged into the decision the whole catalog would have given.

Why a vote can be split exactly: which query hashes a vote reads depends on the whole catalog
(their posting counts against a cap set by the catalog's size, then a budget), and the
confidence compares the best song's surprise with that of any *other* song. So a vote asks
every shard twice (matcher.Votes):
1. counts: each shard's posting count of every query hash and its postings stored; summed,
   they are the whole catalog's, and matcher.kept chooses the hashes as one catalog would
   with N instances' postings budget (Shards.budget: N shards read N times the postings,
   about one instance's worth each, so that a big catalog is not held to one instance's);
2. piles: each shard votes with only those hashes and answers its best song (the most
   surprising, matcher.piles) with its own rival (the highest surprise of another song in that
   shard). A song's surprise depends only on that song's hits, so the most surprising of the
   shards' best songs is the catalog's; its rival is the larger of its shard's rival and every
   other shard's best surprise.
This holds because songs are split by version group (`shard_of` their first version's id): all
versions of a song are in one shard, so any pile in another shard is another song's, as "other
song" means in one catalog. Equal surprises go to the earlier song, as in one catalog: a shard
keeps the whole catalog's order among its songs, and each song's index in it (songs.ShardOf),
by which equal best songs of two shards are told apart.

Every answer names the split it comes from (its id, the shard's index, the number of shards): a
vote whose answers come from two splits (a re-split that some shards have picked up and others
not yet, for up to RELOAD_CHECK_SECONDS) or that do not match CATALOG_SHARDS (a shard listed
twice, in the wrong place, or missing) fails with CatalogError instead of merging piles that
were never parts of one catalog.

A shard that does not answer, or answers an error, fails the whole vote with CatalogError:
a decision from the other shards alone could name the wrong song.

Wire format (POST, `Authorization: Bearer SHARD_TOKEN`, function/webhook/edge.py):
- /shard/counts: body the query hashes, little-endian uint32; answer the counts, little-endian
  int64, one per hash, with the shard's postings stored in the X-Shard-Postings header and its
  split in X-Shard-Split ("SPLIT INDEX OF").
- /shard/piles: body n (uint32), n hashes (uint32), n frames (uint32) and the n keep flags as
  bits (numpy.packbits); answer JSON {"vote": null or the Vote, its head song's public fields,
  "split": "SPLIT INDEX OF"}.
- GET /shard/info: {"songs", "recordings", "postings", "generation", "split"}.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Callable

import httpx
import numpy as np

from function.engine.catalog import Catalog
from function.engine.config import CONFIG
from function.engine.matcher import Vote
from function.engine.songs import CatalogError, Fingerprinted, ShardOf, Song

# One shard request's time limit: a recognition makes up to 4 votes of 2 round trips each, and
# its claim on the user's buffer lasts RECOGNITION_LEASE_SECONDS (30 s by default).
REQUEST_SECONDS = 3.0
# How long a shard's /shard/info answer (songs held) stands for the webhook's "is there a
# catalog" check before each recognition; any failed shard request clears it at once.
INFO_SECONDS = 30.0
POSTINGS_HEADER = "X-Shard-Postings"
SPLIT_HEADER = "X-Shard-Split"


def shard_of(head_song_id: str, shards: int) -> int:
    """The shard of a version group, from its first version's song id: stable across runs,
    machines and Python versions (Python's own hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(head_song_id.encode()).digest()[:8], "big") % shards


def shard_uri(prefix: str, index: int) -> str:
    """Where shard `index` of a split written to `prefix` is: PREFIX/0, PREFIX/1, ..."""
    return f"{prefix.rstrip('/')}/{index}"


# --- the wire format ------------------------------------------------------------------------------
def split_label(catalog: Catalog) -> str:
    """What a shard's answers say of its split: "SPLIT INDEX OF"; "" for a catalog that is not
    a shard written by `split` (the webhook refuses its answers)."""
    shard = catalog.shard
    return "" if shard is None else f"{shard.split} {shard.index} {shard.of}"


def decode_hashes(body: bytes) -> np.ndarray:
    """A /shard/counts body; ValueError says what is wrong with it."""
    if not body or len(body) % 4:
        raise ValueError(f"expected query hashes as little-endian uint32, got {len(body)} bytes")
    return np.frombuffer(body, dtype="<u4").astype(np.uint32)


def encode_piles(hashes: np.ndarray, frames: np.ndarray, keep: np.ndarray) -> bytes:
    n = np.array([len(hashes)], dtype="<u4")
    return b"".join((n.tobytes(), hashes.astype("<u4").tobytes(), frames.astype("<u4").tobytes(), np.packbits(keep).tobytes()))


def decode_piles(body: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hashes, frames, keep) of a /shard/piles body; ValueError says what is wrong with it."""
    if len(body) < 4:
        raise ValueError(f"a piles request starts with its landmark count (uint32), got {len(body)} bytes")
    n = int(np.frombuffer(body[:4], dtype="<u4")[0])
    expected = 4 + 8 * n + (n + 7) // 8
    if n == 0 or len(body) != expected:
        raise ValueError(f"a piles request of {n} landmarks is {expected} bytes, got {len(body)}")
    hashes = np.frombuffer(body, dtype="<u4", count=n, offset=4).astype(np.uint32)
    frames = np.frombuffer(body, dtype="<u4", count=n, offset=4 + 4 * n).astype(np.uint32)
    keep = np.unpackbits(np.frombuffer(body, dtype=np.uint8, offset=4 + 8 * n), count=n).astype(bool)
    return hashes, frames, keep


def vote_json(v: Vote | None, split: str) -> dict:
    """A shard's answer to /shard/piles (floats survive JSON exactly: Python writes the shortest
    repr that reads back as the same double)."""
    if v is None:
        return {"vote": None, "split": split}
    fields = {k: getattr(v, k) for k in ("song_index", "offset_frames", "score", "surprise", "rival")}
    return {"vote": {**fields, "head": v.head.public()}, "split": split}


def vote_from_json(answer: dict) -> Vote | None:
    """A /shard/piles answer back into a Vote; KeyError, TypeError or ValueError if malformed."""
    v = answer["vote"]
    if v is None:
        return None
    return Vote(
        song_index=int(v["song_index"]),
        offset_frames=int(v["offset_frames"]),
        score=int(v["score"]),
        surprise=float(v["surprise"]),
        rival=float(v["rival"]),
        head=Song(**v["head"]),
    )


def fanout_budget(shards: int) -> int:
    """matcher.Votes.budget of a vote over `shards` shards: one instance's budget per shard (the
    postings a vote reads are spread over the shards, about 1/N each, so every shard reads about
    what one instance of a catalog N times smaller would, and a big catalog keeps the hashes one
    instance would have to drop). Its answers are the whole catalog's with this budget."""
    return CONFIG.postings_budget * shards


def merge_counts(answers: list[tuple[np.ndarray, int]]) -> tuple[np.ndarray, int]:
    """The whole catalog's posting counts of the query hashes, and its postings stored, from its
    shards' (counts, postings): summed."""
    total, postings = np.zeros(len(answers[0][0]) if answers else 0, dtype=np.int64), 0
    for counts, stored in answers:
        total += counts
        postings += stored
    return total, postings


def merge(votes: list[Vote | None]) -> Vote | None:
    """The whole catalog's vote from its shards' (in shard order): see the module docstring."""
    found = [(i, v) for i, v in enumerate(votes) if v is not None]
    if not found:
        return None
    best_at, best = max(found, key=lambda iv: (iv[1].surprise, -iv[1].song_index))
    rivals = [v.surprise for i, v in found if i != best_at]
    return replace(best, rival=max([best.rival, *rivals]))


# --- splitting -------------------------------------------------------------------------------------
def split(catalog: Catalog, prefix: str, shards: int) -> list[Catalog]:
    """Write the catalog's songs into `shards` catalogs at shard_uri(prefix, 0..shards-1), each
    holding whole version groups (`shard_of`) in the catalog's own order, and return them.

    A shard catalog that exists is replaced as `remove` and `register` change a live one (its
    songs tombstoned, the new ones in new segments, catalog.json swapped atomically), so
    shards serving it switch to the new split within RELOAD_CHECK_SECONDS. Removed songs'
    postings are not copied: the shards answer as the catalog would after `catalog --compact`.

    The catalog is read one segment at a time, those holding its earliest songs first, each
    segment's songs going to their shards as new segments, which a compaction then joins (up
    to segment_build.MERGE_POSTINGS a merge): a split holds one segment's postings at once,
    never the whole index (100,000 songs' would take ~80 GB).
    """
    if shards < 1:
        raise ValueError(f"a split needs at least 1 shard, got {shards}")
    # One id for this split's shards, another for the next split of a changed catalog.
    split_id = hashlib.sha256(f"{catalog.uri}|{catalog.generation}|{shards}".encode()).hexdigest()[:12]
    home = [shard_of(catalog.songs[int(g)].song_id, shards) for g in catalog.group_index]
    targets = [Catalog(shard_uri(prefix, index), create=True) for index in range(shards)]
    for target in targets:
        target.remove([s.song_id for s in target.songs])
    placed: list[list[int]] = [[] for _ in range(shards)]  # each shard's songs, as whole-catalog indices

    def place(batch: list[tuple[int, np.ndarray, np.ndarray]]) -> None:
        items: list[list[Fingerprinted]] = [[] for _ in range(shards)]
        for i, hashes, frames in batch:
            song = replace(catalog.songs[i], sources=list(catalog.songs[i].sources))
            items[home[i]].append(Fingerprinted(song, hashes, frames))
            placed[home[i]].append(i)
        for target, found in zip(targets, items):
            if found:
                target.add(found)

    def first_song(segment) -> int:
        return min((catalog.index_of(s) for s in segment.song_ids if s in catalog), default=len(catalog.songs))

    for segment in sorted(catalog.segments, key=first_song):
        part, hashes, frames = segment.landmarks()
        songs = segment.part_index[part]
        order = np.argsort(songs, kind="stable")  # each song's landmarks together, in catalog order
        songs, hashes, frames = songs[order], hashes[order], frames[order]
        present, starts = np.unique(songs, return_index=True)
        ends = np.append(starts[1:], len(songs))
        place([(int(i), hashes[a:b], frames[a:b]) for i, a, b in zip(present, starts, ends)])
        del part, hashes, frames, songs, order
    # Songs without a landmark (too short or silent) are in no segment, but are songs.
    done = {i for found in placed for i in found}
    empty = np.zeros(0, np.uint32)
    place([(i, empty, empty) for i in range(len(catalog.songs)) if i not in done])
    for index, target in enumerate(targets):
        target.compact(everything=True)
        target.shard = ShardOf(split_id, index, shards, placed[index])
        target.save()
    return targets


# --- the webhook's side ---------------------------------------------------------------------------
class Shards:
    """Every shard of one catalog, asked in parallel (matcher.Votes); a Recogniser over it
    recognises as over the whole catalog, and does nothing else (register into the full
    catalog, then split it again: `python -m function catalog --split`)."""

    def __init__(self, urls: tuple[str, ...], token: str, timeout: float = REQUEST_SECONDS) -> None:
        self.urls = urls
        self.uri = ",".join(urls)  # what logs and errors call this catalog
        self.budget = fanout_budget(len(urls))  # matcher.Votes.budget
        self._token = token
        self._timeout = timeout
        self._info: list[dict] | None = None
        self._info_at = 0.0
        self._lock = threading.Lock()
        self._owning = threading.Lock()  # one thread of a new process makes its pool and client
        self._own()

    def _own(self) -> None:
        """Keep-alive connections to every shard, and threads to have a request to each under
        way at once for a few recognitions at a time (the webhook runs one per core), made by
        and for this process. gunicorn imports main.py, which asks the shards, in its master and
        then forks the workers: a fork copies the pool's queue but not its threads, and the
        master's sockets, so a worker that used them would wait forever on a queue nothing
        serves. So each process makes its own on first use (`_each`)."""
        self._pid = os.getpid()
        self._client = httpx.Client(
            timeout=self._timeout,
            headers={"Authorization": f"Bearer {self._token}"},
            limits=httpx.Limits(max_keepalive_connections=4 * len(self.urls), max_connections=16 * len(self.urls)),
        )
        self._pool = ThreadPoolExecutor(max_workers=4 * len(self.urls), thread_name_prefix="shard")

    def _each(self, ask: Callable[[str], httpx.Response]) -> list[httpx.Response]:
        """Every shard's answer, asked at once; CatalogError naming the first that failed."""

        def one(url: str) -> httpx.Response:
            try:
                response = ask(url)
            except httpx.HTTPError as exc:
                raise CatalogError(f"catalog shard {url} did not answer: {type(exc).__name__}: {exc}") from None
            if response.status_code != 200:
                raise CatalogError(f"catalog shard {url} answered {response.status_code}: {response.text[:200]}")
            return response

        if self._pid != os.getpid():
            with self._owning:
                if self._pid != os.getpid():
                    self._own()
        try:
            return list(self._pool.map(one, self.urls))
        except CatalogError:
            self._info = None  # the next check asks every shard again
            raise

    def _one_split(self, labels: list[str]) -> None:
        """CatalogError unless shard i of CATALOG_SHARDS answered as shard i of one split into
        as many shards as it lists (see the module docstring)."""
        splits = set()
        for i, (url, label) in enumerate(zip(self.urls, labels)):
            parts = label.split()
            if len(parts) != 3 or parts[1:] != [str(i), str(len(self.urls))]:
                self._info = None
                what = f"shard {parts[1]} of {parts[2]}" if len(parts) == 3 else "not a shard written by catalog --split"
                raise CatalogError(f"catalog shard {url} is {what}, listed as shard {i} of {len(self.urls)} in CATALOG_SHARDS")
            splits.add(parts[0])
        if len(splits) > 1:
            self._info = None
            raise CatalogError(f"catalog shards {self.uri} answer from {len(splits)} different splits (a new split is being picked up)")

    def posting_counts(self, hashes: np.ndarray) -> tuple[np.ndarray, int]:
        """See matcher.Votes: the shards' counts and postings, summed."""
        body = hashes.astype("<u4").tobytes()
        answers = self._each(lambda url: self._client.post(f"{url}/shard/counts", content=body))
        self._one_split([answer.headers.get(SPLIT_HEADER, "") for answer in answers])
        parsed = []
        for url, answer in zip(self.urls, answers):
            try:
                counts = np.frombuffer(answer.content, dtype="<i8")
                postings = int(answer.headers[POSTINGS_HEADER])
            except (KeyError, ValueError) as exc:
                raise CatalogError(f"catalog shard {url} answered counts that do not parse: {exc}") from None
            if len(counts) != len(hashes):
                raise CatalogError(f"catalog shard {url} answered {len(counts)} counts for {len(hashes)} hashes")
            parsed.append((counts, postings))
        return merge_counts(parsed)

    def piles(self, hashes: np.ndarray, frames: np.ndarray, keep: np.ndarray) -> Vote | None:
        """See matcher.Votes: the shards' best piles, merged."""
        if not keep.any():
            return None
        body = encode_piles(hashes, frames, keep)
        answers = self._each(lambda url: self._client.post(f"{url}/shard/piles", content=body))
        votes, labels = [], []
        for url, answer in zip(self.urls, answers):
            try:
                body = answer.json()
                votes.append(vote_from_json(body))
                labels.append(str(body.get("split", "")))
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise CatalogError(f"catalog shard {url} answered a vote that does not parse: {exc}") from None
        self._one_split(labels)
        return merge(votes)

    def info(self) -> list[dict]:
        """Each shard's /shard/info with its url, asked again once INFO_SECONDS old."""
        with self._lock:
            if self._info is None or time.monotonic() - self._info_at >= INFO_SECONDS:
                answers = self._each(lambda url: self._client.get(f"{url}/shard/info"))
                try:
                    self._info = [{"url": url, **a.json()} for url, a in zip(self.urls, answers)]
                except ValueError as exc:
                    raise CatalogError(f"catalog shards {self.uri}: /shard/info is not JSON: {exc}") from None
                self._info_at = time.monotonic()
            return self._info

    def require_songs(self) -> None:
        """As Catalog.require_songs: shards that hold no song at all could only answer "no match"."""
        if not any(shard.get("songs") for shard in self.info()):
            raise CatalogError(f"catalog shards {self.uri}: no shard holds any song (split a catalog into them first)")

    def state(self) -> dict:
        """What /health reports: every shard's songs, postings and generation."""
        return {"shards": self.info()}

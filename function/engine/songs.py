"""What a catalog holds and hands out, apart from its index: its songs, a song ready to be added,
a shard's place in the catalog it was split from, and the error a catalog raises. Their own
module, so that what reads them (the matcher, shards, the memory check, registration) needs
nothing of the catalog's code."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


class CatalogError(RuntimeError):
    """The catalog is missing, corrupt or incompatible; the message says which and where."""


@dataclass
class Song:
    song_id: str
    title: str
    artist: str
    album: str
    duration_seconds: float
    sources: list[str] = field(default_factory=list)
    hashes: int = 0
    # Another recording of a song registered earlier (another encoding, master or edit): the
    # song_id of that song, which a match names; None for a song's first version.
    version_of: str | None = None

    def public(self) -> dict:
        d = asdict(self)
        d.pop("hashes")
        return d


@dataclass
class Fingerprinted:
    """A song ready to be added: its metadata and its landmarks."""

    song: Song
    hashes: np.ndarray
    frames: np.ndarray


@dataclass(frozen=True)
class ShardOf:
    """A shard's place in the catalog it was split from (function/engine/shards.py): the split's
    id, which all shards of one split share and a re-split changes, its index among `of`
    shards, and each of its songs' index in the whole catalog, so that its votes name and order
    songs as that catalog would."""

    split: str
    index: int
    of: int
    positions: list[int]

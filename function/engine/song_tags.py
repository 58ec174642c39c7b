"""Title, artist and album of an audio file: its tags, else an `Artist - Title` file name."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Tags:
    title: str
    artist: str
    album: str


def _first(tags: object, key: str) -> str:
    try:
        value = tags[key]  # type: ignore[index]
    except (KeyError, ValueError, TypeError):
        return ""
    if isinstance(value, list):
        value = value[0] if value else ""
    return str(value).strip()


def read_tags(path: str) -> Tags:
    title = artist = album = ""
    try:
        import mutagen

        audio = mutagen.File(path, easy=True)
        if audio is not None and audio.tags is not None:
            title, artist, album = (_first(audio.tags, k) for k in ("title", "artist", "album"))
    except Exception:  # noqa: BLE001 - tags are a nicety; a broken tag block must not reject audio
        pass
    stem = Path(path).stem
    if not title:
        guess_artist, sep, guess_title = stem.partition(" - ")
        if sep:
            title, artist = guess_title.strip(), artist or guess_artist.strip()
        else:
            title = stem
    return Tags(title=title, artist=artist or "Unknown artist", album=album)

"""Where a catalog lives: a local directory, or `gs://bucket/prefix` mirrored to a local cache.

The catalog code always works on local files (so numpy can memory-map them); a Cloud Storage
location downloads catalog.json into its mirror on `fetch`, then the segments it names that the
mirror does not hold yet on `mirror` (a segment is written once, so a reload downloads only the
new ones), and uploads what changed when saved. The google-cloud-storage import happens only for
a gs:// URI, so the core needs no cloud SDK.

Both answer `version()`: a cheap token that changes whenever catalog.json is replaced (a stat
locally, one metadata read of catalog.json on Cloud Storage), which is how a running process
notices a new generation without reading the catalog again.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Iterable

from function.engine.memory_limit import check_fits, instance_memory_bytes, needed_bytes

# What `version()` answers: equal tokens mean the same catalog.json.
Version = tuple[int, ...]


class LocalLocation:
    def __init__(self, path: str) -> None:
        self.uri = path
        self.local_dir = Path(path)

    def version(self) -> Version | None:
        """catalog.json's inode, size and modification time; None if there is none. A save
        renames a new file over it (a new inode), and a copy over it changes its mtime."""
        try:
            st = os.stat(self.local_dir / "catalog.json")
        except FileNotFoundError:
            return None
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def fetch(self) -> Version | None:
        """The files are already here: the version of the catalog.json about to be read."""
        return self.version()

    def mirror(self, segments: Iterable[str]) -> None:
        """The segments are already here."""

    def push(self, relative_paths: Iterable[str], deleted: Iterable[str] = ()) -> None:
        """Files are already in place locally."""


class GcsLocation:
    def __init__(self, uri: str, memory_limit: int | None = None) -> None:
        """`memory_limit`: the bytes the mirror and the catalog loaded from it must fit in
        (`mirror` refuses a catalog that would not); by default this instance's limit."""
        from google.cloud import storage

        bucket_name, _, prefix = uri[len("gs://") :].partition("/")
        if not bucket_name:
            raise ValueError(f"catalog URI {uri!r} names no bucket")
        self.uri = uri
        self._prefix = prefix.strip("/")
        self._bucket = storage.Client().bucket(bucket_name)
        self.local_dir = Path(tempfile.mkdtemp(prefix="catalog-"))
        self.memory_limit = instance_memory_bytes() if memory_limit is None else memory_limit
        # The mirror goes with the last catalog using it (a failed load, a replaced catalog):
        # Cloud Run's /tmp is memory. Files still mapped stay readable until unmapped.
        weakref.finalize(self, shutil.rmtree, self.local_dir, True)

    def _name(self, relative: str) -> str:
        return f"{self._prefix}/{relative}" if self._prefix else relative

    def version(self) -> Version | None:
        """catalog.json's object generation (Cloud Storage gives each write a new one): one
        metadata read, a Class B operation; None if there is no catalog."""
        blob = self._bucket.get_blob(self._name("catalog.json"))
        return None if blob is None else (blob.generation,)

    def fetch(self) -> Version | None:
        """Download catalog.json into the mirror; its version (read before it, so a change
        meanwhile is seen at the next check), None if there is no catalog."""
        from google.api_core.exceptions import NotFound

        version = self.version()
        if version is None:
            return None
        try:
            data = self._bucket.blob(self._name("catalog.json")).download_as_bytes()
        except NotFound:
            return None
        (self.local_dir / "catalog.json.part").write_bytes(data)
        os.replace(self.local_dir / "catalog.json.part", self.local_dir / "catalog.json")
        return version

    def mirror(self, segments: Iterable[str]) -> None:
        """Download the files of these segments that the mirror lacks (or holds at another size),
        and delete the mirror's other segments.

        Each file is downloaded beside its target and renamed over it: the catalog loaded before
        may still have the mirror's files memory-mapped, which unlinking leaves intact and
        truncating would crash (SIGBUS). A segment deleted from the bucket while it downloads
        leaves its files missing, which the catalog answers by reading the manifest again.
        """
        from google.api_core.exceptions import NotFound

        names = set(segments)
        blobs = [blob for name in names for blob in self._bucket.list_blobs(prefix=self._name(name) + "/")]
        # Before any download: an instance that runs out of memory mid-download is killed
        # without a word, a refusal says what the catalog needs (/health answers it as a 503,
        # and a reload refused leaves the loaded catalog serving). The segments a reload drops
        # count too: the loaded catalog keeps them mapped, in memory, until it is let go.
        dropped = [f for d in self.local_dir.iterdir() if d.is_dir() and d.name not in names for f in d.iterdir()]
        files = sum(blob.size for blob in blobs) + sum(f.stat().st_size for f in dropped)
        manifest = (self.local_dir / "catalog.json").stat().st_size
        check_fits(self.uri, needed_bytes(files, len(names), manifest), self.memory_limit)
        for blob in blobs:
            target = self.local_dir / blob.name[len(self._name("")) :].lstrip("/")
            if target.is_file() and target.stat().st_size == blob.size:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                blob.download_to_filename(str(target) + ".part")
            except NotFound:
                continue
            os.replace(str(target) + ".part", target)
        for stale in self.local_dir.iterdir():
            if stale.is_dir() and stale.name not in names:
                shutil.rmtree(stale, ignore_errors=True)

    def push(self, relative_paths: Iterable[str], deleted: Iterable[str] = ()) -> None:
        """Upload arrays before the manifest, so a reader never sees a manifest without its data."""
        paths = list(relative_paths)
        for rel in sorted(paths, key=lambda p: p == "catalog.json"):
            self._bucket.blob(self._name(rel)).upload_from_filename(str(self.local_dir / rel))
        for rel in deleted:
            for blob in self._bucket.list_blobs(prefix=self._name(rel)):
                blob.delete()


def location_for(uri: str) -> LocalLocation | GcsLocation:
    return GcsLocation(uri) if uri.startswith("gs://") else LocalLocation(uri)

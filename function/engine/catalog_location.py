"""Where a catalog lives: a local directory, or `gs://bucket/prefix` mirrored to a local cache.

The catalog code always works on local files (so numpy can memory-map them); a Cloud Storage
location downloads the prefix once when opened and uploads what changed when saved. The
google-cloud-storage import happens only for a gs:// URI, so the core needs no cloud SDK.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Iterable


class LocalLocation:
    def __init__(self, path: str) -> None:
        self.uri = path
        self.local_dir = Path(path)

    def exists(self) -> bool:
        return (self.local_dir / "catalog.json").is_file()

    def push(self, relative_paths: Iterable[str], deleted: Iterable[str] = ()) -> None:
        """Files are already in place locally."""


class GcsLocation:
    def __init__(self, uri: str) -> None:
        from google.cloud import storage

        bucket_name, _, prefix = uri[len("gs://") :].partition("/")
        if not bucket_name:
            raise ValueError(f"catalog URI {uri!r} names no bucket")
        self.uri = uri
        self._prefix = prefix.strip("/")
        self._bucket = storage.Client().bucket(bucket_name)
        self.local_dir = Path(tempfile.mkdtemp(prefix="catalog-"))
        self._pulled = False

    def _name(self, relative: str) -> str:
        return f"{self._prefix}/{relative}" if self._prefix else relative

    def exists(self) -> bool:
        self._pull()
        return (self.local_dir / "catalog.json").is_file()

    def _pull(self) -> None:
        """Download catalog.json, then the one generation of arrays it names."""
        if self._pulled:
            return
        self._pulled = True
        manifest = self._bucket.blob(self._name("catalog.json"))
        if not manifest.exists():
            return
        import json

        data = manifest.download_as_bytes()
        generation = json.loads(data)["generation"]
        for blob in self._bucket.list_blobs(prefix=self._name(generation) + "/"):
            target = self.local_dir / blob.name[len(self._name("")) :].lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            blob.download_to_filename(str(target))
        (self.local_dir / "catalog.json").write_bytes(data)

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

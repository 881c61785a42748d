"""The cache of built artefacts (exported, quantised, compiled models), keyed and checksummed."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class ArtifactCache:
    """Built artefacts keyed by everything that changes them; verified by checksum before reuse.

    Without --cache-path the entry lives in a temporary directory and nothing is reused.
    """

    def __init__(self, root: str | None, key: dict):
        self.persistent = root is not None
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
        base = Path(root) if root else Path(tempfile.mkdtemp(prefix="cnnbench-build-"))
        # A shared entry (engines/table.shares_builds) has no precision nor batch size in its key: one per model.
        scope = f"-{key['precision']}-b{key['batch_size']}" if "batch_size" in key else ""
        self.dir = base / f"{key['model']}-{key['engine']}{scope}-{digest}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.key = key
        self.notes: list[str] = []
        self._manifest_path = self.dir / "manifest.json"

    def _manifest(self) -> dict:
        try:
            return json.loads(self._manifest_path.read_text())
        except (OSError, json.JSONDecodeError):
            return {"key": self.key, "files": {}}

    def lookup(self, name: str) -> Path | None:
        """The artefact if present and intact; a corrupt one is deleted, noted, and reported as absent."""
        path = self.dir / name
        expected = self._manifest()["files"].get(name)
        if not self.persistent or expected is None or not path.exists():
            return None
        if sha256_file(path) != expected:
            self.notes.append(f"cache entry {path} is corrupt (checksum mismatch); rebuilding it")
            path.unlink()
            return None
        return path

    def record(self, name: str) -> None:
        manifest = self._manifest()
        manifest["files"][name] = sha256_file(self.dir / name)
        self._write(manifest)

    def record_folder(self, name: str) -> None:
        """Checksum every file under the folder `name`: files a library writes itself (TensorRT's engines)."""
        manifest = self._manifest()
        manifest.setdefault("folders", {})[name] = self._folder_sums(name)
        self._write(manifest)

    def verify_folder(self, name: str) -> bool:
        """True when the folder holds exactly its recorded files, intact. Otherwise (a file changed, missing or
        unrecorded, a folder never recorded) it is deleted and noted, so that its library rebuilds it."""
        folder = self.dir / name
        if not folder.exists():
            return False
        expected = self._manifest().get("folders", {}).get(name)
        if self.persistent and expected is not None and self._folder_sums(name) == expected:
            return True
        why = "is corrupt (checksum mismatch)" if expected is not None else "is not in the cache manifest (a build cut short)"
        self.notes.append(f"cache entry {folder} {why}; rebuilding it")
        shutil.rmtree(folder)
        return False

    def _folder_sums(self, name: str) -> dict[str, str]:
        folder = self.dir / name
        return {path.relative_to(folder).as_posix(): sha256_file(path) for path in sorted(folder.rglob("*")) if path.is_file()}

    def _write(self, manifest: dict) -> None:
        tmp = self._manifest_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(manifest, indent=1, default=str))
        os.replace(tmp, self._manifest_path)

    def close(self) -> None:
        if not self.persistent:
            shutil.rmtree(self.dir.parent, ignore_errors=True)

"""Content hashes used as lineage: adapter, base weights, files, data directories."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
# Directories DVC itself never counts as data.
_NOT_DATA = {".git", ".dvc", ".hg"}


def file_digest(path: str | Path, algorithm: str = "sha256", chunk: int = 1 << 20) -> str:
    """Hex digest of one file, read in chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 of one file."""
    return file_digest(path)


class FileHashes:
    """File digests remembered by path, size, inode and mtime, in one JSON file.

    A file whose size, inode and modification time (ns) are those recorded is not read again;
    DVC trusts the same facts for its own cache. `path=None` remembers nothing. Saved whole to a
    temporary file and renamed, so a concurrent reader sees the old or the new table, never half.
    """

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else None
        self.table: dict[str, list] = {}
        self.changed = False
        if self.path and self.path.is_file():
            try:
                self.table = json.loads(self.path.read_text())
            except (OSError, ValueError):
                self.table = {}  # a damaged cache only costs a re-read

    def digest(self, path: Path, algorithm: str = "sha256") -> str:
        st = path.stat()
        stamp = [st.st_size, st.st_ino, st.st_mtime_ns]
        key = f"{algorithm}:{path.resolve()}"
        known = self.table.get(key)
        if isinstance(known, list) and known[:3] == stamp and len(known) == 4:
            return known[3]
        value = file_digest(path, algorithm)
        self.table[key] = [*stamp, value]
        self.changed = True
        return value

    def save(self) -> None:
        if not (self.path and self.changed):
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".file-hashes-")
            with os.fdopen(fd, "w") as f:
                json.dump(self.table, f)
            os.replace(tmp, self.path)
        except OSError:
            return  # a table that cannot be written only costs a re-read next time
        self.changed = False


def files_sha256(paths: list[Path], root: Path, hashes: FileHashes | None = None) -> str:
    """One hash over several files: each file's path relative to `root` and its content hash."""
    hashes = hashes or FileHashes()
    h = hashlib.sha256()
    for p in sorted(paths, key=lambda p: p.relative_to(root).as_posix()):
        h.update(p.relative_to(root).as_posix().encode())
        h.update(b"\0")
        h.update(hashes.digest(p).encode())
        h.update(b"\n")
    return h.hexdigest()


def weights_sha256(model_dir: str | Path, hashes: FileHashes | None = None) -> str:
    """Hash of a model directory's weight files (names and contents); config files excluded."""
    root = Path(model_dir)
    weights = [p for p in root.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES]
    if not weights:
        raise FileNotFoundError(f"no weight files in {root}")
    return files_sha256(weights, root, hashes)


def dvc_dir_md5(data_dir: str | Path, hashes: FileHashes | None = None) -> str:
    """The md5 `dvc add` (DVC 3, `hash: md5`) records for a directory: md5 of the JSON list of
    {"md5", "relpath"} of its files, sorted by path, with ".dir" appended.

    .dvcignore is not read: where it hides files, this differs from DVC's md5, which callers
    compare with the recorded one before trusting it.
    """
    hashes = hashes or FileHashes()
    root = Path(data_dir)
    entries = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if d not in _NOT_DATA]
        for name in filenames:
            path = Path(dirpath) / name
            relpath = path.relative_to(root).as_posix()
            entries.append({"md5": hashes.digest(path, "md5"), "relpath": relpath})
    entries.sort(key=lambda e: e["relpath"])
    listing = json.dumps(entries, sort_keys=True).encode("utf-8")
    return hashlib.md5(listing).hexdigest() + ".dir"

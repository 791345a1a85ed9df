"""Content hashes used as lineage: adapter, base weights, files."""

from __future__ import annotations

import hashlib
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of one file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def files_sha256(paths: list[Path], root: Path) -> str:
    """One hash over several files: each file's path relative to `root` and its content hash."""
    h = hashlib.sha256()
    for p in sorted(paths, key=lambda p: p.relative_to(root).as_posix()):
        h.update(p.relative_to(root).as_posix().encode())
        h.update(b"\0")
        h.update(file_sha256(p).encode())
        h.update(b"\n")
    return h.hexdigest()


def weights_sha256(model_dir: str | Path) -> str:
    """Hash of a model directory's weight files (names and contents); config files excluded."""
    root = Path(model_dir)
    weights = [p for p in root.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES]
    if not weights:
        raise FileNotFoundError(f"no weight files in {root}")
    return files_sha256(weights, root)

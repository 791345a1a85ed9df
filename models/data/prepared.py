"""A split tokenized once, into memory-mapped files keyed by what made them.

Every stage that needs a split's tokens (the input checks, training on every rank, evaluation)
asks `prepare_split` for it. The first to ask tokenizes the file into `<cache>/<key>/`: int32
token ids and labels back to back (`ids.i32`, `labels.i32`), where each example starts
(`offsets.i64`), its line in the file (`lines.i64`) and a 64-bit digest of its content
(`digests.u64`, for counting eval examples that repeat train ones), then `meta.json`, written
last, with the counts and the sha256 of every file. Later asks map those files: memory does not
grow with the data, and an unchanged rerun tokenizes nothing.

The key (`preparation_key`) is a sha256 over everything that decides the tokens and nothing
else: the split file's md5, the tokenizer as serialised (vocabulary, merges, normalizer, special
tokens, the chat template, EOS/pad, the BOS it adds), data.format and the field names, role
names, train_on that format reads, data.max_seq_len and data.too_long, and PREPARED_VERSION (the
version of this code's output: bump it when the tokens it writes change). A path, a config name
or a time never enters it, so new data at the same path is prepared again.

One process prepares, the others wait: a file lock (`<key>.lock`) is held while a prepared
split is checked or built, so ranks of one training (or runs side by side) map the same files.
A build goes to a scratch directory that is renamed into place once complete; a directory whose
meta.json is missing, unreadable or disagrees with its files (a killed run, a full disk, a file
changed by hand) is removed and built again, never used.

Tokenizing (models.data.encoder) is linear in a conversation's turns and uses the machine's
cores.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.config.specs import DataSpec
from models.data.chat import bos_prefix
from models.data.encoder import Chunk, chunks
from models.data.formats import DataError
from models.data.splits import SplitReport
from models.hashing import file_digest, file_sha256

PREPARED_VERSION = "1"
FILES = ("ids.i32", "labels.i32", "offsets.i64", "lines.i64", "digests.u64")
META = "meta.json"
_DTYPES = {"i32": np.int32, "i64": np.int64, "u64": np.uint64}


def default_cache_dir() -> Path:
    """Where prepared splits live: $LORAFLOW_PREPARED_DIR, else loraflow/prepared under the
    user's cache directory ($XDG_CACHE_HOME or ~/.cache). Safe to delete at any time."""
    if os.environ.get("LORAFLOW_PREPARED_DIR"):
        return Path(os.environ["LORAFLOW_PREPARED_DIR"])
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "loraflow" / "prepared"


# ----------------------------------------------------------------------------------------------
# The key


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of everything in a tokenizer that decides tokens: its serialised pipeline (fast
    tokenizers) or saved files (others), its chat template, special tokens and added BOS."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:  # a slow tokenizer: its files as it would save them
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            tokenizer.save_pretrained(tmp)
            for f in sorted(Path(tmp).iterdir()):
                h.update(f.name.encode() + b"\0" + f.read_bytes())
    extra = {
        "chat_template": getattr(tokenizer, "chat_template", None),
        "special": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
        "eos": tokenizer.eos_token_id,
        "bos": bos_prefix(tokenizer),
        "class": type(tokenizer).__name__,
    }
    h.update(json.dumps(extra, sort_keys=True).encode())
    return h.hexdigest()


def data_fields(data: DataSpec) -> dict:
    """The DataSpec fields that decide the tokens of data.format (and only those)."""
    fields = {"format": data.format, "max_seq_len": data.max_seq_len, "too_long": data.too_long}
    if data.format == "chat":
        fields |= {
            "messages_field": data.messages_field,
            "role_field": data.role_field,
            "content_field": data.content_field,
            "role_names": dict(sorted(data.role_names.items())),
            "train_on": data.train_on,
            # the template's text is in the tokenizer fingerprint, not its file name
        }
    elif data.format == "text":
        fields["text_field"] = data.text_field
    elif data.format == "prompt_completion":
        fields |= {"prompt_field": data.prompt_field, "completion_field": data.completion_field}
    return fields


def key_parts(path: str | Path, data: DataSpec, tokenizer) -> dict:
    """What the key of a split covers, readable (recorded in meta.json)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: split file not found")
    return {
        "version": PREPARED_VERSION,
        "file_md5": file_digest(path, "md5"),
        "suffix": path.suffix.lower(),  # the extension decides how the bytes are read
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "data": data_fields(data),
    }


def preparation_key(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


# ----------------------------------------------------------------------------------------------
# The prepared split


@dataclass
class PreparedSplit:
    """A prepared split, mapped: example i's tokens are ids[offsets[i]:offsets[i + 1]]."""

    path: Path  # its directory in the cache
    key: str
    source: str  # the split file it was made from
    truncated: int
    ids: np.ndarray
    labels: np.ndarray
    offsets: np.ndarray
    lines: np.ndarray
    digests: np.ndarray
    meta: dict  # meta.json: the key's parts, counts, file digests
    reused: bool = False  # mapped from an earlier preparation

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def tokens(self) -> int:
        return int(self.offsets[-1])

    def lengths(self) -> np.ndarray:
        """Tokens per example (packing and batching plan from these alone)."""
        return np.diff(self.offsets)

    def feature(self, i: int) -> dict[str, list[int]]:
        """Example i as the collators take it: lists of ints."""
        start, end = int(self.offsets[i]), int(self.offsets[i + 1])
        return {
            "input_ids": self.ids[start:end].tolist(),
            "labels": self.labels[start:end].tolist(),
        }


def _map(directory: Path, meta: dict, reused: bool) -> PreparedSplit:
    arrays = {}
    for name in FILES:
        dtype = _DTYPES[name.rsplit(".", 1)[1]]
        size = (directory / name).stat().st_size
        # np.memmap refuses an empty file; an empty array is as good
        arrays[name.split(".")[0]] = (
            np.memmap(directory / name, dtype=dtype, mode="r") if size else np.zeros(0, dtype=dtype)
        )
    return PreparedSplit(
        path=directory,
        key=meta["key"],
        source=meta["source"],
        truncated=meta["truncated"],
        meta=meta,
        reused=reused,
        **arrays,
    )


def read_complete(directory: Path) -> dict | None:
    """meta.json of a prepared directory whose files are all there, whole and unchanged (their
    sizes and sha256 as meta.json records them); None for anything less."""
    try:
        meta = json.loads((directory / META).read_text())
        files = meta["files"]
        for name in FILES:
            f = directory / name
            if f.stat().st_size != files[name]["bytes"] or file_sha256(f) != files[name]["sha256"]:
                return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return meta


class _Writer:
    """Appends chunks to the files of a directory being built."""

    def __init__(self, directory: Path):
        directory.mkdir(parents=True)
        self.dir = directory
        self.handles = {name: (directory / name).open("wb") for name in FILES}
        self.handles["offsets.i64"].write(np.zeros(1, np.int64).tobytes())
        self.total = 0
        self.examples = 0
        self.slow = 0

    def add(self, chunk: Chunk) -> None:
        self.handles["ids.i32"].write(chunk.ids.tobytes())
        self.handles["labels.i32"].write(chunk.labels.tobytes())
        self.handles["offsets.i64"].write((self.total + np.cumsum(chunk.lengths)).tobytes())
        self.handles["lines.i64"].write(chunk.lines.tobytes())
        self.handles["digests.u64"].write(chunk.digests.tobytes())
        self.total += int(chunk.lengths.sum())
        self.examples += len(chunk.lengths)

    def finish(self, meta: dict) -> None:
        for f in self.handles.values():
            f.flush()
            os.fsync(f.fileno())
            f.close()
        meta["files"] = {
            name: {"bytes": (self.dir / n).stat().st_size, "sha256": file_sha256(self.dir / n)}
            for name in FILES
            for n in [name]
        }
        (self.dir / META).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")

    def abandon(self) -> None:
        for f in self.handles.values():
            f.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def prepare_split(
    path: str | Path,
    data: DataSpec,
    tokenizer,
    *,
    cache_dir: str | Path | None = None,
    workers: int | None = None,
) -> PreparedSplit:
    """The split at `path` tokenized as data says with `tokenizer` (prepared by
    models.data.chat.prepare_tokenizer), mapped from the cache; prepared first where no
    complete preparation with the same key is there (see the module docstring).

    Every problem with the data is a DataError naming file:line (too_long=reject: how many
    examples are too long and the first one's line), raised before anything is kept.
    workers: processes that tokenize (default: one per core for files above PARALLEL_BYTES).
    """
    from filelock import FileLock

    path = Path(path)
    parts = key_parts(path, data, tokenizer)
    key = preparation_key(parts)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    final = root / key
    with FileLock(str(root / f"{key}.lock")):
        if final.exists():
            meta = read_complete(final)
            if meta is not None:
                return _map(final, meta, reused=True)
            shutil.rmtree(final)  # cut short or damaged: never used, built again
        scratch = root / f"{key}.partial-{os.getpid()}"
        for fast in (True, False):
            if scratch.exists():
                shutil.rmtree(scratch)
            writer = _Writer(scratch)
            try:
                truncated = _build(path, data, tokenizer, writer, workers, fast)
            except _Mismatch:
                writer.abandon()  # the fast path differs here: every conversation by chat_features
                continue
            except BaseException:
                writer.abandon()
                raise
            break
        try:
            writer.finish(
                {
                    "key": key,
                    "parts": parts,
                    "source": str(path),
                    "examples": writer.examples,
                    "tokens": writer.total,
                    "truncated": truncated,
                    "by_chat_features": writer.slow,
                }
            )
        except BaseException:
            writer.abandon()
            raise
        os.replace(scratch, final)
        return _map(final, json.loads((final / META).read_text()), reused=False)


# ----------------------------------------------------------------------------------------------
# Tokenizing


def _build(
    path: Path, data: DataSpec, tokenizer, writer: _Writer, workers: int | None, fast: bool
) -> int:
    """Tokenize the split into writer; returns how many examples were truncated."""
    long_lines: list[int] = []
    for chunk in chunks(path, data, tokenizer, workers, fast):
        if chunk.mismatch:
            raise _Mismatch(chunk.mismatch)
        writer.add(chunk)
        writer.slow += chunk.slow
        long_lines += chunk.long_lines
    if writer.examples == 0:
        raise DataError(f"{path}: split is empty")
    if long_lines and data.too_long == "reject":
        raise DataError(
            f"{path}:{long_lines[0]}: {len(long_lines)} example(s) longer than "
            f"data.max_seq_len={data.max_seq_len} tokens (set data.too_long=truncate or raise "
            "the limit)"
        )
    return len(long_lines)


class _Mismatch(Exception):
    pass


# ----------------------------------------------------------------------------------------------
# What the checks report


def prepared_reports(
    data: DataSpec, tokenizer, *, cache_dir: str | Path | None = None
) -> list[SplitReport]:
    """Both splits prepared (so training maps them) and reported: examples, the eval examples
    that repeat train ones (by content digest), truncation warnings, the preparation key."""
    data_dir = Path(data.path)
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: data directory not found")
    reports = []
    splits = {}
    for name, path in (("train", data.train_path), ("eval", data.eval_path)):
        split = prepare_split(path, data, tokenizer, cache_dir=cache_dir)
        splits[name] = split
        report = SplitReport(name, path, len(split), prepared_key=split.key)
        if split.truncated:
            report.warnings.append(
                f"{split.truncated} example(s) longer than data.max_seq_len={data.max_seq_len} "
                "tokens will be truncated"
            )
        reports.append(report)
    dups = int(np.isin(splits["eval"].digests, splits["train"].digests).sum())
    if dups:
        reports[1].duplicates_of_train = dups
        reports[1].warnings.insert(0, f"{dups} eval examples also appear in the train split")
    return reports


def eval_features(data: DataSpec, tokenizer, n: int) -> list[dict[str, list[int]]]:
    """The first n eval examples' tokens as evaluation scores them (too long: truncated). The
    check stage's preparation where it holds them: with too_long=reject one that passed has no
    example to cut, so its tokens are the truncated ones."""
    try:
        split = prepare_split(data.eval_path, data, tokenizer)
    except DataError:
        if data.too_long == "truncate":
            raise
        truncating = DataSpec(**{**data.to_dict(), "too_long": "truncate"})
        split = prepare_split(data.eval_path, truncating, tokenizer)
    return [split.feature(i) for i in range(min(n, len(split)))]

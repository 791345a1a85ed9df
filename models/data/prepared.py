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

Chat, linear in the turns: `chat_features` (models.data.chat) renders and tokenizes every prefix
of a conversation, work that grows with the square of its turns. Here a conversation is rendered
once and tokenized once, plus once more cut at its turn boundaries:
- the boundaries come from rendering the conversation's *shape* (its roles, with placeholder
  contents) once per distinct shape, with and without each prefix; the real conversation's
  render must equal that shape's render with the contents filled in, so the placeholder's
  boundaries are the real ones (a template that rewrites content, e.g. trims it, fails this for
  the conversations it changes);
- the rendered text is tokenized whole, and also cut at the boundaries piece by piece; the
  pieces' tokens, concatenated, must equal the whole's: then the tokens before a boundary are the
  tokens of the text before it, which is what chat_features checks by tokenizing the prefix.
A conversation that fails either check goes through chat_features itself (the same tokens, or the
same one-line refusal), and a sample of every split (the first conversations, then every 1024th)
is compared with chat_features; a difference prepares the whole split that way.

Tokenizing uses the machine's cores: a file above PARALLEL_BYTES is cut into chunks of rows that
worker processes (spawned, one per core) parse, check, render and tokenize, while this process
writes their results in file order.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.config.specs import DataSpec
from models.data.chat import bos_prefix, chat_features, render, with_bos
from models.data.formats import (
    DataError,
    Example,
    jsonl_lines,
    parse_jsonl_line,
    read_rows,
    to_example,
)
from models.data.splits import SplitReport

PREPARED_VERSION = "1"
CHUNK_ROWS = 2000
PARALLEL_BYTES = 8 << 20  # below this a split is tokenized in this process (spawning costs ~2 s)
FILES = ("ids.i32", "labels.i32", "offsets.i64", "lines.i64", "digests.u64")
META = "meta.json"
_DTYPES = {"i32": np.int32, "i64": np.int64, "u64": np.uint64}
_SAMPLE_EVERY, _SAMPLE_FIRST = 1024, 16


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


def file_md5(path: Path) -> str:
    h = hashlib.md5()
    with path.open("rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def key_parts(path: str | Path, data: DataSpec, tokenizer) -> dict:
    """What the key of a split covers, readable (recorded in meta.json)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: split file not found")
    return {
        "version": PREPARED_VERSION,
        "file_md5": file_md5(path),
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


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


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
            if f.stat().st_size != files[name]["bytes"] or _file_sha256(f) != files[name]["sha256"]:
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

    def add(self, chunk: _Chunk) -> None:
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
            name: {"bytes": (self.dir / n).stat().st_size, "sha256": _file_sha256(self.dir / n)}
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


@dataclass
class _Chunk:
    ids: np.ndarray
    labels: np.ndarray
    lengths: np.ndarray
    lines: np.ndarray
    digests: np.ndarray
    long_lines: list[int]
    slow: int = 0  # conversations that went through chat_features
    mismatch: str = ""  # a sampled conversation whose fast tokens differ from chat_features'


def _build(
    path: Path, data: DataSpec, tokenizer, writer: _Writer, workers: int | None, fast: bool
) -> int:
    """Tokenize the split into writer; returns how many examples were truncated."""
    long_lines: list[int] = []
    for chunk in _chunks(path, data, tokenizer, workers, fast):
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


def _raw_chunks(path: Path) -> Iterator[tuple[bool, list]]:
    """(is_jsonl, [(line, raw)]) chunks of CHUNK_ROWS rows: JSONL lines as bytes (parsed by the
    worker), other file types as records."""
    rows: list = []
    jsonl = path.suffix.lower() == ".jsonl"
    source = jsonl_lines(path) if jsonl else read_rows(path)
    for row in source:
        rows.append(row)
        if len(rows) == CHUNK_ROWS:
            yield jsonl, rows
            rows = []
    if rows:
        yield jsonl, rows


def _chunks(path: Path, data: DataSpec, tokenizer, workers: int | None, fast: bool):
    if workers is None:
        workers = (os.cpu_count() or 1) if path.stat().st_size > PARALLEL_BYTES else 1
    if workers <= 1:
        encoder = _Encoder(path, data, tokenizer, fast)
        for jsonl, rows in _raw_chunks(path):
            yield encoder.encode(jsonl, rows)
        return
    import multiprocessing

    with ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(path, data.to_dict(), tokenizer, fast),
    ) as pool:
        # At most 2 chunks per worker in flight: memory stays bounded whatever the file size.
        pending = []
        for jsonl, rows in _raw_chunks(path):
            pending.append(pool.submit(_encode_in_worker, jsonl, rows))
            if len(pending) >= 2 * workers:
                yield pending.pop(0).result()
        for future in pending:
            yield future.result()


_WORKER: dict = {}


def _init_worker(path, data: dict, tokenizer, fast: bool) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the processes are the parallelism
    _WORKER["encoder"] = _Encoder(Path(path), DataSpec.from_dict(data), tokenizer, fast)


def _encode_in_worker(jsonl: bool, rows: list) -> _Chunk:
    return _WORKER["encoder"].encode(jsonl, rows)


def _digest(example: Example) -> int:
    return int.from_bytes(hashlib.blake2b(example.key().encode(), digest_size=8).digest(), "little")


_PLACEHOLDER = "\ue000{}\ue001"
_PLACEHOLDER_RE = re.compile("\ue000(\\d+)\ue001")


@dataclass
class _Shape:
    """A conversation shape's renders with placeholder contents: the whole as (literal | message
    index) parts, and per assistant turn where the text before it (None: the turn opens the
    conversation) and through it end, as (characters of template text, messages whose contents
    precede the end). Each of those renders is a prefix of the whole's, so with the real
    contents filled in it is a prefix of the real whole."""

    whole: list
    turns: list[tuple[tuple[int, list[int]] | None, tuple[int, list[int]]]]


class _Encoder:
    """Turns rows of one split into token arrays (the same tokens as models.data.splits)."""

    def __init__(self, path: Path, data: DataSpec, tokenizer, fast: bool):
        self.path, self.data, self.tok, self.fast = path, data, tokenizer, fast
        self.prefix = bos_prefix(tokenizer)
        self.eos = tokenizer.eos_token_id
        self.shapes: dict[tuple[str, ...], _Shape | None] = {}
        # A fast tokenizer's Rust pipeline, called directly: the same ids as tokenizer(texts)
        # (which this call leaves set up: no truncation, no padding), without building a Python
        # dict per text (a quarter of the time on the demo data).
        tokenizer("", add_special_tokens=False)
        self.backend = getattr(tokenizer, "backend_tokenizer", None)

    def ids(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, no special tokens added."""
        if not texts:
            return []
        if self.backend is None:
            return self.tok(texts, add_special_tokens=False)["input_ids"]
        return [e.ids for e in self.backend.encode_batch_fast(texts, add_special_tokens=False)]

    def _examples(self, jsonl: bool, rows: list) -> list[Example]:
        examples = []
        for n, raw in rows:
            obj = parse_jsonl_line(self.path, n, raw) if jsonl else raw
            if obj is not None:
                examples.append(to_example(obj, n, self.path, self.data))
        return examples

    def encode(self, jsonl: bool, rows: list) -> _Chunk:
        examples = self._examples(jsonl, rows)
        mismatch, self.slow = "", 0
        if self.data.format == "chat":
            features, mismatch = self._chat(examples)
        else:
            features = self._plain(examples)
        ids, labels, lengths, long_lines = [], [], [], []
        for ex, (f_ids, f_labels) in zip(examples, features, strict=True):
            if len(f_ids) > self.data.max_seq_len:
                long_lines.append(ex.line)
                f_ids, f_labels = f_ids[: self.data.max_seq_len], f_labels[: self.data.max_seq_len]
            ids += f_ids
            labels += f_labels
            lengths.append(len(f_ids))
        return _Chunk(
            ids=np.array(ids, dtype=np.int32),
            labels=np.array(labels, dtype=np.int32),
            lengths=np.array(lengths, dtype=np.int64),
            lines=np.array([e.line for e in examples], dtype=np.int64),
            digests=np.array([_digest(e) for e in examples], dtype=np.uint64),
            long_lines=long_lines,
            slow=self.slow,
            mismatch=mismatch,
        )

    def _plain(self, examples: list[Example]) -> list[tuple[list[int], list[int]]]:
        """[bos] + prompt + completion + eos, loss on completion and eos (splits.tokenize)."""
        if not examples:
            return []
        prompts = self.ids([e.prompt for e in examples])
        completions = self.ids([e.completion for e in examples])
        out = []
        for p, c in zip(prompts, completions, strict=True):
            p = with_bos(p, self.prefix)
            out.append((p + c + [self.eos], [-100] * len(p) + c + [self.eos]))
        return out

    # --- chat ---------------------------------------------------------------------------------

    def _shape(self, roles: tuple[str, ...], at: str) -> _Shape | None:
        if roles in self.shapes:
            return self.shapes[roles]
        messages = [{"role": r, "content": _PLACEHOLDER.format(k)} for k, r in enumerate(roles)]

        def parts(text: str) -> list | None:
            found = _PLACEHOLDER_RE.findall(text)
            if len(found) != len(set(found)):
                return None  # a content written twice: its boundaries are ambiguous
            pieces = _PLACEHOLDER_RE.split(text)  # literal, index, literal, index, ...
            return [p if i % 2 == 0 else int(p) for i, p in enumerate(pieces)]

        def end(text: str) -> tuple[int, list[int]] | None:
            if not whole_text.startswith(text) or (found := parts(text)) is None:
                return None
            literal = sum(len(p) for p in found if isinstance(p, str))
            return literal, [p for p in found if isinstance(p, int)]

        shape = None
        try:
            whole_text = render(self.tok, messages, at=at)
            whole, turns = parts(whole_text), []
            for i, role in enumerate(roles):
                if role != "assistant" or whole is None:
                    continue
                before = (
                    end(render(self.tok, messages[:i], add_generation_prompt=True, at=at))
                    if i
                    else None
                )
                through = end(render(self.tok, messages[: i + 1], at=at))
                if (i and before is None) or through is None:
                    whole = None
                turns.append((before, through))
            if whole is not None:
                shape = _Shape(whole, turns)
        except DataError:
            pass  # the template refuses this shape: chat_features says so in its words
        self.shapes[roles] = shape
        return shape

    @staticmethod
    def _fill(parts: list, contents: list[str]) -> str:
        return "".join(p if isinstance(p, str) else contents[p] for p in parts)

    def _chat(self, examples: list[Example]):
        """(features, mismatch): each conversation's (ids, labels), fast where its checks hold."""
        plans = [self._plan(ex) if self.fast else None for ex in examples]
        texts, pieces = [], []
        for plan in plans:
            if plan is not None:
                text, cuts, _ = plan
                texts.append(text)
                bounds = [0, *cuts, len(text)]
                pieces += [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
        whole_ids, piece_ids = iter(self.ids(texts)), iter(self.ids(pieces))
        features, mismatch, self.slow = [], "", 0
        for ex, plan in zip(examples, plans, strict=True):
            at = f"{self.path}:{ex.line}"
            feature = None
            if plan is not None:
                raw = next(whole_ids)
                tokens_of_pieces = [next(piece_ids) for _ in range(len(plan[1]) + 1)]
                feature = self._from_pieces(raw, tokens_of_pieces, plan)
            if feature is None:
                self.slow += 1
                feature = chat_features(self.tok, ex.messages, self.data.train_on, self.prefix, at)
            elif ex.line <= _SAMPLE_FIRST or ex.line % _SAMPLE_EVERY == 0:
                want = chat_features(self.tok, ex.messages, self.data.train_on, self.prefix, at)
                if want != feature:
                    mismatch = f"{at}: prepared tokens differ from chat_features"
            features.append(feature)
        return features, mismatch

    def _plan(self, ex: Example):
        """(rendered text, its cuts in characters, per assistant turn (before, through) in
        characters; before None for a conversation that starts with it), or None where the
        shape's cuts do not hold for this conversation (chat_features then decides)."""
        at = f"{self.path}:{ex.line}"
        shape = self._shape(tuple(m["role"] for m in ex.messages), at)
        if shape is None:
            return None
        contents = [m["content"] for m in ex.messages]
        text = render(self.tok, ex.messages, at=at)
        if self._fill(shape.whole, contents) != text:
            # Templates that trim content (Llama-3's): the cuts hold for the trimmed contents.
            contents = [c.strip() for c in contents]
            if self._fill(shape.whole, contents) != text:
                return None  # the template changes content otherwise: chat_features decides
        sizes = [len(c) for c in contents]
        turns = [
            tuple(
                None if e is None else e[0] + sum(sizes[k] for k in e[1]) for e in (before, through)
            )
            for before, through in shape.turns
        ]
        cuts = sorted({c for turn in turns for c in turn if c is not None and 0 < c < len(text)})
        return text, cuts, turns

    def _from_pieces(self, raw: list[int], tokens_of_pieces: list[list[int]], plan):
        """Today's (ids, labels) from the whole text's tokens, where the pieces cut at the turn
        boundaries tokenize to exactly those tokens; else None (chat_features decides)."""
        text, cuts, turns = plan
        if [t for piece in tokens_of_pieces for t in piece] != raw:
            return None
        token_at = {0: 0, len(text): len(raw)}
        count = 0
        for cut, piece in zip(cuts, tokens_of_pieces, strict=False):
            count += len(piece)
            token_at[cut] = count
        ids = with_bos(raw, self.prefix)
        spans = []
        for before_end, through_end in turns:
            before = (
                list(self.prefix)
                if before_end is None
                else with_bos(raw[: token_at[before_end]], self.prefix)
            )
            through = with_bos(raw[: token_at[through_end]], self.prefix)
            if ids[: len(before)] != before or ids[: len(through)] != through:
                return None
            spans.append((len(before), len(through)))
        if self.data.train_on == "all":
            labels = list(ids)
        else:
            labels = [-100] * len(ids)
            for start, end in spans[-1:] if self.data.train_on == "last" else spans:
                labels[start:end] = ids[start:end]
        last_start, last_end = spans[-1]
        if self.eos not in ids[last_start:last_end]:
            ids, labels = ids + [self.eos], labels + [self.eos]
        return ids, labels


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

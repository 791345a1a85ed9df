"""Rows of a split into token arrays a chunk at a time: models.data.splits.tokenize's tokens.

Chat, linear in the turns: `chat_features` (models.data.chat) renders and tokenizes every prefix
of a conversation, work that grows with the square of its turns. Here a conversation is rendered
once and tokenized once, plus once more cut at its turn boundaries:
- the boundaries come from rendering the conversation's *shape* (its roles, with placeholder
  contents) once per distinct shape, with and without each prefix; the real conversation's
  render must equal that shape's render with the contents (or, for templates that trim them
  such as Llama-3's, the trimmed contents) filled in, so the placeholder's boundaries are the
  real ones (a template that rewrites content otherwise fails this for what it rewrites);
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
import os
import re
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

CHUNK_ROWS = 2000
PARALLEL_BYTES = 8 << 20  # below this a split is tokenized in this process (spawning costs ~2 s)
_SAMPLE_EVERY, _SAMPLE_FIRST = 1024, 16


@dataclass
class Chunk:
    """One chunk of rows as token arrays, and what was noticed tokenizing it."""

    ids: np.ndarray
    labels: np.ndarray
    lengths: np.ndarray
    lines: np.ndarray
    digests: np.ndarray
    long_lines: list[int]
    slow: int = 0  # conversations that went through chat_features
    mismatch: str = ""  # a sampled conversation whose fast tokens differ from chat_features'


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


def chunks(path: Path, data: DataSpec, tokenizer, workers: int | None, fast: bool):
    if workers is None:
        workers = (os.cpu_count() or 1) if path.stat().st_size > PARALLEL_BYTES else 1
    if workers <= 1:
        encoder = Encoder(path, data, tokenizer, fast)
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
    _WORKER["encoder"] = Encoder(Path(path), DataSpec.from_dict(data), tokenizer, fast)


def _encode_in_worker(jsonl: bool, rows: list) -> Chunk:
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


class Encoder:
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

    def encode(self, jsonl: bool, rows: list) -> Chunk:
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
        return Chunk(
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

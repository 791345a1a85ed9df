"""Reading a split in any supported file type and shape (`data.format`) into Examples.

File types by extension, one file per split: JSONL (one object per line), JSON (a list of
objects), CSV (a header row) and Parquet. Shapes: prompt_completion, chat (a list of messages,
OpenAI `role`/`content` or ShareGPT `from`/`value` through the field names in DataSpec), alpaca
(instruction/input/output) and text. Every problem is a DataError naming the file, the line or
row, and what is wrong, before anything is trained.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from models.config.specs import DataSpec
from models.errors import LoraflowError

ROLES = ("system", "user", "assistant")
# ShareGPT's own names: recognised without a role_names entry.
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant"}
# The Stanford Alpaca prompt: with and without an input. Serving renders the same text.
ALPACA_PROMPT = (
    "Below is an instruction that describes a task{with_input}. Write a response that "
    "appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n{input}"
    "### Response:\n"
)


class DataError(LoraflowError):
    """A problem with the data; the message names the file and line."""


@dataclass(frozen=True)
class Example:
    """One training example. prompt + completion for every format but chat; chat keeps its
    messages (prompt: "", completion: the last assistant turn, the answer evaluation checks)."""

    prompt: str
    completion: str
    line: int
    messages: tuple[dict[str, str], ...] | None = None

    def key(self) -> str:
        """What makes two examples the same (for counting eval examples that repeat train)."""
        return json.dumps([self.prompt, self.completion, self.messages])

    def request(self) -> str | list[dict[str, str]]:
        """What a user would send to the served model for this example's answer."""
        if self.messages is None:
            return self.prompt
        return list(self.messages[:-1])


def where(path: Path, n: int) -> str:
    """`file:line` for JSONL (as editors say it), `file: row n` for the tabular types."""
    return f"{path}:{n}" if path.suffix.lower() == ".jsonl" else f"{path}: row {n}"


def jsonl_lines(path: Path, block: int = 1 << 24) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes) of a JSONL file, read a block at a time (memory does not grow with
    the file); lines as bytes.splitlines cuts them."""
    n = 0
    rest = b""
    with path.open("rb") as f:
        while chunk := f.read(block):
            chunk = rest + chunk
            cut = chunk.rfind(b"\n") + 1  # every piece ends a line: splitlines of the pieces
            rest = chunk[cut:]  # is splitlines of the whole
            for line in chunk[:cut].splitlines():
                n += 1
                yield n, line
    for line in rest.splitlines():
        n += 1
        yield n, line


def parse_jsonl_line(path: Path, n: int, line_bytes: bytes) -> object | None:
    """One JSONL line's record (None for a blank line); a DataError names file:line."""
    try:
        line = line_bytes.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}:{n}: not valid UTF-8 (byte {e.start})") from None
    if not line.strip():
        return None
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{n}: malformed JSON ({e.msg} at column {e.colno})") from None


def _jsonl_rows(path: Path) -> Iterator[tuple[int, object]]:
    for n, line_bytes in jsonl_lines(path):
        obj = parse_jsonl_line(path, n, line_bytes)
        if obj is not None:
            yield n, obj


def _json_rows(path: Path) -> Iterator[tuple[int, object]]:
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise DataError(
            f"{path}:{e.lineno}: malformed JSON ({e.msg} at column {e.colno})"
        ) from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
    yield from enumerate(data, start=1)


def _table_rows(path: Path) -> Iterator[tuple[int, object]]:
    import pandas as pd

    try:
        if path.suffix.lower() == ".csv":
            # Every cell a string: "007" stays "007", an empty cell is "" (not NaN).
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        else:
            frame = pd.read_parquet(path)
    except Exception as e:  # pandas/pyarrow raise many types; the message is what matters
        raise DataError(f"{path}: cannot read as {path.suffix[1:]} ({e})") from None
    for n, row in enumerate(frame.to_dict(orient="records"), start=1):
        yield n, {k: _plain(v) for k, v in row.items()}


def _plain(value):
    """Parquet lists and structs (numpy arrays, dicts) as plain Python lists and dicts."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def read_rows(path: str | Path) -> Iterator[tuple[int, object]]:
    """(line or row number, record) of one split file, by its extension."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: split file not found")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".parquet"):
        return _table_rows(path)
    return _json_rows(path) if suffix == ".json" else _jsonl_rows(path)


def _text(obj: dict, key: str, at: str, *, empty_ok: bool = False) -> str:
    if key not in obj:
        raise DataError(f"{at}: missing field {key!r}")
    value = obj[key]
    if not isinstance(value, str) or not (value or empty_ok):
        raise DataError(f"{at}: field {key!r} must be a non-empty string")
    return value


def alpaca_prompt(instruction: str, input_text: str = "") -> str:
    """The Alpaca prompt for one instruction (and optional input), ending before the answer."""
    return ALPACA_PROMPT.format(
        with_input=", paired with an input that provides further context" if input_text else "",
        instruction=instruction,
        input=f"### Input:\n{input_text}\n\n" if input_text else "",
    )


def _messages(obj: dict, data: DataSpec, at: str) -> tuple[dict[str, str], ...]:
    raw = obj.get(data.messages_field)
    if data.messages_field not in obj:
        raise DataError(f"{at}: missing field {data.messages_field!r}")
    if isinstance(raw, str):  # a CSV cell holding the JSON list
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            raise DataError(f"{at}: field {data.messages_field!r} is not a JSON list") from None
    if not isinstance(raw, list) or not raw:
        raise DataError(f"{at}: field {data.messages_field!r} must be a non-empty list of messages")
    names = {**SHAREGPT_ROLES, **data.role_names}
    messages = []
    for i, message in enumerate(raw, start=1):
        if not isinstance(message, dict):
            raise DataError(f"{at}: message {i} is not an object")
        role = message.get(data.role_field)
        if not isinstance(role, str):
            raise DataError(f"{at}: message {i} has no {data.role_field!r} string")
        role = role if role in ROLES else names.get(role, role)
        if role not in ROLES:
            raise DataError(
                f"{at}: message {i} has unknown role {message[data.role_field]!r} (known: "
                f"{', '.join(ROLES)}; map others with data.role_names)"
            )
        content = message.get(data.content_field)
        if not isinstance(content, str):
            raise DataError(f"{at}: message {i} has no {data.content_field!r} string")
        if role == "assistant" and not content.strip():
            raise DataError(f"{at}: message {i} is an empty assistant turn")
        messages.append({"role": role, "content": content})
    if messages[-1]["role"] != "assistant":
        raise DataError(f"{at}: the conversation must end with an assistant turn")
    return tuple(messages)


def to_example(obj: object, n: int, path: Path, data: DataSpec) -> Example:
    """One record as an Example of data.format; a DataError names the file, line and problem."""
    at = where(path, n)
    if not isinstance(obj, dict):
        raise DataError(f"{at}: expected a JSON object, got {type(obj).__name__}")
    if data.format == "chat":
        messages = _messages(obj, data, at)
        return Example("", messages[-1]["content"], n, messages)
    if data.format == "alpaca":
        instruction = _text(obj, "instruction", at)
        input_text = _text(obj, "input", at, empty_ok=True) if "input" in obj else ""
        return Example(alpaca_prompt(instruction, input_text), _text(obj, "output", at), n)
    if data.format == "text":
        return Example("", _text(obj, data.text_field, at), n)
    return Example(_text(obj, data.prompt_field, at), _text(obj, data.completion_field, at), n)


def read_split(path: str | Path, data: DataSpec | None = None) -> list[Example]:
    """Read one split as Examples of data.format (default: prompt/completion JSONL fields)."""
    path, data = Path(path), data or DataSpec()
    examples = [to_example(obj, n, path, data) for n, obj in read_rows(path)]
    if not examples:
        raise DataError(f"{path}: split is empty")
    return examples

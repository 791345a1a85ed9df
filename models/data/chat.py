"""Chat templates, special tokens and prompt encoding: one home, used by training and serving.

A chat example is rendered with the tokenizer's chat template (or the one data.chat_template
names, attached to the tokenizer so it is saved beside the adapter and travels to the export).
Assistant turns are located by rendering, never by searching the text for a response marker:
turn i spans the tokens between render(messages[:i], add_generation_prompt=True) and
render(messages[:i+1]), each of which must tokenize to a prefix of the whole conversation's ids.
The served prompt is the first of those renders, so it is token for token what training saw
before the answer.

Special tokens: a BOS is prepended where the tokenizer adds one by itself and the text does not
already start with it (never two); the EOS ends every trained example, so the model learns to
stop; a tokenizer without an EOS takes the base model config's; without a pad token, the EOS pads.
"""

from __future__ import annotations

import json
from pathlib import Path

from models.config.specs import DataSpec
from models.data.formats import DataError, alpaca_prompt

# The format a served model renders requests with; absent means prompt_completion (the file is
# only written for the other formats, so prompt_completion adapters are unchanged).
PROMPT_FORMAT_FILE = "prompt_format.json"
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
BUILTIN_TEMPLATES = {"chatml": CHATML}
_PROBE = "\x00answer\x00"


def load_template(name_or_path: str) -> str:
    """A built-in template by name, or the text of a Jinja template file."""
    if name_or_path in BUILTIN_TEMPLATES:
        return BUILTIN_TEMPLATES[name_or_path]
    path = Path(name_or_path)
    if not path.is_file():
        raise DataError(
            f"data.chat_template: no file {name_or_path!r} and no built-in of that name "
            f"(built-ins: {', '.join(BUILTIN_TEMPLATES)})"
        )
    return path.read_text(encoding="utf-8")


def prepare_tokenizer(
    tokenizer, data: DataSpec, base_model: str | None = None, trust_remote_code: bool = False
):
    """The tokenizer as training and serving use it: the chat template data names (or refused
    where chat has none), an EOS (from the base model's config where the tokenizer has none)
    and a pad token (the EOS where it has none). Returns the same tokenizer."""
    if data.format == "chat":
        if data.chat_template:
            tokenizer.chat_template = load_template(data.chat_template)
        if not tokenizer.chat_template:
            raise DataError(
                "data.format is chat but the tokenizer has no chat template; set data."
                f"chat_template to a template file or a built-in ({', '.join(BUILTIN_TEMPLATES)})"
            )
    if tokenizer.eos_token_id is None or tokenizer.eos_token_id == tokenizer.unk_token_id:
        eos_id = _config_eos(base_model, trust_remote_code) if base_model else None
        if eos_id is None:
            raise DataError(
                f"the tokenizer of {base_model} has no EOS token and the model config names "
                "none: the model could never learn to stop (add eos_token to its tokenizer)"
            )
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(eos_id)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _config_eos(base_model: str, trust_remote_code: bool) -> int | None:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(base_model, trust_remote_code=trust_remote_code)
    eos = getattr(config, "eos_token_id", None)
    if isinstance(eos, list):
        eos = eos[0] if eos else None
    return eos


def bos_prefix(tokenizer) -> list[int]:
    """[bos] where the tokenizer adds a BOS by itself, else []."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return []
    added = tokenizer("a")["input_ids"]
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    return [bos] if added[:1] == [bos] and bare[:1] != [bos] else []


def with_bos(ids: list[int], prefix: list[int]) -> list[int]:
    """ids with the tokenizer's BOS in front, exactly once (a template may write it itself)."""
    if not prefix:
        return ids
    while ids[:2] == prefix * 2:
        ids = ids[1:]
    return ids if ids[:1] == prefix else prefix + ids


def render(tokenizer, messages, *, add_generation_prompt: bool = False, at: str = "") -> str:
    """The conversation as the chat template writes it; a template error names the example."""
    from jinja2 import TemplateError

    try:
        return tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
        )
    except TemplateError as e:
        raise DataError(
            f"{at or 'chat'}: the chat template refuses this conversation ({e})"
        ) from None


def _ids(tokenizer, text: str, prefix: list[int]) -> list[int]:
    return with_bos(tokenizer(text, add_special_tokens=False)["input_ids"], prefix)


def chat_features(
    tokenizer, messages, train_on: str, prefix: list[int], at: str
) -> tuple[list[int], list[int]]:
    """(input ids, labels) of one conversation: -100 everywhere but the trained tokens.

    train_on: assistant (every assistant turn, its end-of-turn tokens included), last (the
    last assistant turn only) or all. The EOS follows the conversation where the template does
    not end the last assistant turn with it, and is trained.
    """
    ids = _ids(tokenizer, render(tokenizer, messages, at=at), prefix)
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    spans = []
    for i in turns:
        before = (
            _ids(
                tokenizer,
                render(tokenizer, messages[:i], add_generation_prompt=True, at=at),
                prefix,
            )
            if i
            else list(prefix)
        )
        through = _ids(tokenizer, render(tokenizer, messages[: i + 1], at=at), prefix)
        if ids[: len(before)] != before or ids[: len(through)] != through:
            raise DataError(
                f"{at}: the chat template does not render message {i + 1} as a prefix of the "
                "whole conversation, so its assistant turn cannot be located"
            )
        spans.append((len(before), len(through)))
    if train_on == "all":
        labels = list(ids)
    else:
        labels = [-100] * len(ids)
        for start, end in spans[-1:] if train_on == "last" else spans:
            labels[start:end] = ids[start:end]
    last_start, last_end = spans[-1]
    if tokenizer.eos_token_id not in ids[last_start:last_end]:
        ids, labels = ids + [tokenizer.eos_token_id], labels + [tokenizer.eos_token_id]
    return ids, labels


def save_prompt_format(out: str | Path, data: DataSpec) -> None:
    """Record how requests are rendered, beside the adapter (not for prompt_completion)."""
    if data.format != "prompt_completion":
        Path(out, PROMPT_FORMAT_FILE).write_text(json.dumps({"format": data.format}) + "\n")


def load_prompt_format(adapter_dir: str | Path) -> str:
    """The data.format an adapter was trained with (prompt_completion where none is recorded)."""
    path = Path(adapter_dir, PROMPT_FORMAT_FILE)
    return json.loads(path.read_text())["format"] if path.is_file() else "prompt_completion"


def request_text(tokenizer, request, fmt: str) -> str:
    """A request as the text training put before the answer: a string; for chat also a list
    of messages; for alpaca also {"instruction": ..., "input": ...} (input optional)."""
    if fmt == "chat":
        messages = [{"role": "user", "content": request}] if isinstance(request, str) else request
        return render(tokenizer, messages, add_generation_prompt=True)
    if fmt == "alpaca" and isinstance(request, dict):
        return alpaca_prompt(*_alpaca_fields(request))
    if not isinstance(request, str):
        takes = "a string or {instruction, input}" if fmt == "alpaca" else "a string"
        raise DataError(f"a model trained on data.format {fmt} takes {takes}, not {request!r}")
    return alpaca_prompt(request) if fmt == "alpaca" else request


def _alpaca_fields(request: dict) -> tuple[str, str]:
    """(instruction, input) of an alpaca request; the same rules as a training record."""
    instruction, input_text = request.get("instruction"), request.get("input") or ""
    unknown = set(request) - {"instruction", "input"}
    if not isinstance(instruction, str) or not instruction or not isinstance(input_text, str):
        raise DataError(
            f"an alpaca request needs a non-empty string 'instruction' and optionally a string "
            f"'input' (got {request!r})"
        )
    if unknown:
        raise DataError(f"an alpaca request takes instruction and input, not {sorted(unknown)}")
    return instruction, input_text


def encode_request(tokenizer, request, fmt: str, prefix: list[int] | None = None) -> list[int]:
    """Token ids of a request's prompt, as training tokenized it."""
    prefix = bos_prefix(tokenizer) if prefix is None else prefix
    return _ids(tokenizer, request_text(tokenizer, request, fmt), prefix)


def turn_end(tokenizer) -> str:
    """The text a chat template writes after an assistant turn's content (e.g. <|im_end|>),
    stripped; "" for no template. Served answers are cut there."""
    if not getattr(tokenizer, "chat_template", None):
        return ""
    probe = [{"role": "user", "content": "?"}, {"role": "assistant", "content": _PROBE}]
    text = render(tokenizer, probe)
    return text[text.rindex(_PROBE) + len(_PROBE) :].strip()

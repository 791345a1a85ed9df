"""The bad-input table's data-format cases (tests/test_bad_inputs.py runs them): chat and
tabular splits, each refused in one line naming the file, line or row and the problem."""

import json

from tests.bad_input_setups import run_with
from tests.test_cli import write_split

LONG = "one two three four five six seven eight nine ten eleven twelve " * 3


def chat(*turns: tuple[str, str]) -> bytes:
    messages = [{"role": role, "content": content} for role, content in turns]
    return json.dumps({"messages": messages}).encode() + b"\n"


GOOD_CHAT = chat(("user", "Repeat: a b"), ("assistant", "a b"))


def chat_split(train: bytes, **data):
    """Both splits as chat (the eval split a good one), the run's data.format chat."""

    def setup(ctx):
        write_split(ctx.project, "eval.jsonl", GOOD_CHAT)
        write_split(ctx.project, "train.jsonl", train)
        settings = {"format": "chat", "chat_template": "chatml", "max_seq_len": 96, **data}
        return run_with(data=settings)(ctx)

    return setup


def csv_split(ctx):
    write_split(ctx.project, "train.csv", b'prompt,completion\n"Repeat: a\nAnswer:", a\nx,\n')
    return run_with(data={"train_file": "train.csv"})(ctx)


FORMAT_CASES = [
    (
        "csv row with an empty field",
        csv_split,
        2,
        "data/train.csv: row 2: field 'completion' must be a non-empty string",
    ),
    (
        "unknown data format",
        run_with(data={"format": "sharegpt"}),
        2,
        "run.yaml: data.format: unknown value 'sharegpt'; choose one of prompt_completion, chat",
    ),
    (
        "chat, unknown role",
        chat_split(GOOD_CHAT + chat(("robot", "hi"), ("assistant", "a"))),
        2,
        "data/train.jsonl:2: message 1 has unknown role 'robot' (known: system, user, assistant;",
    ),
    (
        "chat, empty assistant turn",
        chat_split(chat(("user", "hi"), ("assistant", ""))),
        2,
        "data/train.jsonl:1: message 2 is an empty assistant turn",
    ),
    (
        "chat, no template",
        chat_split(GOOD_CHAT, chat_template=None),
        2,
        "data.format is chat but the tokenizer has no chat template; set data.chat_template",
    ),
    (
        "chat, unknown template",
        chat_split(GOOD_CHAT, chat_template="chatmlx"),
        2,
        "data.chat_template: no file 'chatmlx' and no built-in of that name (built-ins: chatml)",
    ),
    (
        "chat, conversation longer than max_seq_len",
        chat_split(GOOD_CHAT + chat(("user", LONG), ("assistant", "x"))),
        2,
        "data/train.jsonl:2: 1 example(s) longer than data.max_seq_len=96 tokens",
    ),
]

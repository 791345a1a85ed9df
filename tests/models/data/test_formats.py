"""Every data.format from every file type, and every bad record named by file, line and problem."""

import json

import pandas as pd
import pytest

from models.config.specs import DataSpec
from models.data.formats import alpaca_prompt
from models.data.splits import DataError, read_split
from tests.models.data.test_splits import validate_dataset

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "Paris"},
]
RECORDS = {
    "prompt_completion": [
        {"prompt": "2+2=", "completion": " 4"},
        {"prompt": "a", "completion": "b"},
    ],
    "alpaca": [
        {"instruction": "Add", "input": "2 and 2", "output": "4"},
        {"instruction": "Say hi", "input": "", "output": "hi"},
    ],
    "text": [{"text": "the cat sat"}, {"text": "on the mat"}],
    "chat": [{"messages": CHAT}, {"messages": CHAT[1:]}],
}


def write(path, records):
    """records in the file type the name's extension says."""
    suffix = path.suffix
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    elif suffix == ".json":
        path.write_text(json.dumps(records))
    else:
        frame = pd.DataFrame(records)
        if suffix == ".csv":
            for column in frame.columns:  # a chat's messages go in one cell as JSON
                if frame[column].map(lambda v: isinstance(v, list)).any():
                    frame[column] = frame[column].map(json.dumps)
            frame.to_csv(path, index=False)
        else:
            frame.to_parquet(path)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
@pytest.mark.parametrize("fmt", sorted(RECORDS))
def test_every_format_reads_the_same_from_every_file_type(tmp_path, fmt, suffix):
    f = write(tmp_path / f"train{suffix}", RECORDS[fmt])
    examples = read_split(f, DataSpec(format=fmt))
    assert [e.line for e in examples] == [1, 2]
    first, second = examples
    if fmt == "prompt_completion":
        assert (first.prompt, first.completion, first.messages) == ("2+2=", " 4", None)
    elif fmt == "alpaca":
        assert first.prompt == alpaca_prompt("Add", "2 and 2") and first.completion == "4"
        assert "### Input:" in first.prompt and "2 and 2" in first.prompt
        assert second.prompt == alpaca_prompt("Say hi") and "### Input" not in second.prompt
        assert first.prompt.endswith("### Response:\n")
    elif fmt == "text":
        assert (first.prompt, first.completion) == ("", "the cat sat")
    else:
        assert first.messages == tuple(CHAT) and first.completion == "Paris"
        assert first.request() == CHAT[:-1]
        assert second.messages == tuple(CHAT[1:])


def test_sharegpt_conversations_map_through_the_field_names(tmp_path):
    sharegpt = [
        {"from": "system", "value": "Be brief."},
        {"from": "human", "value": "Capital of France?"},
        {"from": "gpt", "value": "Paris"},
    ]
    f = write(tmp_path / "t.jsonl", [{"conversations": sharegpt}])
    spec = DataSpec(format="chat", messages_field="conversations", role_field="from")
    spec = DataSpec(**{**spec.to_dict(), "content_field": "value"})
    assert read_split(f, spec)[0].messages == tuple(CHAT)
    custom = [{"from": "asker", "value": "hi"}, {"from": "bot", "value": "hello"}]
    f = write(tmp_path / "c.jsonl", [{"conversations": custom}])
    mapped = DataSpec(**{**spec.to_dict(), "role_names": {"asker": "user", "bot": "assistant"}})
    assert [m["role"] for m in read_split(f, mapped)[0].messages] == ["user", "assistant"]


def chat_line(messages):
    return {"messages": messages}


@pytest.mark.parametrize(
    ("fmt", "record", "message"),
    [
        (
            "chat",
            chat_line([{"role": "robot", "content": "x"}]),
            "message 1 has unknown role 'robot'",
        ),
        (
            "chat",
            chat_line([{"role": "user", "content": "x"}, {"role": "assistant", "content": " "}]),
            "message 2 is an empty assistant turn",
        ),
        ("chat", chat_line([{"role": "user", "content": "x"}]), "must end with an assistant turn"),
        ("chat", chat_line([]), "'messages' must be a non-empty list"),
        ("chat", chat_line(["hi"]), "message 1 is not an object"),
        ("chat", chat_line([{"role": "user"}]), "message 1 has no 'content' string"),
        ("chat", {"turns": []}, "missing field 'messages'"),
        ("alpaca", {"instruction": "x"}, "missing field 'output'"),
        ("alpaca", {"instruction": "", "output": "y"}, "field 'instruction' must be a non-empty"),
        ("text", {"body": "x"}, "missing field 'text'"),
    ],
)
def test_bad_records_name_file_line_and_problem(tmp_path, fmt, record, message):
    good = RECORDS[fmt][0]
    f = write(tmp_path / "t.jsonl", [good, record])
    with pytest.raises(DataError) as err:
        read_split(f, DataSpec(format=fmt))
    assert str(err.value).startswith(f"{f}:2: ") and message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("t.json", b'{"prompt": "a"}', "expected a JSON list of objects, got dict"),
        ("t.json", b'[{"prompt": "a", "completion": "b"}, 3]', "t.json: row 2: expected a JSON"),
        ("t.json", b'[{"prompt": "a",\n', "t.json:2: malformed JSON"),
        ("t.csv", b"prompt,completion\na,b\nc,\n", "t.csv: row 2: field 'completion' must"),
        ("t.csv", b"prompt\na\n", "t.csv: row 1: missing field 'completion'"),
        ("t.parquet", b"not parquet", "t.parquet: cannot read as parquet"),
    ],
)
def test_bad_tabular_and_json_files_name_the_row(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError) as err:
        read_split(tmp_path / name)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_validate_dataset_reads_each_split_in_its_own_file_type(tmp_path):
    write(tmp_path / "train.parquet", RECORDS["chat"])
    write(tmp_path / "eval.csv", RECORDS["chat"][:1])
    spec = DataSpec(path=str(tmp_path), train_file="train.parquet", eval_file="eval.csv")
    chat = {**spec.to_dict(), "format": "chat", "chat_template": "chatml"}
    train, evals = validate_dataset(DataSpec(**chat))
    assert (train.examples, evals.examples, evals.duplicates_of_train) == (2, 1, 1)

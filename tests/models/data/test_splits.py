import json
from pathlib import Path

import pytest

from models.config.specs import DataSpec
from models.data.prepared import prepared_reports
from models.data.splits import DataError, pad_batch, read_split, tokenize
from tests.models.data.test_prepared import demo_tokenizer


def write(path, lines):
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def row(prompt="p", completion="c"):
    return json.dumps({"prompt": prompt, "completion": completion}).encode()


def test_reads_examples_with_line_numbers(tmp_path):
    f = write(tmp_path / "t.jsonl", [row("a", "b"), b"", row("c", "d")])
    examples = read_split(f)
    assert [(e.prompt, e.completion, e.line) for e in examples] == [("a", "b", 1), ("c", "d", 3)]


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([row(), b'{"prompt": "x", "completion": '], "t.jsonl:2: malformed JSON"),
        ([row(), row(), b'{"prompt": "x"}'], "t.jsonl:3: missing field 'completion'"),
        ([b'{"prompt": "x", "completion": 3}'], "t.jsonl:1: field 'completion' must"),
        ([b"[1, 2]"], "t.jsonl:1: expected a JSON object"),
        ([row(), b'{"prompt": "\xff\xfe", "completion": "c"}'], "t.jsonl:2: not valid UTF-8"),
        ([], "t.jsonl: split is empty"),
        ([b"", b"  "], "t.jsonl: split is empty"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path, lines, message):
    f = write(tmp_path / "t.jsonl", lines)
    with pytest.raises(DataError) as err:
        read_split(f)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def validate_dataset(data: DataSpec):
    """The check stage's data part (models.data.prepared.prepared_reports)."""
    return prepared_reports(data, demo_tokenizer(data), cache_dir=Path(data.path) / "prepared")


def test_missing_dir_and_file(tmp_path):
    with pytest.raises(DataError, match="data directory not found"):
        validate_dataset(DataSpec(path=str(tmp_path / "nope")))
    write(tmp_path / "train.jsonl", [row()])
    with pytest.raises(DataError, match="eval.jsonl: split file not found"):
        validate_dataset(DataSpec(path=str(tmp_path)))


def test_duplicates_between_eval_and_train_are_counted(tmp_path):
    write(tmp_path / "train.jsonl", [row("a", "1"), row("b", "2")])
    write(tmp_path / "eval.jsonl", [row("a", "1"), row("b", "2"), row("c", "3")])
    train, evals = validate_dataset(DataSpec(path=str(tmp_path)))
    assert (train.examples, evals.examples, evals.duplicates_of_train) == (2, 3, 2)
    assert evals.warnings == ["2 eval examples also appear in the train split"]


def test_tokenize_masks_prompt_and_handles_long_examples(tiny_base, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_base)
    f = write(tmp_path / "t.jsonl", [row("the cat", " sat"), row("a " * 40, " b")])
    examples = read_split(f)
    prompt_len = len(tok("the cat", add_special_tokens=False)["input_ids"])
    out = tokenize(examples, tok, max_seq_len=16, too_long="truncate")
    first = out.features[0]
    assert first["labels"][:prompt_len] == [-100] * prompt_len
    assert first["labels"][prompt_len:] == first["input_ids"][prompt_len:]
    assert first["input_ids"][-1] == tok.eos_token_id
    assert out.truncated == 1 and len(out.features[1]["input_ids"]) == 16
    with pytest.raises(DataError, match=r"t.jsonl:2: 1 example\(s\) longer than data.max_seq_len"):
        tokenize(examples, tok, max_seq_len=16, too_long="reject", source=str(f))


def test_pad_batch_masks_padding():
    batch = pad_batch(
        [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}],
        pad_id=0,
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def test_chunked_encoding_gives_each_text_its_own_ids(tiny_base):
    """Texts are encoded a chunk at a time; chunk edges change nothing."""
    from transformers import AutoTokenizer

    from models.data.splits import Example, _encode

    tok = AutoTokenizer.from_pretrained(tiny_base)
    examples = [Example(f"prompt {i} " * (i + 1), f" answer {i}", i + 1) for i in range(5)]
    prompts, completions = _encode(examples, tok, chunk=2)
    for ex, p, c in zip(examples, prompts, completions, strict=True):
        assert p == tok(ex.prompt, add_special_tokens=False)["input_ids"]
        assert c == tok(ex.completion, add_special_tokens=False)["input_ids"]

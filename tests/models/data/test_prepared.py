"""Prepared splits: keyed by content (one change of anything that decides the tokens prepares
again, anything else reuses), a damaged or cut-short preparation rebuilt and never read, two
processes asking at once (one prepares, the other maps), several tokenizing processes giving the
same files, and a bad row deep in a large file named by file:line with nothing kept."""

from __future__ import annotations

import copy
import functools
import json
import multiprocessing

import numpy as np
import pytest

from models.config.specs import DataSpec
from models.data import encoder
from models.data import prepared as prep
from models.data.chat import prepare_tokenizer
from models.data.formats import DataError
from tests.conftest import REPO
from tests.models.data.test_prepared_exact import conversations, write_jsonl


@functools.cache
def _demo_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(REPO / "demo" / "base")


def demo_tokenizer(data: DataSpec):
    return prepare_tokenizer(copy.deepcopy(_demo_tokenizer()), data)


def chat_spec(tmp_path, **changes) -> DataSpec:
    return DataSpec(
        **{
            "path": str(tmp_path),
            "format": "chat",
            "chat_template": "chatml",
            "max_seq_len": 2048,
            **changes,
        }
    )


@pytest.fixture
def chat_file(tmp_path):
    return write_jsonl(tmp_path / "train.jsonl", conversations(30))


def key(path, data, tok=None):
    return prep.preparation_key(prep.key_parts(path, data, tok or demo_tokenizer(data)))


# Each field that decides a chat split's tokens, changed alone.
CHAT_CHANGES = {
    "messages_field": {"messages_field": "conversation"},
    "role_field": {"role_field": "from"},
    "content_field": {"content_field": "value"},
    "role_names": {"role_names": {"bot": "assistant"}},
    "train_on": {"train_on": "last"},
    "max_seq_len": {"max_seq_len": 256},
    "too_long": {"too_long": "truncate"},
    "format": {"format": "prompt_completion"},
    "chat_template": {"chat_template": str(REPO / "demo" / "chat-template.jinja")},
}
# Changes that do not touch a chat split's tokens.
CHAT_UNCHANGED = {
    "prompt_field": {"prompt_field": "question"},
    "completion_field": {"completion_field": "answer"},
    "text_field": {"text_field": "body"},
    "eval_file": {"eval_file": "other.jsonl"},
}


def test_each_field_that_decides_the_tokens_changes_the_key_and_nothing_else_does(
    tmp_path, chat_file
):
    base = chat_spec(tmp_path)
    want = key(chat_file, base)
    for name, change in CHAT_CHANGES.items():
        assert key(chat_file, chat_spec(tmp_path, **change)) != want, name
    for name, change in CHAT_UNCHANGED.items():
        assert key(chat_file, chat_spec(tmp_path, **change)) == want, name
    # The same bytes elsewhere: the same key (a path never enters it).
    elsewhere = tmp_path / "copy"
    elsewhere.mkdir()
    copy = elsewhere / "renamed.jsonl"
    copy.write_bytes(chat_file.read_bytes())
    assert key(copy, chat_spec(elsewhere)) == want
    # The tokenizer: one more token in its vocabulary.
    tok = demo_tokenizer(base)
    tok.add_tokens(["zebra-crossing"])
    assert key(chat_file, base, tok) != want
    # The code that tokenizes.
    version = prep.PREPARED_VERSION
    prep.PREPARED_VERSION = version + "-next"
    try:
        assert key(chat_file, base) != want
    finally:
        prep.PREPARED_VERSION = version
    # Prompt/completion fields do decide a prompt_completion split's tokens.
    plain = DataSpec(path=str(tmp_path))
    assert key(chat_file, plain) != key(chat_file, DataSpec(path=str(tmp_path), prompt_field="q"))


def test_unchanged_data_is_reused_and_new_data_at_the_same_path_prepared_again(tmp_path, chat_file):
    data = chat_spec(tmp_path)
    tok = demo_tokenizer(data)
    cache = tmp_path / "cache"
    first = prep.prepare_split(chat_file, data, tok, cache_dir=cache)
    again = prep.prepare_split(chat_file, data, tok, cache_dir=cache)
    assert (first.reused, again.reused) == (False, True)
    assert again.key == first.key and np.array_equal(again.ids, first.ids)
    write_jsonl(chat_file, conversations(30, seed=9))  # new content, same path
    fresh = prep.prepare_split(chat_file, data, tok, cache_dir=cache)
    assert not fresh.reused and fresh.key != first.key
    assert fresh.feature(0) != first.feature(0)


def _damage_truncate(directory):
    ids = directory / "ids.i32"
    ids.write_bytes(ids.read_bytes()[:-4])


def _damage_flip(directory):
    labels = directory / "labels.i32"
    raw = bytearray(labels.read_bytes())
    raw[5] ^= 0xFF
    labels.write_bytes(bytes(raw))


def _damage_no_meta(directory):  # killed before the last write
    (directory / "meta.json").unlink()


def _damage_bad_meta(directory):  # a full disk mid-write
    (directory / "meta.json").write_text('{"key": ')


@pytest.mark.parametrize(
    "damage", [_damage_truncate, _damage_flip, _damage_no_meta, _damage_bad_meta]
)
def test_a_damaged_preparation_is_rebuilt_never_read(tmp_path, chat_file, damage):
    data = chat_spec(tmp_path)
    tok = demo_tokenizer(data)
    cache = tmp_path / "cache"
    first = prep.prepare_split(chat_file, data, tok, cache_dir=cache)
    want = [first.feature(i) for i in range(len(first))]
    damage(first.path)
    rebuilt = prep.prepare_split(chat_file, data, tok, cache_dir=cache)
    assert not rebuilt.reused
    assert [rebuilt.feature(i) for i in range(len(rebuilt))] == want
    assert prep.read_complete(rebuilt.path) is not None


def _prepare_in_process(path, data, cache, out):
    split = prep.prepare_split(
        path, DataSpec.from_dict(data), demo_tokenizer(DataSpec.from_dict(data)), cache_dir=cache
    )
    out.put((split.reused, split.key))


def test_two_processes_at_once_one_prepares_the_other_waits_and_maps(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", conversations(800))
    data = chat_spec(tmp_path)
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_prepare_in_process, args=(path, data.to_dict(), tmp_path / "c", out))
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert sorted(r[0] for r in results) == [False, True]  # one prepared, one reused
    assert results[0][1] == results[1][1]
    assert [d.name for d in (tmp_path / "c").iterdir() if d.is_dir()] == [results[0][1]]


def test_several_processes_tokenize_the_same_files_and_a_bad_row_deep_in_is_named(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(encoder, "CHUNK_ROWS", 200)
    rows = conversations(1500, seed=4)
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    data = chat_spec(tmp_path)
    tok = demo_tokenizer(data)
    one = prep.prepare_split(path, data, tok, cache_dir=tmp_path / "one", workers=1)
    two = prep.prepare_split(path, data, tok, cache_dir=tmp_path / "two", workers=2)
    for name in prep.FILES:
        assert (one.path / name).read_bytes() == (two.path / name).read_bytes(), name

    lines = path.read_text().splitlines()
    lines[1233] = lines[1233][:-7]  # line 1,234 cut short
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"^{path}:1234: malformed JSON"):
        prep.prepare_split(path, data, tok, cache_dir=tmp_path / "bad", workers=2)
    assert [p.name for p in (tmp_path / "bad").iterdir() if p.is_dir()] == []  # nothing kept


def test_too_long_rejected_with_the_count_and_first_line_and_nothing_kept(tmp_path, chat_file):
    data = chat_spec(tmp_path, max_seq_len=40)
    with pytest.raises(DataError, match=rf"{chat_file}:\d+: \d+ example\(s\) longer than"):
        prep.prepare_split(chat_file, data, demo_tokenizer(data), cache_dir=tmp_path / "c")
    assert [p.name for p in (tmp_path / "c").iterdir() if p.is_dir()] == []


def test_reports_count_eval_examples_that_repeat_train(tmp_path):
    rows = conversations(20, seed=5)
    write_jsonl(tmp_path / "train.jsonl", rows)
    write_jsonl(tmp_path / "eval.jsonl", rows[:3] + conversations(4, seed=6))
    data = chat_spec(tmp_path)
    train, evals = prep.prepared_reports(data, demo_tokenizer(data), cache_dir=tmp_path / "c")
    assert (train.examples, evals.examples, evals.duplicates_of_train) == (20, 7, 3)
    assert train.prepared_key and evals.prepared_key != train.prepared_key
    meta = json.loads((tmp_path / "c" / train.prepared_key / "meta.json").read_text())
    assert meta["parts"]["data"]["train_on"] == "assistant"

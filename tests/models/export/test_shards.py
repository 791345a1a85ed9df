"""Safetensors files written one tensor at a time read back as safetensors wrote them."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from models.export.shards import ShardWriter, TensorInfo, plan_shards, read_header


def info(name, t):
    return TensorInfo(name, t.dtype, tuple(t.shape), Path("src"))


def test_streamed_file_reads_back_exactly(tmp_path):
    tensors = {
        "w": torch.randn(3, 5).bfloat16(),
        "t": torch.randn(4, 2).T,  # not contiguous
        "scalar": torch.tensor(2.5),
        "mask": torch.tensor([True, False, True]),
        "ids": torch.arange(7, dtype=torch.int64),
        "empty": torch.zeros(0, 4),
    }
    path = tmp_path / "x.safetensors"
    writer = ShardWriter(path, [info(k, t) for k, t in tensors.items()])
    for k, t in tensors.items():
        writer.write(k, t)
    writer.close()
    back = load_file(path)
    assert back.keys() == tensors.keys()
    assert all(torch.equal(back[k], t) and back[k].dtype == t.dtype for k, t in tensors.items())
    assert [t.name for t in read_header(path)] == list(tensors)  # the order of the bytes


def test_writer_refuses_what_was_not_planned(tmp_path):
    a = torch.zeros(2)
    writer = ShardWriter(tmp_path / "x.safetensors", [info("a", a), info("b", a)])
    with pytest.raises(ValueError, match="planned"):
        writer.write("a", a.double())
    writer = ShardWriter(tmp_path / "y.safetensors", [info("a", a), info("b", a)])
    writer.write("a", a)
    with pytest.raises(ValueError, match="1 planned tensor"):
        writer.close()


def test_plan_fills_files_in_order_and_names_them_like_transformers():
    t = [info(str(i), torch.zeros(25)) for i in range(5)]  # 100 bytes each
    assert list(plan_shards(t, 10_000)) == ["model.safetensors"]
    shards = plan_shards(t, 250)
    assert list(shards) == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert [[x.name for x in s] for s in shards.values()] == [["0", "1"], ["2", "3"], ["4"]]
    big = plan_shards([info("big", torch.zeros(100)), *t[:1]], 250)  # larger than the limit
    assert [[x.name for x in s] for s in big.values()] == [["big"], ["0"]]

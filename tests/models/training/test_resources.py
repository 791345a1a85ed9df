"""Running out of memory or disk: which errors count, and what the message says."""

import errno

import pytest
import torch

from models.training.resources import (
    ResourceError,
    explain_resource_errors,
    out_of_disk,
    out_of_memory,
)


def raising(error):
    def fn():
        raise error

    return fn


def test_what_counts_as_out_of_memory_or_disk():
    try:
        torch.empty(2**50)  # the CPU allocator's own refusal
    except RuntimeError as e:
        assert out_of_memory(e)
    assert out_of_memory(MemoryError()) and out_of_memory(torch.OutOfMemoryError("CUDA oom"))
    assert out_of_disk(OSError(errno.ENOSPC, "No space left on device"))
    assert out_of_disk(OSError(errno.EDQUOT, "Disk quota exceeded"))
    rust = "Error while serializing: No space left on device (os error 28)"  # safetensors
    assert out_of_disk(RuntimeError(rust))
    assert not out_of_memory(RuntimeError("shape mismatch")) and not out_of_disk(ValueError("x"))


def test_other_errors_pass_through_unchanged(tmp_path):
    error = ValueError("bad shape")
    guarded = explain_resource_errors(
        raising(error), device="cpu", output_dir=str(tmp_path), batch_size=8, max_seq_len=64
    )
    with pytest.raises(ValueError) as err:
        guarded()
    assert err.value is error


def test_messages_name_the_device_or_path_and_the_knobs(tmp_path):
    oom = explain_resource_errors(
        raising(MemoryError()), device="cpu", output_dir=str(tmp_path), batch_size=8,
        max_seq_len=64,
    )  # fmt: skip
    with pytest.raises(ResourceError) as err:
        oom()
    assert str(err.value).startswith(
        "out of memory on cpu while training (MemoryError): lower training.batch_size (now 8) "
        "or data.max_seq_len (now 64)"
    )
    full = explain_resource_errors(
        raising(OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "a.bin"))),
        device="cpu", output_dir=str(tmp_path / "not-yet"), batch_size=8, max_seq_len=64,
    )  # fmt: skip
    with pytest.raises(ResourceError) as err:
        full()
    assert str(err.value).startswith(f"disk full writing {tmp_path / 'a.bin'} (")
    assert "MiB free on that filesystem): free space there or point training.output_dir" in str(
        err.value
    )

"""track_peak_memory on CPU: the exact peak of a block, not what is left at its end."""

import threading

import torch

from models.training.memory import reset_peak_rss, track_peak_memory

MiB = 1 << 20


def _spike(mib: int) -> None:
    buf = torch.ones(mib * MiB // 4)  # touched, so resident
    del buf


def test_peak_of_a_freed_spike_is_counted():
    assert reset_peak_rss(), "this test needs Linux /proc/self/clear_refs"
    with track_peak_memory("cpu") as memory:
        _spike(256)
    assert memory.kind == "cpu_rss_growth"
    assert 240 * MiB <= memory.peak_bytes < 320 * MiB  # 256 MiB, less what the block freed


def test_peak_starts_over_at_each_block():
    with track_peak_memory("cpu"):
        _spike(256)
    with track_peak_memory("cpu") as small:
        _spike(16)
    assert small.peak_bytes < 64 * MiB


def test_no_sampling_thread_while_the_block_runs():
    before = threading.active_count()
    with track_peak_memory("cpu"):
        assert threading.active_count() == before


def test_weights_mapped_from_file_are_not_counted_as_training_memory(tmp_path):
    """A model loaded from safetensors on CPU may still be mapped from the file; page_in makes
    it resident before measuring, so the peak of a forward pass is activations, not weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from models.training.memory import page_in

    config = LlamaConfig(
        vocab_size=32768,
        hidden_size=1024,
        intermediate_size=1024,
        num_hidden_layers=1,
        num_attention_heads=8,
        num_key_value_heads=8,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    model.save_pretrained(tmp_path)
    del model
    assert weights > 250 * MiB
    model = LlamaForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    page_in(model)
    with track_peak_memory("cpu") as memory, torch.no_grad():
        model(input_ids=torch.ones(1, 8, dtype=torch.long))
    assert memory.peak_bytes < weights / 4

"""`plan` counts exactly, on the meta device, for real-size configs."""

import json

import pytest
import torch

from models.base_model.loading import load_base
from models.config.specs import DataSpec, TrainSpec
from models.methods import AdapterSpec, get_method
from models.training.plan import fits_verdict, fsdp_ranks_needed, parse_memory, plan_run

LLAMA2_7B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 32,
    "vocab_size": 32000,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-05,
    "tie_word_embeddings": False,
    "torch_dtype": "float16",
}
QV = ["q_proj", "v_proj"]


@pytest.fixture(scope="module")
def llama7b(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama2-7b")
    (path / "config.json").write_text(json.dumps(LLAMA2_7B))
    return str(path)  # a config alone: no weights exist, none are needed


def spec(r=8, targets=QV):
    return AdapterSpec(r=r, alpha=16.0, dropout=0.0, target_modules=targets, seed=0)


def plan(base_model, method, adapter, batch_size, seq_len, dtype="float32", **fields):
    """plan_run of a training of `base_model` at batch_size x seq_len."""
    data = DataSpec(
        path="data",
        train_file="train.jsonl",
        eval_file="eval.jsonl",
        prompt_field="prompt",
        completion_field="completion",
        max_seq_len=seq_len,
        too_long="reject",
    )
    return plan_run(
        TrainSpec(
            base_model=base_model,
            data=data,
            method=method,
            adapter=adapter,
            max_steps=1,
            learning_rate=1e-3,
            batch_size=batch_size,
            dtype=dtype,
            **fields,
        )
    )


@pytest.mark.parametrize(
    ("method", "trainable", "added"),
    [
        ("lora", 4_194_304, 4_194_304),  # 32 layers x 2 modules x 8 x (4096 + 4096)
        ("lora_fa", 2_097_152, 4_194_304),  # only B trains: 32 x 2 x 4096 x 8; A is frozen
        ("vera", 262_656, 262_656),  # 32 x 2 x (4096 + 8); shared projections are buffers
        ("dora", 4_456_448, 4_456_448),  # LoRA + one magnitude per output row
        ("qlora", 4_194_304, 4_194_304),
    ],
)
def test_llama2_7b_counts_are_exact(llama7b, method, trainable, added):
    got = plan(llama7b, method, spec(), batch_size=1, seq_len=512, dtype="bfloat16")
    assert got.trainable_params == trainable
    assert got.total_params == 6_738_415_616 + added
    assert got.est_peak_memory_bytes > got.base_weight_bytes > 0


def test_adapter_bytes_and_memory_parts(llama7b):
    lora = plan(llama7b, "lora", spec(), batch_size=2, seq_len=256, dtype="bfloat16")
    assert lora.adapter_bytes == 4_194_304 * 4  # saved in fp32
    assert lora.base_weight_bytes == 6_738_415_616 * 2
    assert lora.optimizer_state_bytes == 4_194_304 * 16
    assert lora.est_peak_memory_bytes == (
        lora.base_weight_bytes + lora.optimizer_state_bytes + lora.activation_bytes
    )
    bigger = plan(llama7b, "lora", spec(), batch_size=4, seq_len=256, dtype="bfloat16")
    assert bigger.activation_bytes == 2 * lora.activation_bytes
    q = plan(llama7b, "qlora", spec(), batch_size=2, seq_len=256, dtype="bfloat16")
    assert q.base_weight_bytes < lora.base_weight_bytes / 3


def test_gradient_checkpointing_keeps_layer_inputs_and_one_layer(llama7b):
    """Llama-7B (32 layers, hidden 4096, MLP 11008, 32 heads, vocab 32000), bf16, 2 x 256."""
    args = dict(base_model=llama7b, method="lora", adapter=spec(), batch_size=2, seq_len=256)
    full = plan(**args, dtype="bfloat16")
    ckpt = plan(**args, dtype="bfloat16", gradient_checkpointing=True)
    tokens = 2 * 256
    per_layer = tokens * (10 * 4096 + 3 * 11008 + 32 * 256) * 2
    logits = tokens * 32000 * 4 * 2
    # LoRA on q and v, dropout 0: A x of each (8 values) and their shared input (4096 values).
    adapters = tokens * 32 * (2 * 8 + 4096) * 2
    assert full.activation_bytes == 32 * per_layer + adapters + logits
    assert ckpt.activation_bytes == 32 * tokens * 4096 * 2 + per_layer + adapters // 32 + logits
    assert ckpt.base_weight_bytes == full.base_weight_bytes


@pytest.mark.parametrize("method", ["lora", "lora_fa", "vera", "delta_lora", "dora", "rslora"])
def test_plan_matches_a_real_build(tiny_base, method):
    s = spec(r=4, targets=["q_proj", "v_proj", "up_proj"])
    got = plan(str(tiny_base), method, s, batch_size=2, seq_len=32)
    model = get_method(method).build(load_base(str(tiny_base))[0], s)
    assert got.trainable_params == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert got.total_params == sum(p.numel() for p in model.parameters())
    from peft import get_peft_model_state_dict

    saved = get_peft_model_state_dict(model)
    assert got.adapter_bytes == sum(t.numel() * t.element_size() for t in saved.values())
    assert all(t.dtype == torch.float32 for t in saved.values())


def test_export_peak_is_one_base_file_the_adapter_and_one_layer(tiny_base, llama7b):
    got = plan(str(tiny_base), "lora", spec(), batch_size=1, seq_len=64, dtype="float32")
    largest_file = (tiny_base / "model.safetensors").stat().st_size
    # the largest of q_proj / v_proj (spec's targets) in the demo base: square, hidden 64
    assert got.est_export_peak_bytes == largest_file + got.adapter_bytes + 3 * 4 * 64 * 64
    # no weights on disk (a config-only Llama-2-7B): the whole base counts as one file
    big = plan(llama7b, "lora", spec(), batch_size=1, seq_len=64, dtype="bfloat16")
    assert big.est_export_peak_bytes == (
        big.base_weight_bytes + big.adapter_bytes + 3 * 4 * 4096 * 4096
    )


def test_adapter_activations_match_what_autograd_saves(tiny_base):
    """The plan's difference between methods and dropouts against saved-tensor hooks."""
    from bench.assets import TARGETS
    from bench.memory import saved_activation_bytes

    ids = torch.randint(0, 100, (2, 32), generator=torch.manual_seed(0))
    planned, measured = {}, {}
    for dropout in (0.1, 0.0):
        s = AdapterSpec(r=4, alpha=8.0, dropout=dropout, target_modules=TARGETS, seed=0)
        for method in ("lora", "lora_fa"):
            planned[method, dropout] = plan(str(tiny_base), method, s, 2, 32).activation_bytes
            model = get_method(method).build(load_base(str(tiny_base))[0], s)
            model.train()
            measured[method, dropout] = saved_activation_bytes(
                model, {"input_ids": ids, "labels": ids}
            )

    def saving(got, dropout):
        return got["lora", dropout] - got["lora_fa", dropout]

    # dropout 0: LoRA keeps each distinct input of the adapted layers, LoRA-FA none.
    assert saving(planned, 0.0) == saving(measured, 0.0) > 0
    # dropout 0.1: LoRA keeps a dropped copy and the noise per layer, LoRA-FA one bit per input
    # value. The one difference: the first layer's q/k/v keep no noise (no gradient for their
    # input), which the plan counts.
    config = load_base(str(tiny_base))[0].config
    tokens, hidden, inter = 2 * 32, config.hidden_size, config.intermediate_size
    first_layer_noise = 3 * tokens * hidden * 4
    assert saving(planned, 0.1) - saving(measured, 0.1) == first_layer_noise
    for got in (planned, measured):
        mask_bits = got["lora_fa", 0.1] - got["lora_fa", 0.0]
        assert mask_bits == tokens * config.num_hidden_layers * (6 * hidden + inter) // 8


def test_the_plan_counts_one_chunk_of_logits_where_training_chunks_the_loss(
    arch_bases, tiny_data, monkeypatch
):
    import dataclasses

    from models.base_model import chunked_loss
    from tests.models.training.test_train import tiny_spec

    vocab = json.loads((arch_bases["llama"] / "config.json").read_text())["vocab_size"]
    monkeypatch.setattr(chunked_loss, "CHUNK_BYTES", 16 * 4 * vocab)  # 16 tokens per chunk
    spec = tiny_spec(arch_bases["llama"], tiny_data)  # batch 8 x 64 tokens
    tokens = 8 * 64

    def estimate(base: str = "llama", **fields) -> int:
        plan = plan_run(dataclasses.replace(spec, base_model=str(arch_bases[base]), **fields))
        return plan.est_peak_memory_bytes

    plain = estimate(chunked_loss="off")
    assert plain - estimate(chunked_loss="auto") == (tokens - 16) * vocab * 8
    assert estimate(chunked_loss="on") == estimate(chunked_loss="auto")
    ddp = estimate(chunked_loss="off", num_processes=2)
    assert estimate(chunked_loss="auto", num_processes=2) == ddp  # DDP: the plain path
    # Gemma 2 softcaps its logits: auto keeps every logit there.
    assert estimate("gemma2", chunked_loss="auto") == estimate("gemma2", chunked_loss="off")


def test_fsdp_plan_is_per_rank(llama7b):
    """Llama-7B in bf16 over 8 ranks: 1/8 of the base each, plus three whole decoder layers
    and the output embedding; DDP: the whole base plus one 250 MiB broadcast bucket."""
    args = dict(base_model=llama7b, method="lora", adapter=spec(), batch_size=1, seq_len=512)
    ddp = plan(**args, dtype="bfloat16", num_processes=8)
    fsdp = plan(**args, dtype="bfloat16", num_processes=4, num_nodes=2, sharding="fsdp")
    # q, k, v, o (4096 x 4096), gate, up, down (4096 x 11008), two norms: frozen, 2 bytes each
    layer = (4 * 4096 * 4096 + 3 * 4096 * 11008 + 2 * 4096) * 2
    assert fsdp.layer_bytes == ddp.layer_bytes == layer
    assert (fsdp.ranks, fsdp.sharding, ddp.sharding) == (8, "fsdp", "none")
    assert fsdp.base_weight_bytes == ddp.base_weight_bytes == ddp.base_weight_bytes_per_rank
    assert fsdp.base_weight_bytes_per_rank == -(-fsdp.base_weight_bytes // 8)
    head = 32000 * 4096 * 2  # lm_head, untied
    assert fsdp.output_embedding_bytes == ddp.output_embedding_bytes == head
    assert fsdp.gathered_bytes == 3 * layer + head and ddp.gathered_bytes == 0
    assert fsdp.est_peak_memory_bytes == (
        fsdp.base_weight_bytes_per_rank + 3 * layer + head + fsdp.optimizer_state_bytes
        + fsdp.activation_bytes
    )  # fmt: skip
    assert (ddp.broadcast_bytes, fsdp.broadcast_bytes) == (250 * 2**20, 0)
    assert ddp.est_peak_memory_bytes == (
        ddp.base_weight_bytes + 250 * 2**20 + ddp.optimizer_state_bytes + ddp.activation_bytes
    )
    assert ddp.est_peak_memory_bytes - fsdp.est_peak_memory_bytes > 9 * 2**30


def test_ranks_needed_for_a_card_is_the_fewest_that_fit(llama7b):
    args = dict(base_model=llama7b, method="lora", adapter=spec(), batch_size=1, seq_len=512)
    whole = plan(**args, dtype="bfloat16")
    assert fsdp_ranks_needed(whole, parse_memory("80GiB")) == 1
    assert fits_verdict(1) == "fits one card unsharded"
    card = parse_memory("8GiB")  # a 13.5 GB base: sharding is the only way
    needed = fsdp_ranks_needed(whole, card)
    assert needed is not None and needed > 2
    assert "fsdp over >= " in fits_verdict(needed)
    sharded = {
        n: plan(**args, dtype="bfloat16", num_processes=n, sharding="fsdp")
        for n in (needed - 1, needed)
    }
    assert sharded[needed].est_peak_memory_bytes <= card < sharded[needed - 1].est_peak_memory_bytes
    assert fsdp_ranks_needed(whole, parse_memory("512MiB")) is None  # activations alone overflow


def test_parse_memory():
    assert parse_memory("80GiB") == parse_memory("80G") == 80 * 2**30
    assert parse_memory("24GB") == 24 * 10**9 and parse_memory("512MiB") == 2**29
    with pytest.raises(ValueError, match="not a memory size: '80 gigs'"):
        parse_memory("80 gigs")


def test_plan_counts_smollm2_as_peft_does(smollm2):
    """The real model (30 layers, hidden 576, 3 KV heads of 64, tied embeddings), on the meta
    device, against PEFT's own count of the loaded model."""
    from peft import LoraConfig, get_peft_model

    targets = ["q_proj", "k_proj", "v_proj", "o_proj"]
    got = plan(str(smollm2), "lora", spec(targets=targets), batch_size=4, seq_len=96)
    # 30 layers x 8 x ((576 + 576) q + (576 + 192) k + (576 + 192) v + (576 + 576) o)
    assert got.trainable_params == 30 * 8 * 3840 == 921_600
    peft_model = get_peft_model(
        load_base(str(smollm2))[0], LoraConfig(r=8, lora_alpha=16, target_modules=targets)
    )
    trainable, total = peft_model.get_nb_trainable_parameters()
    assert (got.trainable_params, got.total_params) == (trainable, total)
    assert total == 134_515_008 + 921_600

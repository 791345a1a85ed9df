"""Figure 10: merge-and-export, the streamed merge vs PEFT's merge_and_unload: memory and time.

A random-weight Llama-shaped base in bf16 (the demo tokenizer), written shard by shard in
~100 MB files without ever being whole in memory, and a LoRA adapter (r=8, all linear layers,
random A and B). Each path merges and saves it in a fresh process (bench.workers.MEMORY_ENV),
both with torch, transformers, peft and safetensors imported before the measurement starts:
- peak memory: growth of the peak resident set (VmHWM reset just before the merge) over what
  the process held then, divided by the base's largest file;
- wall time of the merge and save, the median of `reps` runs per path, alternating.
The old path is what `loraflow export` did before: the base loaded in fp32, PEFT's
`merge_and_unload`, a cast to bf16, `save_pretrained`. Both outputs are compared tensor by tensor.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.assets import DEMO_BASE  # shipped in git: only its tokenizer is used
from bench.measure import Figure, median
from bench.workers import MEMORY_ENV, run_worker, worker_main

MiB = 1 << 20
GOAL = 2.5  # peak growth / largest base file


@dataclass(frozen=True)
class BaseShape:
    """The random base: a Llama of this shape, saved in files of about shard_mb."""

    hidden: int = 1024
    intermediate: int = 2816
    layers: int = 12
    heads: int = 16
    shard_mb: int = 100
    vocab: int | None = None  # None: the demo tokenizer's

    def describe(self) -> str:
        return (
            f"Llama-shaped bf16 base (hidden {self.hidden}, MLP {self.intermediate}, "
            f"{self.layers} layers), ~{self.shard_mb} MB files"
        )


FIGURE_10 = BaseShape()
# A 1.2B base (`python -m bench.export_big --size 1b`; 7b is the largest exported here).
LARGE = BaseShape(hidden=2048, intermediate=5632, layers=24, heads=16, shard_mb=1000)


def write_random_base(out: Path, shape: BaseShape, seed: int = 0) -> dict:
    """The base written file by file from its meta skeleton (one file in memory at a time),
    with a random LoRA adapter beside it in out/adapter. Returns sizes."""
    import torch
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    from models.export.shards import INDEX

    tokenizer = AutoTokenizer.from_pretrained(str(DEMO_BASE))
    config = LlamaConfig(
        vocab_size=shape.vocab or len(tokenizer),
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.heads,
        tie_word_embeddings=False,
        dtype="bfloat16",
    )
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    generator = torch.Generator().manual_seed(seed)
    files: list[list[tuple[str, tuple]]] = [[]]
    size = 0
    for name, param in skeleton.state_dict().items():
        if files[-1] and size + param.numel() * 2 > shape.shard_mb * 10**6:
            files.append([])
            size = 0
        files[-1].append((name, tuple(param.shape)))
        size += param.numel() * 2
    base = out / "base"
    base.mkdir(parents=True)
    weight_map = {}
    for i, tensors in enumerate(files):
        name = f"model-{i + 1:05d}-of-{len(files):05d}.safetensors"
        random = {k: (torch.randn(s, generator=generator) * 0.02).bfloat16() for k, s in tensors}
        save_file(random, str(base / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in random})
        del random
    (base / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config.save_pretrained(base)
    tokenizer.save_pretrained(base)

    lora = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM")
    params = sum(p.numel() for p in skeleton.parameters())  # the base's, before PEFT adds any
    adapted = get_peft_model(skeleton, lora)
    state = get_peft_model_state_dict(adapted)
    adapter = out / "adapter"
    adapter.mkdir()
    save_file(
        {k: torch.randn(v.shape, generator=generator) * 0.02 for k, v in state.items()},
        str(adapter / "adapter_model.safetensors"),
    )
    adapted.peft_config["default"].save_pretrained(str(adapter))
    tokenizer.save_pretrained(adapter)
    shards = [p.stat().st_size for p in base.glob("*.safetensors")]
    largest_adapted = max(p.numel() for n, p in skeleton.named_parameters() if "proj" in n)
    return {
        "base_bytes": sum(shards),
        "files": len(shards),
        "largest_file_bytes": max(shards),
        "adapter_bytes": (adapter / "adapter_model.safetensors").stat().st_size,
        "largest_adapted": largest_adapted,
        "params": params,
    }


def _work(path: str, tmp: str, max_shard_size: str) -> dict:
    import peft  # noqa: F401 - both paths start with the same libraries loaded
    import safetensors.torch  # noqa: F401
    import torch
    import transformers  # noqa: F401

    from models.base_model.loading import load_base
    from models.export.merge import merge_adapter
    from models.training.memory import peak_rss_bytes, reset_peak_rss, rss_bytes

    base, adapter, out = Path(tmp, "base"), Path(tmp, "adapter"), Path(tmp, f"out-{path}")
    before = rss_bytes()
    reset_peak_rss()  # VmHWM := VmRSS now
    started = time.perf_counter()
    if path == "streamed":
        merge_adapter(
            base_model=str(base), adapter_dir=adapter, out_dir=out, max_shard_size=max_shard_size
        )
    else:  # what `loraflow export` did before the streamed merge
        from peft import PeftModel
        from transformers import AutoTokenizer

        model, _ = load_base(str(base), dtype=torch.float32)
        merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
        merged = merged.to(torch.bfloat16)
        merged.save_pretrained(out, max_shard_size=max_shard_size)
        AutoTokenizer.from_pretrained(str(adapter)).save_pretrained(out)
    seconds = time.perf_counter() - started
    return {"path": path, "growth_bytes": peak_rss_bytes() - before, "seconds": seconds}


def compare_outputs(tmp: Path) -> tuple[int, float]:
    """(tensors compared, max abs difference) between the two paths' exports, file by file."""
    from safetensors import safe_open

    from models.export.shards import checkpoint_files

    old = {}
    for path in checkpoint_files(tmp / "out-peft"):
        with safe_open(str(path), "pt") as f:
            old.update({k: path for k in f.keys()})  # noqa: SIM118 - not a dict
    worst, count = 0.0, 0
    for path in checkpoint_files(tmp / "out-streamed"):
        with safe_open(str(path), "pt") as f:
            for key in f.keys():  # noqa: SIM118 - not a dict
                with safe_open(str(old[key]), "pt") as g:
                    a, b = f.get_tensor(key).float(), g.get_tensor(key).float()
                worst = max(worst, (a - b).abs().max().item())
                count += 1
    return count, worst


def run(
    shape: BaseShape = FIGURE_10, *, reps: int = 2, paths: tuple[str, ...] = ("peft", "streamed")
) -> Figure:
    from models.export.merge import export_peak_bytes

    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        sizes = run_worker(
            "bench.export", {"build": asdict(shape), "tmp": tmp}, env=MEMORY_ENV, timeout=1800
        )
        runs: dict[str, list[dict]] = {p: [] for p in paths}
        for _ in range(reps):
            for path in paths:
                request = {"path": path, "tmp": tmp, "max_shard_size": f"{shape.shard_mb}MB"}
                runs[path].append(run_worker("bench.export", request, env=MEMORY_ENV))
        compared = compare_outputs(Path(tmp)) if len(paths) == 2 else (0, 0.0)
    largest = sizes["largest_file_bytes"]
    growth = {p: max(r["growth_bytes"] for r in runs[p]) for p in paths}
    seconds = {p: median([r["seconds"] for r in runs[p]]) for p in paths}
    ratio = {p: growth[p] / largest for p in paths}
    estimate = export_peak_bytes(largest, sizes["largest_adapted"], sizes["adapter_bytes"])
    lines = [
        f"{shape.describe()}: {sizes['params'] / 1e6:,.0f}M params, "
        f"{sizes['base_bytes'] / MiB:,.0f} MiB in {sizes['files']} files (largest "
        f"{largest / MiB:,.0f} MiB); LoRA r=8 on all linear layers; a fresh process per run",
        "| path | peak RSS growth MiB | / largest file | / base | wall s (median) |",
        "|---|---|---|---|---|",
    ]
    for p in paths:
        lines.append(
            f"| {p} | {growth[p] / MiB:,.0f} | {ratio[p]:.2f}x | "
            f"{growth[p] / sizes['base_bytes']:.2f}x | {seconds[p]:.1f} |"
        )
    lines.append(f"`loraflow plan`'s estimate for the streamed export: {estimate / MiB:,.0f} MiB")
    if compared[0]:
        lines.append(f"outputs: {compared[0]} tensors, max abs difference {compared[1]:.1e}")
    streamed = "streamed"
    met = ratio[streamed] <= GOAL and ("peft" not in paths or seconds[streamed] <= seconds["peft"])
    measured = (
        f"streamed: peak growth {ratio[streamed]:.2f}x the largest file, {seconds[streamed]:.1f} s"
    )
    if "peft" in paths:
        measured += f" (PEFT path: {ratio['peft']:.2f}x, {seconds['peft']:.1f} s)"
    return Figure(
        number=10,
        name=f"merge-and-export peak memory and time ({sizes['base_bytes'] / MiB:,.0f} MiB base)",
        measured=measured,
        goal=f"<= {GOAL}x the largest file; time no worse than the PEFT path",
        command="python -m bench --only export",
        details={
            "sizes": sizes,
            "runs": runs,
            "growth_ratio": ratio,
            "estimate_bytes": estimate,
            "compared": compared,
            "goal_met": met,
        },
        lines=lines,
    )


def _entry(tmp: str, build: dict | None = None, **request) -> dict:
    if build is not None:
        return write_random_base(Path(tmp), BaseShape(**build))
    return _work(tmp=tmp, **request)


if __name__ == "__main__":
    worker_main(_entry)

"""Figure 16: data at scale: preparing a large chat training set, and the first training step.

Generated chat data in the demo's vocabulary (`write_chat_data`: 12 messages a conversation, about
340 tokens with the demo's chat template), at each size of SIZES (10,000 and 200,000
conversations; BENCH_DATA_SCALE_SIZES=10000,200000,1000000 adds a million). For each size, in
fresh worker processes (memory figures under bench.workers.MEMORY_ENV):

- cold: nothing prepared. The check stage's data part (both splits prepared,
  models.data.prepared.prepared_reports) and then training (models.training.train.train_adapter,
  one step of LoRA on the demo base, which maps the prepared train split): seconds to the end of
  the first training step, the preparation's tokens/s, peak RSS (the process, and the largest of
  its tokenizing processes);
- warm: the same again with the preparation in place (the rerun of unchanged data);
- bare: the demo tokenizer alone, batched (`tokenizer(list_of_texts)`, its own threads), on the
  same conversations already rendered: the rate this stage cannot beat.

Prompt/completion data at the largest size (`write_prompt_completion_data`) is prepared cold as
well, for its tokens/s. Before this figure, 10,000 conversations took 2 min 40 s to check and
2 min 45 s more to train 3 steps (the tokenizing twice), and 200,000 were still in the check after
18 minutes (issue 32).
"""

from __future__ import annotations

import json
import os
import resource
import tempfile
import time
from pathlib import Path

from bench.assets import DEMO_BASE, TARGETS
from bench.measure import Figure
from bench.workers import MEMORY_ENV, run_worker, worker_main

SIZES = (10_000, 200_000)
MESSAGES = 12  # 6 questions, 6 answers
EVAL = 200
TEMPLATE = Path(__file__).resolve().parents[1] / "demo" / "chat-template.jinja"
GOAL_COLD_S, GOAL_WARM_S, GOAL_RSS_RATIO, GOAL_RATE_SHARE = 300.0, 20.0, 1.25, 0.5


def _words(rng, n_rows: int, low: int, high: int) -> list[str]:
    from demo.task import TASK_WORDS

    lengths = rng.integers(low, high + 1, n_rows)
    picks = rng.integers(0, len(TASK_WORDS), int(lengths.sum()))
    words = [TASK_WORDS[i] for i in picks.tolist()]
    out, at = [], 0
    for n in lengths.tolist():
        out.append(" ".join(words[at : at + n]))
        at += n
    return out


def _write_rows(path: Path, make_row, n: int, seed: int, block: int = 20_000) -> None:
    import numpy as np

    rng = np.random.default_rng(seed)
    with path.open("w", encoding="utf-8") as f:
        for start in range(0, n, block):
            f.writelines(json.dumps(r) + "\n" for r in make_row(rng, min(block, n - start)))


def _chat_rows(rng, n: int) -> list[dict]:
    texts = _words(rng, n * MESSAGES, 14, 33)
    return [
        {
            "messages": [
                {"role": "user" if k % 2 == 0 else "assistant", "content": texts[i * MESSAGES + k]}
                for k in range(MESSAGES)
            ]
        }
        for i in range(n)
    ]


def _pc_rows(rng, n: int) -> list[dict]:
    prompts, answers = _words(rng, n, 4, 12), _words(rng, n, 1, 6)
    return [
        {"prompt": f"{p}\nAnswer:", "completion": f" {a}"}
        for p, a in zip(prompts, answers, strict=True)
    ]


def write_chat_data(out_dir: str | Path, n: int, seed: int = 0) -> Path:
    """train.jsonl of n 12-message conversations (demo words) and eval.jsonl of EVAL more."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_rows(out / "train.jsonl", _chat_rows, n, seed)
    _write_rows(out / "eval.jsonl", _chat_rows, EVAL, seed + 1)
    return out


def write_prompt_completion_data(out_dir: str | Path, n: int, seed: int = 0) -> Path:
    """train.jsonl of n prompt/completion rows (demo words) and eval.jsonl of EVAL more."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_rows(out / "train.jsonl", _pc_rows, n, seed)
    _write_rows(out / "eval.jsonl", _pc_rows, EVAL, seed + 1)
    return out


def _data_spec(data_dir: str, fmt: str):
    from models.config.specs import DataSpec

    if fmt == "chat":
        return DataSpec(path=data_dir, format="chat", chat_template=str(TEMPLATE), max_seq_len=512)
    return DataSpec(path=data_dir, max_seq_len=128)


def _peak_rss() -> tuple[int, int]:
    """(this process, the largest of its waited-for children) peak RSS in bytes."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return own, children


def _worker(*, phase: str, data_dir: str, cache: str, fmt: str = "chat") -> dict:
    os.environ["LORAFLOW_PREPARED_DIR"] = cache  # the entry point's choice, as a user sets it
    from models.base_model.loading import load_tokenizer
    from models.data.chat import prepare_tokenizer

    data = _data_spec(data_dir, fmt)
    tok = prepare_tokenizer(load_tokenizer(str(DEMO_BASE)), data, str(DEMO_BASE))
    if phase == "bare":
        return _bare_rate(tok, data)
    started = time.perf_counter()
    from models.data.prepared import prepared_reports

    reports = prepared_reports(data, tok)
    prepared_s = time.perf_counter() - started
    meta = json.loads((Path(cache) / reports[0].prepared_key / "meta.json").read_text())
    result = {"prepare_s": prepared_s, "tokens": meta["tokens"], "examples": meta["examples"]}
    if phase != "prepare":
        result["first_step_s"] = _first_step(data, started)
    result["rss"], result["children_rss"] = _peak_rss()
    return result


def _first_step(data, started: float) -> float:
    from transformers import TrainerCallback

    from models.config.specs import TrainSpec
    from models.methods import AdapterSpec
    from models.training.train import train_adapter

    first: list[float] = []

    class FirstStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            first.append(time.perf_counter())

    spec = TrainSpec(
        base_model=str(DEMO_BASE),
        data=data,
        method="lora",
        adapter=AdapterSpec(r=8, alpha=16.0, dropout=0.0, target_modules=TARGETS, seed=0),
        max_steps=1,
        learning_rate=1e-3,
        batch_size=8,
        device="cpu",
    )
    with tempfile.TemporaryDirectory() as out:
        train_adapter(spec, output_dir=out, save=False, callbacks=[FirstStep()])
    return first[0] - started


def _bare_rate(tok, data, limit: int = 20_000) -> dict:
    """The tokenizer's batched rate on the rendered conversations (rendering not timed)."""
    from models.data.formats import read_rows

    texts = []
    for _, row in read_rows(data.train_path):
        texts.append(tok.apply_chat_template(row["messages"], tokenize=False))
        if len(texts) == limit:
            break
    started = time.perf_counter()
    tokens = 0
    for at in range(0, len(texts), 2000):
        ids = tok(texts[at : at + 2000], add_special_tokens=False)["input_ids"]
        tokens += sum(len(i) for i in ids)
    seconds = time.perf_counter() - started
    return {"tokens": tokens, "seconds": seconds, "rate": tokens / seconds}


def _sizes() -> list[int]:
    raw = os.environ.get("BENCH_DATA_SCALE_SIZES")
    return [int(s) for s in raw.split(",")] if raw else list(SIZES)


def run() -> Figure:
    sizes = _sizes()
    rows, lines = {}, []
    with tempfile.TemporaryDirectory(prefix="bench-data-scale-") as tmp:
        for n in sizes:
            data_dir = write_chat_data(Path(tmp) / f"chat-{n}", n)
            cache = str(Path(tmp) / f"prepared-{n}")
            request = {"data_dir": str(data_dir), "cache": cache}
            cold = run_worker(
                "bench.data_scale", {**request, "phase": "cold"}, env=MEMORY_ENV, timeout=3600
            )
            warm = run_worker(
                "bench.data_scale", {**request, "phase": "warm"}, env=MEMORY_ENV, timeout=900
            )
            bare = run_worker("bench.data_scale", {**request, "phase": "bare"}, timeout=900)
            rows[n] = {"cold": cold, "warm": warm, "bare": bare}
            rate = cold["tokens"] / cold["prepare_s"]
            lines.append(
                f"{n:,} conversations, {cold['tokens'] / 1e6:.1f}M tokens "
                f"({(data_dir / 'train.jsonl').stat().st_size / 1e6:.0f} MB JSONL): prepared "
                f"cold in {cold['prepare_s']:.0f} s ({rate:,.0f} tokens/s; bare batched "
                f"tokenizer {bare['rate']:,.0f} tokens/s, {rate / bare['rate']:.2f}x); first "
                f"step cold {cold['first_step_s']:.0f} s, warm {warm['first_step_s']:.1f} s; "
                f"peak RSS {cold['rss'] / 2**20:.0f} MB cold (tokenizing processes "
                f"{cold['children_rss'] / 2**20:.0f} MB each at most), "
                f"{warm['rss'] / 2**20:.0f} MB warm"
            )
            for path in Path(tmp).glob(f"*-{n}"):
                _remove(path)
        largest = max(sizes)
        pc_dir = write_prompt_completion_data(Path(tmp) / "pc", largest)
        pc = run_worker(
            "bench.data_scale",
            {
                "data_dir": str(pc_dir),
                "cache": str(Path(tmp) / "pc-cache"),
                "phase": "prepare",
                "fmt": "prompt_completion",
            },
            timeout=3600,
        )
        lines.append(
            f"prompt/completion, {largest:,} rows, {pc['tokens'] / 1e6:.1f}M tokens: prepared "
            f"cold in {pc['prepare_s']:.1f} s ({pc['tokens'] / pc['prepare_s']:,.0f} tokens/s)"
        )
    small, big = rows[min(sizes)], rows[largest]
    rss_ratio = max(big["cold"]["rss"], big["warm"]["rss"]) / max(
        small["cold"]["rss"], small["warm"]["rss"]
    )
    share = (big["cold"]["tokens"] / big["cold"]["prepare_s"]) / big["bare"]["rate"]
    goal_met = (
        big["cold"]["first_step_s"] <= GOAL_COLD_S
        and big["warm"]["first_step_s"] <= GOAL_WARM_S
        and rss_ratio <= GOAL_RSS_RATIO
        and share >= GOAL_RATE_SHARE
    )
    lines.append(f"peak RSS {largest:,} vs {min(sizes):,} conversations: {rss_ratio:.2f}x")
    return Figure(
        number=16,
        name=f"data at scale: {largest:,} chat conversations, first training step cold / warm",
        measured=(
            f"{big['cold']['first_step_s']:.0f} s cold / {big['warm']['first_step_s']:.1f} s "
            f"warm; prep {share:.2f}x bare tokenizer; RSS {rss_ratio:.2f}x of "
            f"{min(sizes):,}"
        ),
        goal=(
            f"<= {GOAL_COLD_S:.0f} s cold, <= {GOAL_WARM_S:.0f} s warm, RSS <= "
            f"{GOAL_RSS_RATIO}x, prep >= {GOAL_RATE_SHARE}x bare"
        ),
        command="python -m bench --only data_scale",
        details={"sizes": rows, "rss_ratio": rss_ratio, "rate_share": share, "goal_met": goal_met},
        lines=lines,
    )


def _remove(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    worker_main(_worker)

"""The benchmark suite's command line and load report (the benchmarks themselves are not tests:
`make bench`)."""

import subprocess
import sys
import time

import pytest

import bench.measure
from bench.__main__ import BENCHMARKS, TRIALS, parse_args, table, verdicts
from bench.measure import Figure, OtherLoad


def test_parse_args_selects_benchmarks():
    assert parse_args([]).only == list(BENCHMARKS)
    args = parse_args(["--only", "memory,flops", "--json"])
    assert args.only == ["memory", "flops"] and args.json
    assert "compile" in TRIALS and "compile" not in parse_args([]).only  # trials: by name only
    assert parse_args(["--only", "compile"]).only == ["compile"]
    with pytest.raises(SystemExit):
        parse_args(["--only", "nope"])


def test_table_has_one_row_per_figure():
    figure = Figure(3, "memory", "1.2x (|diff| 0)", "report", "python -m bench --only memory")
    figure.details["other_load"] = 0.04
    rows = table([figure])
    assert rows.splitlines()[2] == (
        "| 3 | memory | 1.2x (\\|diff\\| 0) | report | 4% | `python -m bench --only memory` |"
    )


def _figure(number: int, met: bool | None, load: float) -> Figure:
    figure = Figure(number, "f", "m", ">= 1.5x", "c", details={"other_load": load})
    if met is not None:
        figure.details["goal_met"] = met
    return figure


def test_verdicts_say_whether_a_missed_goal_was_measured_on_a_busy_machine():
    lines = verdicts(
        [
            _figure(1, True, 0.0),
            _figure(2, False, 0.45),
            _figure(3, None, 0.0),
            _figure(4, False, 0.01),
        ]
    )
    assert lines[0] == "goal 1: met (>= 1.5x)"
    assert lines[1].startswith(
        "goal 2: missed (>= 1.5x) while other processes used 45% of the CPUs"
    )
    assert lines[2] == "goal 4: MISSED (>= 1.5x) on a quiet machine"
    assert len(lines) == 3


def test_other_load_excludes_our_own_cpu(monkeypatch):
    # (all CPUs' busy seconds, ours) before and after: 3 s busy in all, 2 s of it ours.
    readings = iter([(100.0, 10.0), (103.0, 12.0)])
    monkeypatch.setattr(bench.measure, "_cpu_seconds", lambda: next(readings))
    monkeypatch.setattr(bench.measure.os, "cpu_count", lambda: 2)
    with OtherLoad() as load:
        time.sleep(0.5)
    assert 0.5 <= load.share <= 1.0  # 1 s of others over >= 0.5 s x 2 CPUs
    assert not load.quiet


def test_other_load_sees_a_busy_process_that_is_not_ours():
    spin = "import time\nend = time.time() + 3\nwhile time.time() < end: pass"
    busy = subprocess.Popen([sys.executable, "-c", spin])
    try:
        time.sleep(0.3)
        with OtherLoad() as load:
            time.sleep(1.5)
    finally:
        busy.kill()
        busy.wait()
    # One of the CPUs spun the whole time (not yet a waited-for child of ours, so not "ours").
    assert load.share >= 0.8 / (bench.measure.os.cpu_count() or 1)


def test_step_clock_times_the_trainings_it_is_given_and_patches_nothing(
    tiny_base, tiny_data, tmp_path
):
    """The overhead figure's two arms, 4 steps each: a step clock passed as a Trainer callback
    to each gives one time per step pair; Trainer itself stays as it was."""
    import dataclasses

    from transformers import Trainer

    from bench.clock import StepClock
    from bench.plain import train_plain
    from models.training.train import train_adapter
    from tests.models.training.test_train import tiny_spec

    training_step = Trainer.training_step
    clock = StepClock()
    spec = dataclasses.replace(tiny_spec(tiny_base, tiny_data), warmup_steps=1)
    runs = []
    for arm in ("pipeline", "plain"):
        clock.reset()
        if arm == "pipeline":
            train_adapter(spec, output_dir=tmp_path / arm, callbacks=[clock])
        else:
            train_plain(spec, output_dir=str(tmp_path / arm), callbacks=[clock])
        runs.append({"step_seconds": clock.step_seconds()})
        assert len(runs[-1]["step_seconds"]) == 3 and min(runs[-1]["step_seconds"]) > 0
    assert len(bench.measure.paired_step_ratios(runs[0:1], runs[1:2])) == 3
    assert Trainer.training_step is training_step
    clock.reset()
    train_adapter(spec, output_dir=tmp_path / "unclocked")  # a training it was not given
    assert clock.step_seconds() == []


def test_gpu_check_lever_rows_on_cpu(tmp_path):
    """Every lever of bench.gpu_levers trains on the CPU path of `make gpu-check` (tiny model)
    or says why not; the exact ones keep the baseline's loss."""
    from bench.gpu_check import TINY_RUN, Check, Row
    from bench.gpu_levers import lever_rows

    rows = {r.check: r for r in lever_rows(Check(tmp_path, TINY_RUN, "cpu"), Row)}
    assert list(rows) == [
        "lever baseline (all off)",
        "lever chunked_loss on",
        "lever kernels liger",
        "lever compile",
        "lever packing",
        "lever batch_tokens 2x",
        "lever gradient_checkpointing on",
    ]
    assert rows["lever compile"].status == "not run"
    assert rows["lever compile"].note == "needs a CUDA device"
    assert rows["lever kernels liger"].status == "not run"
    base_loss = rows["lever baseline (all off)"].note
    for name in ("chunked_loss on", "packing", "gradient_checkpointing on"):
        row = rows[f"lever {name}"]
        assert row.status == "ok" and row.tokens_per_second > 0
        assert row.note.endswith(f"{base_loss} vs {base_loss.split()[-1]}"), row.note
    assert rows["lever batch_tokens 2x"].status == "ok"


def test_gpu_wheels_carry_what_a_worker_imports_and_the_machine_lacks():
    from bench.gpu_wheels import ROOT, to_carry

    carried = to_carry(ROOT / "requirements.lock", ROOT / "requirements-gpu.txt")
    # The pipeline's orchestration, tracking client and data versioning, at the lock's pins.
    for name in ("prefect", "mlflow-skinny", "sqlalchemy", "alembic", "dvc", "pydantic"):
        assert name in carried, name
    assert carried["liger-kernel"] == "0.8.5"  # the gpu extra
    assert "transformers" in carried  # the machine's 5.17 is too old for loraflow
    # Not the tracking server and web UI, the test tools, or what the machine has.
    for name in ("mlflow", "psycopg2-binary", "pytest", "moto", "ruff", "torch", "numpy"):
        assert name not in carried, name
    lock = (ROOT / "requirements.lock").read_text()
    assert all(
        f"\n{name}=={version}\n" in f"\n{lock}"
        for name, version in carried.items()
        if name != "liger-kernel"
    )


def test_plain_chat_baseline_sees_the_pipelines_tokens_on_smollm2(smollm2, tmp_path):
    """Figure 14 pairs step i of both arms as the same batch: the plain script's own rendering
    of the conversations (the chat template, loss on the assistant turn) must give the pipeline's
    input ids and labels, token for token."""
    from transformers import AutoTokenizer

    from bench.plain import tokenize_chat_jsonl
    from demo import build_smollm2_task_data
    from models.data.chat import bos_prefix, chat_features
    from models.data.formats import read_rows

    build_smollm2_task_data(tmp_path, n_train=12, n_eval=2)
    tokenizer = AutoTokenizer.from_pretrained(str(smollm2))
    plain = tokenize_chat_jsonl(tmp_path / "train.jsonl", tokenizer, max_seq_len=96)
    rows = [row for _, row in read_rows(tmp_path / "train.jsonl")]
    assert len(plain) == len(rows) == 12
    prefix = bos_prefix(tokenizer)
    for row, feature in zip(rows, plain, strict=True):
        ids, labels = chat_features(tokenizer, row["messages"], "assistant", prefix, at="row")
        assert feature == {"input_ids": ids, "labels": labels}
        assert -100 in labels and tokenizer.eos_token_id in labels  # the turn end is trained

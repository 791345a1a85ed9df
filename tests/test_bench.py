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

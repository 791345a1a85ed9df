"""The Python parts of bench/gpu_session.sh: the pipeline row's answer, and the closing summary.

    python -m bench.gpu_report answer --model loraflow-demo-gpu --run-rc 0 --json pipeline.json
    python -m bench.gpu_report summary OUT_DIR

`answer` runs in the pipeline row's scratch project after `loraflow run`: the champion (else
the newest version) of the registered model, loaded through `mlflow.pyfunc` (the serving path;
its own default device, the CPU) answers one prompt; the version's run says what it trained on
(training.device, training.dtype, env.gpu) and its evaluation metrics. `summary` reads the
session's JSON files and prints one table of the figures issue 36 asks for, in the order of its
goals, each next to its goal. Exit code 0 either way: a missed goal is a figure, not an error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

PROMPT = "Reverse the words: red cat sun\nAnswer:"
# Issue 36's goals. The 0.85B LoRA row today: 33,665 tokens/s, 14.0% MFU (H200, batch 8 x 512,
# docs/performance.md "On a GPU").
TODAY_085B = 33_665
GOALS = {
    "lora_085b_tokens": 2 * TODAY_085B,
    "lora_085b_mfu": 0.40,
    "lora_8b_mfu": 0.30,
    "qlora_step_ratio": 1.3,
}


def answer(model_name: str, run_rc: int, out: Path) -> int:
    """The registered model answering through mlflow.pyfunc, and what its run recorded."""
    import mlflow
    from mlflow import MlflowClient

    record: dict = {"run_rc": run_rc, "model": model_name}
    try:
        client = MlflowClient()
        try:
            version = client.get_model_version_by_alias(model_name, "champion")
            record["alias"] = "champion"
        except mlflow.exceptions.MlflowException:
            versions = client.search_model_versions(f"name = '{model_name}'")
            version = max(versions, key=lambda v: int(v.version))
            record["alias"] = "newest (no champion)"
        run = client.get_run(version.run_id)
        record |= {
            "version": version.version,
            "training.device": run.data.params.get("training.device"),
            "training.dtype": run.data.params.get("training.dtype"),
            "env.gpu": run.data.tags.get("env.gpu"),
            "metrics": {k: v for k, v in run.data.metrics.items() if "exact_match" in k},
        }
        model = mlflow.pyfunc.load_model(f"models:/{model_name}/{version.version}")
        record["answer"] = model.predict([PROMPT], params={"max_new_tokens": 16})[0]
    except Exception as e:  # noqa: BLE001 - recorded: the summary says what failed
        from bench.gpu_check import error_note

        record["error"] = error_note(e, width=200)
    print(json.dumps(record, indent=1))
    out.write_text(json.dumps(record))
    return 0


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _rows(table: dict | None) -> dict[str, dict]:
    return {r["check"]: r for r in (table or {}).get("rows", [])}


def _verdict(value: float | None, goal: float, at_most: bool = False) -> str:
    if value is None:
        return "not measured"
    return "met" if (value <= goal if at_most else value >= goal) else "MISSED"


def summary_lines(out: Path) -> list[str]:
    """The summary table of a session's $OUT (gpu_check.json, gpu_8b.json, pipeline.json)."""
    check, big, pipeline = (
        _read(out / name) for name in ("gpu_check.json", "gpu_8b.json", "pipeline.json")
    )
    rows = _rows(check)
    setup = check or big or {}
    lines, dry = [], setup.get("device") == "cpu"
    if dry:
        lines.append("CPU dry run (--device cpu --tiny): not GPU figures, so no verdicts.")
    lines += [
        f"device: {setup.get('device', '?')}, torch {setup.get('torch', '?')}",
        "| goal (issue 36) | figure | goal | verdict |",
        "|---|---|---|---|",
    ]
    goals = [*_lora_085b(rows), _lora_8b(_rows(big)), _qlora(rows), _pipeline(pipeline)]
    if dry:
        goals = [(*cells[:3], "(dry run)") for cells in goals]
    return _tables(check, big) + lines + [f"| {' | '.join(cells)} |" for cells in goals]


def _tables(*parts: dict | None) -> list[str]:
    """gpu-check's rows of the session's parts, as one table."""
    from bench.gpu_check import Row, table

    rows = [Row(**r) for part in parts if part for r in part.get("rows", [])]
    return [table(rows), ""] if rows else []


def _lora_085b(rows: dict[str, dict]) -> list[tuple[str, str, str, str]]:
    """Goals 1 and 2 from the fastest LoRA row of the run (levers off, or a lever on)."""
    lora = [
        r
        for name, r in rows.items()
        if r["status"] == "ok"
        and r["tokens_per_second"]
        and (name == "train lora" or name.startswith("lever "))
    ]
    best = max(lora, key=lambda r: r["tokens_per_second"], default=None)
    tokens_goal = f">= {GOALS['lora_085b_tokens']:,} tokens/s"
    if best is None:
        return [
            ("0.85B LoRA at least 2x today", "no LoRA row ran", tokens_goal, "not measured"),
            ("0.85B LoRA MFU (stretch)", "no LoRA row ran", ">= 40%", "not measured"),
        ]
    tps, name = best["tokens_per_second"], best["check"]
    off = rows.get("train lora", {}).get("tokens_per_second")
    figure = f"{tps:,.0f} tokens/s ({name}; {tps / TODAY_085B:.2f}x today's {TODAY_085B:,})"
    figure += f"; levers off {off:,.0f}" if off else ""
    return [
        (
            "0.85B LoRA at least 2x today",
            figure,
            tokens_goal,
            _verdict(tps, GOALS["lora_085b_tokens"]),
        ),
        (
            "0.85B LoRA MFU (stretch)",
            f"{best['mfu']:.1%} ({name})",
            ">= 40%",
            _verdict(best["mfu"], GOALS["lora_085b_mfu"]),
        ),
    ]


def _lora_8b(rows: dict[str, dict]) -> tuple[str, str, str, str]:
    row = next(iter(rows.values()), None)
    if row is None or row["status"] != "ok":
        figure = f"{row['status']}: {row['note']}" if row else "did not run"
        return ("8B-class LoRA MFU", figure, ">= 30%", "not measured")
    batch = row["note"].split(";")[0]  # "batch 4 x 2048, gradient checkpointing off"
    figure = f"{row['mfu']:.1%}, {row['tokens_per_second']:,.0f} tokens/s ({batch})"
    return ("8B-class LoRA MFU", figure, ">= 30%", _verdict(row["mfu"], GOALS["lora_8b_mfu"]))


def _qlora(rows: dict[str, dict]) -> tuple[str, str, str, str]:
    row = rows.get("qlora / lora time per step")
    ratio = row.get("ratio") if row and row["status"] == "ok" else None
    if ratio is not None:
        figure = f"{ratio:.2f}x"
    else:
        figure = f"{row['status']}: {row['note']}" if row else "did not run"
    verdict = _verdict(ratio, GOALS["qlora_step_ratio"], at_most=True)
    return ("QLoRA time per step vs LoRA's (0.85B)", figure, "<= 1.3x", verdict)


def _pipeline(p: dict | None) -> tuple[str, str, str, str]:
    return ("pipeline row on CUDA", _pipeline_figure(p), "completes on cuda", _pipeline_verdict(p))


def _pipeline_figure(p: dict | None) -> str:
    if p is None:
        return "did not run (no pipeline.json)"
    if "error" in p:
        return f"loraflow run exit {p['run_rc']}; answer failed: {p['error']}"
    metrics = ", ".join(f"{k} {v:.3f}" for k, v in sorted(p.get("metrics", {}).items()))
    return (
        f"loraflow run exit {p['run_rc']}; version {p['version']} ({p['alias']}), trained on "
        f"{p['training.device']} {p['training.dtype']} ({p['env.gpu']}); {metrics}; "
        f"pyfunc answer {p['answer']!r}"
    )


def _pipeline_verdict(p: dict | None) -> str:
    if p is None or "error" in p:
        return "MISSED" if p else "not measured"
    return "met" if p["run_rc"] == 0 and p["training.device"] == "cuda" else "MISSED"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_report", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    ans = sub.add_parser("answer", help="the pipeline row's pyfunc answer, as JSON")
    ans.add_argument("--model", required=True, help="registered model name")
    ans.add_argument("--run-rc", type=int, required=True, help="`loraflow run`'s exit code")
    ans.add_argument("--json", type=Path, required=True)
    summ = sub.add_parser("summary", help="the goals table of a session's output folder")
    summ.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    if args.command == "answer":
        return answer(args.model, args.run_rc, args.json)
    print("\n".join(summary_lines(args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

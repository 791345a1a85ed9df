"""The `loraflow` command line: run the pipeline, check inputs, prepare the demo assets."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from pydantic import ValidationError

from models.config.file import load_config
from models.config.run import ConfigError
from models.errors import LoraflowError
from tasks.lib.environment import quiet_environ
from tasks.lib.prefect_api import prefect_api


def _error(message: str, code: int = 2) -> int:
    print(f"loraflow: error: {message}", file=sys.stderr)
    return code


def cmd_check(args) -> int:
    """The flows' check stage, called directly: no Prefect engine, nothing trained or written."""
    from tasks.preflight import check_inputs, check_services

    config = load_config(args.config, args.overrides)
    splits = check_inputs.fn(config.check_spec(config.base_model))
    check_services.fn(export_to=config.export.destination)
    for split in splits:
        print(f"{split.name}: {split.examples} examples ({split.path})")
        for warning in split.warnings:
            print(f"  warning: {warning}")
    print("ok")
    return 0


def cmd_run(args) -> int:
    config = load_config(args.config, args.overrides)
    with prefect_api() as api_ready:
        same = None
        if args.skip_unchanged:
            # Decided before anything imports torch; the skip is recorded as a flow run.
            from flows.unchanged import record_skip, unchanged_champion_of

            same = unchanged_champion_of(config)
        if same:
            api_ready()
            summary = record_skip(config, *same)
        else:
            from flows.console import checks_first
            from flows.finetune import finetune

            api_ready()
            with checks_first():
                summary = finetune(config, skip_if_unchanged=args.skip_unchanged)
    print_summary(summary, config.registry.promote_metric)
    return 0


def cmd_promote(args) -> int:
    from flows.console import checks_first
    from flows.promote import promote_version

    with checks_first():
        decision = promote_version(
            model_name=args.model,
            version=args.version,
            metric=args.metric,
            min_improvement=args.min_improvement,
            force=args.force,
        )
    verdict = "champion moved" if decision.moves_champion else "champion unchanged"
    print(f"{args.model}: {verdict}: {decision.reason}")
    return 0


def cmd_reproduce(args) -> int:
    from flows.console import checks_first
    from flows.reproduce import reproduce

    with checks_first():
        got = reproduce(args.target)
    return print_reproduction(got)


# Exit codes of `loraflow reproduce` (2 stays the CLI's own error code).
REPRODUCED, NOT_REPRODUCED, EQUIVALENT_ONLY = 0, 1, 3


def print_reproduction(got) -> int:
    """The outcome of `reproduce` on the console; returns the command's exit code."""
    if got.outcome == "identical":
        print(f"run {got.run_id}: reproduced, adapter sha256 {got.rebuilt_sha256} identical")
        for line in got.differences:  # package differences that did not change the result
            print(f"  note: {line}")
        return REPRODUCED
    if got.outcome == "equivalent":
        print(
            f"run {got.run_id}: equivalent, not identical: adapter sha256 recorded "
            f"{got.recorded_sha256[:16]}, rebuilt {got.rebuilt_sha256[:16]}"
        )
        if got.max_abs_diff is not None:
            print(f"  max abs tensor difference {got.max_abs_diff:.3g}")
        for line in got.metrics:
            print(f"  {line}")
        if got.environment:
            print("  likely cause, the hardware / numeric environment differs:")
            for line in got.environment:
                print(f"    {line}")
        else:
            print("  no hardware / numeric environment difference was recorded")
        for line in got.differences[1:]:  # package differences
            print(f"  note: {line}")
        return EQUIVALENT_ONLY
    print(f"run {got.run_id}: NOT reproduced")
    for line in got.differences:
        print(f"  {line}")
    if got.max_abs_diff is not None:
        print(f"  max abs tensor difference {got.max_abs_diff:.3g}")
    for line in got.environment:
        print(f"  environment {line}")
    return NOT_REPRODUCED


def print_summary(summary, metric: str) -> None:
    print()
    if summary.skipped:
        print(f"{summary.model_name}: {summary.reason}; nothing trained")
        print(
            f"  data md5 {summary.data_md5}, champion adapter sha256 {summary.adapter_sha256[:16]}"
        )
        return
    print_report(summary.report)
    verdict = "promoted to champion" if summary.promoted else "not promoted"
    print(f"\nregistered {summary.model_name} v{summary.version} (challenger): {verdict}")
    for part in summary.reason.split("; "):  # the gate's findings, one a line
        print(f"  {part}")
    print(
        f"  mlflow run {summary.run_id}, data md5 {summary.data_md5}, "
        f"adapter sha256 {summary.adapter_sha256[:16]}"
    )


def print_report(report: dict[str, dict[str, float]]) -> None:
    """The evaluation table: one row per model, then (with slices) per model and slice, with the
    slice's example count."""
    from models.evaluation.evaluate import split_slices

    rows = [
        (name if part is None else f"{name}/{part}", figures)
        for name, m in report.items()
        for part, figures in split_slices(m).items()
    ]
    rows.sort(key=lambda row: ("/" in row[0], row[0].partition("/")[2]))
    sliced = len(rows) > len(report)
    columns = [c for c in rows[0][1] if c != "examples" or sliced]
    width = max(10, *(len(name) + 1 for name, _ in rows))
    widths = [max(len(c) + 1, 7) for c in columns]
    print(
        f"{'model':<{width}}" + "".join(f" {c:>{w}}" for c, w in zip(columns, widths, strict=True))
    )
    for name, figures in rows:
        cells = (_figure(c, figures[c]) for c in columns)
        print(
            f"{name:<{width}}" + "".join(f" {v:>{w}}" for v, w in zip(cells, widths, strict=True))
        )


def _figure(column: str, value: float) -> str:
    if column == "examples":
        return str(int(value))
    return f"{value:.4f}" if column == "eval_loss" else f"{value:.3f}"


def cmd_compare(args) -> int:
    config = load_config(args.config, args.overrides)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    from flows.compare import compare
    from flows.console import checks_first

    with checks_first():
        rows = compare(config, methods)
    base = rows[0]
    print(
        f"\nbase model: eval_loss {base['base_eval_loss']:.4f}, "
        f"exact_match {base['base_exact_match']:.3f}\n"
    )
    header = (
        "method",
        "trainable",
        "adapter bytes",
        "peak MiB",
        "tokens/s",
        "seconds",
        "eval_loss",
        "exact_match",
        "version",
    )
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        cells = (
            r["method"],
            f"{r['trainable_params']:,}",
            f"{r['adapter_bytes']:,}",
            r["peak_memory_mib"],
            r["tokens_per_second"],
            r["train_seconds"],
            f"{r['eval_loss']:.4f}",
            f"{r['exact_match']:.3f}",
            f"v{r['version']}",
        )
        print("| " + " | ".join(str(c) for c in cells) + " |")
    return 0


def cmd_export(args) -> int:
    from models.config.run import ExportConfig
    from models.config.schema import describe_error

    try:
        export = ExportConfig(
            enabled=True,
            to=args.to,
            dtype=args.dtype,
            max_shard_size=args.max_shard_size,
            concurrency=args.concurrency,
            sse=args.sse,
        )
    except ValidationError as e:
        first = e.errors()[0]
        message = describe_error(ExportConfig, first)
        raise ConfigError(f"--{first['loc'][0]}: {message}") from None
    from flows.console import checks_first
    from flows.export import export_model

    with checks_first():
        result = export_model(args.model, export)
    print(
        f"\nexported {args.model} to {result['uri']}/ ({result['files']} files + manifest.json; "
        f"{len(result['uploaded'])} sent)\nmanifest sha256 {result['manifest_sha256']}"
    )
    return 0


def cmd_plan(args) -> int:
    import json

    from models.training.plan import plan_run

    config = load_config(args.config, args.overrides)
    plan = plan_run(config.train_spec(config.base_model))
    if args.json:
        print(json.dumps(plan.to_dict(), sort_keys=True))
        return 0
    gib = 1024**3
    print(f"method            {plan.method}")
    print(f"trainable params  {plan.trainable_params:,} ({plan.trainable_percent:.4f}%)")
    print(f"total params      {plan.total_params:,}")
    print(f"adapter size      {plan.adapter_bytes:,} bytes ({plan.adapter_bytes / 2**20:.2f} MiB)")
    print(
        f"est. peak memory  {plan.est_peak_memory_bytes / gib:.2f} GiB at batch "
        f"{plan.batch_size} x seq {plan.seq_len} in {plan.dtype} (weights "
        f"{plan.base_weight_bytes / gib:.2f}, optimizer {plan.optimizer_state_bytes / gib:.2f}, "
        f"activations {plan.activation_bytes / gib:.2f} GiB)"
    )
    print(
        f"est. export peak {plan.est_export_peak_bytes / gib:.2f} GiB (merge-and-export: one "
        "base shard, the adapter, one layer's fp32 copies)"
    )
    return 0


def cmd_demo_assets(args) -> int:
    from demo import build_demo_data, build_smollm2_task_data
    from demo.chat import build_demo_chat_data

    # One directory, one DVC version each (data.dvc, data-chat.dvc, data-smollm2.dvc): building
    # one demo's data leaves the others' versions untouched.
    for label, build, data_dir in (
        ("demo data", build_demo_data, Path(args.data_dir)),
        ("demo chat data", build_demo_chat_data, Path(args.chat_dir)),
        ("SmolLM2 example data", build_smollm2_task_data, Path("data-smollm2")),
    ):
        if args.force or not (data_dir / "train.jsonl").is_file():
            counts = build(data_dir)
            print(f"{label}: {counts} examples in {data_dir}")
        else:
            print(f"{label}: {data_dir} exists, kept")
    if args.model_dir is None:
        # Float results differ between CPUs, so the base is built once and shipped in git.
        print("demo base model: demo/base (shipped in git, the same bytes everywhere)")
        return 0
    from demo import build_demo_base_model

    model_dir = Path(args.model_dir)
    if args.force or not (model_dir / "config.json").is_file():
        build_demo_base_model(model_dir)
        print(f"demo base model: built in {model_dir} (bytes depend on the CPU; see docs/demo.md)")
    else:
        print(f"demo base model: {model_dir} exists, kept")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="loraflow", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(name: str, help: str):
        sp = sub.add_parser(name, help=help)
        sp.add_argument("config", help="YAML run config, e.g. configs/demo.yaml")
        sp.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config value (dotted key, YAML value), e.g. --set adapter.r=16",
        )
        return sp

    run = with_config("run", "run the fine-tune pipeline")
    run.add_argument(
        "--skip-unchanged",
        action="store_true",
        help="train nothing if data, config and base model equal the champion's",
    )
    run.set_defaults(func=cmd_run)
    rep = sub.add_parser(
        "reproduce",
        help="retrain a recorded run and compare: exit 0 identical bytes, 3 equivalent "
        "(metrics within tolerance), 1 different",
    )
    rep.add_argument("target", help="MLflow run id, models:/<name>/<n> or models:/<name>@<alias>")
    rep.set_defaults(func=cmd_reproduce)
    prom = sub.add_parser("promote", help="re-run the promotion gate for a version, or force it")
    prom.add_argument("--model", required=True, help="registered model name")
    prom.add_argument("--version", default=None, help="version number (default: the challenger)")
    prom.add_argument("--metric", default="exact_match")
    prom.add_argument("--min-improvement", type=float, default=0.0)
    prom.add_argument("--force", action="store_true", help="move champion even if not better")
    prom.set_defaults(func=cmd_promote)
    with_config("check", "validate config, base model and data; train nothing").set_defaults(
        func=cmd_check
    )
    comp = with_config("compare", "train several methods on the same data and budget; compare")
    comp.add_argument(
        "--methods",
        required=True,
        help="comma-separated adapter methods, e.g. lora,lora_fa,vera,delta_lora,lora_plus,dora",
    )
    comp.set_defaults(func=cmd_compare)
    exp = sub.add_parser("export", help="merge a registered adapter into its base, publish to S3")
    exp.add_argument("--model", required=True, help="models:/<name>@<alias> or models:/<name>/<n>")
    exp.add_argument("--to", required=True, help="s3://bucket/prefix")
    exp.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    exp.add_argument("--max-shard-size", default="2GB")
    exp.add_argument("--concurrency", type=int, default=8)
    exp.add_argument("--sse", choices=["AES256", "aws:kms"], default=None)
    exp.set_defaults(func=cmd_export)
    plan = with_config("plan", "what a run would train and need, without loading weights")
    plan.add_argument("--json", action="store_true", help="print one JSON object")
    plan.set_defaults(func=cmd_plan)
    demo = sub.add_parser(
        "demo-assets", help="build the demo data, plain and chat (the base model is shipped)"
    )
    demo.add_argument("--data-dir", default="data")
    demo.add_argument(
        "--chat-dir", default="data-chat", help="the chat demo's data (configs/demo-chat.yaml)"
    )
    demo.add_argument(
        "--model-dir",
        default=None,
        help="also rebuild the demo base model into this directory (the shipped one is demo/base)",
    )
    demo.add_argument("--force", action="store_true", help="rebuild even if present")
    demo.set_defaults(func=cmd_demo_assets)
    return p


def main(argv: list[str] | None = None) -> int:
    quiet_environ()
    # Deprecations raised inside transformers' own code paths are not actionable for users.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers(\.|$)")
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except LoraflowError as e:
        return _error(str(e))
    except Exception as e:  # noqa: BLE001 - the traceback is in the Prefect logs above
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return _error(f"run failed: {type(e).__name__}: {first}", 1)
    except KeyboardInterrupt:
        return _error("interrupted", 130)


if __name__ == "__main__":
    sys.exit(main())

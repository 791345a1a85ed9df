"""The `loraflow` command line: parse, call a flow (or a check), print through flows.console."""

from __future__ import annotations

import argparse
import getpass
import os
import signal
import sys
import threading
import warnings
from pathlib import Path

from models.config.file import load_config
from models.config.run import ExportConfig, RegistryConfig, validate_section
from models.errors import LoraflowError
from tasks.lib.environment import quiet_environ


class Terminated(KeyboardInterrupt):
    """SIGTERM (a pod stopped, `kill`, a scheduler's timeout) as an exception, the way Ctrl-C is.

    Inside a flow run Prefect's engine catches SIGTERM itself (the run is marked crashed, the
    hooks mark its MLflow run failed) and then delivers it again to the handler that was there
    before: with Python's default the process dies on the spot, skipping its exit handlers, and
    the temporary Prefect server it started keeps running. With this one the command returns,
    and that server is stopped at exit."""


def _terminated(signum, frame):
    raise Terminated


def _error(message: str, code: int = 2) -> int:
    print(f"loraflow: error: {message}", file=sys.stderr)
    return code


def cmd_check(args) -> int:
    """The flows' check stage, called directly: no Prefect engine, nothing trained or written."""
    from models.base_model.paths import canonical_base
    from tasks.base_model import checked_base, fetch_base_model
    from tasks.preflight import check_inputs, check_services

    config = load_config(args.config, args.overrides)
    # An s3:// base is checked on its local copy, fetched into the cache a run then reuses.
    weights = fetch_base_model.fn(base_model=canonical_base(config.base_model))
    splits = check_inputs.fn(config.check_spec(checked_base(config.base_model, weights)))
    check_services.fn(export_to=config.export.destination)
    for split in splits:
        print(f"{split.name}: {split.examples} examples ({split.path})")
        for warning in split.warnings:
            print(f"  warning: {warning}")
    print("ok")
    return 0


def cmd_run(args) -> int:
    from flows.console import checks_first, print_summary

    config = load_config(args.config, args.overrides)  # a bad config: one line, before imports
    if config.registry.approval == "required":
        from tasks.approval import prefect_server

        prefect_server()  # a reviewer must reach the waiting run: not on a temporary server
    from flows.finetune import finetune

    with checks_first():
        summary = finetune(config, skip_if_unchanged=args.skip_unchanged)
    print_summary(summary)
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


def cmd_answer(args) -> int:
    """`loraflow approve|reject`: answer the flow run waiting for sign-off of a version."""
    from flows.console import print_answer
    from tasks.approval import answer_signoff, settled_status

    flow_run_id = answer_signoff(
        model_name=args.model,
        version=args.version,
        decision=args.decision,
        by=args.by,
        comment=args.comment,
    )
    status = settled_status(args.model, args.version, args.wait)
    print_answer(args.model, args.version, args.decision, flow_run_id, status)
    return 0


def cmd_notify(args) -> int:
    """`loraflow notify`: new data under a source; deployments triggered on it start."""
    from tasks.approval import notify_landed

    resource = notify_landed(args.source)
    print(f"loraflow.data.landed emitted for {resource}")
    return 0


def cmd_reproduce(args) -> int:
    from flows.console import checks_first, print_reproduction
    from flows.reproduce import reproduce

    with checks_first():
        got = reproduce(args.target)
    return print_reproduction(got)


def cmd_compare(args) -> int:
    from flows.compare import compare
    from flows.console import checks_first, print_comparison

    config = load_config(args.config, args.overrides)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    with checks_first():
        rows = compare(config, methods)
    print_comparison(rows)
    return 0


def cmd_export(args) -> int:
    from flows.console import checks_first, print_export
    from flows.export import export_model

    flags = ("to", "dtype", "max_shard_size", "concurrency", "sse")
    raw = {"enabled": True, **{k: getattr(args, k) for k in flags if getattr(args, k) is not None}}
    export = validate_section(ExportConfig, raw, source="loraflow export")
    with checks_first():
        result = export_model(args.model, export)
    print_export(args.model, result)
    return 0


def cmd_plan(args) -> int:
    import json

    from flows.console import print_plan
    from models.training.plan import card_fit, plan_run
    from tasks.lib.base_cache import local_base

    config = load_config(args.config, args.overrides)
    # An s3:// base: only its config.json (and model code) is fetched; plan loads no weights.
    plan = plan_run(config.train_spec(local_base(config.base_model, config_only=True)))
    if args.json:
        print(json.dumps({**plan.to_dict(), **card_fit(plan, args.gpu_memory)}, sort_keys=True))
    else:
        print_plan(plan, args.gpu_memory)
    return 0


def cmd_demo_assets(args) -> int:
    from demo import build_demo_data, build_smollm2_task_data
    from demo.chat import build_demo_chat_data
    from tasks.data import cache_version

    # One directory, one DVC version each (data.dvc, data-chat.dvc, data-smollm2.dvc), each cached
    # when built.
    for label, build, data_dir in (
        ("demo data", build_demo_data, Path(args.data_dir)),
        ("demo chat data", build_demo_chat_data, Path(args.chat_dir)),
        ("SmolLM2 example data", build_smollm2_task_data, Path("data-smollm2")),
    ):
        if args.force or not (data_dir / "train.jsonl").is_file():
            counts = build(data_dir)
            print(f"{label}: {counts} examples in {data_dir}")
            cache_version(data_dir)
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


def _default(section, name: str):
    """A flag's default: the config field's own, so the command and a config file agree."""
    return section.model_fields[name].default


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
    prom.add_argument("--metric", default=_default(RegistryConfig, "promote_metric"))
    prom.add_argument(
        "--min-improvement", type=float, default=_default(RegistryConfig, "min_improvement")
    )
    prom.add_argument("--force", action="store_true", help="move champion even if not better")
    prom.set_defaults(func=cmd_promote)
    for decision, verb in (("approve", "approve"), ("reject", "reject")):
        answer = sub.add_parser(
            verb, help=f"{verb} a version waiting for sign-off (registry.approval: required)"
        )
        answer.add_argument("model", help="registered model name")
        answer.add_argument("version", help="version number")
        answer.add_argument("--comment", default="", help="why (recorded as approval.comment)")
        answer.add_argument(
            "--by",
            default=os.environ.get("MLFLOW_TRACKING_USERNAME") or getpass.getuser(),
            help="reviewer recorded as approval.by (default: MLFLOW_TRACKING_USERNAME, "
            "else the login name)",
        )
        answer.add_argument(
            "--wait",
            type=float,
            default=120.0,
            help="seconds to wait for the run to record the decision (default 120)",
        )
        answer.set_defaults(func=cmd_answer, decision=decision)
    notify = sub.add_parser(
        "notify",
        help="emit loraflow.data.landed for a data source: triggered deployments start",
    )
    notify.add_argument("source", help="s3://bucket/prefix/ where new objects landed")
    notify.set_defaults(func=cmd_notify)
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
    # Defaults and allowed values are ExportConfig's (checked there, one line on a bad value).
    exp.add_argument("--to", required=True, help="s3://bucket/prefix")
    exp.add_argument("--dtype", help=f"default {_default(ExportConfig, 'dtype')}")
    exp.add_argument("--max-shard-size", help=f"default {_default(ExportConfig, 'max_shard_size')}")
    exp.add_argument(
        "--concurrency", type=int, help=f"default {_default(ExportConfig, 'concurrency')}"
    )
    exp.add_argument("--sse", help="AES256 or aws:kms (default: none)")
    exp.set_defaults(func=cmd_export)
    plan = with_config("plan", "what a run would train and need, without loading weights")
    plan.add_argument("--json", action="store_true", help="print one JSON object")
    plan.add_argument("--gpu-memory", help="one card's memory, e.g. 80GiB: is sharding needed")
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
    # Not where a host set its own handler, nor off the main thread (a caller embedding us).
    own = threading.current_thread() is threading.main_thread() and (
        signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    )
    if own:
        signal.signal(signal.SIGTERM, _terminated)
    try:
        return _dispatch(args)
    finally:
        if own:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _dispatch(args) -> int:
    try:
        return args.func(args)
    except LoraflowError as e:
        return _error(str(e))
    except Exception as e:  # noqa: BLE001 - the traceback is in the Prefect logs above
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return _error(f"run failed: {type(e).__name__}: {first}", 1)
    except Terminated:
        return _error("terminated (SIGTERM)", 128 + signal.SIGTERM)
    except KeyboardInterrupt:
        return _error("interrupted", 130)


if __name__ == "__main__":
    sys.exit(main())

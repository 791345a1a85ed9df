"""The console of a `loraflow` command: Prefect's records while a flow runs its checks, and the
tables and verdicts the command prints at the end.

A refused input is reported in one line, printed by the CLI. The console records of a flow run
that stopped in its check stage (server started, flow run begun, the check failed with its
traceback, the flow failed) would only bury that line. So until the flow is past its checks,
Prefect's console records are held: they are printed, in order, as soon as the run is past them
or the flow returns, and dropped when the flow stops at a check with a loraflow error. Only the
console is affected: Prefect's API log (the dashboard) keeps every record.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from models.errors import LoraflowError
from tasks.check_stage import CHECK_TASKS


def past_checks(record: logging.LogRecord) -> bool:
    """Whether a record shows the run is past its check stage: a later task speaks, or the
    flow itself warns (e.g. about a split) outside a failure report."""
    task = getattr(record, "task_name", None)
    if task is not None:
        return task not in CHECK_TASKS
    return (
        hasattr(record, "flow_run_name")
        and record.levelno >= logging.WARNING
        and record.exc_info is None
        and not record.getMessage().startswith("Finished in state")
    )


class HoldUntilChecked(logging.Filter):
    """On a console handler: holds records until the run is past its checks."""

    def __init__(self, handler: logging.Handler):
        super().__init__()
        self.handler = handler
        self.held: list[logging.LogRecord] | None = []

    def filter(self, record: logging.LogRecord) -> bool:
        if self.held is None:
            return True
        if past_checks(record):
            self.release()
            return True
        self.held.append(record)
        return False

    def release(self) -> None:
        held, self.held = self.held or [], None
        for record in held:
            self.handler.handle(record)


@contextlib.contextmanager
def checks_first() -> Iterator[None]:
    """Around a flow call from the CLI: a run refused by its checks prints nothing of its own."""
    from prefect.logging.configuration import ensure_logging_setup
    from prefect.logging.handlers import PrefectConsoleHandler

    ensure_logging_setup()
    holds = [
        HoldUntilChecked(h)
        for h in logging.getLogger().handlers
        if isinstance(h, PrefectConsoleHandler)
    ]
    for hold in holds:
        hold.handler.addFilter(hold)
    refused = False
    try:
        yield
    except LoraflowError:
        refused = all(hold.held is not None for hold in holds)
        if refused:
            # The failed run's event (tasks.events) may still be queued when the process exits:
            # Prefect's events worker sends it at exit, before atexit handlers run, and warns
            # that it is "still processing items" while it does. It still reports errors.
            logging.getLogger("EventsWorker").setLevel(logging.ERROR)
        raise
    finally:
        for hold in holds:
            hold.handler.removeFilter(hold)
            if refused:
                # The command's output is its one line from here on: what Prefect says later on
                # this console (its temporary API stopping when the process exits) is dropped.
                hold.handler.addFilter(_nothing)
            else:
                hold.release()


def _nothing(record: logging.LogRecord) -> bool:
    return False


# What the commands print: the tables and verdicts a person reads at the end of a command.

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


def print_summary(summary) -> None:
    """`loraflow run`: the evaluation table and the promotion verdict, or what was skipped."""
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


def print_comparison(rows: list[dict]) -> None:
    """`loraflow compare`: the base model's figures, then one Markdown row per method."""
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


def print_export(model_uri: str, result: dict) -> None:
    """`loraflow export`: where the merged model went and its manifest's hash."""
    print(
        f"\nexported {model_uri} to {result['uri']}/ ({result['files']} files + manifest.json; "
        f"{len(result['uploaded'])} sent)\nmanifest sha256 {result['manifest_sha256']}"
    )


def print_plan(plan, gpu_memory: str | None = None) -> None:
    """`loraflow plan`: what a run would train and the memory it needs (models.training.plan);
    per rank when sharded, and whether a card of `gpu_memory` (e.g. 80GiB) needs sharding."""
    from models.training.plan import sharding_notes

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
        "base shard, the adapter, one layer's fp32 copies)" + sharding_notes(plan, gpu_memory)
    )


def print_answer(model_name: str, version: str, decision: str, flow_run_id: str, status: str):
    """`loraflow approve|reject`: the answer given, and what the waiting run recorded."""
    done = {"approve": "approved", "reject": "rejected"}[decision]
    if status == "pending":
        print(
            f"{model_name} v{version}: {done} (flow run {flow_run_id} resumed); it has not "
            "recorded the decision yet: see approval.status on the version"
        )
        return
    print(f"{model_name} v{version}: approval.status {status} (flow run {flow_run_id})")

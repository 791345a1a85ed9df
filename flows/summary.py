"""What a fine-tune run reports: its summary, and the name of its flow run.

A skipped run (tasks.retrain_check) and a trained one return the same summary.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from models.config.run import LoraflowConfig


@dataclass
class RunSummary:
    """What one fine-tune produced and decided."""

    run_id: str
    model_name: str
    version: str
    promoted: bool
    reason: str
    data_md5: str
    adapter_sha256: str
    adapter_dir: str
    report: dict[str, dict[str, float]]
    skipped: bool = False


def run_name(config: LoraflowConfig, data_md5: str = "") -> str:
    """Flow-run name in the dashboard: method, base model and, once versioned, the data md5."""
    base = Path(str(config.base_model).rstrip("/")).name
    return f"{config.adapter.method}-{base}" + (f"-{data_md5[:8]}" if data_md5 else "")


def skipped_summary(config: LoraflowConfig, champion, data_md5: str) -> RunSummary:
    """The summary of a run that found its inputs equal to `champion`'s (a VersionRef)."""
    return RunSummary(
        run_id=champion.run_id,
        model_name=config.registry.model_name,
        version=champion.version,
        promoted=False,
        reason=f"unchanged since champion v{champion.version}, skipped",
        data_md5=data_md5,
        adapter_sha256=champion.tags.get("adapter_sha256", ""),
        adapter_dir="",
        report={},
        skipped=True,
    )

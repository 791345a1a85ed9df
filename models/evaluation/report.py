"""Pictures for people: the method comparison (eval metric against trainable parameters) and a
training's loss curve."""

from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    # No "Software" metadata: the same figures give the same PNG bytes.
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata={"Software": None})
    _pyplot().close(fig)
    return path


def plot_metric_vs_params(rows: list[dict], metric: str, path: str | Path, title: str) -> Path:
    """Scatter of `metric` against trainable params (log scale), one labelled point per method."""
    fig, ax = _pyplot().subplots(figsize=(6.4, 4.2), dpi=120)
    stacked: dict[tuple, int] = {}
    for row in rows:
        point = (row["trainable_params"], row[metric])
        # Methods with the same parameter count (lora, delta_lora, lora_plus) share a point:
        # stack their labels instead of printing them over each other.
        nth = stacked.get(point, 0)
        stacked[point] = nth + 1
        ax.scatter(*point, s=36)
        ax.annotate(
            row["method"], point, textcoords="offset points", xytext=(6, 4 + 11 * nth), fontsize=9
        )
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel(metric)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def plot_loss_curve(history: list[tuple[int, float]], path: str | Path, title: str) -> Path:
    """The training loss against the optimizer step, as a small PNG (a few tens of kB, so that it
    can travel inline in a dashboard page)."""
    if not history:
        raise ValueError("no loss was logged: nothing to plot (logging_steps > max_steps?)")
    steps, losses = zip(*history, strict=True)
    fig, ax = _pyplot().subplots(figsize=(6.0, 3.4), dpi=100)
    ax.plot(steps, losses, marker="." if len(steps) < 40 else None, linewidth=1.5)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)

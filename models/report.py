"""The method comparison as a picture: eval metric against trainable parameters."""

from __future__ import annotations

from pathlib import Path


def plot_metric_vs_params(rows: list[dict], metric: str, path: str | Path, title: str) -> Path:
    """Scatter of `metric` against trainable params (log scale), one labelled point per method."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
    return path

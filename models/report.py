"""The method comparison as a picture: eval metric against trainable parameters."""

from __future__ import annotations

from pathlib import Path


def plot_metric_vs_params(rows: list[dict], metric: str, path: str | Path, title: str) -> Path:
    """Scatter of `metric` against trainable params (log scale), one labelled point per method."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for row in rows:
        ax.scatter(row["trainable_params"], row[metric], s=36)
        ax.annotate(
            row["method"],
            (row["trainable_params"], row[metric]),
            textcoords="offset points",
            xytext=(5, 4),
            fontsize=9,
        )
    ax.set_xscale("log")
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

"""Training curves as PNG files (matplotlib, headless), for stage directories and the UI."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path


def plot_curves(
    path: str | os.PathLike,
    title: str,
    panels: Sequence[tuple[str, Sequence[tuple[str, Sequence[float], Sequence[float]]]]],
) -> Path:
    """One row of panels; each panel is (y label, [(series label, xs, ys), ...]). Returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (ylabel, series) in zip(axes[0], panels):
        for label, xs, ys in series:
            if len(xs):
                ax.plot(list(xs), list(ys), marker="o" if len(xs) <= 30 else None, ms=3, label=label)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path

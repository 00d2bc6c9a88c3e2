"""Where the benchmarks' PNG plots go, and the two steps every plot shares: a headless pyplot and saving."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def pyplot():
    """`matplotlib.pyplot` on the Agg backend (no display needed), imported only when a plot is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path: Path) -> Path:
    """Lay out, write `path` (creating its folder), close the figure and print where it went."""
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    pyplot().close(figure)
    print(f"\nSaved {path}", flush=True)
    return path

"""Rich tables (and an optional PNG) for a metrics summary from :func:`model.train.metrics.summarise`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table


def glyphs(classes: tuple[str, ...]) -> dict[str, str]:
    """One distinct letter per class, from its words' initials, last word first, then its other
    letters, so the timeline can be read without colour.

    >>> glyphs(("WALKING", "WALKING_UPSTAIRS", "SITTING", "STANDING", "Null"))
    {'WALKING': 'W', 'WALKING_UPSTAIRS': 'U', 'SITTING': 'S', 'STANDING': 'T', 'Null': 'N'}
    """
    taken: dict[str, str] = {}
    for name in classes:
        words = name.replace("-", "_").replace(" ", "_").split("_")[::-1]
        candidates = [w[:1] for w in words] + list(name) + list("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
        letter = next(c.upper() for c in candidates if c.isalnum() and c.upper() not in taken.values())
        taken[name] = letter
    return taken


def per_class_table(metrics: dict[str, Any], classes: tuple[str, ...], title: str = "") -> Table:
    table = Table("class", "precision", "recall", "F1", "windows", title=title or None)
    for name in classes:
        row = metrics["per_class"].get(name)
        if row:
            table.add_row(
                name,
                f"{row['precision']:.3f}",
                f"{row['recall']:.3f}",
                f"{row['f1']:.3f}",
                str(row["support"]),
            )
    return table


def confusion_table(metrics: dict[str, Any], classes: tuple[str, ...]) -> Table:
    """Rows are the truth, columns the prediction (headed by each class's letter, which the rows
    spell out: cut names such as WALKING_ and WALKING_ told nothing); the diagonal is bold."""
    letter = glyphs(classes)
    table = Table("truth \\ predicted", *(letter[c] for c in classes), title="confusion matrix")
    for i, row in enumerate(metrics["confusion"]):
        cells = [
            f"[bold green]{v}[/]" if i == j else (f"[red]{v}[/]" if v else "·") for j, v in enumerate(row)
        ]
        table.add_row(f"{letter[classes[i]]} {classes[i]}", *cells)
    return table


def save_confusion_png(metrics: dict[str, Any], classes: tuple[str, ...], path: Path) -> Path | None:
    """A confusion-matrix picture, when matplotlib is installed (it is optional)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(1 + 0.7 * len(classes), 1 + 0.6 * len(classes)))
    ax.imshow(metrics["confusion"], cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    for i, row in enumerate(metrics["confusion"]):
        for j, v in enumerate(row):
            ax.text(j, i, str(v), ha="center", va="center", fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("truth")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

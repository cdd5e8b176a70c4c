"""Classification metrics, reported the same way by training, evaluation and replay."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support


def summarise(
    y_true: np.ndarray, y_pred: np.ndarray, classes: tuple[str, ...], null_class: int | None = None
) -> dict[str, Any]:
    """Accuracy, weighted and macro F1, per-class scores and the confusion matrix.

    With ``null_class`` (OPPORTUNITY's Null), also weighted and macro F1 over the other classes
    (``f1_weighted_no_null``, ``f1_macro_no_null``): a window of another class predicted as Null
    still counts as a miss, but Null's own score, which dominates the weighted mean, is left out.
    """
    labels = list(range(len(classes)))
    nan = float("nan")
    no_null = {"f1_weighted_no_null": nan, "f1_macro_no_null": nan} if null_class is not None else {}
    if len(y_true) == 0:
        return {
            "accuracy": float("nan"),
            "f1_weighted": float("nan"),
            "f1_macro": float("nan"),
            "n_windows": 0,
            "per_class": {},
            "confusion": [],
        } | no_null
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    summary = {
        "accuracy": float(np.mean(y_true == y_pred)),
        "f1_weighted": float(f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)),
        "f1_macro": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "n_windows": len(y_true),
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(classes, precision, recall, f1, support, strict=True)
        },
        "confusion": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }
    if null_class is not None:
        others = [c for c in labels if c != null_class]
        for average in ("weighted", "macro"):
            score = f1_score(y_true, y_pred, labels=others, average=average, zero_division=0)
            summary[f"f1_{average}_no_null"] = float(score)
    return summary

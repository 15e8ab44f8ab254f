"""PNG plots for evaluation reports (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cxrtriage.models import metrics  # noqa: E402


def _save(fig: Any, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def confusion_matrix(out: Path, summary: dict[str, Any], names: list[str]) -> str:
    matrix = np.array([[summary["tn"], summary["fp"]], [summary["fn"], summary["tp"]]])
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, str(value), ha="center", va="center",
                color="white" if value > matrix.max() / 2 else "black", fontsize=14)
    ax.set_xticks([0, 1], names)
    ax.set_yticks([0, 1], names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"Confusion matrix at threshold {summary['threshold']:.3f}")
    return _save(fig, out / "confusion_matrix.png")


def roc(out: Path, y: np.ndarray, probs: np.ndarray, summary: dict[str, Any]) -> str:
    fpr, tpr, _ = metrics.roc_curve(y, probs)
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    low, high = summary["auroc_95ci"]
    ax.plot(fpr, tpr, label=f"AUROC {summary['auroc']:.3f} ({low:.3f}-{high:.3f})")
    ax.plot([0, 1], [0, 1], "--", color="gray")
    ax.scatter([1 - summary["specificity"]], [summary["sensitivity"]], color="red", zorder=3,
               label="operating point")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.legend(loc="lower right")
    ax.set_title("ROC curve")
    return _save(fig, out / "roc.png")


def precision_recall(out: Path, y: np.ndarray, probs: np.ndarray) -> str:
    precision, recall = metrics.precision_recall_curve(y, probs)
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    ax.plot(recall, precision)
    ax.set_xlabel("recall (sensitivity)")
    ax.set_ylabel("precision")
    ax.set_ylim(0, 1.02)
    ax.set_title("Precision-recall curve")
    return _save(fig, out / "precision_recall.png")


def reliability(out: Path, y: np.ndarray, probs: np.ndarray, ece: float) -> str:
    bins = metrics.reliability(y, probs)
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    ax.plot([0, 1], [0, 1], "--", color="gray")
    ax.plot([b[0] for b in bins], [b[1] for b in bins], "o-")
    ax.set_xlabel("mean predicted probability")
    ax.set_ylabel("observed frequency")
    ax.set_title(f"Reliability (ECE {ece:.3f})")
    return _save(fig, out / "reliability.png")


def training_curves(out: Path, history: list[dict[str, float]]) -> str:
    epochs = [h["epoch"] for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(8.4, 3.6))
    left.plot(epochs, [h["train_loss"] for h in history], label="train loss")
    left.plot(epochs, [h["val_loss"] for h in history], label="validation loss")
    left.set_xlabel("epoch")
    left.legend()
    right.plot(epochs, [h["val_auroc"] for h in history], label="validation AUROC")
    right.plot(epochs, [h["val_accuracy"] for h in history], label="validation accuracy @0.5")
    right.set_xlabel("epoch")
    right.legend()
    fig.suptitle("Training curves")
    return _save(fig, out / "training_curves.png")

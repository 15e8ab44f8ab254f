"""`cxrtriage evaluate PACKAGE DATA`: metrics at the package's operating threshold with bootstrap
intervals, calibration, and plots, written as a Markdown or HTML report."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from cxrtriage.errors import InvalidInputError
from cxrtriage.models import metrics, plots
from cxrtriage.models.data import discover
from cxrtriage.models.inference import Classifier
from cxrtriage.models.model_input import fit_to_square, load_gray


def summarize(y: np.ndarray, probs: np.ndarray, threshold: float) -> dict[str, Any]:
    """Every figure we report, at one threshold, with 95% bootstrap intervals."""
    auroc, low, high = metrics.bootstrap_auroc(y, probs)
    at = metrics.at_threshold(y, probs, threshold)
    out: dict[str, Any] = {"n_images": int(len(y)), "n_positive": int(y.sum()),
                           "auroc": auroc, "auroc_95ci": [low, high],
                           "ece": metrics.expected_calibration_error(y, probs), **at.as_dict()}
    for name in ("accuracy", "sensitivity", "specificity"):
        out[f"{name}_95ci"] = list(metrics.bootstrap_metric(y, probs, threshold, name))
    return out


def score(classifier: Classifier, paths: list[str]) -> tuple[np.ndarray, list[str]]:
    """Flag-label probabilities through the serving preprocessing; unreadable files are listed."""
    m = classifier.manifest
    flag_index = m.labels.index(m.flag_label)
    probs, skipped = [], []
    batch: list[np.ndarray] = []
    for path in tqdm(paths, desc="scoring", unit="img"):
        try:
            batch.append(fit_to_square(load_gray(path), m.input_size))
        except InvalidInputError:
            skipped.append(path)
            batch.append(np.zeros((m.input_size, m.input_size), dtype=np.float32))
    for start in range(0, len(batch), 64):
        probs.append(classifier.probabilities(np.stack(batch[start : start + 64]))[:, flag_index])
    return np.concatenate(probs) if probs else np.zeros(0), skipped


def _rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    def ci(name: str) -> str:
        low, high = summary[f"{name}_95ci"]
        return f"{summary[name]:.3f} ({low:.3f}-{high:.3f})"

    return [("images", str(summary["n_images"])), ("positives", str(summary["n_positive"])),
            ("AUROC (95% CI)", ci("auroc")), ("accuracy (95% CI)", ci("accuracy")),
            ("sensitivity (95% CI)", ci("sensitivity")), ("specificity (95% CI)", ci("specificity")),
            ("precision", f"{summary['precision']:.3f}"), ("F1", f"{summary['f1']:.3f}"),
            ("expected calibration error", f"{summary['ece']:.3f}"),
            ("threshold", f"{summary['threshold']:.4f}")]


def _markdown(title: str, rows: list[tuple[str, str]], images: list[str], notes: list[str]) -> str:
    lines = [f"# {title}", "", "| metric | value |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    lines += ["", *notes, ""] + [f"![{Path(i).stem}]({i})" for i in images]
    return "\n".join(lines) + "\n"


def _html(title: str, rows: list[tuple[str, str]], images: list[str], notes: list[str]) -> str:
    table = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in rows)
    figures = "".join(f'<figure><img src="{i}" width="480"></figure>' for i in images)
    paragraphs = "".join(f"<p>{html.escape(n)}</p>" for n in notes)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"</head><body><h1>{html.escape(title)}</h1><table>{table}</table>{paragraphs}"
            f"{figures}</body></html>\n")


def evaluate_package(package: Path, data: Path, output: Path, fmt: str = "markdown",
                     training_log: str | None = None) -> Path:
    classifier = Classifier(package)
    m = classifier.manifest
    samples = [s for s in discover(data) if s.label in m.labels]
    probs, skipped = score(classifier, [s.path for s in samples])
    keep = np.array([s.path not in set(skipped) for s in samples], dtype=bool)
    y = np.array([s.label == m.flag_label for s in samples], dtype=int)[keep]
    probs = probs[keep]
    summary = summarize(y, probs, m.threshold)
    output.mkdir(parents=True, exist_ok=True)
    images = [plots.confusion_matrix(output, summary, [f"not {m.flag_label}", m.flag_label]),
              plots.roc(output, y, probs, summary), plots.precision_recall(output, y, probs),
              plots.reliability(output, y, probs, summary["ece"])]
    log = Path(training_log) if training_log else package / "training_log.json"
    if log.is_file():
        images.append(plots.training_curves(output, json.loads(log.read_text())))
    notes = [f"Model {m.name} {m.version} on {data.name}: operating threshold {m.threshold:.4f} "
             f"({m.threshold_rule}); temperature {m.temperature:.3f} fitted on validation patients.",
             "Intervals are 95% percentile bootstrap intervals over images (1000 resamples)."]
    if skipped:
        notes.append(f"{len(skipped)} files could not be read and were left out.")
    (output / "metrics.json").write_text(json.dumps(summary, indent=2))
    title = f"Evaluation of {m.name} {m.version}"
    names = [Path(i).name for i in images]
    report = output / ("report.html" if fmt == "html" else "report.md")
    render = _html if fmt == "html" else _markdown
    report.write_text(render(title, _rows(summary), names, notes))
    return report

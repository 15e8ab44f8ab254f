"""`cxrtriage predict`: single images or folders, through the serving preprocessing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cxrtriage.dicom.gating import gate_image
from cxrtriage.dicom.preprocess import IMAGE_SUFFIXES, fit_to_square, load_gray
from cxrtriage.dicom.reading import read_dataset
from cxrtriage.errors import InvalidInputError
from cxrtriage.models.inference import Classifier


def expand(paths: list[Path]) -> list[Path]:
    """Files as given; folders walked for images and DICOM files (any other suffix)."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out += sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")
                          and p.suffix.lower() not in {".md", ".txt", ".json", ".csv", ".py"})
        else:
            out.append(path)
    return out


def _gate_note(path: Path) -> str:
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return ""
    decision = gate_image(read_dataset(path, stop_before_pixels=True))
    if not decision.accepted:
        return f"gate would skip: {decision.reason}"
    return "; ".join(decision.warnings)


def predict_paths(paths: list[Path], package: Path, heatmaps: bool = False) -> list[dict[str, Any]]:
    classifier = Classifier(package)
    manifest = classifier.manifest
    rows: list[dict[str, Any]] = []
    for path in expand(paths):
        row: dict[str, Any] = {"path": str(path)}
        try:
            image = fit_to_square(load_gray(path), manifest.input_size)
            note = _gate_note(path)
        except InvalidInputError as exc:
            rows.append({**row, "error": str(exc), "note": str(exc)})
            continue
        pred = classifier.predict([path.name], image[np.newaxis])[0]
        best = max(pred.probabilities, key=lambda k: pred.probabilities[k])
        row.update(label=best, probability=pred.probabilities[manifest.flag_label],
                   probabilities=pred.probabilities, flagged=pred.flagged,
                   threshold=pred.threshold, note=note)
        if heatmaps:
            from cxrtriage.models.gradcam import save_heatmap

            row["heatmap"] = str(save_heatmap(classifier, image, path.with_suffix(".gradcam.png")))
        rows.append(row)
    return rows

"""`cxrtriage predict`: single images or folders, through the serving preprocessing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cxrtriage.dicom.gating import gate_image
from cxrtriage.dicom.preprocess import IMAGE_SUFFIXES, dataset_to_gray, fit_to_square, image_file_to_gray
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


def _load(path: Path) -> tuple[np.ndarray, str]:
    """The [0, 1] image and, for DICOM, what the worker's gate would say; each file read once."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return image_file_to_gray(path), ""
    ds = read_dataset(path)
    decision = gate_image(ds)
    note = f"gate would skip: {decision.reason}" if not decision.accepted else "; ".join(decision.warnings)
    return dataset_to_gray(ds), note


def predict_paths(paths: list[Path], package: Path, heatmaps: bool = False) -> list[dict[str, Any]]:
    classifier = Classifier(package)
    manifest = classifier.manifest
    rows: list[dict[str, Any]] = []
    for path in expand(paths):
        row: dict[str, Any] = {"path": str(path)}
        try:
            gray, note = _load(path)
            image = fit_to_square(gray, manifest.input_size)
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

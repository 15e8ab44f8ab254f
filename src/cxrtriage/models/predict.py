"""`cxrtriage predict`: single images or folders, through the serving preprocessing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cxrtriage.domain import Reason
from cxrtriage.models.examine import examine_file, note
from cxrtriage.models.heatmap import save_heatmap
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


def predict_paths(paths: list[Path], package: Path, heatmaps: bool = False) -> list[dict[str, Any]]:
    classifier = Classifier(package)
    manifest = classifier.manifest
    rows: list[dict[str, Any]] = []
    for path in expand(paths):
        row: dict[str, Any] = {"path": str(path)}
        item = examine_file(path, manifest, enforce_gate=False)
        if item.image is None:
            failed = item.failed or Reason.UNREADABLE_FILE
            rows.append({**row, "error": item.detail or failed.text, "note": failed.text})
            continue
        image = item.image
        if heatmaps:
            preds, cams = classifier.predict_with_heatmaps([path.name], image[np.newaxis])
            row["heatmap"] = str(save_heatmap(image, cams[0], path.with_suffix(".heatmap.png")))
        else:
            preds = classifier.predict([path.name], image[np.newaxis])
        pred = preds[0]
        best = max(pred.probabilities, key=lambda k: pred.probabilities[k])
        row.update(label=best, probability=pred.probabilities[manifest.flag_label],
                   probabilities=pred.probabilities, flagged=pred.flagged,
                   threshold=pred.threshold, note=note(item))
        rows.append(row)
    return rows

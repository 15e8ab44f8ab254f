"""`cxrtriage predict`: single images or folders, through the serving preprocessing.

A folder is read the way the worker reads a batch: the files are decoded and prepared in
`decoders` child processes while the model classifies the ones already prepared, `batch_size`
at a time. A few files are read in this process (starting children would cost more).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from cxrtriage.domain import Reason
from cxrtriage.models.examine import examine_file, note
from cxrtriage.models.heatmap import save_heatmap
from cxrtriage.models.inference import Classifier
from cxrtriage.models.manifest import Manifest

BATCH_SIZE = 16
DECODERS = 2
MIN_FILES_FOR_CHILDREN = 8


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


@dataclass(frozen=True)
class Prepared:
    """One file's model input, or why there is none; what crosses back from a child (no header)."""

    image: np.ndarray | None
    failed: Reason | None
    detail: str
    note: str


def prepare_file(path: Path, manifest: Manifest) -> Prepared:
    item = examine_file(path, manifest, enforce_gate=False)
    return Prepared(item.image, item.failed, item.detail, note(item))


def _single_threaded() -> None:
    """A decoder child runs torch (resizing) on one thread: with a thread per core in each child
    as well as in the classifying process, the threads spin waiting for cores the others hold
    (the floor read 9.4 images/s on 2 cores that way, 11.2 with this)."""
    import torch

    torch.set_num_threads(1)


def _prepared(files: list[Path], manifest: Manifest, decoders: int) -> Iterator[Prepared]:
    """Each file's `Prepared`, in order; decoded ahead in child processes when there are many."""
    if decoders < 1 or len(files) < MIN_FILES_FOR_CHILDREN:
        yield from (prepare_file(path, manifest) for path in files)
        return
    # Spawned, not forked: this process has started torch's threads.
    with ProcessPoolExecutor(decoders, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_single_threaded) as pool:
        yield from pool.map(prepare_file, files, [manifest] * len(files), chunksize=4)


def predict_paths(paths: list[Path], package: Path, heatmaps: bool = False,
                  batch_size: int = BATCH_SIZE, decoders: int = DECODERS) -> list[dict[str, Any]]:
    classifier = Classifier(package)
    manifest = classifier.manifest
    files = expand(paths)
    rows: list[dict[str, Any]] = []
    prepared = zip(files, _prepared(files, manifest, decoders), strict=True)
    while chunk := list(islice(prepared, batch_size)):
        ready = [(path, item) for path, item in chunk if item.image is not None]
        predictions: dict[Path, Any] = {}
        if ready:
            images = np.stack([item.image for _, item in ready])  # type: ignore[misc]
            names = [path.name for path, _ in ready]
            if heatmaps:
                preds, cams = classifier.predict_with_heatmaps(names, images)
                for (path, item), cam in zip(ready, cams, strict=True):
                    save_heatmap(item.image, cam, path.with_suffix(".heatmap.png"))  # type: ignore[arg-type]
            else:
                preds = classifier.predict(names, images)
            predictions = {path: pred for (path, _), pred in zip(ready, preds, strict=True)}
        for path, item in chunk:
            rows.append(_row(path, item, predictions.get(path), manifest, heatmaps))
    return rows


def _row(path: Path, item: Prepared, pred: Any, manifest: Manifest, heatmaps: bool) -> dict[str, Any]:
    row: dict[str, Any] = {"path": str(path)}
    if pred is None:
        failed = item.failed or Reason.UNREADABLE_FILE
        return {**row, "error": item.detail or failed.text, "note": failed.text}
    if heatmaps:
        row["heatmap"] = str(path.with_suffix(".heatmap.png"))
    best = max(pred.probabilities, key=lambda k: pred.probabilities[k])
    row.update(label=best, probability=pred.probabilities[manifest.flag_label],
               probabilities=pred.probabilities, flagged=pred.flagged,
               threshold=pred.threshold, note=item.note)
    return row

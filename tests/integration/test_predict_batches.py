"""`cxrtriage predict` over a folder reads like the worker: files prepared in child processes,
classified in batches. Neither may change an answer or its order, an unreadable file included."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cxrtriage.models.predict import MIN_FILES_FOR_CHILDREN, predict_paths
from tests.conftest import BUNDLED

SUBSET = Path(__file__).resolve().parents[1] / "data" / "kermany-subset"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("predict")
    pictures = sorted(p for p in SUBSET.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    assert len(pictures) >= MIN_FILES_FOR_CHILDREN
    for n, picture in enumerate(pictures):
        shutil.copy(picture, folder / f"{n:02d}{picture.suffix.lower()}")
    (folder / "05b.dcm").write_bytes(b"not a DICOM file at all")  # sorted among the pictures
    return folder


def _answers(rows: list[dict]) -> list[tuple]:
    return [(Path(r["path"]).name, r.get("label"), r.get("probability"), r.get("error")) for r in rows]


def test_children_and_batches_change_no_answer(folder: Path) -> None:
    alone = predict_paths([folder], BUNDLED, batch_size=1, decoders=0)
    batched = predict_paths([folder], BUNDLED)  # two children, batches of 16
    assert [a[0] for a in _answers(alone)] == [b[0] for b in _answers(batched)]
    assert any(r.get("error") for r in batched) and "05b.dcm" in batched[6]["path"]
    for a, b in zip(alone, batched, strict=True):
        assert a.keys() == b.keys()
        for key in ("label", "error", "note"):
            assert a.get(key) == b.get(key), key
        if "probability" in a:
            assert b["probability"] == pytest.approx(a["probability"], abs=1e-5)

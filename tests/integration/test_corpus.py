"""Every radiograph encoding in the corpus is read right: the same picture gives the same
probability (within 1e-3) in any encoding that keeps it, through the worker's preprocessing."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from cxrtriage.dicom.gating import gate_image
from cxrtriage.dicom.reading import read_dataset
from cxrtriage.models.predict import predict_paths
from tests.conftest import BUNDLED
from tests.corpus import CORPUS, NOT_CLASSIFIED
from tests.factory import sample_pixels

TOLERANCE = {"same": 1e-3, "close": 0.05}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    assert (BUNDLED / "manifest.json").is_file(), "the bundled model package is missing"
    folder = tmp_path_factory.mktemp("corpus")
    pixels = sample_pixels("pneumonia-2")
    Image.fromarray(pixels).save(folder / "reference.png")
    paths = [folder / "reference.png"]
    for index, entry in enumerate(CORPUS):
        paths.append(entry.build(pixels, folder / f"{index:02d}.dcm"))
    rows = predict_paths(paths, BUNDLED)
    by_name = {"reference": rows[0]}
    by_name.update({entry.name: row for entry, row in zip(CORPUS, rows[1:], strict=True)})
    return by_name


@pytest.mark.parametrize("entry", CORPUS, ids=[e.name for e in CORPUS])
def test_encoding_gives_the_same_probability(results, entry):
    row = results[entry.name]
    assert "error" not in row, row.get("error")
    assert not row["note"].startswith("the worker would not analyse"), row["note"]
    assert row["probability"] == pytest.approx(results["reference"]["probability"],
                                               abs=TOLERANCE[entry.expect])


@pytest.mark.parametrize(("name", "build"), NOT_CLASSIFIED, ids=[n for n, _ in NOT_CLASSIFIED])
def test_other_modalities_are_gated_out(tmp_path: Path, name, build):
    path = build(sample_pixels(), tmp_path / "x.dcm")
    assert not gate_image(read_dataset(path, stop_before_pixels=True)).accepted

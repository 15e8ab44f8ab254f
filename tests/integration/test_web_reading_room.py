"""The reading room's API, called in process: an image's modality values and display metadata
for the viewer (decoded in a child, served only under the study that has the image), a study's
neighbours in worklist order under the reader's filters, and the worklist's count of new
flagged studies."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from cxrtriage.db.models import utcnow
from cxrtriage.dicom.wrap import wrap_image
from cxrtriage.domain import Reason
from cxrtriage.web import pixel_values
from tests.conftest import assert_no_patient_data
from tests.factory import SENTINELS
from tests.integration import test_web_api
from tests.integration.test_web_api import ALICE, BOTH_DATABASES
from tests.web_seed import register, seed_study

# test_web_api's app on a seeded database (SQLite, or PostgreSQL where BOTH_DATABASES says so)
env, template_db, postgres_url = test_web_api.env, test_web_api.template_db, test_web_api.postgres_url
PIXELS = (np.arange(40 * 30, dtype=np.uint16).reshape(40, 30) * 3 + 100)  # 100 .. 3697, 12-bit


def _store(folder: Path, ds: Dataset) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return str(path)


def _image(env: dict[str, Any], ds: Dataset) -> tuple[str, dict[str, Any]]:
    """A study of one image `ds`, and the image's entry in the study's JSON."""
    with env["db"].session() as session:
        study = seed_study(session, register(session, f"v-{ds.SOPInstanceUID[-6:]}"), [0.9],
                           paths=[_store(env["tmp"] / "images", ds)])
    return study, env["client"].get(f"/api/studies/{study}", auth=ALICE).json()["images"][0]


def _values(env: dict[str, Any], image: dict[str, Any]) -> tuple[dict[str, Any], np.ndarray]:
    meta = env["client"].get(image["display_url"], auth=ALICE)
    assert meta.status_code == 200, meta.text
    body = env["client"].get(image["pixels_url"], auth=ALICE)
    assert body.status_code == 200 and body.headers["content-type"] == "application/octet-stream"
    data = meta.json()
    assert body.headers["x-pixel-type"] == data["pixels"]["dtype"]
    assert body.headers["x-pixel-shape"] == f"{data['rows']},{data['columns']}"
    values = np.frombuffer(body.content, dtype="<u2" if data["pixels"]["dtype"] == "uint16" else "<f4")
    assert len(body.content) == data["pixels"]["bytes"]
    return data, values.reshape(data["rows"], data["columns"])


def _dx(**attributes: Any) -> Dataset:
    return wrap_image(PIXELS, bits_stored=12, **{**SENTINELS, **attributes})


def test_a_radiographs_values_windows_and_relative_presets(env) -> None:
    study, image = _image(env, _dx(WindowCenter=[1900, 1000], WindowWidth=[3600, 800],
                                   WindowCenterWidthExplanation=["NORMAL", "HARD"], PixelSpacing=[0.2, 0.1]))
    data, codes = _values(env, image)
    assert np.array_equal(codes.astype(np.int64) + int(data["pixels"]["offset"]), PIXELS)  # exact values
    assert (data["rows"], data["columns"], data["aspect"]) == (40, 30, 2.0)  # rows 0.2 mm apart, columns 0.1
    assert data["photometric"] == "MONOCHROME2"
    assert data["windows"] == [{"center": 1900.0, "width": 3600.0, "explanation": "NORMAL"},
                               {"center": 1000.0, "width": 800.0, "explanation": "HARD"}]
    assert data["default_preset"] == "file-0" and data["hu_like"] is False and data["units"] == ""
    presets = {p["id"]: p for p in data["presets"]}
    assert [p["id"] for p in data["presets"]] == ["file-0", "file-1", "lung", "mediastinum", "full", "stored"]
    assert presets["file-1"]["name"] == "HARD" and presets["lung"]["source"] == "relative"
    low, high = data["value_range"]["p01"], data["value_range"]["p99"]
    assert data["value_range"]["min"] == 100 and data["value_range"]["max"] == PIXELS.max()
    # Lung: the darker 60 % of the brightness range; mediastinum: the brighter 60 %.
    assert presets["lung"]["center"] == pytest.approx(low + 0.3 * (high - low), abs=0.01)
    assert presets["mediastinum"]["center"] == pytest.approx(low + 0.7 * (high - low), abs=0.01)
    assert presets["lung"]["width"] == pytest.approx(0.6 * (high - low), abs=0.01)
    assert "not calibrated to tissue" in data["presets_note"]
    assert data["pixels"]["url"] == image["pixels_url"] and study in image["pixels_url"]


def test_hu_values_get_the_standard_windows(env) -> None:
    _, image = _image(env, _dx(Modality="CT", RescaleIntercept=-1024, RescaleType="HU"))
    data, codes = _values(env, image)
    hu = PIXELS.astype(np.int64) - 1024
    assert np.array_equal(codes.astype(np.int64) + int(data["pixels"]["offset"]), hu)
    presets = {p["id"]: p for p in data["presets"]}
    assert (presets["lung"]["center"], presets["lung"]["width"]) == (-600, 1500)
    assert (presets["mediastinum"]["center"], presets["mediastinum"]["width"]) == (50, 350)
    assert data["hu_like"] is True and data["units"] == "HU" and data["default_preset"] == "stored"


def test_fractional_rescale_padding_and_monochrome1(env) -> None:
    _, image = _image(env, _dx(RescaleSlope=0.5, RescaleIntercept=0.25, monochrome1=True,
                               PixelPaddingValue=int(4095 - PIXELS[0, 0])))
    data, values = _values(env, image)
    assert data["pixels"]["dtype"] == "float32" and data["inverted"] is True
    stored = (4095 - PIXELS).astype(np.float32)  # MONOCHROME1 stores the inverted values
    assert np.isnan(values[0, 0]) and np.allclose(values.ravel()[1:], stored.ravel()[1:] * 0.5 + 0.25)
    presets = {p["id"]: p for p in data["presets"]}
    low, high = data["value_range"]["p01"], data["value_range"]["p99"]
    # Inverted: the darker displayed 60 % are the higher values.
    assert presets["lung"]["center"] == pytest.approx(high - 0.3 * (high - low), abs=0.01)


def test_a_voi_lut_is_sent_as_a_table(env) -> None:
    ds = _dx()
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 12]
    item.add_new(0x00283006, "US", [min(4095, 2 * v) for v in range(4096)])
    item.LUTExplanation = "STEEP"
    ds.VOILUTSequence = Sequence([item])
    _, image = _image(env, ds)
    data, _ = _values(env, image)
    assert data["default_preset"] == "lut-0" and data["presets"][0]["name"] == "STEEP"
    [lut] = data["voi_luts"]
    assert (lut["first_mapped"], lut["bits"], len(lut["table"]), lut["table"][10]) == (0, 12, 4096, 20)


def test_one_decode_serves_the_metadata_and_the_pixels(env, monkeypatch) -> None:
    ds = _dx()
    _, image = _image(env, ds)
    path = str(env["tmp"] / "images" / f"{ds.SOPInstanceUID}.dcm")
    calls: list[str] = []
    real = pixel_values._values
    monkeypatch.setattr(pixel_values, "_values", lambda *a: calls.append("decode") or real(*a))
    _values(env, image)  # the metadata, then the pixels
    assert calls == ["decode"]
    assert not pixel_values._cache.holds(path)  # both served: nothing kept
    pixels = env["client"].get(image["pixels_url"], auth=ALICE)  # the other order, a page reloaded
    meta = env["client"].get(image["display_url"], auth=ALICE)
    assert pixels.status_code == meta.status_code == 200 and calls == ["decode", "decode"]


def test_an_image_is_served_only_under_its_own_study(env) -> None:
    client = env["client"]
    study_a, image_a = _image(env, _dx())
    study_b, image_b = _image(env, _dx())
    sop_b = image_b["sop_instance_uid"]
    for suffix in ("", "/pixels"):
        guessed = client.get(f"/api/studies/{study_a}/images/{sop_b}{suffix}", auth=ALICE)
        assert guessed.status_code == 404 and guessed.json() == {"detail": "no such image in this study"}
        assert client.get(f"/api/studies/{study_b}/images/{sop_b}{suffix}").status_code == 401  # no user
    assert client.get(image_a["pixels_url"], auth=ALICE).status_code == 200


def test_a_file_that_cannot_be_windowed_says_why_without_patient_data(env, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    colour = wrap_image(np.zeros((8, 8), dtype=np.uint8), **SENTINELS)
    colour.PhotometricInterpretation, colour.SamplesPerPixel, colour.PlanarConfiguration = "RGB", 3, 0
    colour.PixelData = bytes(8 * 8 * 3)
    _, image = _image(env, colour)
    answer = env["client"].get(image["pixels_url"], auth=ALICE)
    assert answer.status_code == 422 and "grayscale only" in answer.json()["detail"]
    changed = _dx()
    study, image = _image(env, changed)
    path = env["tmp"] / "images" / f"{changed.SOPInstanceUID}.dcm"
    edited = pydicom.dcmread(path)
    edited.PixelData = bytes(len(edited.PixelData))
    edited.save_as(path)
    answer = env["client"].get(image["display_url"], auth=ALICE)
    assert answer.status_code == 422 and answer.json()["detail"].startswith("the stored file differs")
    assert_no_patient_data(answer.text + caplog.text, "the viewer's refusals and the logs")


# --- next and previous case, in worklist order --------------------------------------------------


def _walk(client: Any, first: str, context: str) -> list[str]:
    """Every study from `first` on, following next, and checking previous leads back."""
    order, uid = [first], first
    while True:
        reading = client.get(f"/api/studies/{uid}?{context}", auth=ALICE).json()["reading"]
        assert reading["position"] == len(order) and reading["context"] == context
        if reading["next_uid"] is None:
            return order
        after = client.get(f"/api/studies/{reading['next_uid']}?{context}", auth=ALICE).json()["reading"]
        assert after["previous_uid"] == uid
        assert reading["next_url"] == f"/studies/{reading['next_uid']}" + (f"?{context}" if context else "")
        uid = reading["next_uid"]
        order.append(uid)


@BOTH_DATABASES
def test_next_and_previous_follow_the_worklist_order_under_its_filters(env) -> None:
    client = env["client"]
    now = utcnow()
    with env["db"].session() as session:
        mv = register(session)
        for p, minutes in ((0.9, 1), (0.7, 2), (0.7, 3), (0.3, 200), (0.2, 5), (0.1, 4)):
            seed_study(session, mv, [p], received_at=now - timedelta(minutes=minutes))
        seed_study(session, mv, None, reason=Reason.NO_FRONTAL_CHEST_IMAGE)
        seed_study(session, mv, [0.5], finished=False)
    for context in ("", "flagged=true", "flagged=false", "reviewed=false&per_page=2", "state=in_progress"):
        filters = "&".join(p for p in context.split("&") if p and not p.startswith("per_page="))
        answer = client.get(f"/api/worklist?per_page=500&{filters}", auth=ALICE)
        listed = [i["study_uid"] for i in answer.json()]
        assert listed and _walk(client, listed[0], context) == listed, context
        reading = client.get(f"/api/studies/{listed[0]}?{context}", auth=ALICE).json()["reading"]
        assert reading["previous_uid"] is None and reading["total"] == len(listed)
    items = client.get("/api/worklist?flagged=true", auth=ALICE).json()
    assert items[0]["url"] == f"/studies/{items[0]['study_uid']}?flagged=true"

    # A verdict takes a study out of "unreviewed"; its neighbours stay where they were.
    unreviewed = [i["study_uid"] for i in client.get("/api/worklist?reviewed=false", auth=ALICE).json()]
    assert client.post(f"/api/studies/{unreviewed[1]}/feedback", json={"verdict": "agree"},
                       auth=ALICE).status_code == 201
    reading = client.get(f"/api/studies/{unreviewed[1]}?reviewed=false", auth=ALICE).json()["reading"]
    assert (reading["previous_uid"], reading["next_uid"], reading["position"]) == (
        unreviewed[0], unreviewed[2], None)
    page = client.get(f"/api/studies/{unreviewed[3]}?reviewed=false&per_page=2", auth=ALICE).json()
    assert page["reading"]["worklist_url"] == "/?reviewed=false&per_page=2&page=2"  # 3rd of those left
    assert client.get(f"/api/studies/{unreviewed[0]}?flagged=maybe", auth=ALICE).status_code == 422


@BOTH_DATABASES
def test_the_worklist_counts_flagged_studies_that_came_in_since_it_loaded(env) -> None:
    client = env["client"]
    with env["db"].session() as session:
        mv = register(session)
        seed_study(session, mv, [0.9])
    since = datetime.now(UTC).isoformat().replace("+00:00", "Z")

    def count() -> int:
        answer = client.get(f"/api/worklist/updates?since={since}", auth=ALICE)
        assert answer.status_code == 200, answer.text
        return int(answer.json()["new_flagged"])

    assert count() == 0
    with env["db"].session() as session:
        seed_study(session, mv, [0.95])
        seed_study(session, mv, [0.2])  # not flagged
        seed_study(session, mv, [0.8], finished=False)  # no result yet
    assert count() == 1
    assert client.get("/api/worklist/updates?since=yesterday", auth=ALICE).status_code == 422
    assert client.get(f"/api/worklist/updates?since={since}").status_code == 401

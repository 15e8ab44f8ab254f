import pytest
from pydicom.dataset import Dataset

from cxrtriage.dicom.contexts import CR, CT, DX_PRESENTATION, SECONDARY_CAPTURE
from cxrtriage.dicom.gating import gate_image
from cxrtriage.domain import Reason


def _ds(sop_class=DX_PRESENTATION, modality="DX", view="AP", body="CHEST", codes=(), laterality=""):
    ds = Dataset()
    ds.SOPClassUID, ds.Modality = sop_class, modality
    if laterality:
        ds.ImageLaterality = laterality
    if view:
        ds.ViewPosition = view
    if body:
        ds.BodyPartExamined = body
    if codes:
        items = []
        for meaning in codes:
            item = Dataset()
            item.CodeMeaning = meaning
            items.append(item)
        ds.ViewCodeSequence = items
    return ds


@pytest.mark.parametrize(("ds", "reason", "text"), [
    (_ds(), None, ""),
    (_ds(sop_class=CR, modality="CR", view="PA"), None, ""),
    (_ds(sop_class=SECONDARY_CAPTURE, modality="OT"), None, ""),
    (_ds(sop_class=CT, modality="CT"), Reason.NOT_RADIOGRAPH, ""),
    (_ds(modality="MG"), Reason.NOT_RADIOGRAPH, ""),
    (_ds(view="LL"), Reason.NOT_FRONTAL, ""),
    (_ds(view="", codes=("lateral",)), Reason.NOT_FRONTAL, ""),
    (_ds(body="HAND"), Reason.NOT_CHEST, ""),
    (_ds(view=""), None, "view position not recorded"),
    (_ds(view="", codes=("postero-anterior",)), None, ""),
    (_ds(body=""), None, "body part not recorded"),
    (_ds(view="", laterality="L"), Reason.NOT_FRONTAL, ""),
    (_ds(view="PA", laterality="R"), None, ""),
    (_ds(view="", laterality="B"), None, "view position not recorded"),
])
def test_gate(ds, reason, text):
    decision = gate_image(ds)
    assert decision.accepted is (reason is None)
    assert decision.reason == reason
    assert text in " ".join(decision.warnings)


def test_reasons_have_fixed_text_without_file_values():
    for reason in Reason:
        assert reason.text and "{" not in reason.text
        assert len(f"Not analysed: {reason.text}") <= 64  # an SR code meaning (LO)

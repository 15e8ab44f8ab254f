import pytest
from pydicom.dataset import Dataset

from cxrtriage.dicom.contexts import CR, CT, DX_PRESENTATION, SECONDARY_CAPTURE
from cxrtriage.dicom.gating import gate_image


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


@pytest.mark.parametrize(("ds", "accepted", "text"), [
    (_ds(), True, ""),
    (_ds(sop_class=CR, modality="CR", view="PA"), True, ""),
    (_ds(sop_class=SECONDARY_CAPTURE, modality="OT"), True, ""),
    (_ds(sop_class=CT, modality="CT"), False, "modality CT"),
    (_ds(view="LL"), False, "lateral"),
    (_ds(view="", codes=("lateral",)), False, "lateral"),
    (_ds(body="HAND"), False, "body part HAND"),
    (_ds(view=""), True, "view position not recorded"),
    (_ds(view="", codes=("postero-anterior",)), True, ""),
    (_ds(body=""), True, "body part not recorded"),
    (_ds(view="", laterality="L"), False, "image laterality L"),
    (_ds(view="PA", laterality="R"), True, ""),
    (_ds(view="", laterality="B"), True, "view position not recorded"),
])
def test_gate(ds, accepted, text):
    decision = gate_image(ds)
    assert decision.accepted is accepted
    assert text in (decision.reason + " ".join(decision.warnings))

"""A radiologist's assessment of an AI result, as a DICOM SR that references the AI result's SR,
in the spirit of IHE AI Result Assessment (AIRA).

How close it comes: AIRA defines its own SR template, which highdicom does not provide. This SR is
a Comprehensive 3D SR built with highdicom content items, with a root container "AI result
assessment" holding the observer (the radiologist, a person), a COMPOSITE reference to the assessed
AI SR (also listed in the evidence sequence), the verdict as a code (agree, disagree, uncertain),
the model name and version that produced the result, and an optional comment. The concept codes
are in our private scheme 99CXRT, not AIRA's; the document claims no template identifier. A later
AI SR that supersedes the assessed one does not change this SR: it stays attached to the result it
assessed. It is not an AI result, so it never counts as the study's current AI SR.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from cxrtriage.dicom.sr_writer import SCHEME
from cxrtriage.dicom.uids import derive_uid

SERIES_NUMBER = 9903
ROOT = hd.sr.CodedConcept("AI-ASSESSMENT", SCHEME, "AI result assessment")
ASSESSED = hd.sr.CodedConcept("ASSESSED-RESULT", SCHEME, "Assessed AI result")
VERDICT = hd.sr.CodedConcept("VERDICT", SCHEME, "Assessment of the AI result")
MODEL = hd.sr.CodedConcept("AI-MODEL", SCHEME, "AI model that produced the result")
COMMENT = hd.sr.CodedConcept("COMMENT", SCHEME, "Comment")
VERDICTS = {
    "agree": hd.sr.CodedConcept("AGREE", SCHEME, "Agree with the AI result"),
    "disagree": hd.sr.CodedConcept("DISAGREE", SCHEME, "Disagree with the AI result"),
    "uncertain": hd.sr.CodedConcept("UNCERTAIN", SCHEME, "Uncertain about the AI result"),
}


@dataclass(frozen=True)
class Assessment:
    verdict: str
    comment: str
    observer: str  # the user name of the radiologist
    model: str  # name and version of the model that produced the result
    ai_sr: Dataset  # the assessed AI result SR
    sequence: int  # the how-many-th verdict of this user on this result (new UIDs each time)


def build_assessment(assessment: Assessment) -> hd.sr.Comprehensive3DSR:
    if assessment.verdict not in VERDICTS:
        raise ValueError(f"verdict must be one of {', '.join(VERDICTS)}, got {assessment.verdict!r}")
    ai_sr = assessment.ai_sr
    sr_uid = str(ai_sr.SOPInstanceUID)
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Person,
        observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
            name=f"{assessment.observer[:63]}^"))  # one component: family name
    items: list[hd.sr.ContentItem] = list(observer)  # type: ignore[arg-type]
    items.append(hd.sr.CompositeContentItem(
        name=ASSESSED, referenced_sop_class_uid=str(ai_sr.SOPClassUID), referenced_sop_instance_uid=sr_uid,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    items.append(hd.sr.CodeContentItem(name=VERDICT, value=VERDICTS[assessment.verdict],
                                       relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    items.append(hd.sr.TextContentItem(name=MODEL, value=assessment.model[:1024],
                                       relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    if assessment.comment.strip():
        items.append(hd.sr.TextContentItem(name=COMMENT, value=assessment.comment.strip()[:4000],
                                           relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    root = hd.sr.ContainerContentItem(name=ROOT, template_id=None)
    root.ContentSequence = hd.sr.ContentSequence(items)
    now = datetime.now()
    key = [sr_uid, assessment.observer, str(assessment.sequence)]
    return hd.sr.Comprehensive3DSR(
        evidence=[ai_sr],
        content=root,
        series_instance_uid=derive_uid(str(ai_sr.StudyInstanceUID), "assessment-series"),
        series_number=SERIES_NUMBER,
        sop_instance_uid=derive_uid(*key, "assessment"),
        instance_number=assessment.sequence,
        manufacturer="cxr-triage",
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description="cxr-triage assessment of an AI result",
        content_date=now.date(),
        content_time=now.time(),
    )

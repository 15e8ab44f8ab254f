""""Try an image", answered by a worker: the review app spools the upload and records the request
(db/trials.py); this classifies it the way the pipeline classifies a stored image (the gate's
note for a DICOM file, the decoder children, the model input, one pass for probabilities and heat
map), writes the answer into the request's row and removes the upload.

The answer holds no patient data: probabilities, the flag, the model's name and version, the
gate's note, where the picture lies in the image (`box`, what the heat map covers) and the pixel
aspect; the heat map itself is a small 8-bit PNG in the model's square.
"""

from __future__ import annotations

import logging
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from cxrtriage.db.trials import PENDING, fail_trial, finish_trial, trial_job
from cxrtriage.dicom.geometry import pixel_aspect, trim_box
from cxrtriage.dicom.reading import read_upload_header
from cxrtriage.dicom.sandbox import DecoderPool, answer_or_raise
from cxrtriage.domain import Reason
from cxrtriage.errors import InvalidInputError
from cxrtriage.models.examine import gate, note
from cxrtriage.models.model_input import fit_to_square

if TYPE_CHECKING:
    from cxrtriage.models.inference import Classifier
    from cxrtriage.worker.runtime import Runtime

logger = logging.getLogger(__name__)
INTERNAL_ERROR = "the worker could not classify this image (internal error; see the worker's log)"


def classify_trial(rt: Runtime, trial_id: int) -> str:
    """Answer request `trial_id`; returns its state afterwards ("gone" when it was forgotten).
    A request answered already (a redelivered message) is left as it is."""
    with rt.db.session() as session:
        job = trial_job(session, trial_id)
    if job is None or job.state != PENDING:
        return job.state if job is not None else "gone"
    spooled = Path(job.spool_path)
    try:
        try:
            data = spooled.read_bytes()
        except OSError as exc:
            raise InvalidInputError("the upload is no longer there", Reason.UNREADABLE_FILE) from exc
        result, cam = answer(rt.classifier, rt.decoder_pool, job.kind, data)
        del data
        with rt.db.session() as session:
            finish_trial(session, trial_id, result, cam)
        logger.info("trial classified", extra={"trial_id": trial_id, "flagged": result["flagged"]})
        return "done"
    except InvalidInputError as exc:  # the file's own reason: the user sees it
        with rt.db.session() as session:
            fail_trial(session, trial_id, str(exc))
        logger.info("trial not classified", extra={"trial_id": trial_id, "reason": exc.reason.value})
        return "failed"
    except Exception:
        with rt.db.session() as session:
            fail_trial(session, trial_id, INTERNAL_ERROR)
        raise
    finally:
        if job.spool_path:
            spooled.unlink(missing_ok=True)


def answer(classifier: Classifier, pool: DecoderPool, kind: str, data: bytes) -> tuple[dict[str, Any], bytes]:
    """The answer for an uploaded file (`kind` "dicom" or "picture") and its heat map as PNG."""
    remark, aspect = "", 1.0
    if kind == "dicom":
        header = read_upload_header(data, pool.limits.max_decoded_bytes)
        remark = note(gate(header, classifier.manifest))  # the worker's gate, age warning included
        aspect = pixel_aspect(header)
        gray = answer_or_raise(pool.submit_data(data).result())
    else:
        gray = answer_or_raise(pool.submit_data(data, mode="picture").result())
    image = fit_to_square(gray, classifier.input_size)
    predictions, cams = classifier.predict_with_heatmaps(["trial"], image[np.newaxis])
    prediction, manifest = predictions[0], classifier.manifest
    result = {"model_name": manifest.name, "model_version": manifest.version,
              "flag_label": prediction.flag_label, "threshold": prediction.threshold,
              "flagged": prediction.flagged, "probability": prediction.probabilities[prediction.flag_label],
              "probabilities": prediction.probabilities, "note": remark,
              "box": trim_box(gray).as_dict(), "aspect": aspect}
    return result, cam_png(cams[0])


def cam_png(cam: np.ndarray) -> bytes:
    """A [0, 1] heat map as an 8-bit grayscale PNG."""
    buffer = BytesIO()
    Image.fromarray((np.clip(cam, 0.0, 1.0) * 255).round().astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()

""""Try an image": the review app's side. An upload (bounded as it arrives, web/limits.py) is
decoded by the app's decoder children to be shown back in true geometry (which also refuses a
file that is no image, at once), spooled under the storage folder's `trials/` with a random
name, recorded (db/trials.py) and queued; a worker classifies it (worker/trial.py), writes the
answer into the row and removes the upload. The page asks for the answer until it comes.

Nothing is classified here: the review app never loads the model."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kombu.exceptions import OperationalError

from cxrtriage.config import Settings
from cxrtriage.db.review import audit
from cxrtriage.db.session import Database
from cxrtriage.db.trials import TrialAnswer, create_trial, fail_trial, forget_trials
from cxrtriage.dicom.storage import write_durably
from cxrtriage.web.errors import Problem
from cxrtriage.web.imaging import data_uri, is_dicom, upload_view

if TYPE_CHECKING:  # Celery loads when the first upload is queued, not with the app
    from cxrtriage.worker.dispatch import Dispatcher

logger = logging.getLogger(__name__)
KEEP_TRIALS = timedelta(days=1)  # answers are forgotten after this (with any upload never read)
WAIT_SECONDS = 180  # how long the page asks for the answer before it says none came
QUEUE_DOWN = "The workers' queue cannot be reached, so the image was not classified. Try again later."


@dataclass(frozen=True)
class Upload:
    """The request a page shows while it waits: the image shown back, and where to ask."""

    token: str
    image: str  # data: URI of the PNG in true geometry
    height: int
    width: int
    answer_url: str
    wait_seconds: int


def answer_data(answer: TrialAnswer) -> dict[str, Any]:
    """The answer as /api/try/{token} gives it (and the page's script reads it)."""
    return {"token": answer.token, "state": answer.state, "error": answer.error, **answer.result,
            "heatmap_url": f"/try/{answer.token}/heatmap.png" if answer.has_heatmap else None,
            "created_at": answer.created_at, "finished_at": answer.finished_at}


class TrialDesk:
    """Takes uploads for the workers: `accept` is blocking (decoding, disk, database), so it runs
    in the thread pool, never on the event loop."""

    def __init__(self, settings: Settings, db: Database) -> None:
        self.spool = Path(settings.storage_dir) / "trials"
        self.db = db
        self.max_bytes = settings.web_max_upload_bytes

    def accept(self, data: bytes, filename: str, user_id: int, username: str, client: str,
               dispatcher: Callable[[], Dispatcher]) -> Upload:
        """Show the upload back, spool it and queue it (through the dispatcher, made when first
        needed); InvalidInputError when it is no image."""
        dicom = is_dicom(data, filename)
        view = upload_view(data, dicom)
        token = secrets.token_hex(16)
        spooled = self.spool / f"{token}.upload"  # never the file's own name: it may name the patient
        write_durably(spooled, [data])
        with self.db.session() as session:
            for stale in forget_trials(session, datetime.now(UTC) - KEEP_TRIALS):
                Path(stale).unlink(missing_ok=True)
            trial_id = create_trial(session, token, user_id, "dicom" if dicom else "picture", str(spooled))
            audit(session, "try_image", username, client=client, trial=token)
        try:
            dispatcher().trial(trial_id)
        except (OperationalError, OSError) as exc:
            logger.error("trial not queued: the broker is unreachable", extra={"trial_id": trial_id})
            with self.db.session() as session:
                fail_trial(session, trial_id, "not queued")
            spooled.unlink(missing_ok=True)
            raise Problem(503, QUEUE_DOWN) from exc
        return Upload(token, data_uri(view.png), view.height, view.width, f"/api/try/{token}", WAIT_SECONDS)

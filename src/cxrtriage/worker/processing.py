"""A worker's unit of work: the study it was sent, plus other ready studies, claimed from the
database and run through the pipeline together, so that their images share one forward pass.

The database stays the source of truth: every study is claimed on its own (a conditional update,
in its own transaction), so Celery's one-message prefetch is unaffected, and the message of a
study another worker took along finds nothing to do. Leases are renewed for all of them while
the batch runs.
"""

from __future__ import annotations

import logging
import threading
import time

from cxrtriage.db.studies import claim_study, extend_lease, ready_studies
from cxrtriage.domain import Claim, Reason, StudyState
from cxrtriage.worker.pipeline import StudyRun, run_steps
from cxrtriage.worker.runtime import Runtime

logger = logging.getLogger(__name__)
FILL_POLL_SECONDS = 0.05


def _claim(rt: Runtime, study_uid: str) -> Claim | None:
    with rt.db.session() as session:
        return claim_study(session, study_uid, rt.settings.processing_lease_seconds,
                           rt.settings.study_max_attempts)


def claim_batch(rt: Runtime, study_uid: str) -> list[Claim]:
    """The named study if it is still queued, then the longest-waiting ready studies, up to
    CXRTRIAGE_BATCH_STUDIES; waiting up to CXRTRIAGE_BATCH_WAIT_SECONDS for the batch to fill."""
    size, claims = rt.settings.batch_studies, []
    if (claim := _claim(rt, study_uid)) is not None:
        claims.append(claim)
    deadline = time.monotonic() + rt.settings.batch_wait_seconds
    while len(claims) < size:
        with rt.db.session() as session:
            candidates = ready_studies(session, size - len(claims))
        for uid in candidates:
            if (claim := _claim(rt, uid)) is not None:  # None: another worker was quicker
                claims.append(claim)
        if len(claims) >= size or time.monotonic() >= deadline or not claims:
            break
        time.sleep(FILL_POLL_SECONDS)
    return claims


def process_ready(rt: Runtime, study_uid: str) -> dict[str, StudyState | None]:
    """Process the study and whatever else is ready, once. Returns each claimed study's final
    state (None: not recorded, as the study changed meanwhile); empty when nothing was claimed."""
    model_version_id = rt.model_version_id  # before claiming: a failure here undoes no claim
    claims = claim_batch(rt, study_uid)
    if not claims:
        return {}
    runs = []
    for claim in claims:
        logger.info("processing study", extra={"study_uid": claim.study_uid, "attempt": claim.attempt,
                                               "instances": len(claim.instances), "batch": len(claims)})
        run = StudyRun(claim, model_version_id)
        if claim.exhausted:
            run.reason = Reason.ATTEMPTS_EXHAUSTED
        runs.append(run)
    with LeaseKeeper(rt, claims):
        run_steps(rt, runs)
    for run in runs:
        logger.info("study finished", extra={"study_uid": run.claim.study_uid, "state": run.state,
                                             "reason": run.reason or ""})
    return {run.claim.study_uid: run.state for run in runs}


class LeaseKeeper:
    """Renews the claimed studies' leases while this worker works on them, so that only a dead
    worker's studies are handed to another."""

    def __init__(self, rt: Runtime, claims: list[Claim]) -> None:
        self.rt = rt
        self.held = {claim.study_id: claim.attempt for claim in claims}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        lease = self.rt.settings.processing_lease_seconds
        while self.held and not self._stop.wait(lease / 3):
            for study_id, attempt in list(self.held.items()):
                try:
                    with self.rt.db.session() as session:
                        if not extend_lease(session, study_id, attempt, lease):
                            del self.held[study_id]  # finished, or the claim was lost
                except Exception:  # a missed heartbeat only risks a redo, never a loss
                    logger.warning("lease renewal failed", extra={"study_id": study_id})

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

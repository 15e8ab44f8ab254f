"""A worker's unit of work: the study it was sent, plus other ready studies, claimed from the
database and run through the pipeline together, so that their images share one forward pass.

The database stays the source of truth: every study is claimed on its own (a conditional update,
in its own transaction), so Celery's one-message prefetch is unaffected, and the message of a
study another worker took along finds nothing to do. Leases are renewed for all of them while
the batch runs. With CXRTRIAGE_BATCH_CHAIN_SECONDS (GPU nodes doing bulk work), a task goes on
to the next ready batches for that long, each claimed once the batch before is prepared, so
that live studies that arrive meanwhile still go first at the next hand-over.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from cxrtriage.db.studies import claim_study, extend_lease, ready_studies
from cxrtriage.domain import Claim, Reason, StudyState
from cxrtriage.worker.pipeline import StudyRun, run_steps, stages
from cxrtriage.worker.runtime import Runtime

logger = logging.getLogger(__name__)
FILL_POLL_SECONDS = 0.05


def _claim(rt: Runtime, study_uid: str) -> Claim | None:
    with rt.db.session() as session:
        return claim_study(session, study_uid, rt.settings.processing_lease_seconds,
                           rt.settings.study_max_attempts)


def claim_batch(rt: Runtime, study_uid: str | None, wait: bool = True) -> list[Claim]:
    """The named study if it is still queued, then the longest-waiting ready studies (live ones
    first), up to CXRTRIAGE_BATCH_STUDIES; waiting up to CXRTRIAGE_BATCH_WAIT_SECONDS for the
    batch to fill when `wait`."""
    size, claims = rt.settings.batch_studies, []
    if study_uid is not None and (claim := _claim(rt, study_uid)) is not None:
        claims.append(claim)
    deadline = time.monotonic() + (rt.settings.batch_wait_seconds if wait else 0.0)
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


BatchStates = dict[str, StudyState | None]  # each study's recorded state, None if not recorded


def process_ready(rt: Runtime, study_uid: str,
                  batch_done: Callable[[BatchStates], None] | None = None) -> BatchStates:
    """Process the study and whatever else is ready, and go on with the next ready batches for
    CXRTRIAGE_BATCH_CHAIN_SECONDS (0: none): each is claimed once the batch before has its images
    prepared, so that the decoder children work on it while that batch runs the network (on a
    GPU node the network would otherwise wait for every batch's decoding). `batch_done` is
    given each batch's states as soon as it is recorded (its SRs are sent then, not at the end
    of the chain). Returns every claimed study's final state (None: not recorded, as the study
    changed meanwhile); empty when nothing was claimed."""
    model_version_id = rt.model_version_id  # before claiming: a failure here undoes no claim
    claims = claim_batch(rt, study_uid)
    if not claims:
        return {}
    begin, prepare, finish = stages()
    chain_ends = time.monotonic() + rt.settings.batch_chain_seconds
    states: BatchStates = {}
    with LeaseKeeper(rt, claims) as keeper:
        runs = _runs(claims, model_version_id)
        live = run_steps(rt, runs, begin)
        while runs:
            live = run_steps(rt, live, prepare)
            following: list[StudyRun] = []
            following_live: list[StudyRun] = []
            if time.monotonic() < chain_ends and (more := _next_claims(rt)):
                keeper.hold(more)
                following = _runs(more, model_version_id)
                following_live = run_steps(rt, following, begin)
            run_steps(rt, live, finish)
            for run in runs:
                logger.info("study finished", extra={"study_uid": run.claim.study_uid, "state": run.state,
                                                     "reason": run.reason or ""})
            done = {run.claim.study_uid: run.state for run in runs}
            states.update(done)
            if batch_done is not None:
                batch_done(done)
            runs, live = following, following_live
    return states


def _runs(claims: list[Claim], model_version_id: int) -> list[StudyRun]:
    runs = []
    for claim in claims:
        logger.info("processing study", extra={"study_uid": claim.study_uid, "attempt": claim.attempt,
                                               "instances": len(claim.instances), "batch": len(claims)})
        run = StudyRun(claim, model_version_id)
        if claim.exhausted:
            run.reason = Reason.ATTEMPTS_EXHAUSTED
        runs.append(run)
    return runs


def _next_claims(rt: Runtime) -> list[Claim]:
    """The next batch, without waiting for it to fill (this batch is waiting to run)."""
    try:
        return claim_batch(rt, None, wait=False)
    except Exception as exc:  # the database is away: this batch finishes, the chain ends here
        logger.warning("next batch not claimed", extra={"error": type(exc).__name__})
        return []


class LeaseKeeper:
    """Renews the claimed studies' leases while this worker works on them, so that only a dead
    worker's studies are handed to another."""

    def __init__(self, rt: Runtime, claims: list[Claim]) -> None:
        self.rt = rt
        self.held = {claim.study_id: claim.attempt for claim in claims}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        lease = self.rt.settings.processing_lease_seconds
        while not self._stop.wait(lease / 3):  # until the last batch is done, even if none is held now
            with self._lock:
                held = list(self.held.items())
            for study_id, attempt in held:
                try:
                    with self.rt.db.session() as session:
                        if not extend_lease(session, study_id, attempt, lease):
                            with self._lock:
                                del self.held[study_id]  # finished, or the claim was lost
                except Exception:  # a missed heartbeat only risks a redo, never a loss
                    logger.warning("lease renewal failed", extra={"study_id": study_id})

    def hold(self, claims: list[Claim]) -> None:
        """Renew these too: the next batch, claimed while this one runs."""
        with self._lock:
            self.held.update({claim.study_id: claim.attempt for claim in claims})

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

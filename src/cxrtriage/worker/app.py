"""The Celery application. The same task code runs on the embedded filesystem broker and on Redis."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from celery import Celery
from celery.signals import task_postrun, task_prerun, worker_process_init

from cxrtriage.config import Settings
from cxrtriage.errors import ConfigError
from cxrtriage.logs import job_id
from cxrtriage.worker.broker import TRANSPORT
from cxrtriage.worker.runtime import Runtime, RuntimeSource

QUEUE = "cxrtriage"
EXPORT_QUEUE = "cxrtriage.exports"  # SR sending, apart from classification
BULK_QUEUE = "cxrtriage.bulk"  # reprocessing: live studies never wait behind its messages
STUDY_QUEUES = (QUEUE, BULK_QUEUE)
PROCESS_STUDY_TASK = "cxrtriage.process_study"
EXPORT_SR_TASK = "cxrtriage.export_sr"


class TriageCelery(Celery):
    """A Celery app that carries the settings it was made from: its tasks take their
    per-process resources from their own app (`runtime()`), never from a module global."""

    source: RuntimeSource | None = None

    def runtime(self) -> Runtime:
        if self.source is None:
            raise ConfigError("a task ran on an app not made by configure_app(settings)")
        return self.source.get()


def broker_options(settings: Settings) -> dict[str, Any]:
    if not settings.broker_url.startswith("filesystem"):
        # Redis (and SQS) redeliver a message that was taken but not acknowledged within the
        # visibility timeout. With late acknowledgement a message stays unacknowledged for the
        # whole task, so the timeout must exceed the longest task, or a healthy long task would be
        # handed to a second worker. The database claim would absorb that duplicate, but it would
        # still cost a GPU slot; the default (2 h) is far above a study's seconds.
        return {"visibility_timeout": settings.broker_visibility_timeout_seconds}
    queue = Path(settings.broker_dir).resolve() / "queue"
    processed = Path(settings.broker_dir).resolve() / "processed"
    control = Path(settings.broker_dir).resolve() / "control"  # not the working directory
    for folder in (queue, processed, control):
        folder.mkdir(parents=True, exist_ok=True)
    # The filesystem transport polls its folder; kombu's 1 s default would add half a second on
    # average to each hop (study, then export). Listing a small folder ten times a second is cheap.
    return {"data_folder_in": str(queue), "data_folder_out": str(queue),
            "processed_folder": str(processed), "control_folder": str(control),
            "store_processed": False, "polling_interval": 0.1}


def celery_settings(settings: Settings) -> dict[str, Any]:
    """The Celery configuration, each setting with the reason it is there.

    Long GPU tasks, at-least-once delivery, and the database as the source of truth:
    - task_acks_late: a message is acknowledged only after its study is done, so a worker that
      dies mid-study leaves the message to be delivered again.
    - worker_prefetch_multiplier=1: a worker reserves one message at a time; with prefetch, studies
      would wait behind a busy GPU while another worker sits idle.
    - visibility_timeout (Redis, see broker_options): longer than the longest task.
    - task_reject_on_worker_lost: requeues the message when a prefork child is killed. It has no
      effect on the solo and threads pools that GPU workers use; there the database lease is what
      recovers a killed worker: the scheduler requeues a study whose lease expired
      (requeue_abandoned), and past CXRTRIAGE_STUDY_MAX_ATTEMPTS claims the study gets its "not
      analysed" SR (claim_study), so the attempt count in the database caps redelivery.
    - worker_cancel_long_running_tasks_on_connection_loss: when the broker connection drops, the
      acknowledgement of a running late-ack task cannot be delivered and the broker will redeliver
      the message anyway; cancelling the task avoids two copies running. Cancelling is safe because
      tasks are idempotent: a study is claimed with a conditional update, results for one model
      version replace earlier ones, and an SR with the same UID is exported once.
    - task_ignore_result: results live in the database; no result backend is needed.
    - JSON only: task arguments are ids and UIDs, never datasets (and no pickle from the broker).
    - broker_transport (filesystem:// only): kombu's filesystem transport, writing each message
      whole before it can be taken; kombu's own can hand a consumer an empty file (worker/broker.py).
    """
    transport = {"broker_transport": TRANSPORT} if settings.broker_url.startswith("filesystem") else {}
    return {
        **transport,
        "broker_url": settings.broker_url,
        "broker_transport_options": broker_options(settings),
        "broker_connection_retry_on_startup": True,
        "task_default_queue": QUEUE,
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "worker_hijack_root_logger": False,
        "task_serializer": "json",
        "accept_content": ["json"],
    }


def configure_app(settings: Settings) -> TriageCelery:
    """A new app made from `settings`: its broker, and the settings its tasks run with. The tasks
    (worker/tasks.py, shared tasks) register with every app made here."""
    app = TriageCelery("cxrtriage", include=["cxrtriage.worker.tasks"], set_as_current=True)
    app.conf.update(celery_settings(settings))
    source = app.source = RuntimeSource(settings)
    worker_process_init.connect(lambda **_: source.reset(), weak=False)  # no connection crosses a fork
    return app


@task_prerun.connect
def _bind_job_id(task_id: str | None = None, **_: Any) -> None:
    """Every log line a task writes carries its job id."""
    job_id.set(task_id or "")


@task_postrun.connect
def _unbind_job_id(**_: Any) -> None:
    job_id.set("")

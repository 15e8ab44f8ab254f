"""The Celery application. The same task code runs on the embedded filesystem broker and on Redis."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from celery import Celery
from celery.signals import task_postrun, task_prerun, worker_process_init

from cxrtriage.config import Settings
from cxrtriage.logs import job_id
from cxrtriage.worker.runtime import configure_runtime, reset_runtime

QUEUE = "cxrtriage"
EXPORT_QUEUE = "cxrtriage.exports"  # SR sending, apart from classification
app = Celery("cxrtriage", include=["cxrtriage.worker.tasks"])


def broker_options(settings: Settings) -> dict[str, Any]:
    if not settings.broker_url.startswith("filesystem"):
        return {}
    queue = Path(settings.broker_dir).resolve() / "queue"
    processed = Path(settings.broker_dir).resolve() / "processed"
    control = Path(settings.broker_dir).resolve() / "control"  # not the working directory
    for folder in (queue, processed, control):
        folder.mkdir(parents=True, exist_ok=True)
    return {"data_folder_in": str(queue), "data_folder_out": str(queue),
            "processed_folder": str(processed), "control_folder": str(control),
            "store_processed": False}


def configure_app(settings: Settings) -> Celery:
    app.conf.update(
        broker_url=settings.broker_url,
        broker_transport_options=broker_options(settings),
        broker_connection_retry_on_startup=True,
        task_default_queue=QUEUE,
        task_ignore_result=True,
        task_acks_late=True,  # a message is acknowledged only after its study is done
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        task_serializer="json",
        accept_content=["json"],
    )
    configure_runtime(settings)
    return app


@worker_process_init.connect
def _after_fork(**_: Any) -> None:
    reset_runtime()


@task_prerun.connect
def _bind_job_id(task_id: str | None = None, **_: Any) -> None:
    """Every log line a task writes carries its job id."""
    job_id.set(task_id or "")


@task_postrun.connect
def _unbind_job_id(**_: Any) -> None:
    job_id.set("")

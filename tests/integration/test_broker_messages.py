"""The filesystem broker hands a consumer a whole message or none: never the empty file that
kombu's own transport shows while its producer is paused between creating and writing it (CPU
contention). Made deterministic by pausing the producer at exactly that point; a consumer of
kombu's transport then loses the message, one of ours sees nothing until it is complete."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from queue import Empty
from typing import Any

import pytest
from kombu import Connection
from kombu.transport import filesystem

from cxrtriage.config import Settings
from cxrtriage.worker import broker
from cxrtriage.worker.app import celery_settings

QUEUE = "cxrtriage"


def _connection(folder: Path, transport: str) -> Connection:
    options = {"data_folder_in": str(folder), "data_folder_out": str(folder), "store_processed": False}
    return Connection("filesystem://", transport=transport, transport_options=options)


def _paused_producer(monkeypatch: pytest.MonkeyPatch, module: Any) -> tuple[threading.Event, threading.Event]:
    """Make `module`'s producer stop after its file exists and before the body is written."""
    reached, resume = threading.Event(), threading.Event()
    real: Callable[[Any], str] = module.dumps

    def dumps(payload: Any) -> str:
        reached.set()
        assert resume.wait(30)
        return real(payload)

    monkeypatch.setattr(module, "dumps", dumps)
    return reached, resume


@pytest.mark.parametrize(("transport", "module", "whole"), [
    ("filesystem", filesystem, False),  # kombu's own: shown, so the fix is seen to matter
    (broker.TRANSPORT, broker, True),
])
def test_a_consumer_never_takes_a_message_being_written(tmp_path, monkeypatch, transport, module, whole):
    reached, resume = _paused_producer(monkeypatch, module)
    with _connection(tmp_path, transport) as producer, _connection(tmp_path, transport) as consumer:
        put = threading.Thread(target=producer.default_channel._put, args=(QUEUE, {"body": "study"}))
        put.start()
        assert reached.wait(30), "the producer never started writing"
        try:
            consumer.default_channel._get(QUEUE)
            taken = "a message"
        except Empty:
            taken = "nothing yet"
        except json.JSONDecodeError:
            taken = "an empty file"
        resume.set()
        put.join(30)
        if not whole:
            assert taken == "an empty file" and not list(tmp_path.iterdir()), "kombu's transport changed"
            return
        assert taken == "nothing yet"
        assert consumer.default_channel._get(QUEUE) == {"body": "study"}
        assert not list(tmp_path.iterdir())


def test_celery_uses_it_for_the_filesystem_broker_only(tmp_path):
    assert celery_settings(Settings(broker_dir=tmp_path))["broker_transport"] == broker.TRANSPORT
    assert "broker_transport" not in celery_settings(Settings(broker_url="redis://localhost:6379/0"))

"""Per-process resources (database engine, store, model), created lazily after fork, never at import."""

from __future__ import annotations

import os
import threading
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from cxrtriage.config import Settings
from cxrtriage.db.results import register_model
from cxrtriage.db.session import Database
from cxrtriage.dicom.storage import InstanceStore
from cxrtriage.worker.prefetch import DecoderPool

if TYPE_CHECKING:  # torch is loaded only by processes that classify, never by the receiver
    from cxrtriage.models.inference import Classifier


@dataclass
class Runtime:
    settings: Settings
    db: Database
    store: InstanceStore
    _classifier: Classifier | None = None
    _model_version_id: int | None = None
    _decoder_pool: DecoderPool | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def classifier(self) -> Classifier:
        """Loaded once per worker process, on first use, on the device chosen once."""
        with self._lock:
            if self._classifier is None:
                from cxrtriage.models.inference import Classifier

                self._classifier = Classifier(self.settings.model)
            return self._classifier

    @property
    def decoder_pool(self) -> DecoderPool:
        """The child processes that decode every image, under the settings' limits."""
        with self._lock:
            if self._decoder_pool is None:
                self._decoder_pool = DecoderPool.for_settings(self.settings)
            return self._decoder_pool

    def close(self) -> None:
        """Stop the decoder pool's processes (the next batch would start new ones)."""
        if self._decoder_pool is not None:
            self._decoder_pool.shutdown()

    @property
    def model_version_id(self) -> int:
        """The served model's row, registered on first use (a model version never changes)."""
        if self._model_version_id is None:
            manifest = self.classifier.manifest
            with self.db.session() as session:
                self._model_version_id = register_model(session, manifest.model_info(), asdict(manifest))
        return self._model_version_id


class RuntimeSource:
    """The settings a worker's app was configured with, and this process's Runtime made from
    them on first use: after a fork the child makes its own, so no connection crosses a fork."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._runtime: Runtime | None = None
        self._pid: int | None = None
        self._lock = threading.Lock()

    def get(self) -> Runtime:
        with self._lock:
            if self._runtime is None or self._pid != os.getpid():
                self._runtime = Runtime(self.settings, Database(self.settings.database_url),
                                        InstanceStore(self.settings.storage_dir))
                self._pid = os.getpid()
            return self._runtime

    def reset(self) -> None:
        """Drop inherited connections in a freshly forked child (worker_process_init)."""
        with self._lock:
            self._runtime = None

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
from cxrtriage.errors import ConfigError
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


_settings: Settings | None = None
_runtime: Runtime | None = None
_pid: int | None = None


def configure_runtime(settings: Settings) -> None:
    global _settings, _runtime
    _settings, _runtime = settings, None


def runtime() -> Runtime:
    global _runtime, _pid
    if _settings is None:
        raise ConfigError("the worker runtime was used before configure_runtime(settings)")
    if _runtime is None or _pid != os.getpid():
        _runtime = Runtime(_settings, Database(_settings.database_url), InstanceStore(_settings.storage_dir))
        _pid = os.getpid()
    return _runtime


def reset_runtime() -> None:
    """Drop inherited connections in a freshly forked child (worker_process_init)."""
    global _runtime
    _runtime = None

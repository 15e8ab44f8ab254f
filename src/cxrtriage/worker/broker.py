"""kombu's filesystem transport, with messages that appear whole (the development broker).

kombu writes a message by creating its file under the final name and then writing the body. A
consumer polling the folder (every 0.1 s here) can take the file in between: it moves it away,
reads nothing, and fails to decode it. The message is lost, and the Celery worker that took it
stops with "Unrecoverable error: JSONDecodeError". A lost study waits for the scheduler to
re-dispatch it (CXRTRIAGE_PROCESSING_LEASE_SECONDS), a lost SR export for its dispatch hold;
under CPU contention the producer is paused in that gap often enough to see it.

Here a message is written under a name no consumer takes (`...msg.part`: kombu matches the
name's queue exactly) and renamed to its final name once complete; a rename within a folder is
atomic, so a consumer finds either no message or all of it.
"""

from __future__ import annotations

import os
import uuid
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

TRANSPORT = "cxrtriage.worker.broker:Transport"  # Celery's broker_transport for filesystem://


class Channel(filesystem.Channel):
    # kombu names the argument `message` in the base class and `payload` here; both call it by position
    def _put(self, queue: Any, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        """Put `payload` on `queue`: the same name and order as kombu's, but written first."""
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = f"{final}.part"
        try:
            with open(partial, "wb") as handle:
                handle.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc
        finally:
            if os.path.exists(partial):
                os.unlink(partial)


class Transport(filesystem.Transport):
    Channel = Channel

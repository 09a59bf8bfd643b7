"""In-process fan-out of job changes to WatchJob streams.

The manager publishes every job revision it sees (its own changes at once,
runners' changes when its poll loop reads them from the store) and new log
lines; each subscription gets them on its own asyncio queue, delivered
thread-safely onto the subscriber's event loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

from .records import Job, LogLine

Event = Job | LogLine


class Subscription:
    def __init__(self, bus: EventBus, job_id: str, log_cursor: int | None, loop: asyncio.AbstractEventLoop):
        self.job_id = job_id
        # Id of the last log line delivered; None: this subscriber wants no logs.
        self.log_cursor = log_cursor
        self._bus = bus
        self._loop = loop
        self._queue: asyncio.Queue[Event] = asyncio.Queue()

    async def get(self) -> Event:
        return await self._queue.get()

    def close(self) -> None:
        self._bus._remove(self)

    def _deliver(self, event: Event) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, event)
        except RuntimeError:
            # The subscriber's loop is closed: it is gone, and so is its interest.
            self.close()


class EventBus:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscriptions: dict[str, list[Subscription]] = {}

    def subscribe(
        self, job_id: str, loop: asyncio.AbstractEventLoop, log_cursor: int | None = None
    ) -> Subscription:
        """Follow `job_id` on `loop`; logs after `log_cursor` too, when given. Callable from any thread."""
        subscription = Subscription(self, job_id, log_cursor, loop)
        with self._lock:
            self._subscriptions.setdefault(job_id, []).append(subscription)
        return subscription

    def watched(self) -> dict[str, int | None]:
        """Job ids with subscribers, each with the oldest log cursor among them (None: nobody wants logs)."""
        with self._lock:
            out: dict[str, int | None] = {}
            for job_id, subscriptions in self._subscriptions.items():
                cursors = [s.log_cursor for s in subscriptions if s.log_cursor is not None]
                out[job_id] = min(cursors) if cursors else None
            return out

    def publish(self, job: Job) -> None:
        for subscription in self._of(job.id):
            subscription._deliver(job)

    def publish_logs(self, job_id: str, lines: Sequence[LogLine]) -> None:
        for subscription in self._of(job_id):
            if subscription.log_cursor is None:
                continue
            for line in lines:
                if line.id > subscription.log_cursor:
                    subscription._deliver(line)
                    subscription.log_cursor = line.id

    def _of(self, job_id: str) -> list[Subscription]:
        with self._lock:
            return list(self._subscriptions.get(job_id, ()))

    def _remove(self, subscription: Subscription) -> None:
        with self._lock:
            remaining = [s for s in self._subscriptions.get(subscription.job_id, ()) if s is not subscription]
            if remaining:
                self._subscriptions[subscription.job_id] = remaining
            else:
                self._subscriptions.pop(subscription.job_id, None)

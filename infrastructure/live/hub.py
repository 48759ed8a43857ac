"""One tailer per server process that follows the log by position and fans events out.

Why a tailer rather than a hook in the append path: events come from every process (workers
on PostgreSQL, `assay worker`), and only the log sees them all. The tailer reads the events
table after its position, woken at once by this process's own commits and otherwise every
`poll_seconds`; global order equals commit order (see infrastructure.eventstore), so reading
by position never skips an event that commits late.

A subscriber registers, then reads what it missed from the database, then takes the live
events from its queue, skipping positions it already sent: registration happens at a known
tailer position, so everything is either in the database by then or arrives in the queue.
Each queue is bounded; a subscriber that falls that far behind is dropped (its stream ends
and the client resumes from its last id) instead of making the server hold its backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Sequence

import structlog

from infrastructure.eventstore import RecordedEvent
from infrastructure.live.routing import EventRouter, Routed, current_evaluations

log = structlog.get_logger("assay.live")

ReadAfter = Callable[[int, int], Awaitable[list[RecordedEvent]]]
# Called with a batch before it is delivered (the server evicts cached views it changed).
BeforeDelivery = Callable[[list[Routed]], Awaitable[None]]
PAGE = 1000


def evaluation_key(evaluation_id: str) -> tuple[str, str]:
    return ("evaluation", evaluation_id)


def org_key(org_id: str) -> tuple[str, str]:
    return ("org", org_id)


class Subscription:
    """A bounded queue of routed events for one stream. A plain deque and one future to wait
    on: no task per wait, which matters with a thousand streams each woken per event."""

    __slots__ = ("_events", "_waiter", "dropped", "key", "limit")

    def __init__(self, key: Hashable, limit: int) -> None:
        self.key = key
        self.limit = limit
        self.dropped = False
        self._events: deque[Routed] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def offer(self, routed: Routed) -> None:
        if self.dropped:
            return
        if len(self._events) >= self.limit:
            # Too far behind: free the backlog now; the reader sees `dropped` and ends.
            self.dropped = True
            self._events.clear()
        else:
            self._events.append(routed)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait(self, timeout: float) -> bool:
        """Until an event is queued or the subscription is dropped (True), or `timeout`."""
        if self._events or self.dropped:
            return True
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(timeout):
                await self._waiter
            return True
        except TimeoutError:
            return False
        finally:
            self._waiter = None

    def take(self, most: int) -> list[Routed]:
        """Up to `most` queued events, oldest first."""
        events = self._events
        return [events.popleft() for _ in range(min(most, len(events)))]


class LiveHub:
    def __init__(
        self,
        read_after: ReadAfter,
        last_position: Callable[[], Awaitable[int]],
        router: EventRouter,
        *,
        poll_seconds: float,
        queue_limit: int,
        before_delivery: BeforeDelivery | None = None,
    ) -> None:
        self._read_after = read_after
        self._last_position = last_position
        self._router = router
        self.poll_seconds = poll_seconds
        self.queue_limit = queue_limit
        self._before_delivery = before_delivery
        self._subscribers: dict[Hashable, set[Subscription]] = {}
        self._position: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._start_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self.dropped_total = 0

    @property
    def subscriber_count(self) -> int:
        return sum(len(s) for s in self._subscribers.values())

    def wake(self) -> None:
        """This process committed events: read them now rather than at the next poll."""
        if self._task is not None:
            self._wake.set()

    async def subscribe(self, key: Hashable) -> Subscription:
        """Register for `key`'s events; everything after the returned moment reaches the queue."""
        subscription = Subscription(key, self.queue_limit)
        async with self._start_lock:
            if self._task is None or self._task.done():
                self._position = await self._last_position()
                self._task = asyncio.create_task(self._run(), name="live-tailer")
            self._subscribers.setdefault(key, set()).add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        group = self._subscribers.get(subscription.key)
        if group is not None:
            group.discard(subscription)
            if not group:
                del self._subscribers[subscription.key]
        if subscription.dropped:
            self.dropped_total += 1

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        # Runs while anybody listens; the next subscriber starts it again at the head.
        while self._subscribers:
            try:
                await self._poll()
            except Exception as exc:  # a passing database hiccup: try again at the next tick
                log.warning("live_tail_failed", error=repr(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_seconds)
            self._wake.clear()

    async def _poll(self) -> None:
        assert self._position is not None
        while True:
            page = await self._read_after(self._position, PAGE)
            if not page:
                return
            routed = await self._router.route(page)
            if self._before_delivery is not None:
                await self._before_delivery(routed)
            await self._attach_evaluations(routed)
            self._deliver(routed)
            self._position = page[-1].position
            if len(page) < PAGE:
                return

    async def _attach_evaluations(self, routed: Sequence[Routed]) -> None:
        """Read each watched evaluation of the batch once, for all of its streams (rather
        than once per stream: a thousand streams would be a thousand reads per event)."""
        watched = {
            r.evaluation_id
            for r in routed
            if r.evaluation_id is not None and evaluation_key(r.evaluation_id) in self._subscribers
        }
        if not watched:
            return
        views = await current_evaluations(self._router.engine, sorted(watched))
        for r in routed:
            if r.evaluation_id in views:
                r.evaluation = views[r.evaluation_id]

    def _deliver(self, routed: Sequence[Routed]) -> None:
        subscribers = self._subscribers
        for event in routed:
            if event.evaluation_id is not None:
                for subscription in subscribers.get(evaluation_key(event.evaluation_id), ()):
                    subscription.offer(event)
            if event.org_id is not None:
                for subscription in subscribers.get(org_key(event.org_id), ()):
                    subscription.offer(event)

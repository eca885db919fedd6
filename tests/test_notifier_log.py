"""The notifier's shared event logs: one log per visibility group, a cursor per subscriber.

These drive the real notifier actor through its inbox, as the scheduler and subscriptions do.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
import trio.testing

import fetchml
from fetchml import JobState
from fetchml.actors._messages import Attach, Attached, Envelope, Message, Publish, call
from fetchml.actors._notifier import Notifier, Sink


def _event(seq: int, *, job_id: int | None = None, user: str = "alice") -> fetchml.JobEvent:
    spec = fetchml.JobSpec(command=["true"])
    job = fetchml.Job(
        id=job_id or seq, user=user, spec=spec, state=JobState.QUEUED, seq=seq, created_at=1
    )
    return fetchml.JobEvent(seq=seq, ts=1.0, job=job)


@asynccontextmanager
async def _notifier() -> AsyncIterator[tuple[Notifier, trio.MemorySendChannel[Envelope[Message]]]]:
    send, receive = trio.open_memory_channel[Envelope[Message]](64)
    notifier = Notifier(receive, last_seq=0)
    async with trio.open_nursery() as nursery:
        await nursery.start(notifier.run)
        with send:
            yield notifier, send
        nursery.cancel_scope.cancel()


async def _attach(
    inbox: trio.MemorySendChannel[Envelope[Message]],
    sub_id: int,
    capacity: int,
    *,
    job_id: int | None = None,
    since: int | None = None,
) -> Sink:
    sink = Sink(sub_id, capacity, job_id=job_id)
    reply = await call(inbox, Attach(sub_id=sub_id, since=since, job_id=job_id), stream=sink)
    assert isinstance(reply, Attached), reply
    return sink


async def _publish(inbox: trio.MemorySendChannel[Envelope[Message]], *seqs: int) -> None:
    await inbox.send(Envelope(Publish(events=tuple(_event(s) for s in seqs))))
    await trio.testing.wait_all_tasks_blocked()


async def test_every_member_of_a_group_reads_each_event_once_in_order() -> None:
    with trio.fail_after(5):
        async with _notifier() as (_, inbox):
            sinks = [await _attach(inbox, n, capacity=100) for n in range(1, 51)]
            await _publish(inbox, 1, 2, 3)
            await _publish(inbox, 4)
            for sink in sinks:
                assert [e.seq for e in sink.take(2)] == [1, 2]
                assert [e.seq for e in sink.take(10)] == [3, 4]
                assert sink.take(10) == []
            # They all share one list of events, not a copy each.
            assert sinks[0].source is sinks[-1].source


async def test_a_waiting_member_wakes_for_the_next_event() -> None:
    with trio.fail_after(5):
        async with _notifier() as (_, inbox), trio.open_nursery() as nursery:
            sink = await _attach(inbox, 1, capacity=10)
            got: list[int] = []

            async def read() -> None:
                while not got:
                    await sink.wait()
                    got.extend(e.seq for e in sink.take(10))

            nursery.start_soon(read)
            await trio.testing.wait_all_tasks_blocked()
            await _publish(inbox, 7)
            await trio.testing.wait_all_tasks_blocked()
            assert got == [7]


async def test_a_member_that_stops_reading_is_dropped_after_its_buffer() -> None:
    with trio.fail_after(5):
        async with _notifier() as (_, inbox):
            slow = await _attach(inbox, 1, capacity=3)
            fast = await _attach(inbox, 2, capacity=5)
            for seq in range(1, 101):  # the log is trimmed past slow many times
                await _publish(inbox, seq)
                assert [e.seq for e in fast.take(10)] == [seq]
            assert fast.source is not None
            assert len(fast.source.events) <= 2 * 5  # memory stays bounded
            # What a full buffer of 3 held, then the drop, and where to resume from.
            assert [e.seq for e in slow.take(10)] == [1, 2, 3]
            assert slow.finished
            assert slow.dropped
            assert slow.reason is not None
            assert slow.reason.endswith("resume with since=3")
            assert 1 not in fast.source.members


async def test_a_member_behind_is_dropped_when_it_reads_again() -> None:
    with trio.fail_after(5):
        async with _notifier() as (_, inbox):
            sink = await _attach(inbox, 1, capacity=2)
            await _publish(inbox, 1, 2, 3, 4)  # no trim yet: found behind at its next read
            assert [e.seq for e in sink.take(1)] == [1]
            assert [e.seq for e in sink.take(5)] == [2]
            assert sink.finished
            assert sink.dropped
            assert sink.reason is not None
            assert sink.reason.endswith("since=2")


async def test_a_closed_member_keeps_what_was_published_before() -> None:
    with trio.fail_after(5):
        async with _notifier() as (_, inbox):
            sink = await _attach(inbox, 1, capacity=10)
            await _publish(inbox, 1, 2)
            sink.close("the server is shutting down")
            await _publish(inbox, 3)
            assert [e.seq for e in sink.take(10)] == [1, 2]
            assert sink.finished
            assert not sink.dropped


async def test_a_job_log_goes_with_its_last_member() -> None:
    with trio.fail_after(5):
        async with _notifier() as (notifier, inbox):
            first = await _attach(inbox, 1, capacity=10, job_id=5)
            second = await _attach(inbox, 2, capacity=10, job_id=5)
            assert first.source is second.source
            await inbox.send(Envelope(Publish(events=(_event(1, job_id=5), _event(2, job_id=6)))))
            await trio.testing.wait_all_tasks_blocked()
            assert [e.seq for e in first.take(10)] == [1]  # not job 6's
            first.close("unsubscribed")
            assert notifier._by_job  # second still reads it
            second.close("unsubscribed")
            assert not notifier._by_job  # a job watched once costs nothing afterwards


async def test_shutdown_ends_every_member_and_wakes_the_waiting() -> None:
    with trio.fail_after(5):
        ended = trio.Event()
        send, receive = trio.open_memory_channel[Envelope[Message]](64)
        notifier = Notifier(receive, last_seq=0)
        async with trio.open_nursery() as nursery:
            await nursery.start(notifier.run)
            sink = await _attach(send, 1, capacity=10, job_id=3)

            async def wait() -> None:
                while not sink.finished:
                    await sink.wait()
                ended.set()

            nursery.start_soon(wait)
            await trio.testing.wait_all_tasks_blocked()
            send.close()  # the notifier's inbox ends: it stops
            await ended.wait()
        assert sink.reason == "the server is shutting down"

"""Events: replay from the store, live fan-out, filters, gap-free resume, slow subscribers."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from helpers.core import open_sched

import fetchml
from fetchml import JobEvent, JobState, SubscriberDroppedError


async def _collect(subscription: fetchml.Subscription, until_seq: int) -> list[JobEvent]:
    """Events from ``subscription`` until one with ``seq >= until_seq``."""
    events: list[JobEvent] = []
    async with subscription as stream:
        async for event in stream:
            events.append(event)
            if event.seq >= until_seq:
                break
    return events


async def _run_jobs(scheduler: fetchml.Scheduler) -> list[fetchml.Job]:
    jobs = [
        await scheduler.submit({"command": ["true"]}, user="alice"),
        await scheduler.submit({"command": ["false"]}, user="bob"),
        await scheduler.submit({"command": ["true"]}, user="alice"),
    ]
    return [await scheduler.wait(job.id) for job in jobs]


async def test_replay_from_zero_has_everything_in_order(data_dir: Path) -> None:
    with trio.fail_after(10):
        async with open_sched(data_dir) as scheduler:
            jobs = await _run_jobs(scheduler)
            last = (await scheduler.status()).last_seq
            events = await _collect(scheduler.subscribe(since=0), last)
    seqs = [event.seq for event in events]
    assert seqs == list(range(1, last + 1))  # strictly increasing, no gap, nothing twice
    # Each job: queued, running, then its terminal state, in that order.
    for job in jobs:
        states = [event.job.state for event in events if event.job.id == job.id]
        assert states == [JobState.QUEUED, JobState.RUNNING, job.state]
    # The event's job carries the event's seq, and the latest one is what get() returns.
    assert all(event.job.seq == event.seq for event in events)
    assert [event.job for event in events if event.job.id == jobs[1].id][-1] == jobs[1]


async def test_filters_by_job_and_by_user(data_dir: Path) -> None:
    with trio.fail_after(10):
        async with open_sched(data_dir) as scheduler:
            jobs = await _run_jobs(scheduler)
            bob_job = jobs[1]
            by_job = await _collect(scheduler.subscribe(job_id=bob_job.id, since=0), bob_job.seq)
            alice_last = max(job.seq for job in jobs if job.user == "alice")
            by_user = await _collect(scheduler.subscribe(user="alice", since=0), alice_last)
            # Live, filtered: only alice's new job shows up for an alice subscriber.
            async with scheduler.subscribe(user="alice") as live:
                await scheduler.submit({"command": ["true"]}, user="bob")
                mine = await scheduler.submit({"command": ["true"]}, user="alice")
                first = await live.__anext__()
    assert [e.job.state for e in by_job] == [JobState.QUEUED, JobState.RUNNING, JobState.FAILED]
    assert {e.job.id for e in by_job} == {bob_job.id}
    assert len(by_user) == 6
    assert {e.job.user for e in by_user} == {"alice"}
    assert [e.seq for e in by_user] == sorted({e.seq for e in by_user})
    assert first.job.id == mine.id
    assert first.job.user == "alice"


async def test_resume_misses_nothing_and_repeats_nothing(data_dir: Path) -> None:
    with trio.fail_after(15):
        async with open_sched(data_dir) as scheduler:
            await _run_jobs(scheduler)
            last = (await scheduler.status()).last_seq
            everything = await _collect(scheduler.subscribe(since=0), last)
            # Read part, stop, resume from the last seq seen; repeat across several cuts.
            for cut in (1, 4, last - 1):
                head = await _collect(scheduler.subscribe(since=0), cut)
                tail = await _collect(scheduler.subscribe(since=head[-1].seq), last)
                assert [e.seq for e in head + tail] == [e.seq for e in everything]
                assert head + tail == everything
            # Resume while new events keep arriving: nothing lost between the two.
            async with scheduler.subscribe(since=last) as live:
                more = await scheduler.submit({"command": ["true"]}, user="carol")
                first = await live.__anext__()
                await scheduler.wait(more.id)
                resumed_from = live.last_seq
            assert resumed_from is not None
            final = (await scheduler.status()).last_seq
            rest = await _collect(scheduler.subscribe(since=resumed_from), final)
            seen = [first, *rest]
            assert [e.seq for e in seen] == list(range(last + 1, final + 1))
    # After a restart the store replays the same history (the notifier's memory is gone).
    with trio.fail_after(10):
        async with open_sched(data_dir) as scheduler:
            again = await _collect(scheduler.subscribe(since=0), final)
    assert again[: len(everything)] == everything
    assert [e.seq for e in again] == list(range(1, final + 1))


async def test_slow_subscriber_is_dropped_and_scheduler_keeps_going(data_dir: Path) -> None:
    with trio.fail_after(15):
        async with open_sched(data_dir) as scheduler, trio.open_nursery() as nursery:
            slow = scheduler.subscribe(buffer=2)
            attached = trio.Event()

            async def read_once() -> None:
                await slow.__anext__()  # attaches, takes one event, then never reads again
                attached.set()

            nursery.start_soon(read_once)
            await trio.sleep(0.05)
            await scheduler.submit({"command": ["true"]}, user="alice")
            await attached.wait()
            # 20 jobs = 60 events for a subscriber with room for 2: it must not hold anyone up.
            with trio.fail_after(5):
                jobs = [
                    await scheduler.submit({"command": ["true"]}, user="alice") for _ in range(20)
                ]
                done = [await scheduler.wait(job.id) for job in jobs]
            assert all(job.state is JobState.SUCCEEDED for job in done)
            received = [await slow.__anext__() for _ in range(2)]  # what its buffer held
            assert [e.seq for e in received] == sorted({e.seq for e in received})
            with pytest.raises(SubscriberDroppedError) as info:
                await slow.__anext__()
            assert "since=" in info.value.message
            assert info.value.code == "too_slow"
            await slow.aclose()
            # A well-behaved subscriber resumes where the slow one's buffer ended.
            last = (await scheduler.status()).last_seq
            resumed = await _collect(scheduler.subscribe(since=0), last)
            assert [e.seq for e in resumed] == list(range(1, last + 1))


async def test_subscription_ends_when_the_scheduler_stops(data_dir: Path) -> None:
    events: list[JobEvent] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery, open_sched(data_dir) as scheduler:
            ready = trio.Event()

            async def listen() -> None:
                async with scheduler.subscribe(since=0) as stream:
                    ready.set()
                    async for event in stream:
                        events.append(event)

            nursery.start_soon(listen)
            await ready.wait()
            job = await scheduler.submit({"command": ["true"]}, user="a")
            await scheduler.wait(job.id)
            await trio.sleep(0.05)
            # Leaving open_scheduler ends the subscription (listen returns on its own).
    assert [e.job.state for e in events] == [JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED]


async def test_wait_sees_the_terminal_state_of_many_jobs(data_dir: Path) -> None:
    with trio.fail_after(15):
        async with open_sched(data_dir, cpus=2) as scheduler:
            jobs = [
                await scheduler.submit({"command": ["sh", "-c", f"exit {i % 3}"]}, user="a")
                for i in range(12)
            ]
            results: dict[int, fetchml.Job] = {}

            async def wait(job_id: int) -> None:
                results[job_id] = await scheduler.wait(job_id)

            async with trio.open_nursery() as nursery:
                for job in jobs:
                    nursery.start_soon(wait, job.id)
    for i, job in enumerate(jobs):
        done = results[job.id]
        assert done.terminal
        assert done.exit_code == i % 3
        assert done.state is (JobState.SUCCEEDED if i % 3 == 0 else JobState.FAILED)

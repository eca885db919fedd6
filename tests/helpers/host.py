"""A program that embeds the scheduler, for the restart tests to kill with SIGKILL.

Usage: ``python host.py DATA_DIR RUNS_FILE``.  Opens the scheduler on DATA_DIR, submits one long
job (it writes its pid to ``pid`` in its output dir and sleeps), prints ``long <id>``, then submits
short jobs from several tasks for ever, printing ``ack <id>`` (flushed) once each submit returned,
i.e. once the job is durably stored.  Each short job appends its id to RUNS_FILE when it runs.
"""

from __future__ import annotations

import sys
from typing import Any

import trio

import fetchml

SETTINGS: dict[str, Any] = {"cpus": 2, "memory_mb": 1000, "gpus": [], "kill_grace_s": 0.5}
SUBMITTERS = 4


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def main(data_dir: str, runs_file: str) -> None:
    async with fetchml.open_scheduler(data_dir=data_dir, **SETTINGS) as scheduler:
        long = await scheduler.submit(
            {"command": "echo $$ > pid; exec sleep 30", "shell": True, "priority": 10},
            user="alice",
        )
        say(f"long {long.id}")
        short = {"command": f'echo "$FETCHML_JOB_ID" >> {runs_file}', "shell": True}

        async def storm(user: str) -> None:
            while True:
                job = await scheduler.submit(short, user=user)
                say(f"ack {job.id}")

        async with trio.open_nursery() as nursery:
            for n in range(SUBMITTERS):
                nursery.start_soon(storm, f"user{n}")


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2])

"""``ml`` end to end: the real command as a subprocess against a real in-process server.

Each user is configured only through ``FETCHML_URL`` / ``FETCHML_API_KEY`` (or the config file
``ml config init`` writes), as a new user would.
"""

from __future__ import annotations

import os
import stat
import subprocess
from functools import partial
from pathlib import Path
from typing import Any

import trio
from test_client_support import KEYS, ML_ARGV, Ml, Result, ml_env, run_ml, running_server

from fetchml.client import JobUpdate, connect


async def until_running(url: str, job_id: int) -> None:
    async with connect(url, KEYS["admin"]) as client, client.subscribe(job_id) as events:
        if (await client.get(job_id)).state == "running":
            return
        async for event in events:
            if isinstance(event, JobUpdate) and event.job.state == "running":
                return


def error_line(result: Result) -> str:
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert "Traceback" not in result.err
    return lines[0]


async def test_admin_queue_status_logs_cancel(data_dir: Path, tmp_path: Path) -> None:
    with trio.fail_after(40):
        async with running_server(data_dir) as url:
            ml = Ml(url, tmp_path)
            queued = await ml(
                "admin",
                "queue",
                "--name",
                "greet",
                "--tag",
                "t1",
                "--env",
                "WHO=world",
                "--memory",
                "512M",
                "--",
                "sh",
                "-c",
                'echo "hi $WHO"',
            )
            assert queued.rc == 0, queued.err
            job_id = int(queued.out.strip())
            detail = await ml("admin", "status", str(job_id), "--json")
            job = detail.json()
            assert job["id"] == job_id
            assert job["spec"]["env"] == {"WHO": "world"}
            assert job["spec"]["resources"]["memory_mb"] == 512
            assert job["spec"]["tags"] == ["t1"]
            async with connect(url, KEYS["admin"]) as client:
                await client.wait(job_id)
                long = await client.submit({"command": ["sleep", "30"], "name": "long"})
            logs = await ml("admin", "logs", str(job_id))
            assert (logs.rc, logs.out) == (0, "hi world\n")
            logs_json = await ml("admin", "--json", "logs", str(job_id))
            assert logs_json.json() == {"job_id": job_id, "offset": 0, "data": "hi world\n"}
            table = await ml("admin", "status")
            assert table.rc == 0
            header, *rows = table.out.splitlines()
            assert header.split()[:4] == ["ID", "NAME", "USER", "STATE"]
            assert [r.split()[0] for r in rows] == [str(long.id), str(job_id)]
            assert "succeeded" in rows[1]
            plain = await ml("admin", "status", str(job_id))
            assert "state:" in plain.out
            assert "succeeded" in plain.out
            listed = await ml("admin", "status", "--json", "--state", "succeeded")
            assert [j["id"] for j in listed.json()] == [job_id]
            await until_running(url, long.id)
            cancelled = await ml("admin", "cancel", str(long.id), "--json")
            assert cancelled.rc == 0, cancelled.err
            assert cancelled.json()[0]["state"] == "cancelled"
            again = await ml("admin", "cancel", str(long.id))
            assert again.rc == 7
            assert "already ended" in error_line(again)
            missing = await ml("admin", "status", "999")
            assert missing.rc == 6
            assert "no job with id 999" in error_line(missing)
            me = await ml("admin", "whoami", "--json")
            assert me.json()["user"] == "admin"
            assert me.json()["server"] == url


async def test_queue_wait_returns_the_job_exit_code(data_dir: Path, tmp_path: Path) -> None:
    with trio.fail_after(40):
        async with running_server(data_dir) as url:
            ml = Ml(url, tmp_path)
            failed = await ml("bob", "queue", "--wait", "--", "sh", "-c", "echo out; exit 3")
            assert failed.rc == 3
            assert failed.out == "out\n"
            assert "failed" in failed.err
            ok = await ml("bob", "queue", "--wait", "--shell", "--", "echo", "fine")
            assert (ok.rc, ok.out) == (0, "fine\n")
            streamed = await ml("bob", "queue", "--wait", "--json", "--", "sh", "-c", "echo a")
            assert streamed.rc == 0
            lines = streamed.lines()
            assert lines[0]["type"] == "job"
            assert lines[0]["job"]["state"] == "queued"
            jobs = [x["job"]["state"] for x in lines if x["type"] == "job"]
            assert jobs[-1] == "succeeded"
            assert "".join(x["data"] for x in lines if x["type"] == "log") == "a\n"
            assert any(x["type"] == "log_end" for x in lines)
            timed = await ml("bob", "queue", "--wait", "--timeout", "1s", "--", "sleep", "30")
            assert timed.rc == 124, timed.err
            cancelled: list[Result] = []

            async def wait_for_sleeper() -> None:
                cancelled.append(await ml("bob", "queue", "--wait", "--", "sleep", "30"))

            async with (
                trio.open_nursery() as nursery,
                connect(url, KEYS["admin"]) as client,
                client.subscribe() as events,
            ):
                nursery.start_soon(wait_for_sleeper)
                async for event in events:
                    if isinstance(event, JobUpdate) and event.job.state == "running":
                        await client.cancel(event.job.id)
                        break
            assert cancelled[0].rc == 143, cancelled[0].err


async def test_logs_follow_a_running_job_to_its_end(data_dir: Path, tmp_path: Path) -> None:
    script = "for i in 1 2 3 4 5; do echo line $i; sleep 0.3; done"
    with trio.fail_after(40):
        async with running_server(data_dir) as url:
            ml = Ml(url, tmp_path)
            async with connect(url, KEYS["bob"]) as client:
                job = await client.submit({"command": script, "shell": True})
            await until_running(url, job.id)
            followed = await ml("bob", "logs", "-f", str(job.id))
            assert followed.rc == 0, followed.err
            assert followed.out == "".join(f"line {i}\n" for i in range(1, 6))
            async with connect(url, KEYS["bob"]) as client:
                assert (await client.get(job.id)).state == "succeeded"
            # analysts read every job's log
            analyst = await ml("carol", "logs", "-f", "--json", str(job.id))
            assert analyst.lines()[-1] == {"type": "log_end", "job_id": job.id, "offset": 35}


async def test_researcher_sees_only_own_jobs(data_dir: Path, tmp_path: Path) -> None:
    with trio.fail_after(40):
        async with running_server(data_dir) as url:
            ml = Ml(url, tmp_path)
            admin_job = int((await ml("admin", "queue", "--", "sleep", "30")).out)
            bob_job = int((await ml("bob", "queue", "--priority", "7", "--", "true")).out)
            mine = await ml("bob", "status", "--json")
            assert [j["id"] for j in mine.json()] == [bob_job]
            assert mine.json()[0]["spec"]["priority"] == 7
            hidden = await ml("bob", "status", str(admin_job))
            assert hidden.rc == 6
            others = await ml("bob", "status", "--user", "admin")
            assert others.rc == 5
            assert "jobs:read:all" in error_line(others)
            cancel = await ml("bob", "cancel", str(admin_job))
            assert cancel.rc == 5, cancel.err
            logs = await ml("bob", "logs", str(admin_job))
            assert logs.rc == 6
            everything = await ml("admin", "status", "--json")
            assert {j["id"] for j in everything.json()} == {admin_job, bob_job}
            me = await ml("bob", "whoami")
            assert "researcher" in me.out
            assert "jobs:create" in me.out
            dry = await ml(
                "bob",
                "queue",
                "--dry-run",
                "--cpu",
                "2",
                "--after",
                str(bob_job),
                "--",
                "python",
                "train.py",
            )
            assert dry.rc == 0, dry.err
            assert "valid" in dry.out
            dry_json = await ml("bob", "queue", "--dry-run", "--json", "--", "true")
            assert dry_json.json()["valid"] is True
            too_big = await ml("bob", "queue", "--dry-run", "--cpu", "64", "--", "true")
            assert too_big.rc == 2
            assert "resources.cpus" in error_line(too_big)
            unknown_dep = await ml("bob", "queue", "--dry-run", "--after", "999", "--", "true")
            assert unknown_dep.rc == 2
            real_too_big = await ml("bob", "queue", "--no-snapshot", "--gpu", "1", "--", "true")
            assert real_too_big.rc == 2
            assert "resources.gpus" in error_line(real_too_big)
            assert (await ml("bob", "status", "--json")).json()[0]["id"] == bob_job


async def test_analyst_reads_but_every_write_is_refused(data_dir: Path, tmp_path: Path) -> None:
    with trio.fail_after(40):
        async with running_server(data_dir) as url:
            ml = Ml(url, tmp_path)
            job = int((await ml("bob", "queue", "--", "sleep", "30")).out)
            seen = await ml("carol", "status", "--json")
            assert [j["id"] for j in seen.json()] == [job]
            assert (await ml("carol", "status", str(job))).rc == 0
            assert (await ml("carol", "logs", str(job))).rc == 0
            writes = [
                ("queue", "--", "true"),
                ("queue", "--wait", "--", "true"),
                ("queue", "--dry-run", "--", "true"),
            ]
            for args in writes:
                refused = await ml("carol", *args)
                assert refused.rc == 5, (args, refused.err)
                assert "jobs:create" in error_line(refused)
            cancel = await ml("carol", "cancel", str(job))
            assert cancel.rc == 5
            assert "jobs:update" in error_line(cancel)
            assert (await ml("carol", "status", str(job), "--json")).json()["state"] != "cancelled"
            done = await ml("bob", "queue", "--wait", "--json", "--", "true")
            done_id = done.lines()[0]["job"]["id"]
            watched = await ml("carol", "watch", str(done_id))
            assert watched.rc == 0
            assert "succeeded" in watched.out
            me = await ml("carol", "whoami", "--json")
            assert me.json()["roles"] == ["analyst"]
            assert "jobs:create" not in me.json()["permissions"]


async def test_watch_and_status_watch_stream_pushed_events(data_dir: Path, tmp_path: Path) -> None:
    with trio.fail_after(40):
        async with running_server(data_dir) as url, connect(url, KEYS["admin"]) as client:
            env = ml_env(url, "admin", tmp_path)
            since = (await client.status()).last_seq
            first = await client.submit({"command": ["sleep", "30"]})
            async with trio.open_nursery() as nursery:
                watcher = await start_ml(nursery, env, "watch", "--json", "--since", str(since))
                table = await start_ml(nursery, env, "status", "--watch", "--json")
                assert (await table.line())["job"]["id"] == first.id  # subscribed by now
                await client.cancel(first.id)
                second = await client.submit({"command": ["true"]})
                await client.wait(second.id)
                states: list[tuple[int, str]] = []
                while not states or states[-1] != (second.id, "succeeded"):
                    event = await watcher.line()
                    states.append((event["job"]["id"], event["job"]["state"]))
                assert states[0] == (first.id, "queued")
                assert (first.id, "cancelled") in states
                live: list[tuple[int, str]] = []
                while not live or live[-1] != (second.id, "succeeded"):
                    event = await table.line()
                    live.append((event["job"]["id"], event["job"]["state"]))
                assert (first.id, "cancelled") in live
                nursery.cancel_scope.cancel()
            one = await run_ml("watch", str(second.id), env=env)
            assert one.rc == 0
            assert "succeeded" in one.out


class _Lines:
    def __init__(self, process: trio.Process) -> None:
        self._process = process
        self._buffer = b""

    async def line(self) -> dict[str, Any]:
        import json

        assert self._process.stdout is not None
        while b"\n" not in self._buffer:
            chunk = await self._process.stdout.receive_some()
            assert chunk, "ml ended early"
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        result: dict[str, object] = json.loads(line)
        return result


async def start_ml(nursery: trio.Nursery, env: dict[str, str], *args: str) -> _Lines:
    process: trio.Process = await nursery.start(
        partial(
            trio.run_process,
            [*ML_ARGV, *args],
            env=env,
            stdin=b"",
            stdout=subprocess.PIPE,
            check=False,
        )
    )
    return _Lines(process)


async def test_connection_and_key_errors(data_dir: Path, tmp_path: Path) -> None:
    with trio.fail_after(40):
        async with running_server(data_dir) as url:
            bad = await run_ml("status", env=ml_env(url, None, tmp_path, FETCHML_API_KEY="fml_x"))
            assert bad.rc == 4
            assert "invalid API key" in error_line(bad)
            assert "fml_x" not in bad.err
            none = await run_ml("status", env=ml_env(url, None, tmp_path))
            assert none.rc == 4
            assert "ml config init" in error_line(none)
        # the server is gone: nothing listens on its port any more
        gone = await run_ml("status", env=ml_env(url, "admin", tmp_path))
        assert gone.rc == 3
        assert url in error_line(gone)
        debug = await run_ml("--debug", "whoami", env=ml_env(url, "admin", tmp_path))
        assert debug.rc == 3
        assert "Traceback" in debug.err


async def test_config_init_writes_a_private_file_that_is_used(
    data_dir: Path, tmp_path: Path
) -> None:
    key = KEYS["bob"].encode() + b"\n"
    with trio.fail_after(40):
        async with running_server(data_dir) as url:
            env = ml_env(None, None, tmp_path)
            init = await run_ml("config", "init", "--url", url, "--key-stdin", env=env, stdin=key)
            assert init.rc == 0, init.err
            path = tmp_path / "xdg" / "fetchml" / "config.yaml"
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            assert KEYS["bob"] not in init.out + init.err
            me = await run_ml("whoami", "--json", env=env)
            assert me.rc == 0, me.err
            assert (me.json()["user"], me.json()["server"]) == ("bob", url)
            shown = await run_ml("config", "show", "--json", env=env)
            assert KEYS["bob"] not in shown.out
            assert shown.json()["key_source"] == "config"
            assert shown.json()["key"].endswith("_****")
            # the environment wins over the file
            admin = await run_ml("whoami", "--json", env={**env, "FETCHML_API_KEY": KEYS["admin"]})
            assert admin.json()["user"] == "admin"
            again = await run_ml("config", "init", "--key-stdin", env=env, stdin=key)
            assert again.rc == 2
            assert "--force" in error_line(again)
            wrong = await run_ml(
                "config", "init", "--url", url, "--key-stdin", "--force", env=env, stdin=b"nope\n"
            )
            assert wrong.rc == 4
            assert (await run_ml("whoami", env=env)).rc == 0  # the good file was kept
            key_file = tmp_path / "key"
            key_file.write_text(KEYS["carol"])
            os.chmod(key_file, 0o600)
            carol = await run_ml("--key-file", str(key_file), "whoami", "--json", env=env)
            assert carol.json()["user"] == "carol"


async def test_bad_arguments_exit_2(tmp_path: Path) -> None:
    env = ml_env("http://127.0.0.1:9", "admin", tmp_path)
    with trio.fail_after(30):
        for args in (
            ("queue", "--memory", "8X", "--", "true"),
            ("queue", "--timeout", "soon", "--", "true"),
            ("queue", "--priority", "11", "--", "true"),
            ("queue",),
            ("status", "abc"),
            ("status", "--state", "sleeping"),
            ("nonsense",),
        ):
            result = await run_ml(*args, env=env)
            assert result.rc == 2, (args, result.err)
            assert "Traceback" not in result.err
        helped = await run_ml("--help", env=env)
        assert helped.rc == 0
        assert "exit status" in helped.out
        assert "FETCHML_API_KEY" in helped.out
        bad_url = await run_ml("status", env={**env, "FETCHML_URL": "ftp://x"})
        assert bad_url.rc == 2

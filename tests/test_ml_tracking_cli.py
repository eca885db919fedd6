"""Experiment tracking from ``ml``: metrics, charts, experiments, runs, compare, export, outcome.

The formatting functions run here on canned replies shaped as ``docs/tracking-contract.md``
writes them; then real ``ml`` processes run against a real server whose jobs log metrics, one
with ``fetchml.track`` and others by appending JSON lines to ``$FETCHML_TRACK_FILE`` with
``printf`` (the line protocol, any language).
"""

from __future__ import annotations

import csv
import io
import json
import re
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import msgspec
import pytest
import trio
from test_client_support import KEYS, Ml, Result, ml_env, run_ml, running_server

from fetchml.cli._ml_output import Output
from fetchml.cli._ml_tracking import (
    chart,
    collect_runs,
    compare_rows,
    differing,
    export_table,
    export_text,
    fmt_number,
    fmt_value,
    metric_rows,
    run_rows,
    show_table,
    summary_line,
)
from fetchml.client import Buckets, Client, RunInfo, RunsBody, connect
from fetchml.client._tracking import segment

PY = sys.executable
ESC = "\x1b"
BIDI = "\u202e"

# --- canned replies, as the contract writes them ----------------------------------------------

RUN_JSON = {
    "job_id": 7,
    "user": "bob",
    "experiment": "sweep",
    "name": "r7",
    "params": {"lr": 0.0003, "model": "resnet"},
    "tags": {"arch": "cnn"},
    "summary": {"best_acc": 0.93},
    "outcome": None,
    "narrative": {"hypothesis": "lr matters", "intent": None, "expected_outcome": "lower loss"},
    "points": 1200,
    "invalid": 0,
    "dropped": 0,
    "metrics": [
        {
            "name": "loss",
            "count": 600,
            "last": 0.1,
            "last_step": 599,
            "min": 0.09,
            "max": 2.3,
            "first_time": 1.0,
            "last_time": 2.0,
        }
    ],
}


def summary(name: str, last: float, low: float, high: float, count: int = 10) -> dict[str, Any]:
    return {
        "name": name,
        "count": count,
        "last": last,
        "last_step": count - 1,
        "min": low,
        "max": high,
        "first_time": 1.0,
        "last_time": 2.0,
    }


def runs_page(runs: list[dict[str, Any]], next_cursor: str | None = None) -> RunsBody:
    body = {"experiment": "sweep", "runs": runs, "next": next_cursor}
    return msgspec.json.decode(json.dumps(body), type=RunsBody)


def row(
    job_id: int, params: dict[str, Any], **metrics: tuple[float, float, float]
) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "name": f"run {job_id}",
        "user": "bob",
        "state": "succeeded",
        "params": params,
        "metrics": {name: summary(name, *values) for name, values in metrics.items()},
        "outcome": None,
    }


def run_info(**changes: Any) -> RunInfo:
    return msgspec.json.decode(json.dumps({**RUN_JSON, **changes}), type=RunInfo)


# --- formatting, on canned replies ------------------------------------------------------------


def test_numbers_and_values_are_short_and_true() -> None:
    assert [fmt_number(v) for v in (0.0003, 2.3, 600, 1.0, 1e6, 1e20, -0.5)] == [
        "0.0003",
        "2.3",
        "600",
        "1",
        "1000000",
        "1e+20",
        "-0.5",
    ]
    assert [fmt_value(v) for v in ("resnet", True, None, 3, 0.5, [1, 2])] == [
        "resnet",
        "true",
        "null",
        "3",
        "0.5",
        "[1,2]",
    ]


def test_differing_keys_count_a_missing_key_as_a_value() -> None:
    values = [
        {"lr": 0.1, "model": "a", "seed": 1},
        {"lr": 0.2, "model": "a"},
        {"lr": 0.1, "model": "a", "seed": 1},
    ]
    assert differing(values) == ["lr", "seed"]
    assert differing([{"a": 1}, {"a": 1.0}]) == ["a"]  # as logged: 1 and 1.0 differ
    assert differing([]) == []


def test_metric_rows_and_summary_line() -> None:
    run = run_info()
    assert metric_rows(run) == [("loss", "600", "0.1", "599", "0.09", "2.3")]
    assert summary_line(run.metrics[0]) == (
        "loss: last 0.1 at step 599, min 0.09, max 2.3, 600 points"
    )
    buckets = Buckets(
        name="loss",
        count=600,
        downsampled=True,
        step=[0, 300],
        min=[1, 0.09],
        max=[2.3, 1],
        last=[1, 0.1],
    )
    assert "drawn as 2 buckets" in summary_line(run.metrics[0], buckets)


def test_runs_table_shows_the_params_that_vary_and_the_sort_metric() -> None:
    page = runs_page(
        [
            row(1, {"lr": 0.1, "model": "mlp"}, loss=(0.5, 0.4, 2.0)),
            row(2, {"lr": 0.01, "model": "mlp"}, loss=(0.2, 0.2, 2.0)),
            row(3, {"lr": 0.001, "model": "mlp"}),
        ]
    )
    header, rows = run_rows(page.runs, "loss")
    assert header == ("JOB", "NAME", "USER", "STATE", "lr", "loss")
    assert rows[0] == ("1", "run 1", "bob", "succeeded", "0.1", "0.5")
    assert rows[2][-1] == "-"  # a run without the metric
    header, _ = run_rows(page.runs, None)
    assert header[-1] == "lr"


def test_compare_rows_put_runs_side_by_side() -> None:
    from fetchml._models import Job, JobSpec, JobState

    runs = [
        run_info(job_id=1, params={"lr": 0.1, "model": "m"}),
        run_info(
            job_id=2, params={"lr": 0.2, "model": "m"}, metrics=[summary("acc", 0.9, 0.1, 0.9)]
        ),
    ]
    jobs = [
        Job(
            id=i,
            user="bob",
            spec=JobSpec(command=["true"], name=f"n{i}"),
            state=JobState.SUCCEEDED,
            created_at=0.0,
        )
        for i in (1, 2)
    ]
    header, rows = compare_rows(runs, jobs)
    assert header == ("", "job 1", "job 2")
    by_label = {r[0]: r[1:] for r in rows}
    assert by_label["name"] == ("n1", "n2")
    assert by_label["param lr"] == ("0.1", "0.2")
    assert "param model" not in by_label
    assert by_label["loss last"] == ("0.1", "-")
    assert by_label["acc max"] == ("-", "0.9")


def test_export_has_one_flat_row_per_run() -> None:
    page = runs_page(
        [
            row(1, {"lr": 0.1}, loss=(0.5, 0.4, 2.0)),
            row(2, {"lr": 0.01, "note": 'a "quoted", text'}, acc=(0.9, 0.1, 0.9)),
        ]
    )
    columns, rows = export_table(page.runs)
    assert columns == [
        "job_id",
        "name",
        "user",
        "state",
        "outcome",
        "params.lr",
        "params.note",
        "metric.last.acc",
        "metric.last.loss",
        "metric.min.acc",
        "metric.min.loss",
        "metric.max.acc",
        "metric.max.loss",
        "metric.count.acc",
        "metric.count.loss",
    ]
    assert rows[0]["metric.last.loss"] == 0.5
    assert rows[0]["metric.last.acc"] is None
    parsed = list(csv.DictReader(io.StringIO(export_text(columns, rows, "csv"))))
    assert parsed[1]["params.note"] == 'a "quoted", text'
    assert parsed[0]["metric.last.acc"] == ""
    assert parsed[0]["params.lr"] == "0.1"
    assert json.loads(export_text(columns, rows, "json")) == rows
    hostile = export_table(runs_page([row(3, {"p": ESC + "[2J"})]).runs)
    assert ESC not in export_text(*hostile, "csv", safe=True)
    assert ESC in export_text(*hostile, "csv")  # a file keeps the data as it is


def test_chart_is_as_wide_as_asked_and_plain_off_a_terminal() -> None:
    steps = list(range(0, 1000, 10))
    last = [1 / (i + 1) for i in range(100)]
    buckets = Buckets(
        name="loss",
        count=1000,
        downsampled=True,
        step=steps,
        min=[v * 0.9 for v in last],
        max=[v + (5 if i == 50 else 0) for i, v in enumerate(last)],
        last=last,
    )
    plain = chart(buckets, width=70, height=12, color=False)
    assert ESC not in plain
    lines = plain.splitlines()
    assert len(lines) == 12
    assert max(len(line) for line in lines) == 70
    assert "step" in plain
    assert ESC in chart(buckets, width=70, height=12, color=True)


def test_tables_escape_control_and_format_characters(capsys: pytest.CaptureFixture[str]) -> None:
    out = Output(json=False)
    show_table(out, ("NAME", f"x{ESC}[31m"), [(f"a{ESC}]0;title\a", f"{BIDI}evil")])
    printed = capsys.readouterr().out
    assert ESC not in printed
    assert BIDI not in printed
    assert "\a" not in printed
    assert "\\x1b]0;title" in printed


def test_rich_tables_escape_markup_and_control_characters() -> None:
    from rich.console import Console

    out = Output(json=False)
    out.tty = True
    buffer = io.StringIO()
    out._console = Console(file=buffer, force_terminal=True, width=100)
    show_table(out, ("NAME", "VALUE"), [(f"[red]x[/] {ESC}]0;title\a", f"{BIDI}evil")], right=[1])
    drawn = buffer.getvalue()
    assert "[red]x[/]" in drawn  # markup shown, not applied
    assert "\\x1b]0;title\\x07" in drawn
    assert f"{ESC}]" not in drawn
    assert BIDI not in drawn


def test_names_in_paths_are_one_segment() -> None:
    assert segment("val/acc") == "val%2Facc"
    assert segment("a b?&#%") == "a%20b%3F%26%23%25"


async def test_collect_runs_follows_the_cursor() -> None:
    pages = {
        None: runs_page([row(i, {}) for i in (9, 8)], "2"),
        "2": runs_page([row(i, {}) for i in (7, 6)], "4"),
        "4": runs_page([row(5, {})], None),
    }
    asked: list[tuple[str | None, int]] = []

    class Fake:
        async def runs(self, experiment: str, **kwargs: Any) -> RunsBody:
            asked.append((kwargs["before"], kwargs["limit"]))
            return pages[kwargs["before"]]

    everything, after = await collect_runs(cast(Client, Fake()), "sweep")
    assert [r.job_id for r in everything] == [9, 8, 7, 6, 5]
    assert after is None
    assert asked == [(None, 1000), ("2", 1000), ("4", 1000)]
    asked.clear()
    some, after = await collect_runs(cast(Client, Fake()), "sweep", limit=3)
    assert [r.job_id for r in some] == [9, 8, 7, 6]  # a page is kept whole
    assert after == "4"
    assert asked == [(None, 3), ("2", 1)]


# --- end to end: ml against a real server -----------------------------------------------------


def printf_job(lines: Sequence[dict[str, Any]]) -> list[str]:
    """A job command that appends ``lines`` to its track file with printf."""
    words = " ".join(shlex.quote(json.dumps(line)) for line in lines)
    return ["sh", "-c", f"printf '%s\\n' {words} >> \"$FETCHML_TRACK_FILE\""]


def sweep_run(lr: float, losses: Sequence[float]) -> list[str]:
    lines: list[dict[str, Any]] = [{"params": {"lr": lr, "model": "mlp"}}]
    lines += [{"step": i, "metrics": {"loss": v}} for i, v in enumerate(losses)]
    return printf_job(lines)


# 3000 steps with a spike at 1500; val/acc has a slash in its name.
TRACKED = """\
from fetchml import track
track.log_params({"lr": 0.5, "model": "mlp"})
track.set_tags({"arch": "cnn"})
for i in range(3000):
    track.log({"loss": 100.0 if i == 1500 else 1 / (i + 1), "val/acc": i / 3000}, step=i)
track.summary({"best_acc": 0.999})
"""


async def queue(ml: Ml, user: str, *args: str) -> int:
    queued = await ml(user, "queue", *args)
    assert queued.rc == 0, queued.err
    return int(queued.out)


async def tracked(url: str, job_id: int, points: int) -> None:
    """Wait until the job has ended and its ``points`` points are ingested."""
    async with connect(url, KEYS["admin"]) as client:
        await client.wait(job_id)
        for _ in range(400):
            if (await client.metrics(job_id)).points >= points:
                return
            await trio.sleep(0.05)
    raise AssertionError(f"job {job_id}: its {points} points were not ingested")


async def at_width(ml: Ml, columns: int, user: str, *args: str) -> Result:
    """``ml ARGS`` as ``user`` with a terminal ``columns`` wide (``COLUMNS``)."""
    project = ml.home / "project"
    project.mkdir(parents=True, exist_ok=True)
    env = ml_env(ml.url, user, ml.home, COLUMNS=str(columns))
    return await run_ml(*args, env=env, cwd=project)


def clean(result: Result) -> str:
    """stdout of a successful plain-text run, checked free of terminal escapes."""
    assert result.rc == 0, result.err
    assert ESC not in result.out
    return result.out


async def test_a_sweep_from_queue_to_export(data_dir: Path, tmp_path: Path) -> None:
    with trio.fail_after(90):
        async with running_server(data_dir) as url:
            ml = Ml(url, tmp_path)
            narrative = ("--hypothesis", "small lr wins", "--intent", "pick lr")
            first = await queue(
                ml,
                "bob",
                "--experiment",
                "sweep",
                *narrative,
                "--expected-outcome",
                "0.001",
                "--",
                *sweep_run(0.1, [2.0, 1.5, 1.2]),
            )
            second = await queue(
                ml, "bob", "--experiment", "sweep", "--", *sweep_run(0.01, [2.0, 1.0, 0.5])
            )
            third = await queue(
                ml, "bob", "--experiment", "sweep", "--", *sweep_run(0.001, [2.0, 0.8])
            )
            big = await queue(
                ml, "bob", "--experiment", "sweep", "--name", "tracked", "--", PY, "-c", TRACKED
            )
            theirs = await queue(
                ml, "admin", "--experiment", "admins", "--", *sweep_run(1.0, [1.0])
            )
            for job_id, points in ((first, 3), (second, 3), (third, 2), (big, 6000), (theirs, 1)):
                await tracked(url, job_id, points)

            await check_points(url, big)
            await check_metrics(ml, first, big)
            await check_experiments_and_runs(ml, first, second, third, big)
            await check_compare(ml, first, second)
            await check_export(ml, tmp_path, {first, second, third, big})
            await check_outcome(ml, first, theirs)
            requeued = await ml("bob", "requeue", str(first), "--hypothesis", "again", "--json")
            assert requeued.rc == 0, requeued.err
            spec = requeued.json()["spec"]
            assert (spec["hypothesis"], spec["intent"]) == ("again", "pick lr")


async def check_points(url: str, big: int) -> None:
    """The client pages through a series' raw points (its name has a slash)."""
    steps: list[int] = []
    after = None
    async with connect(url, KEYS["bob"]) as client:
        while True:
            page = await client.points(big, "val/acc", after=after, limit=1000)
            steps += page.step
            if page.next is None:
                break
            after = page.next
        assert steps == list(range(3000))
        assert page.value[-1] == 2999 / 3000


async def check_metrics(ml: Ml, first: int, big: int) -> None:
    doc = (await ml("bob", "metrics", str(first), "--json")).json()
    assert doc["params"] == {"lr": 0.1, "model": "mlp"}
    assert doc["narrative"] == {
        "hypothesis": "small lr wins",
        "intent": "pick lr",
        "expected_outcome": "0.001",
    }
    assert [(m["name"], m["count"], m["last"], m["min"]) for m in doc["metrics"]] == [
        ("loss", 3, 1.2, 1.2)
    ]
    plain = clean(await ml("bob", "metrics", str(first)))
    assert plain.splitlines()[1].split() == ["METRIC", "COUNT", "LAST", "STEP", "MIN", "MAX"]
    assert "lr=0.1, model=mlp" in plain
    assert "hypothesis: small lr wins" in plain
    status = clean(await ml("bob", "status", str(first)))
    assert "hypothesis: small lr wins" in status
    assert re.search(r"intent: +pick lr", status)
    table = clean(await ml("bob", "metrics", str(big)))
    assert "val/acc" in table
    assert "best_acc=0.999" in table
    assert "arch=cnn" in table
    drawn = clean(await at_width(ml, 60, "bob", "metrics", str(big), "loss", "val/acc"))
    assert "loss: last 0.000333333 at step 2999, min 0.000333333, max 100, 3000 points" in drawn
    assert "val/acc: last 0.999667 at step 2999" in drawn
    plotted = [line for line in drawn.splitlines() if "┤" in line or "│" in line]
    assert len(plotted) > 5
    assert max(len(line) for line in plotted) == 60
    series = (await at_width(ml, 60, "bob", "metrics", str(big), "loss", "--json")).json()
    buckets = series["series"][0]
    assert buckets["downsampled"] is True
    assert 0 < len(buckets["step"]) <= 60
    assert max(buckets["max"]) == 100.0  # the spike survives downsampling
    window = (
        await ml("bob", "metrics", str(big), "loss", "--start", "10", "--end", "19", "--json")
    ).json()
    assert window["series"][0]["step"] == list(range(10, 20))
    missing = await ml("bob", "metrics", str(big), "nosuch")
    assert missing.rc == 6, missing.err


async def check_experiments_and_runs(ml: Ml, first: int, second: int, third: int, big: int) -> None:
    mine = (await ml("bob", "experiments", "--json")).json()
    assert [(e["name"], e["runs"]) for e in mine["experiments"]] == [("sweep", 4)]
    every = (await ml("carol", "experiments", "--json")).json()
    assert sorted(e["name"] for e in every["experiments"]) == ["admins", "sweep"]
    listed = clean(await ml("bob", "experiments"))
    assert listed.split()[:3] == ["EXPERIMENT", "RUNS", "LAST"]
    table = clean(await ml("bob", "runs", "sweep", "--sort", "loss", "--order", "asc"))
    header, *rows = table.splitlines()
    assert header.split() == ["JOB", "NAME", "USER", "STATE", "lr", "loss"]  # model never varies
    assert [r.split()[0] for r in rows] == [str(big), str(second), str(third), str(first)]
    assert rows[1].split()[-2:] == ["0.01", "0.5"]
    page = await ml("bob", "runs", "sweep", "--sort", "loss", "--limit", "2", "--json")
    doc = page.json()
    assert [r["job_id"] for r in doc["runs"]] == [first, third]  # loss 1.2, then 0.8
    assert doc["next"] is not None
    assert "--limit" not in page.err  # --json prints JSON only; the note is for tables
    shown = await ml("bob", "runs", "sweep", "--limit", "2")
    assert "first 2 runs" in shown.err
    none = await ml("bob", "runs", "nothing-here")
    assert (none.rc, none.out) == (0, "no runs in experiment nothing-here\n")


async def check_compare(ml: Ml, first: int, second: int) -> None:
    table = clean(await ml("bob", "compare", str(first), str(second)))
    lines = {line.split("  ")[0].strip(): line for line in table.splitlines() if line.strip()}
    assert lines["param lr"].split()[-2:] == ["0.1", "0.01"]
    assert lines["loss last"].split()[-2:] == ["1.2", "0.5"]
    assert lines["loss max"].split()[-2:] == ["2", "2"]
    assert "param model" not in lines
    assert "hypothesis: small lr wins" in table
    assert f"job {second}: no narrative" in table
    doc = (await ml("bob", "compare", str(first), str(second), "--json")).json()
    assert doc["differing_params"] == ["lr"]
    assert [r["job_id"] for r in doc["runs"]] == [first, second]
    assert doc["runs"][0]["state"] == "succeeded"
    alone = await ml("bob", "compare", str(first))
    assert alone.rc == 2


async def check_export(ml: Ml, tmp_path: Path, jobs: set[int]) -> None:
    target = tmp_path / "sweep.csv"
    written = await ml("bob", "export", "sweep", "--format", "csv", "-o", str(target))
    assert written.rc == 0, written.err
    assert "4 run(s) of sweep written to" in written.err
    rows = list(csv.DictReader(io.StringIO(target.read_text(encoding="utf-8"), newline="")))
    assert {int(r["job_id"]) for r in rows} == jobs
    assert {r["params.lr"] for r in rows} == {"0.1", "0.01", "0.001", "0.5"}
    assert all(r["params.model"] == "mlp" for r in rows)
    assert {r["metric.count.loss"] for r in rows} == {"3", "2", "3000"}
    assert next(r for r in rows if r["name"] == "tracked")["metric.last.val/acc"] != ""
    as_json = (await ml("bob", "export", "sweep", "--json")).json()
    assert {r["job_id"] for r in as_json} == jobs
    assert {r["metric.max.loss"] for r in as_json} == {2.0, 100.0}
    stdout_csv = await ml("bob", "export", "sweep")
    assert stdout_csv.out.splitlines()[0].startswith("job_id,name,user,state,outcome,params.lr")
    summary_doc = (
        await ml(
            "bob", "export", "sweep", "-o", str(tmp_path / "s.json"), "--format", "json", "--json"
        )
    ).json()
    assert summary_doc["runs"] == 4
    assert len(json.loads((tmp_path / "s.json").read_text())) == 4


async def check_outcome(ml: Ml, first: int, theirs: int) -> None:
    recorded = await ml("bob", "outcome", str(first), "lr 0.1 is too high")
    assert (recorded.rc, recorded.out) == (0, f"job {first}: outcome recorded\n")
    assert (await ml("bob", "metrics", str(first), "--json")).json()[
        "outcome"
    ] == "lr 0.1 is too high"
    shown = clean(await ml("bob", "metrics", str(first)))
    assert "outcome: lr 0.1 is too high" in " ".join(shown.split())
    again = await ml("admin", "outcome", str(first), "confirmed", "--json")
    assert again.json() == {"job_id": first, "outcome": "confirmed"}
    analyst = await ml("carol", "outcome", str(first), "no")
    assert analyst.rc == 5, analyst.err
    hidden = await ml("bob", "outcome", str(theirs), "mine now")
    assert hidden.rc == 6, hidden.err
    hidden_metrics = await ml("bob", "metrics", str(theirs))
    assert hidden_metrics.rc == 6


async def test_hostile_strings_never_reach_the_terminal_raw(data_dir: Path, tmp_path: Path) -> None:
    hostile = f"{ESC}]0;pwned\a{ESC}[2J"
    lines: list[dict[str, Any]] = [
        {"params": {"note": hostile, "lr": 1}},
        {"tags": {"t": hostile}},
        {"summary": {"s": hostile}},
        {"step": 0, "metrics": {f"acc{BIDI}": 1.0}},
    ]
    with trio.fail_after(60):
        async with running_server(data_dir) as url:
            ml = Ml(url, tmp_path)
            first = await queue(
                ml, "bob", "--experiment", "x", "--hypothesis", hostile, "--", *printf_job(lines)
            )
            second = await queue(ml, "bob", "--experiment", "x", "--", *printf_job(lines[1:]))
            await tracked(url, first, 1)
            await tracked(url, second, 1)
            await ml("bob", "outcome", str(first), hostile)
            for args in (
                ("metrics", str(first)),
                ("metrics", str(first), f"acc{BIDI}"),
                ("runs", "x", "--sort", f"acc{BIDI}"),
                ("compare", str(first), str(second)),
            ):
                result = await ml("bob", *args)
                assert result.rc == 0, (args, result.err)
                assert ESC not in result.out, args
                assert BIDI not in result.out, args
                assert "\a" not in result.out, args
            shown = (await ml("bob", "metrics", str(first))).out
            assert "\\x1b]0;pwned\\x07" in shown
            assert "acc\\u202e" in shown
            as_json = (await ml("bob", "metrics", str(first), "--json")).json()
            assert as_json["params"]["note"] == hostile  # JSON carries the data, escaped by JSON

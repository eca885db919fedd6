"""``ml dataset register|list|info``: the dataset registry (records of where data lives)."""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING

from fetchml._models import JobSpec
from fetchml.client import Client, DatasetBody
from fetchml.errors import InvalidSpecError, NotFoundError

from ._ml_output import Output, fmt_duration, print_pairs
from ._ml_tracking import show_table

if TYPE_CHECKING:
    from ._ml import AnyClient

__all__ = ["check_datasets", "info", "listing", "register"]

_LIST_HEADER = ("NAME", "VERSION", "URI", "SHA256", "REGISTERED")
_VERSIONS_HEADER = ("VERSION", "URI", "SHA256", "BY", "REGISTERED", "DESCRIPTION")


def _ago(when: float, now: float) -> str:
    return fmt_duration(max(0.0, now - when)) + " ago"


def _short(sha256: str | None) -> str:
    return "-" if sha256 is None else sha256[:12]


async def register(client: Client, args: argparse.Namespace, out: Output) -> int:
    """Register ``args.name`` at ``args.uri`` (a new version if it exists)."""
    body = await client.register_dataset(
        args.name, args.uri, sha256=args.sha256, description=args.description
    )
    if out.json:
        out.emit(body)
        return 0
    latest = body.versions[0]
    out.note(f"dataset {body.name} version {latest.version}: {latest.uri}")
    return 0


async def listing(client: Client, args: argparse.Namespace, out: Output) -> int:
    """Every dataset with its latest version."""
    found = await client.datasets()
    if out.json:
        out.emit(found)
        return 0
    if not found:
        out.line("no datasets")
        return 0
    now = time.time()
    rows = [
        (
            d.name,
            str(d.latest.version),
            d.latest.uri,
            _short(d.latest.sha256),
            _ago(d.latest.created, now),
        )
        for d in found
    ]
    show_table(out, _LIST_HEADER, rows, right=(1,))
    return 0


async def info(client: Client, args: argparse.Namespace, out: Output) -> int:
    """Every version of one dataset, newest first."""
    body = await client.dataset(args.name)
    if out.json:
        out.emit(body)
        return 0
    _print_info(body, out)
    return 0


def _print_info(body: DatasetBody, out: Output) -> None:
    latest = body.versions[0]
    print_pairs(
        out,
        [
            ("dataset", body.name),
            ("latest", f"version {latest.version}"),
            ("uri", latest.uri),
            ("sha256", latest.sha256 or "-"),
        ],
    )
    now = time.time()
    rows = [
        (
            str(v.version),
            v.uri,
            _short(v.sha256),
            v.user,
            _ago(v.created, now),
            v.description or "",
        )
        for v in body.versions
    ]
    show_table(out, _VERSIONS_HEADER, rows, right=(0,))


async def check_datasets(client: AnyClient, spec: JobSpec) -> None:
    """Raise InvalidSpecError, as the server's submit would, for a dataset (or version) of
    ``spec.datasets`` that is not registered (``queue --dry-run``).  Waits on one request per
    dataset."""
    for index, use in enumerate(spec.datasets):
        name, _, pinned = use.partition("@")
        try:
            versions = {v.version for v in (await client.dataset(name)).versions}
        except NotFoundError:
            versions = set()
        if not versions or (pinned and int(pinned) not in versions):
            what = f"version {pinned} of dataset {name!r}" if pinned else f"dataset {name!r}"
            raise InvalidSpecError(
                f"datasets[{index}]: no {what} is registered (ml dataset list)",
                field=f"datasets[{index}]",
            )

"""The Fetch ML protocol client: submit, inspect and follow jobs from any trio program.

::

    import trio
    import fetchml.client

    async def main():
        async with fetchml.client.connect("http://127.0.0.1:9103", key) as client:
            job = await client.submit({"command": ["python", "train.py"]})
            async with client.subscribe(job.id, logs=True) as events:
                async for event in events:
                    if isinstance(event, fetchml.client.LogChunk):
                        print(event.data.decode(), end="")
                    elif isinstance(event, fetchml.client.LogEnd):
                        break
            print((await client.wait(job.id)).state)

    trio.run(main)

``connect()`` without arguments reads ``FETCHML_URL`` / ``FETCHML_API_KEY`` (and
``FETCHML_CA_FILE`` for a server with a self-signed certificate), then the config file written by
``ml config init``.  It speaks the WebSocket protocol (msgpack frames) of the server.

:class:`HttpClient` makes the same job requests over plain HTTP, blocking, without an event loop
(what ``ml``'s one-shot commands use).  Names are imported on first use, so that it and the
settings can be imported without trio and trio-websocket.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fetchml._models import StatusReport as ServerStatus
    from fetchml.protocol import (
        Buckets,
        DatasetBody,
        DatasetInfo,
        DatasetVersion,
        Event,
        ExperimentInfo,
        ExperimentsBody,
        Identity,
        JobUpdate,
        LogChunk,
        LogEnd,
        MetricPoint,
        MetricPoints,
        MetricSummary,
        OutcomeBody,
        RawPage,
        RunInfo,
        RunRow,
        RunsBody,
    )

    from ._artifacts import HashMismatchError, select
    from ._client import Client
    from ._connect import DEFAULT_CONNECT_TIMEOUT, connect
    from ._errors import ConnectionLostError, ServerUnreachableError
    from ._oneshot import HttpClient, run_blocking
    from ._settings import (
        DEFAULT_URL,
        ENV_CA_FILE,
        ENV_KEY,
        ENV_URL,
        Settings,
        default_config_path,
        load_settings,
        mask_key,
        normalize_url,
        websocket_url,
        write_config,
    )
    from ._snapshots import Snapshot
    from ._subscription import Subscription
    from ._tls import client_ssl_context

# Each public name: the module that defines it, and its name there.
_LAZY: dict[str, tuple[str, str]] = {
    "ServerStatus": ("fetchml._models", "StatusReport"),
    "Buckets": ("fetchml.protocol", "Buckets"),
    "DatasetBody": ("fetchml.protocol", "DatasetBody"),
    "DatasetInfo": ("fetchml.protocol", "DatasetInfo"),
    "DatasetVersion": ("fetchml.protocol", "DatasetVersion"),
    "Event": ("fetchml.protocol", "Event"),
    "ExperimentInfo": ("fetchml.protocol", "ExperimentInfo"),
    "ExperimentsBody": ("fetchml.protocol", "ExperimentsBody"),
    "Identity": ("fetchml.protocol", "Identity"),
    "JobUpdate": ("fetchml.protocol", "JobUpdate"),
    "LogChunk": ("fetchml.protocol", "LogChunk"),
    "LogEnd": ("fetchml.protocol", "LogEnd"),
    "MetricPoint": ("fetchml.protocol", "MetricPoint"),
    "MetricPoints": ("fetchml.protocol", "MetricPoints"),
    "MetricSummary": ("fetchml.protocol", "MetricSummary"),
    "OutcomeBody": ("fetchml.protocol", "OutcomeBody"),
    "RawPage": ("fetchml.protocol", "RawPage"),
    "RunInfo": ("fetchml.protocol", "RunInfo"),
    "RunRow": ("fetchml.protocol", "RunRow"),
    "RunsBody": ("fetchml.protocol", "RunsBody"),
    "HashMismatchError": ("._artifacts", "HashMismatchError"),
    "select": ("._artifacts", "select"),
    "Client": ("._client", "Client"),
    "DEFAULT_CONNECT_TIMEOUT": ("._connect", "DEFAULT_CONNECT_TIMEOUT"),
    "connect": ("._connect", "connect"),
    "ConnectionLostError": ("._errors", "ConnectionLostError"),
    "ServerUnreachableError": ("._errors", "ServerUnreachableError"),
    "HttpClient": ("._oneshot", "HttpClient"),
    "run_blocking": ("._oneshot", "run_blocking"),
    "DEFAULT_URL": ("._settings", "DEFAULT_URL"),
    "ENV_CA_FILE": ("._settings", "ENV_CA_FILE"),
    "ENV_KEY": ("._settings", "ENV_KEY"),
    "ENV_URL": ("._settings", "ENV_URL"),
    "Settings": ("._settings", "Settings"),
    "default_config_path": ("._settings", "default_config_path"),
    "load_settings": ("._settings", "load_settings"),
    "mask_key": ("._settings", "mask_key"),
    "normalize_url": ("._settings", "normalize_url"),
    "websocket_url": ("._settings", "websocket_url"),
    "write_config": ("._settings", "write_config"),
    "Snapshot": ("._snapshots", "Snapshot"),
    "Subscription": ("._subscription", "Subscription"),
    "client_ssl_context": ("._tls", "client_ssl_context"),
}


def __getattr__(name: str) -> Any:
    where = _LAZY.get(name)
    if where is None:
        raise AttributeError(f"module 'fetchml.client' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(where[0], __name__), where[1])
    globals()[name] = value
    return value


__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_URL",
    "ENV_CA_FILE",
    "ENV_KEY",
    "ENV_URL",
    "Buckets",
    "Client",
    "ConnectionLostError",
    "DatasetBody",
    "DatasetInfo",
    "DatasetVersion",
    "Event",
    "ExperimentInfo",
    "ExperimentsBody",
    "HashMismatchError",
    "HttpClient",
    "Identity",
    "JobUpdate",
    "LogChunk",
    "LogEnd",
    "MetricPoint",
    "MetricPoints",
    "MetricSummary",
    "OutcomeBody",
    "RawPage",
    "RunInfo",
    "RunRow",
    "RunsBody",
    "ServerStatus",
    "ServerUnreachableError",
    "Settings",
    "Snapshot",
    "Subscription",
    "client_ssl_context",
    "connect",
    "default_config_path",
    "load_settings",
    "mask_key",
    "normalize_url",
    "run_blocking",
    "select",
    "websocket_url",
    "write_config",
]

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
"""

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
    "select",
    "websocket_url",
    "write_config",
]

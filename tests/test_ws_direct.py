"""Frames written straight to hypercorn's connection (``fetchml/gateway/_ws_direct.py``): the
same bytes wsproto frames, taken with the pinned hypercorn, and not taken where an extension
(``permessage-deflate``) must see every frame."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
import wsproto
import wsproto.events as wsevents
from helpers.gateway import Users, _split, make_server_config, serve
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.extensions import PerMessageDeflate

from fetchml.gateway import _ws_direct


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_a_frame_is_what_wsproto_frames(size: int) -> None:
    server = Connection(ConnectionType.SERVER)
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    assert _ws_direct.frame(data) == server.send(wsevents.BytesMessage(data=data))
    text = "é" * (size // 2) + "x" * (size % 2)
    assert _ws_direct.frame(text) == server.send(wsevents.TextMessage(data=text))


async def _whoami(base: str, key: str, *, deflate: bool) -> tuple[dict[str, Any], bool]:
    """One ``whoami`` over a bare wsproto client (offering ``permessage-deflate`` if asked):
    the reply, and whether the server compressed it."""
    host, port = _split(base)
    client = wsproto.WSConnection(ConnectionType.CLIENT)
    extensions = [PerMessageDeflate()] if deflate else []
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            request = wsevents.Request(
                host=f"{host}:{port}",
                target="/ws",
                extensions=extensions,
                extra_headers=[(b"authorization", f"Bearer {key}".encode())],
            )
            await stream.send_all(client.send(request))
            message = msgpack.packb({"op": "whoami", "id": 7})
            compressed = False
            while True:
                data = await stream.receive_some(65536)
                assert data, "EOF before the reply"
                # The compression bit (RSV1) of the reply's first byte, when it comes alone.
                if client.state is ConnectionState.OPEN and data[0] & 0x80:
                    compressed = bool(data[0] & 0x40)
                client.receive_data(data)
                for event in client.events():
                    if isinstance(event, wsevents.AcceptConnection):
                        await stream.send_all(client.send(wsevents.BytesMessage(data=message)))
                    elif isinstance(event, wsevents.BytesMessage):
                        return msgpack.unpackb(event.data), compressed
                    else:
                        raise AssertionError(f"unexpected {event!r}")


async def test_frames_go_direct_without_an_extension_and_through_wsproto_with_one(
    tmp_path: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    framed: list[bytes | str] = []
    original = _ws_direct.frame

    def counting(data: bytes | str) -> bytes:
        framed.append(data)
        return original(data)

    monkeypatch.setattr(_ws_direct, "frame", counting)
    users = Users()
    async with serve(make_server_config(tmp_path, users)) as base:
        plain, plain_compressed = await _whoami(base, users.admin, deflate=False)
        assert len(framed) == 1  # the reply went the direct way
        deflated, compressed = await _whoami(base, users.admin, deflate=True)
        assert len(framed) == 1  # through wsproto, which compressed it
    assert plain["re"] == deflated["re"] == 7
    assert plain["ok"] is deflated["ok"] is True
    assert plain["user"] == deflated["user"] == "admin"
    assert not plain_compressed
    assert compressed

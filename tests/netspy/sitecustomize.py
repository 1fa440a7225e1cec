"""A network spy for test servers: with REGISTRY_SVC_NETSPY set to a file, every name
resolution or connection this Python process attempts to anything but loopback is
appended to that file (pid, audit event, target). `conftest.Server` puts this directory on
the servers' PYTHONPATH and fails the test if the file is not empty when the server stops,
so no test can make a server touch the network beyond this machine unnoticed."""

from __future__ import annotations

import ipaddress
import os
import sys
from typing import Any

_LOG = os.environ.get("REGISTRY_SVC_NETSPY")
_EVENTS = ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex", "socket.connect")


def _is_local(host: Any) -> bool:
    if host in (None, "", b"", "localhost", b"localhost"):
        return True
    text = host.decode(errors="replace") if isinstance(host, bytes) else str(host)
    try:
        return ipaddress.ip_address(text.split("%")[0]).is_loopback
    except ValueError:
        return False


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if event not in _EVENTS:
        return
    if event == "socket.connect":
        address = args[1]
        if not isinstance(address, tuple):
            return  # a Unix socket
        host = address[0]
    else:
        host = args[0]
    if not _is_local(host):
        with open(_LOG, "a") as log:  # type: ignore[arg-type]
            log.write(f"{os.getpid()} {event} {host!r}\n")


if _LOG:
    sys.addaudithook(_hook)

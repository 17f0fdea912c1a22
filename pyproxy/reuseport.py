"""Listening sockets that several worker processes share with SO_REUSEPORT.

With ``[proxy] workers`` above 1, every worker binds its own socket to the same address with
SO_REUSEPORT, and the kernel spreads new connections across them: no process hands
connections to another, and a worker that dies takes only its own accept queue with it. A
Twisted endpoint cannot set that option, so the socket is made here and given to the reactor
with ``adoptStreamPort``. Only TCP endpoints (``tcp:PORT[:interface=ADDR][:backlog=N]`` and
``tcp6:...``) with a fixed port qualify: port 0 would give each worker a different port.
"""

from __future__ import annotations

import re
import socket
from typing import Any

import attrs

from pyproxy.config import ConfigError


class ReusePortError(ConfigError):
    """The endpoint cannot be shared between workers."""


@attrs.frozen
class TcpListen:
    family: int
    interface: str
    port: int
    backlog: int


def parse_tcp(description: str, default_backlog: int = 50) -> TcpListen:
    """``tcp:`` / ``tcp6:`` endpoint strings, as Twisted reads them (``\\:`` escapes a colon
    in an IPv6 interface)."""
    parts = [part.replace("\\:", ":") for part in re.split(r"(?<!\\):", description)]
    kind, args = parts[0], parts[1:]
    if kind not in ("tcp", "tcp6"):
        raise ReusePortError(f"the listener must be a tcp: or tcp6: endpoint, got {description!r}")
    positional = [a for a in args if "=" not in a]
    options = dict(a.split("=", 1) for a in args if "=" in a)
    unknown = set(options) - {"port", "interface", "backlog"}
    if unknown or len(positional) > 1 or (positional and "port" in options):
        raise ReusePortError(f"only port, interface and backlog can be set, got {description!r}")
    port_text = positional[0] if positional else options.get("port", "")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ReusePortError(f"the listener needs a fixed port, got {description!r}")
    family = socket.AF_INET6 if kind == "tcp6" else socket.AF_INET
    interface = options.get("interface", "::" if family == socket.AF_INET6 else "")
    backlog = options.get("backlog", str(default_backlog))
    if not backlog.isdigit():
        raise ReusePortError(f"backlog must be a number, got {description!r}")
    return TcpListen(family, interface, int(port_text), int(backlog))


def bind(listen: TcpListen) -> socket.socket:
    """A non-blocking listening socket with SO_REUSEPORT set (OSError when it cannot bind)."""
    sock = socket.socket(listen.family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if listen.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((listen.interface, listen.port))
        sock.listen(listen.backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def listen(reactor: Any, description: str, factory: Any, default_backlog: int) -> Any:
    """Listens on ``description`` with SO_REUSEPORT; returns the reactor's port."""
    spec = parse_tcp(description, default_backlog)
    sock = bind(spec)
    try:
        return reactor.adoptStreamPort(sock.fileno(), spec.family, factory)
    finally:
        sock.close()  # the reactor holds a duplicate of the descriptor

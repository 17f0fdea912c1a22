"""Writing to a TCP transport without a trip through the reactor.

Twisted's ``transport.write`` only buffers: the bytes leave on the next
reactor iteration, after two ``epoll_ctl`` calls to start and stop watching
for writability.  On a proxy that writes once per reply that bookkeeping
costs as much as the relaying itself.  When nothing is queued on the
transport, the bytes are sent on the spot; whatever the kernel does not take
goes through ``transport.write`` as usual, so ordering, back-pressure and
error handling stay Twisted's.  A transport that runs TLS always goes through
``transport.write``: its bytes must be encrypted.
"""

from __future__ import annotations

from typing import Any


def write_now(transport: Any, data: bytes) -> bool:
    """Returns True when the kernel took all of ``data``; False when some of it
    waits in the transport's buffer (the reader is slow, or this is not a
    plain TCP transport, or one that runs TLS)."""
    sock = getattr(transport, "socket", None)
    if (sock is not None and not getattr(transport, "TLS", False) and not transport.dataBuffer and not transport._tempDataBuffer
            and transport.connected and not transport.disconnecting):
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            transport.write(data)  # let Twisted notice and report the broken connection
            return False
        if sent == len(data):
            return True
        data = data[sent:]
    transport.write(data)
    return False

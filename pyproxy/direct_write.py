"""Writing to a TCP transport without a trip through the reactor.

Twisted's ``transport.write`` only buffers: the bytes leave on the next
reactor iteration, after two ``epoll_ctl`` calls to start and stop watching
for writability.  On a proxy that writes once per reply that bookkeeping
costs as much as the relaying itself.  When nothing is queued on the
transport, the bytes are sent on the spot; whatever the kernel does not take
goes through ``transport.write`` as usual, so ordering, back-pressure and
error handling stay Twisted's.

A transport that runs TLS is written through its TLS layer, which would
otherwise hold small writes for the next reactor iteration and then queue the
encrypted bytes for the one after: the bytes are encrypted at once (after
whatever the layer still held, so the order stays) and the records are sent
on the spot in the same way.
"""

from __future__ import annotations

from typing import Any

from twisted.protocols.tls import TLSMemoryBIOProtocol


def write_now(transport: Any, data: bytes) -> bool:
    """Returns True when the kernel took all of ``data``; False when some of it
    waits in the transport's buffer (the reader is slow, or this is not a
    plain TCP transport)."""
    sock = getattr(transport, "socket", None)
    if sock is None or not transport.connected or transport.disconnecting:
        transport.write(data)
        return False
    if getattr(transport, "TLS", False):
        return _write_tls_now(transport, sock, data)
    if not transport.dataBuffer and not transport._tempDataBuffer:
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


def _write_tls_now(transport: Any, sock: Any, data: bytes) -> bool:
    tls = transport.protocol
    if not isinstance(tls, TLSMemoryBIOProtocol):
        transport.write(data)
        return False
    aggregator = getattr(tls, "_aggregator", None)
    if aggregator is not None:
        aggregator.flush()  # what the layer still holds goes first
    # The layer's own write: encrypts now, and hands the records to the
    # socket's transport (its _tempDataBuffer), skipping the batching.
    TLSMemoryBIOProtocol.write(tls, data)
    if transport.dataBuffer or not transport._tempDataBuffer:
        return False  # older bytes wait for the socket, or the handshake is not done
    pending = b"".join(transport._tempDataBuffer)
    try:
        sent = sock.send(pending)
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return False  # left queued: Twisted notices and reports the broken connection
    rest = pending[sent:]
    transport._tempDataBuffer[:] = [rest] if rest else []
    transport._tempDataLen = len(rest)
    if rest:
        return False
    if not transport.producerPaused and not transport.disconnecting:
        # All sent: the reactor need not wake to find nothing to write.  (A
        # paused producer is resumed, and a close completed, by that wake-up.)
        transport.stopWriting()
    return True

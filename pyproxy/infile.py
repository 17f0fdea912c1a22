"""LOAD DATA LOCAL INFILE: the client's file relayed to the server, or refused.

When the server asks for a local file, the client sends it as packets after
its command; they are relayed with their sequence ids shifted as the
translated reply before them was (pyproxy.wire.response_tracker).  A client
that did not offer CLIENT_LOCAL_FILES shares connections that have it: the
server gets an empty file instead, and the client the error its own server
would have given it (MariaDB 4166, MySQL 3948) in place of the request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyproxy.direct_write import write_now
from pyproxy.wire.buffer import BytesLike
from pyproxy.wire.framing import Packet, frame
from pyproxy.wire.response_tracker import DONE, ResponseTracker
from pyproxy.wire.responses import make_err

if TYPE_CHECKING:
    from pyproxy.command_phase import CommandPhase


def client_packet(client: CommandPhase, packet: Packet) -> None:
    """A packet of the file the client sends; the empty one ends it."""
    conn = client.backend
    if conn is None:
        return
    shift = conn.tracker.shift
    # After translated result sets earlier in the same reply, the client
    # numbers its packets ahead of the server.
    conn.relay_more(frame(packet.payload, packet.seq - shift) if shift else packet.raw)
    if not packet.payload:
        client.infile = False
        conn.infile_sent()


def refuse(client: CommandPhase, data: BytesLike, tracker: ResponseTracker) -> None:
    """The server asks a client without CLIENT_LOCAL_FILES for a file: what came
    before the request goes on, the server gets an empty file, and the rest
    of the reply waits for refused_reply_data()."""
    at = tracker.infile_at
    tracker.infile_at = -1
    if at:
        client.forwarded = True
        client.stats.bytes_out += at
        write_now(client.transport, bytes(data[:at]))
    client.refused_infile = tracker.seq
    conn = client.backend
    conn.relay_more(frame(b"", (tracker.seq - tracker.shift + 1) & 0xFF))
    conn.infile_sent()


def refused_reply_data(client: CommandPhase, tracker: ResponseTracker) -> None:
    """The rest of a reply whose LOCAL INFILE the client may not run: dropped;
    once it is complete the client gets the error, in place of the request."""
    if tracker.state != DONE:
        return
    if "mariadb" in client.proxy.server.version.lower():
        code, state, message = (4166, "HY000", "The used command is not allowed because "
                                "the MariaDB server or client has disabled the local "
                                "infile capability")
    else:
        code, state, message = (3948, "42000", "Loading local data is disabled; this "
                                "must be enabled on both the client and server sides")
    data = frame(make_err(code, state, message), client.refused_infile)
    client.stats.bytes_out += len(data)
    client.transport.write(data)
    client.refused_infile = -1
    client.reply_done(tracker)

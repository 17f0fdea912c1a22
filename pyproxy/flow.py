"""Flow control of a client connection, both ways.

Commands a client sends while one of its commands runs (pipelining) wait in
its queue and run in order; once QUEUE_LIMIT wait, pyproxy stops reading the
client until the queue shrinks (what the same read brought past the limit
stays in the framer as bytes, FrontendProtocol.held, and runs after the
queue).  Replies a client does not read fast enough
(its transport holds more than its buffer size unsent, so the transport
pauses pyproxy as its producer) pause the backend connection relaying to it
and every further command of the client, queued or still in its socket,
until they have drained: one slow client makes pyproxy hold at most a
buffer's worth of its replies.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from pyproxy.idle import command_ended
from pyproxy.phases import COMMANDS
from pyproxy.wire.framing import Packet

if TYPE_CHECKING:
    from pyproxy.command_phase import CommandPhase

# Commands a client may send ahead of their replies before pyproxy stops reading it.
QUEUE_LIMIT = 64


def enqueue(client: CommandPhase, packet: Packet) -> None:
    """A command sent while another runs (or while replies wait unsent) waits its turn."""
    if client.queue is None:
        client.queue = deque()
    client.queue.append(packet)
    if len(client.queue) == QUEUE_LIMIT:
        # A client far ahead of its replies: stop reading it.
        client.transport.pauseProducing()


def run_queued(client: CommandPhase, now: float | None = None) -> None:
    """Runs the commands the client sent ahead, while nothing stops them.

    Called wherever a command ends, so the client's idle time (its
    wait_timeout, pyproxy.idle) counts from here (``now``, if the caller has
    read the clock)."""
    command_ended(client, now)
    queue = client.queue
    connection = client.connection
    if not queue:
        if connection.held:
            connection.read_held()
        return
    paused = len(queue) >= QUEUE_LIMIT
    while queue and not client.busy and not client.infile and not client.backlog and connection.phase == COMMANDS:
        client.dispatch(queue.popleft())
    if paused and len(queue) < QUEUE_LIMIT and not client.backlog and connection.phase == COMMANDS:
        client.transport.resumeProducing()
    if connection.held:
        connection.read_held()


def pause_replies(client: CommandPhase) -> None:
    """The client reads slower than its replies come: until they drain, the
    backend connection relaying to it is not read, and no further command of
    the client runs, whether it is queued already or still in its socket."""
    client.backlog = True
    conn = client.backend
    if conn is not None and client.busy and conn.transport is not None and client.paused_backend is None:
        client.paused_backend = conn
        conn.transport.pauseProducing()
    client.transport.pauseProducing()


def resume_replies(client: CommandPhase) -> None:
    """The client's unsent replies have drained."""
    client.backlog = False
    resume_backend(client)
    if not client.queue or len(client.queue) < QUEUE_LIMIT:
        client.transport.resumeProducing()
    if not client.busy and client.connection.phase == COMMANDS:
        run_queued(client)


def resume_backend(client: CommandPhase) -> None:
    """Reading from the backend connection paused for a slow client resumes
    (its reply goes on, or it is about to serve someone else)."""
    conn, client.paused_backend = client.paused_backend, None
    if conn is not None and conn.transport is not None:
        conn.transport.resumeProducing()

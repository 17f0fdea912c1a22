#!/usr/bin/env python3
"""How much memory a hostile or careless client can make pyproxy grow (issue 8, item 4).

Running it
==========

From the repository root, with the MariaDB server binaries installed
(``scripts/install-deps``)::

    python3 bench/bounds.py                  # every scenario, full counts (about 2 minutes)
    python3 bench/bounds.py --quick          # smaller counts, under a minute
    python3 bench/bounds.py --scenarios pipeline statements --json bounds.json

Everything is local and throwaway: a sandbox ``mariadbd`` on a free 127.0.0.1 port with its
own datadir (:class:`pyproxy.sandbox.SandboxServer`, never a system server) and, for each
scenario, a new ``twistd -n pyproxy`` in front of it, started as the integration tests start
it (:func:`integration.servers.start_proxy`: user ``app``, pool of 10, ``[log] level =
"info"``, every limit at its default, ``max_packet_size`` included). Each scenario gets a
pyproxy of its own because memory freed by one scenario stays in the process and would hide
the next one's growth. All of it is stopped and removed on exit, Ctrl-C included; pyproxy's
logs are kept in a ``pyproxy-bounds-*`` folder (printed at the end), and a traceback or an
error line in them is reported.

``--set SECTION.KEY=VALUE`` gives pyproxy a setting other than its default (for instance
``--set proxy.max_packet_size=65536``), to measure a bound that has a setting.

The client side is a raw MySQL protocol client written here on top of ``pyproxy.wire``
(it answers the classic way, without ``CLIENT_DEPRECATE_EOF``, as PyMySQL and libmariadb do),
so that it can do what no driver does: never log in, send long data and not execute,
pipeline commands and not read.

The scenarios
=============

prelogin
    ``--prelogin-clients`` raw sockets (default 2) each read the greeting and then send the
    first ``--prelogin-mib`` MiB (default 64) of a 1 GiB packet -- its 16 MiB parts, each
    with a full-length header, never the last one -- without logging in, then wait up to
    ``--hold`` seconds for pyproxy's memory to settle. ``client got`` says whether pyproxy
    closed the connections, the error packet it sent first if any, how many bytes had been
    sent by then (what the kernel took, so up to a few MiB of socket buffers more than
    pyproxy read) and after how many seconds.
long_data
    One logged-in client prepares ``SELECT ?`` and sends ``--long-data-chunks`` (default 200)
    COM_STMT_SEND_LONG_DATA chunks of ``--long-data-kib`` KiB (default 1024) for its
    parameter, without executing; once pyproxy's memory has settled it executes the statement
    and reports the reply (an error code, or the size of the row). ``held`` is the growth
    before the execute; ``peak`` includes the execute.
pipeline
    One client sends ``--pipeline-queries`` (default 20,000) ``SELECT REPEAT('x',N)``
    (``--pipeline-row-bytes`` N, default 30,000) COM_QUERY packets at once and reads nothing
    until pyproxy's memory has settled, or ``--hold`` seconds have passed. ``client got``
    says how much of the queries' bytes the client could send (its socket takes no more once
    pyproxy stops reading and the kernel's buffers are full: ``--stall`` seconds without a
    byte taken) and how much of them pyproxy left unread in its socket (from
    ``/proc/net/tcp``). Then the client reads everything, sending what was left, and checks
    that every reply arrived and holds exactly the expected row. How many of the queries
    pyproxy ran while the client was not reading is read from the server's ``Com_select``
    (which counts pyproxy's health probes too, hence "about").
statements
    One client prepares ``--statements`` (default 40,000) distinct statements ``SELECT <i>``,
    32 in flight at a time, and closes none. ``client got`` counts the prepares that
    succeeded and the errors the others got, and how many prepared statements the server
    held meanwhile (``Prepared_stmt_count``).

What the figures mean
=====================

Every figure is pyproxy's resident memory, from ``/proc/<pid>/status``, in MB (10^6 bytes).
``before`` is ``VmRSS`` once pyproxy has served one login and is idle; ``VmHWM`` is then
reset (``/proc/<pid>/clear_refs``) and ``VmRSS`` sampled every 10 ms during the scenario;
``peak`` is the larger of the sampled maximum and ``VmHWM``; ``growth`` = peak - before;
``after`` is ``VmRSS`` one second after the scenario's clients have gone (memory pyproxy did
not give back). ``held`` (long_data) is the growth before the execute. Compare runs made
on the same machine.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import platform
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import attrs

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from pyproxy import auth  # noqa: E402
from pyproxy.wire.buffer import Reader, lenenc_int, u16, u32  # noqa: E402
from pyproxy.wire.commands import make_query  # noqa: E402
from pyproxy.wire.constants import CLIENT, COMMAND, MAX_PAYLOAD  # noqa: E402
from pyproxy.wire.framing import PacketFramer, frame  # noqa: E402
from pyproxy.wire.handshake import (  # noqa: E402
    HandshakeResponse41,
    make_handshake_response41,
    parse_auth_switch_request,
    parse_handshake_v10,
)
from pyproxy.wire.responses import parse_err  # noqa: E402

SCENARIOS = ("prelogin", "long_data", "pipeline", "statements")
MB = 1_000_000
MIB = 1 << 20
#: The capabilities of the raw client: protocol 4.1, classic EOF packets (no DEPRECATE_EOF).
CLIENT_CAPABILITIES = (CLIENT.LONG_PASSWORD | CLIENT.LONG_FLAG | CLIENT.CONNECT_WITH_DB
                       | CLIENT.PROTOCOL_41 | CLIENT.TRANSACTIONS | CLIENT.SECURE_CONNECTION
                       | CLIENT.MULTI_RESULTS | CLIENT.PLUGIN_AUTH)
#: Prepares a client of the statements scenario keeps in flight.
PREPARE_WINDOW = 32
#: MYSQL_TYPE_BLOB, the type a client gives a parameter it sends as long data.
TYPE_BLOB = 0xFC


class BenchError(RuntimeError):
    """Something keeps the benchmark from running; the message says what."""


class ClientFailed(Exception):
    """The connection to pyproxy broke, or no reply came in time; the message says how."""


# --- pure helpers (unit-tested in tests/test_bench_bounds.py) --------------------------------


def parse_status_field(text: str, field: str) -> int:
    """A memory field (``VmRSS``, ``VmHWM``) in bytes from the text of ``/proc/<pid>/status``."""
    for line in text.splitlines():
        if line.startswith(field + ":"):
            value, unit = line.split()[1:3]
            if unit.lower() != "kb":
                raise ValueError(f"unexpected {field} unit {unit!r}")
            return int(value) * 1024
    raise ValueError(f"no {field} line (process gone, or a kernel thread)")


def huge_packet_prefix(size: int, first_seq: int = 1, chunk: int = MIB) -> Iterator[memoryview]:
    """The first ``size`` bytes on the wire of a packet too big to end: 16 MiB parts, each
    with a full-length header (more parts follow), cut into pieces of at most ``chunk`` bytes.

    The pieces are views of one buffer of zeros and of the headers, so a prefix of any size
    costs the sender ``chunk`` bytes.
    """
    zeros = memoryview(bytes(chunk))
    seq = first_seq
    left = size
    while left > 0:
        header = memoryview(MAX_PAYLOAD.to_bytes(3, "little") + bytes((seq & 0xFF,)))
        yield header[:left]
        left -= len(header)
        payload = MAX_PAYLOAD
        while left > 0 and payload > 0:
            piece = zeros[:min(chunk, payload, left)]
            yield piece
            payload -= len(piece)
            left -= len(piece)
        seq += 1


def make_stmt_prepare(sql: str) -> bytes:
    return bytes((COMMAND.COM_STMT_PREPARE,)) + sql.encode()


def make_stmt_send_long_data(statement: int, param: int, data: bytes) -> bytes:
    return bytes((COMMAND.COM_STMT_SEND_LONG_DATA,)) + u32(statement) + u16(param) + data


def make_stmt_execute_long_data(statement: int, params: int) -> bytes:
    """COM_STMT_EXECUTE of a statement whose ``params`` parameters were all sent as long data:
    no NULLs, every type BLOB, and so no value in the packet itself."""
    null_bitmap = bytes((params + 7) // 8)
    types = bytes((TYPE_BLOB, 0)) * params
    return (bytes((COMMAND.COM_STMT_EXECUTE,)) + u32(statement) + b"\x00" + u32(1)
            + (null_bitmap + b"\x01" + types if params else b""))


def expected_row(length: int) -> bytes:
    """The text-protocol row of ``SELECT REPEAT('x', length)``."""
    return lenenc_int(length) + b"x" * length


@attrs.define
class Reply:
    """One complete reply: ``error`` is the code of an ERR packet (0 if none); ``rows`` the row
    payloads of a result set (kept only when asked); ``statement`` and ``params`` the
    prepare-OK's statement id and parameter count."""

    error: int = 0
    message: str = ""
    columns: int = 0
    rows: list[bytes] = attrs.field(factory=list)
    row_count: int = 0
    row_bytes: int = 0
    statement: int = 0
    params: int = 0


# States of a ReplyReader: what the next packet is.
_FIRST, _DEFINITIONS, _ROWS = range(3)


class ReplyReader:
    """Follows replies packet by packet, for a client without CLIENT_DEPRECATE_EOF (or with it):
    results of COM_QUERY and COM_STMT_EXECUTE (OK, ERR, or a result set) and, with
    ``prepare``, prepare replies. ``feed`` returns the reply a packet completes, else None.
    """

    def __init__(self, prepare: bool = False, deprecate_eof: bool = False,
                 keep_rows: bool = True) -> None:
        self.prepare = prepare
        self.deprecate_eof = deprecate_eof
        self.keep_rows = keep_rows
        self._state = _FIRST
        self._definitions = 0  # definition packets (and classic EOFs) still to come
        self._reply = Reply()

    def feed(self, payload: bytes) -> Reply | None:
        if self._state == _FIRST:
            return self._first(payload)
        if self._state == _DEFINITIONS:
            self._definitions -= 1
            if self._definitions == 0:
                if self.prepare:
                    return self._done()
                self._state = _ROWS
            return None
        if payload[:1] == b"\xff":
            return self._error(payload)
        if payload[:1] == b"\xfe" and len(payload) < (MAX_PAYLOAD if self.deprecate_eof else 9):
            return self._done()
        reply = self._reply
        reply.row_count += 1
        reply.row_bytes += len(payload)
        if self.keep_rows:
            reply.rows.append(payload)
        return None

    def _first(self, payload: bytes) -> Reply | None:
        head = payload[:1]
        if head == b"\xff":
            return self._error(payload)
        reply = self._reply
        if self.prepare:
            if head != b"\x00" or len(payload) < 12:
                raise ValueError(f"not a prepare-OK: {payload[:16]!r}")
            r = Reader(payload, 1)
            reply.statement = r.u32()
            reply.columns = r.u16()
            reply.params = r.u16()
            eofs = 0 if self.deprecate_eof else (reply.params > 0) + (reply.columns > 0)
            self._definitions = reply.params + reply.columns + eofs
        else:
            if head == b"\x00":
                return self._done()
            if head == b"\xfb":
                raise ValueError("a LOCAL INFILE request")
            reply.columns = Reader(payload).lenenc_int()
            self._definitions = reply.columns + (0 if self.deprecate_eof else 1)
        if self._definitions == 0:
            return self._done()
        self._state = _DEFINITIONS
        return None

    def _error(self, payload: bytes) -> Reply:
        err = parse_err(payload)
        self._reply.error = err.code
        self._reply.message = err.message
        return self._done()

    def _done(self) -> Reply:
        reply = self._reply
        self._reply = Reply()
        self._state = _FIRST
        return reply


def tcp_receive_queue(text: str, local_port: int, remote_port: int) -> int | None:
    """Bytes waiting unread in the receive queue of the TCP socket from ``local_port`` to
    ``remote_port``, from the text of ``/proc/net/tcp`` (or ``tcp6``); None if it is not there.
    """
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 5:
            continue
        local, remote, queues = fields[1], fields[2], fields[4]
        if (int(local.rsplit(":", 1)[1], 16) == local_port
                and int(remote.rsplit(":", 1)[1], 16) == remote_port):
            return int(queues.split(":")[1], 16)
    return None


def config_setting(text: str) -> tuple[str, str, Any]:
    """``SECTION.KEY=VALUE`` as (section, key, value), the value an int, a float, true/false
    or else a string."""
    name, sep, raw = text.partition("=")
    section, dot, key = name.strip().partition(".")
    if not sep or not dot or not section or not key:
        raise argparse.ArgumentTypeError(f"expected SECTION.KEY=VALUE, got {text!r}")
    value: Any = raw.strip()
    if value in ("true", "false"):
        value = value == "true"
    else:
        for kind in (int, float):
            try:
                value = kind(value)
                break
            except ValueError:
                pass
    return section, key, value


@attrs.define
class SenderOutcome:
    """What became of one client sending a huge packet: ``state`` is open, closed, or why its
    sending stopped; ``sent`` the bytes the kernel took; ``seconds`` since sending began when
    that was seen; ``error`` the error packet pyproxy sent ('ERR n'), if any."""

    state: str = "open"
    sent: int = 0
    seconds: float = 0.0
    error: str = ""


def summarize_senders(outcomes: list[SenderOutcome]) -> str:
    """One phrase per kind of outcome: how many clients, the error, the range of bytes sent
    and the latest time seen, e.g. '2 x closed (ERR 1153) after 512.0 KiB to 3.0 MiB sent,
    0.1 s'."""
    groups: dict[tuple[str, str], list[SenderOutcome]] = {}
    for outcome in outcomes:
        groups.setdefault((outcome.state, outcome.error), []).append(outcome)
    phrases = []
    for (state, error), group in sorted(groups.items(), key=lambda item: -len(item[1])):
        low, high = min(o.sent for o in group), max(o.sent for o in group)
        sent = mib(low) if low == high else f"{mib(low)} to {mib(high)}"
        phrase = (f"{len(group)} x " if len(group) > 1 else "") + state
        phrase += f" ({error})" if error else ""
        if not state.startswith("refused"):
            phrase += f" after {sent} sent, {max(o.seconds for o in group):.1f} s"
        phrases.append(phrase)
    return ", ".join(phrases)


def shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 3] + "..."


def mb(value: int | None) -> str:
    return "-" if value is None else f"{value / MB:.1f}"


def mib(value: int) -> str:
    return f"{value / MIB:.1f} MiB" if value >= MIB else f"{value / 1024:.1f} KiB"


@attrs.define
class Result:
    """One scenario's outcome: what was sent, pyproxy's memory, what the client got."""

    scenario: str
    sent: str
    got: str = "-"
    before: int | None = None
    peak: int | None = None
    after: int | None = None
    held: int | None = None  # growth at a scenario's own midpoint (long data before execute)
    seconds: float = 0.0
    problems: list[str] = attrs.field(factory=list)

    @property
    def growth(self) -> int | None:
        return None if self.peak is None or self.before is None else self.peak - self.before

    def line(self) -> str:
        held = f", held {mb(self.held)} MB before execute" if self.held is not None else ""
        return (f"scenario {self.scenario}: sent {self.sent}; pyproxy RSS before {mb(self.before)}"
                f" MB, peak {mb(self.peak)} MB, growth {mb(self.growth)} MB{held}, after "
                f"{mb(self.after)} MB; client got: {self.got} ({self.seconds:.1f} s)")


def render_table(results: list[Result]) -> str:
    """Align one row per scenario; memory in MB."""
    header = ("scenario", "sent", "before", "peak", "growth", "after", "client got")
    rows = [(r.scenario, r.sent, mb(r.before), mb(r.peak), mb(r.growth), mb(r.after), r.got)
            for r in results]
    widths = [max(len(header[i]), *(len(row[i]) for row in rows)) if rows else len(header[i])
              for i in range(len(header))]
    numeric = {2, 3, 4, 5}

    def join(cells: tuple[str, ...]) -> str:
        return "  ".join(cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i])
                         for i, cell in enumerate(cells)).rstrip()

    return "\n".join([join(header), "  ".join("-" * w for w in widths), *map(join, rows)])


def log_problems(text: str) -> list[str]:
    """Lines of a pyproxy log that report a crash or an error: tracebacks, Twisted's unhandled
    errors, and structured events at level error or critical."""
    found = []
    for line in text.splitlines():
        lowered = line.lower()
        if ("traceback" in lowered or "unhandled error" in lowered
                or '"level": "error"' in lowered or '"level": "critical"' in lowered):
            found.append(line.strip()[:300])
    return found


# --- pyproxy's memory -------------------------------------------------------------------------


def proc_status_field(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        return parse_status_field(f.read(), field)


class MemoryWatch:
    """Samples a process's VmRSS every ``interval`` seconds in a thread, and its VmHWM."""

    def __init__(self, pid: int, interval: float = 0.01) -> None:
        self.pid = pid
        self.interval = interval
        self.before = 0
        self.sampled_max = 0
        self.hwm_reset = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def rss(self) -> int:
        return proc_status_field(self.pid, "VmRSS")

    def begin(self) -> int:
        """Take the baseline, reset the high-water mark and start sampling."""
        self.before = self.sampled_max = self.rss()
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
            self.hwm_reset = True
        except OSError:
            self.hwm_reset = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self.before

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sampled_max = max(self.sampled_max, self.rss())
            except (OSError, ValueError):
                return  # the process is gone
            self._stop.wait(self.interval)

    def growth_now(self) -> int:
        return self.sampled_max - self.before

    def settle(self, quiet: float, limit: float) -> bool:
        """Wait until VmRSS has moved less than 1 MB for ``quiet`` seconds, at most ``limit``
        seconds; return whether it did."""
        deadline = time.monotonic() + limit
        last = self.rss()
        calm_since = time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.1)
            try:
                now = self.rss()
            except (OSError, ValueError):
                return True  # the process is gone: nothing moves any more
            if abs(now - last) > MB:
                last, calm_since = now, time.monotonic()
            elif time.monotonic() - calm_since >= quiet:
                return True
        return False

    def end(self) -> int:
        """Stop sampling; return the peak."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        peak = self.sampled_max
        if self.hwm_reset:
            try:
                peak = max(peak, proc_status_field(self.pid, "VmHWM"))
            except (OSError, ValueError):
                pass
        return peak


# --- a raw MySQL client -----------------------------------------------------------------------


@attrs.define
class Push:
    """What a non-blocking send achieved: bytes sent, and why it stopped early (None: all sent)."""

    sent: int = 0
    stopped: str | None = None
    received: bytes = b""


def push(sock: socket.socket, pieces: Iterable[bytes | memoryview], *, stall: float,
         deadline: float, read: bool = True) -> Push:
    """Send ``pieces`` on ``sock`` without blocking for long: stop when all are sent, the
    peer closes, no byte goes out for ``stall`` seconds, or at ``deadline``. With ``read``,
    whatever the peer sends meanwhile is kept (an error packet before it closes)."""
    result = Push()
    received = bytearray()
    timeout = sock.gettimeout()
    sock.setblocking(False)
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_WRITE | (selectors.EVENT_READ if read else 0))
    try:
        for piece in pieces:
            view = memoryview(piece)
            last_progress = time.monotonic()
            while view:
                now = time.monotonic()
                if now >= deadline:
                    result.stopped = "time limit"
                    return result
                if now - last_progress >= stall:
                    result.stopped = f"stalled (no byte taken for {stall:g} s)"
                    return result
                events = selector.select(min(0.2, deadline - now))
                for _key, mask in events:
                    if mask & selectors.EVENT_READ:
                        data = sock.recv(65536)
                        if not data:
                            result.stopped = "closed"
                            return result
                        received += data
                    if mask & selectors.EVENT_WRITE:
                        sent = sock.send(view[:4 * MIB])
                        view = view[sent:]
                        result.sent += sent
                        last_progress = time.monotonic()
    except OSError as exc:
        result.stopped = f"closed ({exc.strerror or type(exc).__name__})"
    finally:
        result.received = bytes(received)
        selector.close()
        try:
            sock.settimeout(timeout)
        except OSError:
            pass
    return result


def unread_by_peer(sock: socket.socket) -> int | None:
    """Bytes sent on ``sock`` that the peer's process has not read yet (still in the peer's
    receive queue), or None if the kernel does not say."""
    local_port, peer_port = sock.getsockname()[1], sock.getpeername()[1]
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                found = tcp_receive_queue(f.read(), peer_port, local_port)
        except OSError:
            continue
        if found is not None:
            return found
    return None


def error_in(data: bytes) -> str:
    """'ERR 1153' when ``data`` holds an error packet, else ''."""
    try:
        packets = PacketFramer().feed(data)
    except ValueError:
        return ""
    for packet in packets:
        if packet.payload[:1] == b"\xff":
            try:
                return f"ERR {parse_err(packet.payload).code}"
            except ValueError:
                return "ERR ?"
    return ""


class RawClient:
    """A MySQL client over a plain socket, speaking only what the scenarios need."""

    def __init__(self, host: str, port: int, timeout: float = 30.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.framer = PacketFramer()
        self._packets: collections.deque[bytes] = collections.deque()
        try:
            first = self.read_packet()
            if first[:1] == b"\xff":
                raise ClientFailed(f"refused: ERR {parse_err(first).code}")
            self.greeting = parse_handshake_v10(first)
        except BaseException:
            self.sock.close()
            raise

    def read_packet(self) -> bytes:
        while not self._packets:
            try:
                data = self.sock.recv(MIB)
            except TimeoutError as exc:
                raise ClientFailed("got no reply in time") from exc
            except OSError as exc:
                raise ClientFailed(exc.strerror or type(exc).__name__) from exc
            if not data:
                raise ClientFailed("connection closed")
            try:
                self._packets.extend(packet.payload for packet in self.framer.feed(data))
            except ValueError as exc:
                raise ClientFailed(f"malformed packets: {exc}") from exc
        return self._packets.popleft()

    def send(self, payload: bytes, seq: int = 0) -> None:
        try:
            self.sock.sendall(frame(payload, seq))
        except OSError as exc:
            raise ClientFailed(exc.strerror or type(exc).__name__) from exc

    def login(self, user: str, password: str, database: str | None) -> None:
        """Log in with the greeting's plugin; raises ClientFailed on an error."""
        plugin = self.greeting.auth_plugin or auth.NATIVE
        proof = auth.proof_for(plugin, password.encode(), self.greeting.auth_data)
        capabilities = CLIENT_CAPABILITIES & (self.greeting.capabilities | CLIENT.LONG_PASSWORD)
        self.send(make_handshake_response41(HandshakeResponse41(
            capabilities, 1 << 24, 45, user, proof, database, plugin)), 1)
        while True:
            payload = self.read_packet()
            if payload[:1] == b"\x00":
                return
            if payload[:1] == b"\xff":
                err = parse_err(payload)
                raise ClientFailed(f"login refused: ERR {err.code} {err.message}")
            if payload[:1] == b"\xfe":
                plugin, nonce = parse_auth_switch_request(payload)
                self.send(auth.proof_for(plugin, password.encode(), nonce), 3)
            # 0x01: caching_sha2's fast-auth note; the OK follows.

    def read_reply(self, reader: ReplyReader) -> Reply:
        while True:
            reply = reader.feed(self.read_packet())
            if reply is not None:
                return reply

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def prepare(client: RawClient, sql: str) -> Reply:
    client.send(make_stmt_prepare(sql))
    return client.read_reply(ReplyReader(prepare=True))


# --- the scenarios ----------------------------------------------------------------------------


@attrs.define
class Context:
    """What a scenario needs: pyproxy's address and account, the watch, the settings."""

    host: str
    port: int
    user: str
    password: str
    database: str
    watch: MemoryWatch
    args: argparse.Namespace
    #: Reads a global status variable of the server (as root, not through pyproxy).
    server_status: Callable[[str], str]

    def client(self, login: bool = True) -> RawClient:
        client = RawClient(self.host, self.port)
        if login:
            try:
                client.login(self.user, self.password, self.database)
            except BaseException:
                client.close()
                raise
        return client


def scenario_prelogin(ctx: Context, result: Result) -> None:
    a = ctx.args
    size = a.prelogin_mib * MIB
    result.sent = f"{a.prelogin_clients} clients x {mib(size)} of one packet, no login"
    clients: list[RawClient | None] = []
    outcomes = [SenderOutcome() for _ in range(a.prelogin_clients)]
    started = time.monotonic()

    def send(index: int, client: RawClient) -> None:
        pushed = push(client.sock, huge_packet_prefix(size), stall=a.stall,
                      deadline=started + a.time_limit)
        outcome = outcomes[index]
        outcome.sent = pushed.sent
        outcome.seconds = time.monotonic() - started
        outcome.error = error_in(pushed.received)
        if pushed.stopped is not None:
            outcome.state = "closed" if pushed.stopped.startswith("closed") else pushed.stopped

    try:
        for outcome in outcomes:
            try:
                clients.append(ctx.client(login=False))
            except ClientFailed as exc:
                clients.append(None)
                outcome.state = str(exc)
        started = time.monotonic()
        threads = [threading.Thread(target=send, args=(index, client), daemon=True)
                   for index, client in enumerate(clients) if client is not None]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(a.time_limit + 5)
        # Give pyproxy time to settle, then see whether it closed the open ones since.
        ctx.watch.settle(a.settle, a.hold)
        for client, outcome in zip(clients, outcomes):
            if client is not None and outcome.state == "open":
                late = _peer_closed(client.sock)
                if late is not None:
                    outcome.state = "closed"
                    outcome.seconds = time.monotonic() - started
                    outcome.error = outcome.error or late
    finally:
        for client in clients:
            if client is not None:
                client.close()
    result.got = summarize_senders(outcomes)


def _peer_closed(sock: socket.socket) -> str | None:
    """None while the peer keeps the connection open; else the error it sent ('ERR n') or ''.
    Leaves ``sock`` non-blocking: it is closed next."""
    sock.setblocking(False)
    data = bytearray()
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except BlockingIOError:
        if not data:
            return None
    except OSError:
        pass
    return error_in(bytes(data))


def scenario_long_data(ctx: Context, result: Result) -> None:
    a = ctx.args
    chunk = a.long_data_kib * 1024
    result.sent = f"{a.long_data_chunks} x {mib(chunk)} SEND_LONG_DATA, then execute"
    client = ctx.client()
    try:
        prepared = prepare(client, "SELECT ?")
        if prepared.error:
            result.got = f"prepare: ERR {prepared.error}"
            return
        data = bytes(chunk)
        packet = frame(make_stmt_send_long_data(prepared.statement, 0, data), 0)
        started = time.monotonic()
        pushed = push(client.sock, (packet for _ in range(a.long_data_chunks)), stall=a.stall,
                      deadline=started + a.time_limit)
        ctx.watch.settle(a.settle, a.hold)
        result.held = ctx.watch.growth_now()
        error = error_in(pushed.received)
        if pushed.stopped is not None:
            result.got = (f"{pushed.stopped} after {mib(pushed.sent)} of "
                          f"{mib(len(packet) * a.long_data_chunks)}"
                          + (f" ({error})" if error else ""))
            if pushed.stopped.startswith("closed"):
                return
        elif error:
            result.got = f"{error} while sending"
        else:
            result.got = "all sent"
        try:
            client.send(make_stmt_execute_long_data(prepared.statement, prepared.params))
            reply = client.read_reply(ReplyReader(keep_rows=False))
        except ClientFailed as exc:
            result.got += f"; execute: {exc}"
            return
        if reply.error:
            result.got += f"; execute: ERR {reply.error} ({shorten(reply.message, 70)})"
        else:
            result.got += f"; execute: {reply.row_count} row of {mib(reply.row_bytes)}"
    finally:
        client.close()


def scenario_pipeline(ctx: Context, result: Result) -> None:
    a = ctx.args
    n = a.pipeline_queries
    sql = f"SELECT REPEAT('x',{a.pipeline_row_bytes})"
    row = expected_row(a.pipeline_row_bytes)
    data = frame(make_query(sql), 0) * n
    client = ctx.client()
    try:
        selects = int(ctx.server_status("Com_select"))
        started = time.monotonic()
        pushed = push(client.sock, [data], stall=a.stall, deadline=started + a.hold, read=False)
        # Not reading: wait for pyproxy to do all it will do.
        settled = ctx.watch.settle(a.settle, max(0.0, started + a.hold - time.monotonic()))
        result.sent = f"{n} x {sql} pipelined, unread {time.monotonic() - started:.1f} s"
        # The server counts every SELECT, the health probes' too: the count is near, not exact.
        ran = int(ctx.server_status("Com_select")) - selects
        unread = unread_by_peer(client.sock)
        if pushed.stopped is None and unread == 0:
            taken = "pyproxy read every query"
        else:
            taken = (f"sent {mib(pushed.sent)} of {mib(len(data))}"
                     + (f" ({pushed.stopped})" if pushed.stopped else "")
                     + ("" if unread is None else f", {mib(unread)} left unread by pyproxy"))
        taken += f", about {min(max(ran, 0), n)} of them run meanwhile"
        if not settled:
            taken += ", RSS still growing when reading began"
        replies, intact, problem = _read_pipelined(client.sock, data[pushed.sent:], n, row,
                                                   time.monotonic() + a.time_limit)
        result.got = (f"{taken}; {intact}/{n} replies intact"
                      + (f" ({replies - intact} bad)" if replies > intact else "")
                      + (f"; {problem}" if problem else ""))
    finally:
        client.close()


def _read_pipelined(sock: socket.socket, rest: bytes, n: int, row: bytes,
                    deadline: float) -> tuple[int, int, str]:
    """Read ``n`` replies of one row ``row`` each, sending ``rest`` meanwhile; return replies
    read, replies intact, and what went wrong first ('' if nothing)."""
    framer = PacketFramer()
    reader = ReplyReader()
    replies = intact = 0
    problem = ""
    view = memoryview(rest)
    timeout = sock.gettimeout()
    sock.setblocking(False)
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if view else 0))
    try:
        while replies < n:
            now = time.monotonic()
            if now >= deadline:
                return replies, intact, f"time limit with {n - replies} replies missing"
            for _key, mask in selector.select(min(1.0, deadline - now)):
                if mask & selectors.EVENT_WRITE:
                    view = view[sock.send(view[:MIB]):]
                    if not view:
                        selector.modify(sock, selectors.EVENT_READ)
                if mask & selectors.EVENT_READ:
                    data = sock.recv(4 * MIB)
                    if not data:
                        return replies, intact, f"connection closed, {n - replies} replies missing"
                    for packet in framer.feed(data):
                        reply = reader.feed(packet.payload)
                        if reply is None:
                            continue
                        replies += 1
                        if reply.error:
                            problem = problem or f"ERR {reply.error} {reply.message}"
                        elif reply.rows == [row]:
                            intact += 1
                        else:
                            problem = problem or f"reply {replies} not the expected row"
    except OSError as exc:
        return replies, intact, f"connection {exc.strerror or exc}, {n - replies} replies missing"
    except ValueError as exc:
        return replies, intact, f"reply {replies + 1} malformed: {exc}"
    finally:
        selector.close()
        sock.settimeout(timeout)
    return replies, intact, problem


def scenario_statements(ctx: Context, result: Result) -> None:
    a = ctx.args
    n = a.statements
    result.sent = f"{n} x PREPARE SELECT <i>, none closed"
    client = ctx.client()
    outcomes: collections.Counter[str] = collections.Counter()
    reader = ReplyReader(prepare=True)
    deadline = time.monotonic() + a.time_limit
    sent = 0
    try:
        while sent < min(PREPARE_WINDOW, n):
            sent += 1
            client.send(make_stmt_prepare(f"SELECT {sent}"))
        while sum(outcomes.values()) < n:
            if time.monotonic() >= deadline:
                outcomes[f"time limit ({n - sum(outcomes.values())} unanswered)"] += 1
                break
            reply = client.read_reply(reader)
            outcomes[f"ERR {reply.error}" if reply.error else "prepared"] += 1
            if sent < n:
                sent += 1
                client.send(make_stmt_prepare(f"SELECT {sent}"))
        ctx.watch.settle(a.settle, a.hold)
        on_server = ctx.server_status("Prepared_stmt_count")
    except ClientFailed as exc:
        outcomes[f"{exc} after {sum(outcomes.values())} replies"] += 1
        on_server = None
    finally:
        client.close()
    prepared = outcomes.pop("prepared", 0)
    result.got = f"{prepared} prepared" + "".join(
        f", {text} x {count}" if text.startswith("ERR") else f", {text}"
        for text, count in outcomes.most_common())
    if on_server is not None:
        result.got += f" (the server held {on_server})"


SCENARIO_RUNS: dict[str, Callable[[Context, Result], None]] = {
    "prelogin": scenario_prelogin,
    "long_data": scenario_long_data,
    "pipeline": scenario_pipeline,
    "statements": scenario_statements,
}


# --- running ----------------------------------------------------------------------------------


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _on_signal(signum: int, frame: Any) -> None:
    print(f"\n{signal.Signals(signum).name} received; cleaning up", file=sys.stderr)
    raise SystemExit(128 + signum)


class Bench:
    """One sandbox server; per scenario a pyproxy, its baseline, the scenario, its figures."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.log_dir = Path(args.log_dir or tempfile.mkdtemp(prefix="pyproxy-bounds-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.server: Any = None
        self.proxy: Any = None
        self.results: list[Result] = []
        self.mariadb_version = "?"

    def start_server(self) -> None:
        from pyproxy import sandbox  # noqa: PLC0415
        self.server = sandbox.SandboxServer()
        try:
            self.server.start()
        except sandbox.ProgramNotFound as exc:
            raise BenchError(str(exc)) from None
        conn = self.server.connect()
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT VERSION()")
                self.mariadb_version = cur.fetchone()[0]
        finally:
            conn.close()

    def server_status(self, name: str) -> str:
        conn = self.server.connect()
        try:
            with conn.cursor() as cur:
                cur.execute("SHOW GLOBAL STATUS LIKE %s", (name,))
                return str(cur.fetchone()[1])
        finally:
            conn.close()

    def run_scenario(self, name: str) -> Result:
        from integration import servers  # noqa: PLC0415
        result = Result(name, "-")
        sections: dict[str, dict[str, Any]] = {"log": {"level": "info"}}
        for section, key, value in self.args.settings:
            sections.setdefault(section, {})[key] = value
        self.proxy = proxy = servers.start_proxy(self.server, self.log_dir / name, **sections)
        try:
            warm = proxy.connect()
            with warm.cursor() as cur:
                cur.execute("SELECT 1")
            warm.close()
            time.sleep(0.5)
            watch = MemoryWatch(proxy.process.pid)
            result.before = watch.begin()
            ctx = Context(proxy.host, proxy.port, servers.APP_USER, servers.APP_PASSWORD,
                          servers.APP_DATABASE, watch, self.args, self.server_status)
            started = time.monotonic()
            try:
                SCENARIO_RUNS[name](ctx, result)
            except (ClientFailed, OSError) as exc:
                result.got = f"failed: {exc}"
            finally:
                result.seconds = time.monotonic() - started
                result.peak = watch.end()
            time.sleep(1.0)
            code = proxy.process.poll()
            if code is None:
                result.after = watch.rss()
            else:
                result.problems.append(f"pyproxy exited with code {code}")
                result.got += f"; pyproxy exited ({code})"
        finally:
            proxy.stop()
            self.proxy = None
        result.problems += log_problems(proxy.log_text())
        return result

    def header(self) -> list[str]:
        try:
            commit = subprocess.run(["git", "-C", str(REPO_ROOT), "describe", "--always",
                                     "--dirty"], capture_output=True, text=True, timeout=10,
                                    check=False).stdout.strip() or "?"
        except (OSError, subprocess.TimeoutExpired):
            commit = "?"
        return [
            "date:     "
            + datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            f"machine:  nproc={len(os.sched_getaffinity(0))}, Linux {platform.release()}, "
            f"Python {platform.python_version()}",
            f"server:   MariaDB {self.mariadb_version} (sandbox)",
            f"pyproxy:  {commit}, a new process per scenario, "
            + (", ".join(f"{section}.{key} = {value!r}"
                         for section, key, value in self.args.settings)
               or "limits at their defaults"),
        ]

    def run(self) -> int:
        progress("starting the sandbox server")
        self.start_server()
        for name in self.args.scenarios:
            progress(f"scenario {name}")
            try:
                result = self.run_scenario(name)
            except Exception as exc:  # noqa: BLE001 - the other scenarios still run
                result = Result(name, "-", got=f"failed: {shorten(str(exc), 100)}",
                                problems=[f"the scenario failed: {exc!r}"])
            self.results.append(result)
            print(result.line(), flush=True)
        print("\n".join(["", "pyproxy memory bounds (issue 8)", *self.header(), ""]))
        print(render_table(self.results))
        print()
        print("Figures are pyproxy's RSS in MB (10^6 bytes): before the scenario, its peak, "
              "growth = peak - before, and after its clients left.")
        print(f"pyproxy logs and configs: {self.log_dir}")
        problems = [f"{r.scenario}: {p}" for r in self.results for p in r.problems]
        if problems:
            print("problems seen:")
            for problem in problems:
                print(f"  - {problem}")
        else:
            print("problems seen: none (pyproxy stayed up, no traceback or error in its logs)")
        if self.args.json:
            Path(self.args.json).write_text(json.dumps(
                [{**attrs.asdict(r), "growth": r.growth} for r in self.results], indent=2) + "\n")
            print(f"JSON written to {self.args.json}")
        return 0

    def cleanup(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
            self.proxy = None
        if self.server is not None:
            try:
                self.server.cleanup()
            except Exception as exc:  # noqa: BLE001 - report, and go on exiting
                print(f"warning: could not clean up the sandbox: {exc}", file=sys.stderr)
            self.server = None


#: Defaults of the full run and of --quick.
FULL = {"prelogin_mib": 64, "long_data_chunks": 200, "pipeline_queries": 20_000,
        "statements": 40_000, "hold": 60.0, "settle": 1.5}
QUICK = {"prelogin_mib": 16, "long_data_chunks": 20, "pipeline_queries": 2_000,
         "statements": 4_000, "hold": 10.0, "settle": 0.5}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/bounds.py",
        description="Measure how much a hostile or careless client can make pyproxy's memory "
                    "grow (issue 8). See the module docstring.")
    parser.add_argument("--quick", action="store_true", help="smaller counts, under a minute")
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument("--prelogin-clients", type=int, default=2,
                        help="clients sending a huge packet before login (default 2)")
    parser.add_argument("--prelogin-mib", type=int,
                        help="MiB each of them sends (default 64, 16 with --quick)")
    parser.add_argument("--long-data-chunks", type=int,
                        help="COM_STMT_SEND_LONG_DATA chunks (default 200, 20 with --quick)")
    parser.add_argument("--long-data-kib", type=int, default=1024,
                        help="KiB per long data chunk (default 1024)")
    parser.add_argument("--pipeline-queries", type=int,
                        help="queries pipelined (default 20000, 2000 with --quick)")
    parser.add_argument("--pipeline-row-bytes", type=int, default=30_000,
                        help="bytes of the row each pipelined query returns (default 30000)")
    parser.add_argument("--statements", type=int,
                        help="statements prepared (default 40000, 4000 with --quick)")
    parser.add_argument("--hold", type=float,
                        help="seconds at most a scenario waits, not reading, for pyproxy's "
                             "memory to settle (default 60, 10 with --quick)")
    parser.add_argument("--settle", type=float,
                        help="seconds without growth that count as settled (default 1.5, "
                             "0.5 with --quick)")
    parser.add_argument("--stall", type=float, default=2.0,
                        help="seconds without a byte taken after which pyproxy counts as no "
                             "longer reading (default 2)")
    parser.add_argument("--time-limit", type=float, default=120.0,
                        help="seconds at most for one scenario's sending or reading "
                             "(default 120)")
    parser.add_argument("--set", dest="settings", action="append", default=[],
                        metavar="SECTION.KEY=VALUE", type=config_setting,
                        help="a pyproxy setting other than its default, e.g. "
                             "proxy.max_packet_size=65536 (repeatable)")
    parser.add_argument("--log-dir", help="where pyproxy logs go (default: a new temp folder)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for name in ("prelogin_clients", "prelogin_mib", "long_data_chunks", "long_data_kib",
                 "pipeline_queries", "pipeline_row_bytes", "statements", "hold", "settle",
                 "stall", "time_limit"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.time_limit > 600 or args.hold > 600:
        parser.error("--time-limit and --hold are limited to 600 s")
    if args.pipeline_row_bytes >= MAX_PAYLOAD - 16:
        parser.error("--pipeline-row-bytes must stay under 16 MiB")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if sys.platform != "linux":
        print("bench/bounds.py needs Linux (/proc)", file=sys.stderr)
        return 2
    import logging  # noqa: PLC0415

    import structlog  # noqa: PLC0415
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    # Also when started in the background, where SIGINT arrives ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    bench = Bench(args)
    try:
        return bench.run()
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        bench.cleanup()


if __name__ == "__main__":
    sys.exit(main())

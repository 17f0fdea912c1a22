"""A TCP relay for fault tests: forwards 127.0.0.1 traffic until told to stall."""

from __future__ import annotations

import selectors
import socket
import threading


class Relay:
    """Listens on a free 127.0.0.1 port and forwards to ``target``.  ``stall()``
    stops forwarding in both directions (connections stay open, as with a hung
    server or a dead network path); ``resume()`` forwards again."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.forwarding = threading.Event()
        self.forwarding.set()
        self.closed = threading.Event()
        # Bytes forwarded so far, from clients to ``target`` and back.
        self.sent_upstream = 0
        self.sent_downstream = 0
        self._clients: set[socket.socket] = set()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def stall(self) -> None:
        self.forwarding.clear()

    def resume(self) -> None:
        self.forwarding.set()

    def close(self) -> None:
        self.closed.set()
        self.thread.join(timeout=5)
        self.listener.close()

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self.listener, selectors.EVENT_READ)
        peers: dict[socket.socket, socket.socket] = {}
        while not self.closed.is_set():
            for key, _ in selector.select(timeout=0.05):
                sock = key.fileobj
                if sock is self.listener:
                    client, _ = self.listener.accept()
                    try:
                        server = socket.create_connection(self.target, timeout=2)
                    except OSError:
                        client.close()
                        continue
                    peers[client], peers[server] = server, client
                    self._clients.add(client)
                    selector.register(client, selectors.EVENT_READ)
                    selector.register(server, selectors.EVENT_READ)
                    continue
                if not self.forwarding.is_set():
                    continue  # stalled: leave the bytes in the kernel buffers
                other = peers.get(sock)
                try:
                    data = sock.recv(65536)
                    if data and other is not None:
                        other.sendall(data)
                        if sock in self._clients:
                            self.sent_upstream += len(data)
                        else:
                            self.sent_downstream += len(data)
                except OSError:
                    data = b""  # either end went away: close the pair
                if not data or other is None:
                    for end in (sock, other):
                        if end is not None and end in peers:
                            selector.unregister(end)
                            peers.pop(end, None)
                            end.close()
                    continue
            if not self.forwarding.is_set():
                self.forwarding.wait(0.05)
        for sock in list(peers):
            sock.close()

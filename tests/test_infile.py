"""pyproxy.infile: LOAD DATA LOCAL INFILE relayed, or refused to a client without CLIENT_LOCAL_FILES."""

from __future__ import annotations

from twisted.python.failure import Failure

import vectors
from pyproxy.wire.commands import make_query
from pyproxy.wire.framing import frame
from pyproxy.wire.constants import CLIENT
from test_frontend import CLIENT_CAPS, LoggedIn, err_of


class InfileTests(LoggedIn):
    def test_local_infile_round_trip(self) -> None:
        """LOAD DATA LOCAL: the request reaches the client, its file goes to the server, then the OK."""
        sql = "LOAD DATA LOCAL INFILE '/nonexistent/x.csv' INTO TABLE app.t"
        conn, server = self.first_backend(self.client, sql)
        server.send(vectors.INFILE_REQUEST)
        self.assertEqual(self.client.raw(), vectors.INFILE_REQUEST)
        self.client.protocol.dataReceived(frame(b"3,three\n", 2) + frame(b"", 3))
        self.assertEqual(server.transport.value(), frame(b"3,three\n", 2) + frame(b"", 3))
        server.transport.clear()
        server.send(vectors.INFILE_OK)
        self.assertEqual(self.client.raw(), vectors.INFILE_OK)
        self.assertEqual(self.pool.idle, [conn])

    def test_backend_lost_during_local_infile_closes_the_client(self) -> None:
        """If the backend dies while the client uploads a LOCAL INFILE, the client is closed:
        the rest of its file must never be read as commands."""
        conn, server = self.first_backend(self.client, "LOAD DATA LOCAL INFILE 'x' INTO TABLE t")
        server.send(vectors.INFILE_REQUEST)
        self.client.raw()
        conn.connectionLost(Failure(ConnectionError("gone")))
        self.assertTrue(self.client.closed)
        self.client.protocol.dataReceived(frame(make_query("DELETE FROM t"), 2))
        self.assertEqual(self.backends.waiting, [])


class LocalFilesTests(LoggedIn):
    caps = CLIENT_CAPS & ~CLIENT.LOCAL_FILES

    def test_local_infile_refused_for_a_client_without_local_files(self) -> None:
        """A client that did not offer CLIENT_LOCAL_FILES shares connections that have it;
        if it runs LOAD DATA LOCAL, the server gets an empty file and the client the error."""
        conn, server = self.first_backend(self.client, "LOAD DATA LOCAL INFILE '/etc/passwd' INTO TABLE t")
        server.send(vectors.INFILE_REQUEST)
        self.assertEqual(self.client.raw(), b"")
        [empty] = server.received()
        self.assertEqual((empty.seq, empty.payload), (2, b""))
        server.send(vectors.INFILE_OK)
        [err] = self.client.received()
        self.assertEqual(err_of(err), (1, 4166, "HY000"))  # what MariaDB answers such a client
        self.assertFalse(self.client.closed)
        self.assertEqual(self.pool.idle, [conn])

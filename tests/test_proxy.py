"""pyproxy.proxy: what topology changes and reloads do to the pools."""

from __future__ import annotations

import hashlib
from typing import Any

import attrs
import boto3
from twisted.internet import defer
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from pyproxy import auth
from pyproxy import proxy as proxy_module
from pyproxy.aws import synchronously
from pyproxy.backend import BackendError
from pyproxy.iam import RDS_TOKEN_LIFETIME, RDS_TOKEN_MARGIN, RdsTokens
from pyproxy.config import build
from pyproxy.credential_sources import BackendLogin
from pyproxy.credentials import Authentication
from pyproxy.pool import Pool
from pyproxy.proxy import Proxy, ServerInfo
from pyproxy.wire.commands import make_query
from pyproxy.wire.framing import frame
from pyproxy.wire.responses import make_ok
from test_frontend import Backends
from test_pool import FakeConnector

TARGETS = [{"host": "w", "port": 1}, {"host": "r", "port": 2, "role": "auto"},
           {"host": "s", "port": 3, "role": "reader"}]


def configure(targets: list[dict[str, Any]] = TARGETS, **sections: Any) -> Any:
    return build({"backend": {"targets": targets}, "pool": {"max_connections": 1, "borrow_timeout": 5},
                  "users": [{"name": "app", "password": "pw"}], **sections})


class ProxyTopologyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.proxy = Proxy(configure(), self.reactor, ServerInfo("10.11.19-MariaDB", 0xFFFFFFFF, 45, 2))
        self.connectors: dict[str, FakeConnector] = {}
        for target in self.proxy.topology.targets:
            connector = self.connectors[target.name] = FakeConnector(self.reactor)
            self.proxy.pools[("app", target.name)] = Pool("app", connector, self.reactor, max_size=1,
                                                          borrow_timeout=5, target=target)
        self.w, self.r, self.s = self.proxy.topology.targets
        for target, state in ((self.w, "up"), (self.r, "read_only"), (self.s, "read_only")):
            target.state = state

    def pool(self, target: Any) -> Pool:
        return self.proxy.pool("app", target)

    def test_writer_change_moves_waiters(self) -> None:
        lent = self.pool(self.w).borrow(0)
        self.connectors["w:1"].succeed()
        self.successResultOf(lent)
        waiting = self.pool(self.w).borrow(0)  # the writer's pool (1) is full
        self.proxy.topology._set(self.w, "read_only")
        self.proxy.topology._set(self.r, "up")
        self.assertIs(self.proxy.topology.writer, self.r)
        self.assertEqual(len(self.pool(self.w).waiters), 0)
        conn = self.connectors["r:2"].succeed()
        self.assertIs(self.successResultOf(waiting), conn)

    def test_down_server_closes_idle_and_sends_readers_elsewhere(self) -> None:
        reader = self.pool(self.s)
        held = reader.borrow(0)
        idle_conn = self.connectors["s:3"].succeed()
        reader.give_back(self.successResultOf(held))
        self.assertEqual(reader.idle, [idle_conn])
        lent = reader.borrow(0)
        self.successResultOf(lent)
        waiting = reader.borrow(0)
        self.proxy.topology._set(self.s, "down")
        self.assertEqual(len(reader.waiters), 0)
        # Sent to the other reader (r), the only other server up and not the writer.
        conn = self.connectors["r:2"].succeed()
        self.assertIs(self.successResultOf(waiting), conn)

    def test_down_writer_keeps_its_waiters(self) -> None:
        """With nothing else writable, writer traffic waits for the writer to come back."""
        waiting = self.pool(self.w).borrow(0)
        self.proxy.topology._set(self.w, "down")
        self.assertIs(self.proxy.topology.writer, self.w)
        self.assertEqual(len(self.pool(self.w).waiters), 1)
        self.assertNoResult(waiting)

    def test_route(self) -> None:
        self.assertIs(self.proxy.route("app", False, None).target, self.w)
        first = self.proxy.route("app", True, None)
        self.assertIn(first.target, (self.r, self.s))
        self.assertIs(self.proxy.route("app", True, first), first)  # sticky

    def test_reload_removes_a_server(self) -> None:
        reader = self.pool(self.s)
        lent = reader.borrow(0)
        self.connectors["s:3"].succeed()
        self.successResultOf(lent)
        waiting = reader.borrow(0)
        self.proxy.reconfigure(configure(TARGETS[:2]))
        self.assertNotIn(("app", "s:3"), self.proxy.pools)
        self.assertTrue(reader.closed)
        self.assertTrue(self.s.retired)
        conn = self.connectors["r:2"].succeed()
        self.assertIs(self.successResultOf(waiting), conn)

    def test_reload_of_other_settings_keeps_connections(self) -> None:
        """Changing the target list or pool sizes does not renew the pools; a new
        password or default schema does."""
        writer = self.pool(self.w)
        d = writer.borrow(0)
        conn = self.connectors["w:1"].succeed()
        writer.give_back(self.successResultOf(d))
        self.proxy.reconfigure(configure(TARGETS[:2], health={"interval": 3}))
        self.assertEqual(writer.idle, [conn])
        self.assertEqual(self.proxy.topology.interval, 3)
        config = configure(TARGETS[:2])
        self.proxy.reconfigure(attrs.evolve(config, backend=attrs.evolve(config.backend, database="other")))
        self.assertEqual(writer.idle, [])
        self.assertEqual(conn.closed, "configuration changed")

    def test_monitor_login(self) -> None:
        login = self.proxy._monitor_login(self.r.config)
        self.assertEqual((login.host, login.port, login.user, login.database), ("r", 2, "app", None))
        self.proxy.config = configure(health={"user": "mon", "password": "mpw"})
        login = self.proxy._monitor_login(self.r.config)
        self.assertEqual((login.user, login.password), ("mon", "mpw"))

    def test_reader_back_takes_read_only_waiters_from_a_down_writer(self) -> None:
        """With no reader, read-only sessions wait on the writer; when the writer is down
        and a reader comes back, those (and only those) move to it."""
        self.proxy.topology._set(self.r, "down")
        self.proxy.topology._set(self.s, "down")
        self.proxy.topology._set(self.w, "down")
        writer = self.pool(self.w)
        reads = writer.borrow(0, readonly=True)
        writes = writer.borrow(0)
        self.proxy.topology._set(self.s, "read_only")
        self.assertEqual([waiter.deferred for waiter in writer.waiters], [writes])
        conn = self.connectors["s:3"].succeed()
        self.assertIs(self.successResultOf(reads), conn)
        self.assertNoResult(writes)
        self.reactor.advance(5)
        self.failureResultOf(writes)  # its own deadline still ran on the writer's pool


class BackendLoginTests(SynchronousTestCase):
    """What a client's login gives for the server is kept per user and used for that user only;
    pools are per user, so one user's connection never serves another's client."""

    def setUp(self) -> None:
        from test_frontend import FakeClient, make_proxy  # noqa: PLC0415 - the client fixtures

        self.FakeClient = FakeClient
        self.proxy, self.app_backends = make_proxy(users=[
            {"name": "app", "password": "secret"},
            {"name": "hashed", "password_hash": auth.stored_hash(b"hash pw")}])
        writer = self.proxy.topology.writer
        self.hashed_backends = Backends(self.proxy.reactor)
        self.proxy.pools[("hashed", writer.name)] = Pool("hashed", self.hashed_backends, self.proxy.reactor,
                                                         max_size=2, borrow_timeout=3, target=writer)
        self.proxy.catalog("hashed").load([])

    def test_sha1_from_the_proof_logs_that_user_in(self) -> None:
        """Before any client of the hash user, pyproxy has no way to log in as it (1045 with a
        message holding no secret); after one, its connections log in with SHA1(password)."""
        failure = self.failureResultOf(self.proxy.connect_as("hashed", self.proxy.topology.writer.config, 0))
        self.assertEqual(failure.value.code, 1045)
        [ok] = self.FakeClient(self.proxy).login(user="hashed", password="hash pw")
        self.assertEqual(ok.payload[0], 0)
        target = self.proxy.target("hashed")
        self.assertEqual(target.login.native_sha1, hashlib.sha1(b"hash pw").digest())
        self.assertEqual(target.password, "")
        self.assertNotIn(hashlib.sha1(b"hash pw").hexdigest(), repr(target))
        self.assertEqual(self.proxy.target("app").login, BackendLogin("app", ("secret",)))
        self.assertIsNone(self.proxy.target("nobody").login)
        # A [[users]] password is not copied: the configuration logs that user in.
        self.FakeClient(self.proxy).login()
        self.assertEqual(set(self.proxy.backend_logins), {"hashed"})

    def test_a_wrong_proof_changes_nothing(self) -> None:
        self.FakeClient(self.proxy).login(user="hashed", password="hash pw")
        [err] = self.FakeClient(self.proxy).login(user="hashed", password="other")
        self.assertEqual(err.payload[0], 0xFF)
        self.assertEqual(self.proxy.target("hashed").login.native_sha1, hashlib.sha1(b"hash pw").digest())

    def test_pools_never_lend_across_users(self) -> None:
        """An idle connection of ``app`` does not serve a client of ``hashed``: that client's
        statement waits for a connection of its own user's pool."""
        app = self.FakeClient(self.proxy)
        app.login()
        app.send(make_query("SELECT 1"))
        conn, server = self.app_backends.open()
        [query] = server.received()
        server.send(frame(make_ok(2), 1))
        app.received()
        writer = self.proxy.topology.writer.name
        self.assertEqual(self.proxy.pools[("app", writer)].idle, [conn])
        hashed = self.FakeClient(self.proxy)
        hashed.login(user="hashed", password="hash pw")
        hashed.send(make_query("SELECT 1"))
        self.assertEqual(hashed.received(), [])
        self.assertEqual(self.proxy.pools[("app", writer)].idle, [conn])
        self.assertEqual(len(self.hashed_backends.waiting), 1)
        self.assertEqual(self.app_backends.waiting, [])

    def test_reload_forgets_a_changed_users_login(self) -> None:
        self.FakeClient(self.proxy).login(user="hashed", password="hash pw")
        self.proxy.reconfigure(attrs.evolve(self.proxy.config, users=(
            self.proxy.config.users[0], attrs.evolve(self.proxy.config.users[1],
                                                     password_hash=auth.stored_hash(b"new pw")))))
        self.assertIsNone(self.proxy.target("hashed").login)


class ConnectAsTests(SynchronousTestCase):
    """Proxy.connect_as: the way a user's connections log in, with pyproxy.backend.connect
    replaced by a recorder (the login itself is test_backend's)."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.targets: list[Any] = []
        self.outcomes: list[Any] = []
        self.patch(proxy_module, "connect", self.connect)

    def connect(self, reactor: Any, target: Any, flavor: int) -> defer.Deferred[Any]:
        self.targets.append(target)
        outcome = self.outcomes.pop(0)
        return defer.fail(outcome) if isinstance(outcome, Exception) else defer.succeed(outcome)

    def make(self, **sections: Any) -> Proxy:
        return Proxy(build({"users": [{"name": "app", "password": "pw"}], **sections}), self.reactor,
                     ServerInfo("10.11.19-MariaDB", 0xFFFFFFFF, 45, 2))

    def test_rotation_tries_the_other_password_and_keeps_it_first(self) -> None:
        proxy = self.make()
        proxy.remember_login(BackendLogin("rot", ("pending", "current")))
        self.outcomes = [BackendError(1045, "28000", "Access denied"), "conn"]
        writer = proxy.topology.writer.config
        self.assertEqual(self.successResultOf(proxy.connect_as("rot", writer, 0)), "conn")
        self.assertEqual([target.attempt for target in self.targets], [0, 1])
        self.assertEqual(proxy.login_for("rot").passwords, ("current", "pending"))

    def test_every_password_refused_tells_the_sources(self) -> None:
        proxy = self.make()
        proxy.remember_login(BackendLogin("rot", ("a", "b")))
        told: list[str] = []
        self.patch(Authentication, "backend_refused",
                   lambda self, user: (told.append(user), defer.succeed(None))[1])
        self.outcomes = [BackendError(1045, "28000", "Access denied")] * 2
        failure = self.failureResultOf(proxy.connect_as("rot", proxy.topology.writer.config, 0), BackendError)
        self.assertEqual((failure.value.code, told), (1045, ["rot"]))
        # Another error is passed on at once, without trying the other password.
        self.targets.clear()
        self.outcomes = [BackendError(2003, "HY000", "Can't connect")]
        self.failureResultOf(proxy.connect_as("rot", proxy.topology.writer.config, 0), BackendError)
        self.assertEqual(len(self.targets), 1)

    def test_backend_iam_logs_in_with_rds_tokens_made_again_before_expiry(self) -> None:
        """[backend] iam: each connection's login carries the user's current RDS token, made by
        boto3's generate_db_auth_token, and a new one 13 minutes later."""
        proxy = self.make(backend={"iam": True, "host": "db.example.internal", "port": 3306})
        client = boto3.session.Session(aws_access_key_id="AKIAPYPROXYUNIT00001", aws_secret_access_key="x",
                                       region_name="eu-west-1").client("rds")
        made: list[str] = []

        class Rds:
            def generate_db_auth_token(self, **kwargs: Any) -> str:
                made.append(kwargs["DBUsername"])
                return str(client.generate_db_auth_token(**kwargs))

        rds = Rds()
        proxy.authentication._rds_tokens[("db.example.internal", 3306)] = RdsTokens(
            lambda: rds, "db.example.internal", 3306, synchronously, self.reactor, region="eu-west-1")
        writer = proxy.topology.writer.config
        self.outcomes = ["c1", "c2", "c3"]
        proxy.connect_as("app", writer, 0)
        proxy.connect_as("app", writer, 0)
        self.reactor.advance(RDS_TOKEN_LIFETIME - RDS_TOKEN_MARGIN)
        proxy.connect_as("app", writer, 0)
        first, second, third = self.targets
        self.assertTrue(first.login.iam and first.token.startswith("db.example.internal:3306/?Action=connect"))
        self.assertIn("DBUser=app", first.token)
        self.assertEqual(second.token, first.token)
        self.assertTrue(third.token.startswith("db.example.internal:3306/?Action=connect"))
        self.assertEqual(made, ["app", "app"])  # the third login's token is a new one
        self.assertNotIn(first.token, repr(first))

    def test_no_rds_token_is_a_retried_connect_failure(self) -> None:
        """boto3 cannot sign (no credentials): the open fails with 2003, which the pool
        retries, naming the kind of error only."""
        proxy = self.make(backend={"iam": True})

        class NoCredentials:
            def generate_db_auth_token(self, **kwargs: Any) -> str:
                raise RuntimeError("Unable to locate credentials")

        writer = proxy.topology.writer.config
        proxy.authentication._rds_tokens[(writer.host, writer.port)] = RdsTokens(
            NoCredentials, writer.host, writer.port, synchronously, self.reactor)
        failure = self.failureResultOf(proxy.connect_as("app", writer, 0), BackendError)
        self.assertEqual(failure.value.code, 2003)
        self.assertIn("no RDS IAM token: RuntimeError", failure.value.message)
        self.assertEqual(self.targets, [])


class IamProbeTests(SynchronousTestCase):
    """[backend] iam: the target probes log in with an RDS token when their account has no
    password of its own (the topology's connector replaced by a recorder)."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.probes: list[Any] = []
        self.made: list[str] = []

    def make(self, signer: Any = None, **sections: Any) -> Proxy:
        sections.setdefault("backend", {})
        sections["backend"] = {"iam": True, "host": "db.example.internal", "port": 3306,
                               **sections["backend"]}
        proxy = Proxy(build({"users": [{"name": "app", "password": "clients-pw"}],
                             "health": {"interval": 10, "failure_threshold": 2}, **sections}),
                      self.reactor, ServerInfo("10.11.19-MariaDB", 0xFFFFFFFF, 45, 2))
        made = self.made

        class Rds:
            def generate_db_auth_token(self, **kwargs: Any) -> str:
                made.append(kwargs["DBUsername"])
                return f"db.example.internal:3306/?Action=connect&DBUser={kwargs['DBUsername']}&X-Amz-Signature=s"

        proxy.authentication._rds_tokens[("db.example.internal", 3306)] = RdsTokens(
            signer or Rds, "db.example.internal", 3306, synchronously, self.reactor)
        proxy.topology._connect = self.connect
        self.addCleanup(proxy.topology.stop)
        return proxy

    def connect(self, target: Any) -> defer.Deferred[Any]:
        self.probes.append(target)
        return defer.Deferred()  # the probe stays out: what matters is how it logged in

    def test_probe_of_an_iam_user_logs_in_with_its_token(self) -> None:
        """The probe account is the [[users]] entry, whose password is the clients' (never
        sent to the server): the probe sends that user's RDS token, the same one its
        pooled connections get."""
        proxy = self.make()
        proxy.topology.start()
        [probe] = self.probes
        self.assertEqual((probe.user, probe.password, probe.database), ("app", "", None))
        self.assertTrue(probe.login.iam)
        self.assertTrue(probe.token.startswith("db.example.internal:3306/?Action=connect&DBUser=app&"))
        self.assertNotIn(probe.token, repr(probe))
        self.assertEqual(self.successResultOf(proxy.authentication.rds_token("db.example.internal", 3306, "app")),
                         probe.token)
        self.assertEqual(self.made, ["app"])

    def test_health_user_without_password_logs_in_with_its_token(self) -> None:
        self.make(health={"user": "monitor"}).topology.start()
        [probe] = self.probes
        self.assertEqual((probe.user, probe.login.iam), ("monitor", True))
        self.assertIn("DBUser=monitor&", probe.token)

    def test_account_with_a_password_logs_in_with_it(self) -> None:
        """A [health] user with a password of its own, and every probe without [backend] iam,
        log in with the password as before."""
        self.make(health={"user": "monitor", "password": "mon-pw"}).topology.start()
        self.make(backend={"iam": False}).topology.start()
        self.assertEqual([(probe.user, probe.password, probe.login, probe.token) for probe in self.probes],
                         [("monitor", "mon-pw", None, ""), ("app", "clients-pw", None, "")])
        self.assertEqual(self.made, [])

    def test_no_token_is_a_failed_probe_logged_without_secrets(self) -> None:
        """boto3 cannot sign: no connection is tried, the probe fails as for an unreachable
        server (failure_threshold of them make the target down), and the log says so with
        the kind of error only."""
        from structlog.testing import capture_logs  # noqa: PLC0415

        class NoCredentials:
            def generate_db_auth_token(self, **kwargs: Any) -> str:
                raise RuntimeError("Unable to locate credentials for AKIASECRET")

        proxy = self.make(NoCredentials)
        with capture_logs() as logs:
            proxy.topology.start()
            self.reactor.advance(1)
        target = proxy.topology.writer
        self.assertEqual((target.state, target.failures, self.probes), ("down", 2, []))
        self.assertIn("no RDS IAM token: RuntimeError", target.last_error)
        failed = [entry for entry in logs if entry["event"] == "rds_token_failed"]
        self.assertEqual([(entry["log_level"], entry["user"], entry["error"], entry["target"]) for entry in failed],
                         [("warning", "app", "RuntimeError", "db.example.internal:3306")] * 2)
        self.assertNotIn("AKIASECRET", repr(logs))
        self.assertNotIn("Unable to locate", repr(logs))

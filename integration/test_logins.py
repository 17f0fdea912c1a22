"""Every kind of login through a real pyproxy process, and what it must never show.

One pyproxy (twistd, as in production) in front of the test server, with its users coming from
every source at once: ``[[users]]`` with a password and with only a ``password_hash``,
``[[secrets]]`` from a moto server on loopback, and ``[auth] lookup`` reading the server's own
hashes.  PyMySQL clients log in as each, rightly and wrongly; the good ones run a statement, so
pyproxy's own login to the server as that user (from a SHA1 recovered from the proof, or from
the secret) is exercised too.  Then everything pyproxy logged and its /metrics page are searched
for each secret used, in every form it could take: clear passwords, stored hashes, SHA1(password)
in hex and raw.

The wrong-password throttle is checked here with real sockets from two source addresses.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import boto3
import pymysql
import pytest

from integration import servers
from integration.drivers import bounded  # noqa: F401  (fixture)
from integration.moto import ACCOUNT, REGION, moto_server
from integration.raw_login import login as raw_login
from pyproxy import auth, iam
from pyproxy.sandbox import free_port
from pyproxy.wire.responses import parse_err

pytestmark = pytest.mark.usefixtures("bounded")

LOOKUP_USER = servers.own_name("lookup_acct")
LOOKUP_PASSWORD = "lookup-acct-pw-5f1c"


@pytest.fixture(scope="module")
def moto() -> Iterator[str]:
    with moto_server() as url:
        yield url


@pytest.fixture(scope="module")
def lookup_account(db_server: servers.DbServer) -> str:
    """An account with SELECT on mysql.user and nothing else."""
    db_server.create_user(LOOKUP_USER, LOOKUP_PASSWORD)
    conn = db_server.connect()
    try:
        with conn.cursor() as cur:
            for host in ("%", "localhost"):
                cur.execute("REVOKE ALL PRIVILEGES, GRANT OPTION FROM %s@%s", (LOOKUP_USER, host))
                cur.execute("GRANT SELECT ON mysql.user TO %s@%s", (LOOKUP_USER, host))
    finally:
        conn.close()
    return LOOKUP_USER


def make_secret(url: str, name: str, username: str, password: str) -> str:
    client = boto3.client("secretsmanager", region_name=REGION, endpoint_url=url)
    created = client.create_secret(Name=name, SecretString=json.dumps(
        {"username": username, "password": password, "engine": "mariadb"}))
    return str(created["ARN"])


def current_user(proxy: servers.ProxyProcess, user: str, password: str) -> str:
    conn = proxy.connect(user=user, password=password, database=None)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT CURRENT_USER()")
            return str(cur.fetchone()[0])
    finally:
        conn.close()


#: Every error message a client was given, to search for secrets.
MESSAGES: list[str] = []


def refused(proxy: servers.ProxyProcess, user: str, password: str, **kwargs: Any) -> int:
    with pytest.raises(pymysql.MySQLError) as info:
        proxy.connect(user=user, password=password, database=None, **kwargs).close()
    MESSAGES.append(str(info.value))
    return int(info.value.args[0])


def logs_in(proxy: servers.ProxyProcess, user: str, password: str) -> bool:
    try:
        proxy.connect(user=user, password=password, database=None).close()
    except pymysql.MySQLError as exc:
        assert exc.args[0] == 1045, exc
        return False
    return True


def wait_for(proxy: servers.ProxyProcess, needle: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while needle not in proxy.log_text():
        assert time.monotonic() < deadline, f"{needle!r} never logged:\n{proxy.log_text()[-3000:]}"
        time.sleep(0.1)


def forms(password: str) -> list[bytes]:
    """Every form a password's secrets could leak in: the password, its stored hash (with and
    without '*', either case), SHA1(password) in hex (either case), raw, escaped and base64."""
    sha1 = hashlib.sha1(password.encode()).digest()
    stored = auth.stored_hash(password.encode())
    return [password.encode(), stored.encode(), stored[1:].encode(), stored[1:].lower().encode(),
            sha1.hex().encode(), sha1.hex().upper().encode(), sha1, repr(sha1)[2:-1].encode(),
            base64.b64encode(sha1), base64.b64encode(sha1).rstrip(b"=")]


def test_every_kind_of_login_and_no_secret_shown(make_proxy: Any, db_server: servers.DbServer,
                                                 lookup_account: str, moto: str) -> None:
    """Good and wrong logins of a [[users]] password user, a password_hash user, a user of a
    Secrets Manager secret and a user looked up on the server; each good one runs a statement as
    itself.  Nothing pyproxy logged, and nothing on /metrics, holds any secret used."""
    hashed, hashed_pw = servers.own_name("hashed"), "hashed-pw-8a1e"
    looked, looked_pw = servers.own_name("looked"), "looked-pw-3b7d"
    secret_user, secret_pw = servers.own_name("secret_u"), "secret-pw-c4d2"
    wrong = "wrong-pw-77e9"
    for user, password in ((hashed, hashed_pw), (looked, looked_pw), (secret_user, secret_pw)):
        db_server.create_user(user, password)
    arn = make_secret(moto, servers.own_name("pyproxy/logins"), secret_user, secret_pw)
    metrics_port = free_port()
    proxy = make_proxy(
        users=[{"name": hashed, "password_hash": auth.stored_hash(hashed_pw.encode()), "create": False}],
        auth={"lookup": True, "lookup_user": LOOKUP_USER, "lookup_password": LOOKUP_PASSWORD,
              "max_failures": 100},
        aws={"region": REGION, "endpoint_url": moto}, secrets=[{"arn": arn}],
        metrics={"listen": f"tcp:{metrics_port}:interface=127.0.0.1"},
        backend={"database": ""})
    wait_for(proxy, "secret_fetched")

    for user, password in ((servers.APP_USER, servers.APP_PASSWORD), (hashed, hashed_pw),
                           (looked, looked_pw), (secret_user, secret_pw)):
        assert current_user(proxy, user, password).split("@")[0] == user
        # A second client of the same user: the backend connection is reused or made again
        # from what the first login gave.
        assert current_user(proxy, user, password).split("@")[0] == user
        assert refused(proxy, user, wrong) == 1045
    assert refused(proxy, servers.own_name("nobody"), wrong) == 1045

    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as page:
        metrics = page.read()
    assert b"pyproxy_client_connections" in metrics
    assert b'pyproxy_auth_failures_total{reason="wrong_password"} 4.0' in metrics
    assert b'pyproxy_auth_failures_total{reason="unknown_user"} 1.0' in metrics
    proxy.stop()
    log = proxy.log_path.read_bytes()
    # The log is the one of these logins (debug level: every client's events are there).
    assert hashed.encode() in log and looked.encode() in log and secret_user.encode() in log
    for reason in (b'"wrong_password"', b'"unknown_user"'):
        assert reason in log
    messages = "\n".join(MESSAGES).encode("utf-8", "surrogateescape")
    assert messages.count(b"Access denied") >= 5
    for password in (servers.APP_PASSWORD, hashed_pw, looked_pw, secret_pw, wrong, LOOKUP_PASSWORD):
        for form in forms(password):
            assert form not in log, f"a form of a secret is in pyproxy's log: {form!r}"
            assert form not in metrics, f"a form of a secret is on /metrics: {form!r}"
            assert form not in messages, f"a form of a secret is in an error message: {form!r}"


def test_pools_are_per_user(make_proxy: Any, db_server: servers.DbServer) -> None:
    """Clients of two users, one of them known only by its hash, take turns on a pool of one
    connection each: every statement runs as its own client's user.  pyproxy announces
    caching_sha2_password here: the hash user's client is switched to mysql_native_password."""
    hashed, hashed_pw = servers.own_name("hashed_pool"), "hashed-pool-pw"
    db_server.create_user(hashed, hashed_pw)
    proxy = make_proxy(users=[{"name": hashed, "password_hash": auth.stored_hash(hashed_pw.encode()),
                               "create": False}], pool={"max_connections": 1}, backend={"database": ""},
                       proxy={"auth_plugin": "caching_sha2_password"})
    clients = [(servers.APP_USER, proxy.connect(database=None)),
               (hashed, proxy.connect(user=hashed, password=hashed_pw, database=None))]
    try:
        for _ in range(10):
            for user, conn in clients:
                with conn.cursor() as cur:
                    cur.execute("SELECT CURRENT_USER(), USER()")
                    current, login = cur.fetchone()
                assert current.split("@")[0] == user and login.split("@")[0] == user
    finally:
        for _, conn in clients:
            conn.close()


def test_wrong_passwords_delay_that_address_only(make_proxy: Any) -> None:
    """After max_failures wrong passwords from 127.0.0.1, answers to that address wait
    failure_delay (even a right password's); 127.0.0.2 is never delayed; nobody is locked out."""
    proxy = make_proxy(auth={"failure_delay": 1.0, "max_failures": 2, "failure_window": 60,
                             "failure_delay_max": 2.0})
    for _ in range(2):
        assert refused(proxy, servers.APP_USER, "nope") == 1045
    started = time.monotonic()
    assert refused(proxy, servers.APP_USER, "nope") == 1045
    assert time.monotonic() - started >= 0.9  # the delay is a lower bound, not a speed
    started = time.monotonic()
    conn = proxy.connect()  # the right password still logs in, after the delay
    conn.close()
    assert time.monotonic() - started >= 0.9
    other = proxy.connect(bind_address="127.0.0.2")
    other.close()
    assert refused(proxy, servers.APP_USER, "nope", bind_address="127.0.0.2") == 1045
    log = proxy.log_text()
    delayed = [json.loads(line) for line in log.splitlines()
               if line.startswith("{") and '"login_delayed"' in line]
    assert delayed and {entry["peer"] for entry in delayed} == {"127.0.0.1"}
    failed = [json.loads(line) for line in log.splitlines()
              if line.startswith("{") and '"auth_failed"' in line]
    assert [entry["failures"] for entry in failed if entry["peer"] == "127.0.0.2"] == [1]


def role_token(moto: str, role_name: str) -> tuple[str, str]:
    """A Lambda's token: a role made in moto, assumed, and a pyproxy token signed with the
    assumed credentials; returns (role ARN, token)."""
    trust = json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}]})
    role = boto3.client("iam", region_name=REGION, endpoint_url=moto).create_role(
        RoleName=role_name, AssumeRolePolicyDocument=trust)["Role"]["Arn"]
    assumed = boto3.client("sts", region_name=REGION, endpoint_url=moto).assume_role(
        RoleArn=role, RoleSessionName="fn-1")["Credentials"]
    session = boto3.session.Session(aws_access_key_id=assumed["AccessKeyId"],
                                    aws_secret_access_key=assumed["SecretAccessKey"],
                                    aws_session_token=assumed["SessionToken"], region_name=REGION)
    return role, iam.make_token(session=session, endpoint_url=moto)


def iam_proxy(make_proxy: Any, db_server: servers.DbServer, moto: str, user: str, role: str) -> Any:
    db_server.create_user(user, "iam-user-server-pw")
    return make_proxy(iam={"sts_endpoints": [moto], "roles": [{"arn": role, "user": user}]},
                      aws={"region": REGION, "endpoint_url": moto})


def test_iam_token_refused_over_plaintext(make_proxy: Any, db_server: servers.DbServer, moto: str) -> None:
    """A token sent as mysql_clear_password over a plaintext connection is refused with 1045
    and a log line saying why (never the token); a client of a user only IAM knows that answers
    with mysql_native_password is refused at once, never asked to send its token in clear."""
    user = servers.own_name("iam_user")
    role, token = role_token(moto, "logins-plaintext")
    assert role == f"arn:aws:iam::{ACCOUNT}:role/logins-plaintext"
    proxy = iam_proxy(make_proxy, db_server, moto, user, role)
    reply = raw_login(proxy.host, proxy.port, user, lambda plugin, nonce: token.encode() + b"\x00",
                      plugin=auth.CLEAR)
    assert reply[:1] == b"\xff" and parse_err(reply).code == 1045
    reply = raw_login(proxy.host, proxy.port, user, lambda plugin, nonce: auth.native_proof(b"x", nonce))
    assert reply[:1] == b"\xff" and parse_err(reply).code == 1045  # an ERR, not an AuthSwitchRequest
    proxy.stop()
    log = proxy.log_path.read_bytes()
    failed = [json.loads(line) for line in log.decode().splitlines()
              if line.startswith("{") and '"auth_failed"' in line]
    assert [entry["reason"] for entry in failed] == ["clear_text_without_tls"] * 2
    assert token.encode() not in log and token.split(".", 1)[1][:40].encode() not in log


def test_iam_token_accepted_over_tls(make_proxy: Any, db_server: servers.DbServer, moto: str,
                                     tmp_path: Any) -> None:
    """A Lambda logs in over TLS with its token as password: pyproxy asks for
    mysql_clear_password, STS (moto) names the role's session, and the statement runs as the
    mapped user (logged in to the server with that user's password from [[users]]).  A wrong
    token is refused, and the same user's password still works over TLS."""
    trustme = pytest.importorskip("trustme")
    issued = trustme.CA().issue_cert("127.0.0.1", "localhost")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    key.write_bytes(issued.private_key_pem.bytes())
    user = servers.own_name("iam_tls_user")
    role, token = role_token(moto, "logins-tls")
    db_server.create_user(user, "iam-user-server-pw")
    proxy = make_proxy(iam={"sts_endpoints": [moto], "roles": [{"arn": role, "user": user}]},
                       aws={"region": REGION, "endpoint_url": moto},
                       tls={"cert": str(cert), "key": str(key), "require": True},
                       users=[{"name": user, "password": "iam-user-server-pw", "create": False}])
    tls = {"check_hostname": False}
    conn = proxy.connect(user=user, password=token, database=None, ssl=tls, ssl_disabled=False)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT CURRENT_USER()")
            assert cur.fetchone()[0].split("@")[0] == user
    finally:
        conn.close()
    with pytest.raises(pymysql.err.OperationalError) as refused:
        proxy.connect(user=user, password=token[:-4] + "AAAA", database=None, ssl=tls, ssl_disabled=False)
    assert refused.value.args[0] == 1045
    conn = proxy.connect(user=user, password="iam-user-server-pw", database=None, ssl=tls,
                         ssl_disabled=False)
    conn.close()
    proxy.stop()
    log = proxy.log_path.read_bytes()
    assert b'"iam_login"' in log and token.encode() not in log


def set_server_password(db_server: servers.DbServer, user: str, password: str) -> None:
    conn = db_server.connect()
    try:
        with conn.cursor() as cur:
            for host in ("%", "localhost"):
                cur.execute("ALTER USER %s@%s IDENTIFIED BY %s", (user, host, password))
    finally:
        conn.close()


def test_secret_rotation_through_pyproxy(make_proxy: Any, db_server: servers.DbServer, moto: str) -> None:
    """A Secrets Manager rotation under a running pyproxy: while AWSPENDING exists, clients log
    in with either password, and a new backend connection for a client that proved the pending
    one (which the server does not have yet) logs in with the current one after the server
    refuses the pending one.  Once the server and the secret have the new password, the old one
    is refused."""
    user = servers.own_name("rotated")
    db_server.create_user(user, "rot-old-91")
    arn = make_secret(moto, servers.own_name("pyproxy/rotation"), user, "rot-old-91")
    client = boto3.client("secretsmanager", region_name=REGION, endpoint_url=moto)
    proxy = make_proxy(secrets=[{"arn": arn}], aws={"region": REGION, "endpoint_url": moto,
                                                    "secrets_refresh": 1}, backend={"database": ""})
    wait_for(proxy, "secret_fetched")
    holder = proxy.connect(user=user, password="rot-old-91", database=None)
    holder.begin()  # holds its backend connection: the next client needs a new one
    with holder.cursor() as cur:
        cur.execute("SELECT 1")
    client.put_secret_value(SecretId=arn, VersionStages=["AWSPENDING"],
                            SecretString=json.dumps({"username": user, "password": "rot-new-92"}))
    wait_for(proxy, "AWSPENDING")
    assert current_user(proxy, user, "rot-new-92").split("@")[0] == user
    holder.rollback()
    holder.close()
    set_server_password(db_server, user, "rot-new-92")
    versions = client.describe_secret(SecretId=arn)["VersionIdsToStages"]
    old = next(v for v, stages in versions.items() if "AWSCURRENT" in stages)
    new = next(v for v, stages in versions.items() if "AWSPENDING" in stages)
    client.update_secret_version_stage(SecretId=arn, VersionStage="AWSCURRENT", MoveToVersionId=new,
                                       RemoveFromVersionId=old)
    client.update_secret_version_stage(SecretId=arn, VersionStage="AWSPENDING", RemoveFromVersionId=new)
    deadline = time.monotonic() + 20
    while logs_in(proxy, user, "rot-old-91"):  # until the next fetch
        assert time.monotonic() < deadline, "the old password is still accepted"
        time.sleep(0.5)
    assert current_user(proxy, user, "rot-new-92").split("@")[0] == user


def test_backend_refusal_fetches_the_secret_again(make_proxy: Any, db_server: servers.DbServer,
                                                  moto: str) -> None:
    """The password changed on the server and in the secret between two fetches: the first
    backend login with the old one is refused (the client gets the server's 1045), which makes
    pyproxy fetch the secret at once, and the new password logs in."""
    user = servers.own_name("refetched")
    db_server.create_user(user, "refetch-old-17")
    arn = make_secret(moto, servers.own_name("pyproxy/refetch"), user, "refetch-old-17")
    proxy = make_proxy(secrets=[{"arn": arn}], aws={"region": REGION, "endpoint_url": moto,
                                                    "secrets_refresh": 3600}, backend={"database": ""})
    wait_for(proxy, "secret_fetched")
    set_server_password(db_server, user, "refetch-new-18")
    boto3.client("secretsmanager", region_name=REGION, endpoint_url=moto).put_secret_value(
        SecretId=arn, SecretString=json.dumps({"username": user, "password": "refetch-new-18"}))
    time.sleep(5.5)  # pyproxy fetches on demand at most every 5 s (pyproxy.secrets.MIN_REFRESH_GAP)
    # pyproxy still takes the old password (fetched before); the server refuses the login made
    # with it, which the client sees at its first statement (PyMySQL's connect runs one).
    with pytest.raises(pymysql.MySQLError) as info:
        stale = proxy.connect(user=user, password="refetch-old-17", database=None)
        with stale.cursor() as cur:
            cur.execute("SELECT 1")
    assert info.value.args[0] == 1045
    wait_for(proxy, "backend_login_refused")
    deadline = time.monotonic() + 20
    while proxy.log_text().count("secret_fetched") < 2:
        assert time.monotonic() < deadline, "the secret was not fetched again"
        time.sleep(0.1)
    assert current_user(proxy, user, "refetch-new-18").split("@")[0] == user


def test_client_leaving_while_its_user_is_looked_up(make_proxy: Any, db_server: servers.DbServer,
                                                    lookup_account: str) -> None:
    """The lookup is held up (mysql.user locked on the server): clients of a looked-up user
    wait for it without holding up anyone else (a [[users]] client logs in meanwhile), one
    that gives up and leaves is forgotten cleanly, and once the lock goes the others log in."""
    looked, looked_pw = servers.own_name("looked_slow"), "looked-slow-pw"
    db_server.create_user(looked, looked_pw)
    proxy = make_proxy(auth={"lookup": True, "lookup_user": LOOKUP_USER, "lookup_password": LOOKUP_PASSWORD},
                       backend={"database": ""})
    table = "global_priv" if db_server.flavor == "mariadb" else "user"
    locker = db_server.connect()
    try:
        with locker.cursor() as cur:
            cur.execute(f"LOCK TABLES mysql.{table} WRITE")
        with pytest.raises(pymysql.MySQLError) as info:  # gives up before the lookup answers
            proxy.connect(user=looked, password=looked_pw, database=None, connect_timeout=1, read_timeout=1)
        assert info.value.args[0] == 2013, info.value  # a timeout, not a refusal
        assert current_user(proxy, servers.APP_USER, servers.APP_PASSWORD).split("@")[0] == servers.APP_USER
    finally:
        with locker.cursor() as cur:
            cur.execute("UNLOCK TABLES")
        locker.close()
    assert current_user(proxy, looked, looked_pw).split("@")[0] == looked
    proxy.stop()
    assert "Traceback" not in proxy.log_text()
    assert "user_looked_up" in proxy.log_text()


def test_hash_user_with_other_drivers(make_proxy: Any, db_server: servers.DbServer) -> None:
    """mysql-connector answering with caching_sha2_password is switched to
    mysql_native_password for a hash-only user; mysqlclient's COM_CHANGE_USER to that user
    runs the same check and its statements run as that user."""
    from integration.test_auth_plugins import connector_connect, mysqldb_connect, scalar  # noqa: PLC0415

    hashed, hashed_pw = servers.own_name("hashed_drv"), "hashed-drv-pw"
    db_server.create_user(hashed, hashed_pw)
    proxy = make_proxy(users=[{"name": hashed, "password_hash": auth.stored_hash(hashed_pw.encode()),
                               "create": False}])
    conn = connector_connect(proxy, user=hashed, password=hashed_pw, database=None,
                             auth_plugin=auth.CACHING_SHA2)
    try:
        assert scalar(conn, "SELECT CURRENT_USER()").split("@")[0] == hashed
    finally:
        conn.close()
    conn = mysqldb_connect(proxy)
    try:
        conn.change_user(hashed, hashed_pw, servers.APP_DATABASE)
        assert scalar(conn, "SELECT CURRENT_USER()").split("@")[0] == hashed
        with pytest.raises(Exception) as info:
            conn.change_user(hashed, "not-it", servers.APP_DATABASE)
        assert info.value.args[0] == 1045
    finally:
        conn.close()

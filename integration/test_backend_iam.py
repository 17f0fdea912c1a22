"""[backend] iam against a real MariaDB that takes RDS IAM tokens, checking them as RDS does.

RDS checks a token itself: a SigV4-presigned ``rds-db:connect`` request for that user and that
server, sent as mysql_clear_password over TLS.  A throwaway mariadbd does the same here through
PAM: its accounts are ``IDENTIFIED VIA pam`` (auth_pam_v1, with pam_use_cleartext_plugin so the
server asks for mysql_clear_password) and ``REQUIRE SSL``, and the PAM service runs a checker
(pam_exec) that accepts only a token for that user at this server's address, signed with the
test's AWS key (its signature recomputed) and not expired.  So no password at all logs in:
every one of pyproxy's logins (the start-up check, the target probes, pooled connections) must
carry a good token.  pyproxy makes them with its production code: boto3 with ``[aws]`` pointing
at a moto server on loopback (signing is local; moto sees no request).

The PAM service file has to go in /etc/pam.d (removed afterwards), so the test needs root,
auth_pam_v1 in the server's plugin directory and pam_exec; it is skipped otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pymysql
import pytest

from integration import servers
from integration.drivers import bounded  # noqa: F401  (fixture)
from integration.moto import ENVIRONMENT, REGION, moto_server
from integration.test_admin import admin_rows, admin_table
from pyproxy.sandbox import ProgramNotFound, SandboxError, SandboxServer, find_program

trustme = pytest.importorskip("trustme")

pytestmark = pytest.mark.usefixtures("bounded")

SERVICE = servers.own_name("pyproxy_iam")
PAM_DIRECTORY = Path("/etc/pam.d")
PAM_MODULES = (Path("/lib/x86_64-linux-gnu/security"), Path("/usr/lib/x86_64-linux-gnu/security"),
               Path("/lib/security"), Path("/usr/lib64/security"), Path("/usr/lib/security"))

#: What the PAM service runs for each login: the token arrives on stdin (pam_exec
#: expose_authtok), the account in PAM_USER; exit 0 accepts it.  Each verdict is appended to
#: the log, with the first characters of the token's signature (never the token).
CHECKER = '''#!{python}
import calendar, hashlib, hmac, json, os, sys, time
from urllib.parse import parse_qsl, quote

SETTINGS = json.load(open({settings!r}))


def verdict(token, user):
    hostport, sep, query = token.partition("/?")
    if not sep or hostport != SETTINGS["where"]:
        return "wrong_host"
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        return "malformed"
    params = dict(pairs)
    if params.get("Action") != "connect" or params.get("DBUser") != user:
        return "not_a_connect_for_this_user"
    if params.get("X-Amz-Algorithm") != "AWS4-HMAC-SHA256" or params.get("X-Amz-SignedHeaders") != "host":
        return "not_sigv4"
    scope = params.get("X-Amz-Credential", "").split("/")
    if len(scope) != 5 or [scope[0], *scope[2:]] != [SETTINGS["key"], SETTINGS["region"], "rds-db",
                                                       "aws4_request"]:
        return "wrong_credential_scope"
    stamp = params.get("X-Amz-Date", "")
    signed_at = calendar.timegm(time.strptime(stamp, "%Y%m%dT%H%M%SZ"))
    expires = min(int(params.get("X-Amz-Expires", "0")), 900)
    if stamp[:8] != scope[1] or not signed_at - 300 <= time.time() <= signed_at + expires:
        return "expired"
    canonical_query = "&".join(f"{{quote(k, safe='-_.~')}}={{quote(v, safe='-_.~')}}"
                               for k, v in sorted(pairs) if k != "X-Amz-Signature")
    request = "\\n".join(("GET", "/", canonical_query, f"host:{{hostport}}", "", "host",
                          hashlib.sha256(b"").hexdigest()))
    to_sign = "\\n".join(("AWS4-HMAC-SHA256", stamp, "/".join(scope[1:]),
                          hashlib.sha256(request.encode()).hexdigest()))
    key = ("AWS4" + SETTINGS["secret"]).encode()
    for part in scope[1:]:
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return "accepted" if hmac.compare_digest(signature, params.get("X-Amz-Signature", "")) else "bad_signature"


token = sys.stdin.buffer.read().rstrip(b"\\x00").decode("utf-8", "replace")
user = os.environ.get("PAM_USER", "")
try:
    said = verdict(token, user)
except Exception as exc:  # a token that does not even parse
    said = "malformed:" + type(exc).__name__
with open(SETTINGS["log"], "a") as log:
    log.write(json.dumps({{"user": user, "verdict": said, "signature": token[-64:][:8]}}) + "\\n")
sys.exit(0 if said == "accepted" else 1)
'''


@pytest.fixture(scope="module")
def moto() -> Iterator[str]:
    with moto_server() as url:
        yield url


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("iam-pki")
    ca = trustme.CA()
    files = {name: directory / f"{name}.pem" for name in ("ca", "cert", "key")}
    ca.cert_pem.write_to_path(str(files["ca"]))
    issued = ca.issue_cert("127.0.0.1", "localhost")
    files["cert"].write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    files["key"].write_bytes(issued.private_key_pem.bytes())
    return files


class IamServer(SandboxServer):
    """A sandbox whose accounts log in with an RDS token only (PAM's checker), over TLS only."""

    def create_user(self, name: str, password: str, plugin: str = "mysql_native_password",
                    database: str | None = None) -> None:
        """``password`` is ignored: only a token the checker accepts logs ``name`` in."""
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                for host in ("%", "localhost"):
                    cur.execute("DROP USER IF EXISTS %s@%s", (name, host))
                    cur.execute("CREATE USER %s@%s IDENTIFIED VIA pam USING %s REQUIRE SSL", (name, host, SERVICE))
                    cur.execute("GRANT ALL PRIVILEGES ON *.* TO %s@%s", (name, host))
                if database:
                    cur.execute(f"CREATE DATABASE IF NOT EXISTS `{database}`")
        finally:
            conn.close()


def pam_exec() -> Path | None:
    return next((directory / "pam_exec.so" for directory in PAM_MODULES if (directory / "pam_exec.so").exists()),
                None)


def plugin_dir() -> Path | None:
    """The server's plugin directory, as mariadbd says it."""
    try:
        output = subprocess.run([find_program("mariadbd"), "--no-defaults", "--verbose", "--help"],
                                capture_output=True, text=True, timeout=30, check=False).stdout
    except (ProgramNotFound, OSError, subprocess.TimeoutExpired):
        return None
    for line in output.splitlines():
        if line.startswith("plugin-dir "):
            return Path(line.split(None, 1)[1].strip())
    return None


@pytest.fixture(scope="module")
def checker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The PAM service and its checker; yields its settings (``log`` is where verdicts go)."""
    if os.geteuid() != 0 or not os.access(PAM_DIRECTORY, os.W_OK):
        pytest.skip("the PAM service file goes in /etc/pam.d, which needs root")
    module = pam_exec()
    plugins = plugin_dir()
    if module is None or plugins is None or not (plugins / "auth_pam_v1.so").exists():
        pytest.skip("needs pam_exec.so and MariaDB's auth_pam_v1.so")
    directory = tmp_path_factory.mktemp("iam-checker")
    settings = {"key": ENVIRONMENT["AWS_ACCESS_KEY_ID"], "secret": ENVIRONMENT["AWS_SECRET_ACCESS_KEY"],
                "region": REGION, "log": str(directory / "verdicts.log"), "where": ""}
    script = directory / "check_rds_token.py"
    script.write_text(CHECKER.format(python=sys.executable, settings=str(directory / "settings.json")))
    script.chmod(0o755)
    service = PAM_DIRECTORY / SERVICE
    service.write_text(f"auth required {module} expose_authtok quiet {script}\n"
                       f"account required {module.parent / 'pam_permit.so'}\n")
    settings["path"] = str(directory / "settings.json")
    try:
        yield settings
    finally:
        service.unlink(missing_ok=True)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def iam_server(pki: dict[str, Path], checker: dict[str, Any]) -> Iterator[IamServer]:
    server = IamServer(ssl_cert=str(pki["cert"]), ssl_key=str(pki["key"]), ssl_ca=str(pki["ca"]),
                       extra_args=("--plugin-load-add=auth_pam_v1.so", "--pam-use-cleartext-plugin=ON"))
    try:
        server.start()
    except ProgramNotFound as exc:
        pytest.skip(str(exc))
    except SandboxError as exc:
        pytest.fail(f"mariadbd did not start with PAM and TLS: {exc}")
    checker["where"] = f"{server.host}:{server.port}"
    Path(checker["path"]).write_text(json.dumps(checker))
    try:
        yield server
    finally:
        server.cleanup()


def verdicts(checker: dict[str, Any]) -> list[dict[str, str]]:
    path = Path(checker["log"])
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def server_login(server: IamServer, pki: dict[str, Path], user: str, password: str) -> int:
    """Logs in to the server directly (TLS, mysql_clear_password when asked); 0 or the error code."""
    context = ssl.create_default_context(cafile=str(pki["ca"]))
    try:
        pymysql.connect(host=server.host, port=server.port, user=user, password=password, ssl=context,
                        connect_timeout=10).close()
        return 0
    except pymysql.err.OperationalError as exc:
        return int(exc.args[0])


def token(server: IamServer, user: str, secret: str = ENVIRONMENT["AWS_SECRET_ACCESS_KEY"]) -> str:
    session = boto3.session.Session(aws_access_key_id=ENVIRONMENT["AWS_ACCESS_KEY_ID"],
                                    aws_secret_access_key=secret, region_name=REGION)
    return str(session.client("rds").generate_db_auth_token(DBHostname=server.host, Port=server.port,
                                                             DBUsername=user))


def test_the_server_takes_good_tokens_only(iam_server: IamServer, pki: dict[str, Path], moto: str,
                                           checker: dict[str, Any]) -> None:
    """The stand-in for RDS, checked on its own: a token for the account logs in; a password,
    a token signed with another secret and another user's token do not."""
    user = servers.own_name("iam_direct")
    iam_server.create_user(user, "")
    assert server_login(iam_server, pki, user, token(iam_server, user)) == 0
    assert server_login(iam_server, pki, user, "a-password") == 1045
    assert server_login(iam_server, pki, user, token(iam_server, user, secret="guessed")) == 1045
    assert server_login(iam_server, pki, user, token(iam_server, "someone_else")) == 1045
    assert [entry["verdict"] for entry in verdicts(checker) if entry["user"] == user] == [
        "accepted", "wrong_host", "bad_signature", "not_a_connect_for_this_user"]


def test_probes_log_in_with_tokens_and_clients_are_served(iam_server: IamServer, pki: dict[str, Path],
                                                          moto: str, checker: dict[str, Any],
                                                          tmp_path: Path) -> None:
    """pyproxy with [backend] iam, its only user known by no server password and no [health]
    user: the start-up check, the probes and the pooled connections all log in with tokens.
    The admin console reports the target up, probed again and again with no failure, and a
    client's statement runs on the server as that user, over TLS.  No token reaches the log."""
    proxy = servers.start_proxy(
        iam_server, tmp_path / "p", backend={"iam": True, "tls": "verify", "ca": str(pki["ca"])},
        aws={"region": REGION, "endpoint_url": moto}, health={"user": "", "password": ""},
        admin=admin_table())
    try:
        deadline = time.monotonic() + 30
        while True:
            [target] = admin_rows(proxy, "SHOW TARGETS")
            if target["state"] == "up" and target["probes"] >= 3 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert (target["state"], target["failed_probes"], target["last_error"]) == ("up", 0, None), target
        assert target["probes"] >= 3, target
        conn = proxy.connect()
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT CURRENT_USER(), VARIABLE_VALUE FROM information_schema.SESSION_STATUS "
                            "WHERE VARIABLE_NAME = 'Ssl_version'")
                user, tls = cur.fetchone()
        finally:
            conn.close()
        assert user.split("@")[0] == servers.APP_USER and tls.startswith("TLSv1.")
    finally:
        proxy.stop()
    said = [entry["verdict"] for entry in verdicts(checker) if entry["user"] == servers.APP_USER]
    # The start-up check, the probe's monitor connection, the pooled one: each a token login.
    assert len(said) >= 3 and set(said) == {"accepted"}, said
    log = proxy.log_text()
    assert "X-Amz-Signature" not in log and "Action=connect" not in log
    assert not proxy.events("probe_failed") and not proxy.events("probe_inconclusive")

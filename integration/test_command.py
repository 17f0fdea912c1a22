"""The ``pyproxy`` command run as a user runs it: ``pyproxy run`` serves clients,
``pyproxy check-config`` judges files, both as separate processes.

They run as ``python -m pyproxy`` from this checkout (the ``pyproxy`` console script
of a fresh install is tried in ``test_install.py``).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from integration import servers
from integration.drivers import bounded  # noqa: F401  (fixture)
from integration.test_cli import config_with_accounts, launcher_env, write_config
from pyproxy.sandbox import dump_toml, free_port

pytestmark = pytest.mark.usefixtures("bounded")

EXIT_TIMEOUT = 30
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def pyproxy_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "pyproxy", *args]


def run_to_exit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(pyproxy_command(*args), capture_output=True, text=True, timeout=EXIT_TIMEOUT,
                          env=launcher_env(), stdin=subprocess.DEVNULL, check=False)


def test_run_serves_a_query_and_stops_on_sigterm(db_server: servers.DbServer, tmp_path: Path) -> None:
    """``pyproxy run --config FILE`` with a plugin option: it listens, serves a query,
    logs JSON lines (twistd's included), and exits cleanly on SIGTERM."""
    port = free_port()
    config = config_with_accounts(db_server, port)
    path = write_config(tmp_path, config)
    log_path = tmp_path / "pyproxy.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(pyproxy_command("run", "--config", str(path), "--max-connections", "3"),
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   env=launcher_env(), cwd=tmp_path)
    proxy = servers.ProxyProcess("127.0.0.1", port, path, log_path, process, config)
    try:
        proxy.wait_listening()
        client = proxy.connect()
        with client.cursor() as cur:
            cur.execute("SELECT DATABASE(), 6 * 7")
            assert cur.fetchone() == (servers.APP_DATABASE, 42)
        client.close()
        process.send_signal(signal.SIGTERM)
        # twistd ends by re-raising the signal that stopped it, once the drain is over.
        try:
            assert process.wait(timeout=EXIT_TIMEOUT) in (0, -signal.SIGTERM)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {EXIT_TIMEOUT} s after SIGTERM; its log ends with:\n"
                        + "\n".join(log_path.read_text().splitlines()[-20:]))
    finally:
        proxy.stop()
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    assert any(line.get("logger") == "twisted" and "starting up" in line["event"] for line in lines)
    stats = [line for line in lines if line["event"] == "pool_stats"]
    assert stats and stats[-1]["max_size"] == 3, stats  # the option reached the plugin
    assert not (tmp_path / "twistd.pid").exists()  # no pid file in the foreground


def test_run_refuses_a_bad_start_in_one_line(db_server: servers.DbServer, tmp_path: Path) -> None:
    """As ``twistd pyproxy`` does: a refused login stops it before it listens, with one
    line on stderr and no traceback."""
    config = config_with_accounts(db_server)
    config["users"] = [{"name": servers.APP_USER, "password": "not-the-password"}]
    result = run_to_exit("run", "--config", str(write_config(tmp_path, config)))
    assert result.returncode != 0
    assert "Traceback" not in result.stdout + result.stderr
    (line,) = result.stderr.splitlines()
    assert "refused the login" in line and "not-the-password" not in line


def test_check_config_good_and_bad_files(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(dump_toml({"metrics": {"listen": "tcp:9180"}, "users": [{"name": "app", "password": "s3cret"}]}))
    result = run_to_exit("check-config", str(good))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{good}: ok; ") and "metrics tcp:9180" in result.stdout

    bad = tmp_path / "bad.toml"
    bad.write_text('[proxy]\nlisten = "tcp:nope"\n\n[pool]\nmax_connections = -1\n\n'
                   '[[users]]\nname = "app"\npassword = ["s3cret"]\n')
    result = run_to_exit("check-config", str(bad))
    assert result.returncode == 1 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert [line.split(": ")[1].split(":")[0] for line in lines] == [
        "proxy.listen", "pool.max_connections", "users[0].password"], lines
    assert "s3cret" not in result.stderr and "Traceback" not in result.stderr

    result = run_to_exit("check-config", str(EXAMPLES / "aurora.toml"))
    assert result.returncode == 0, result.stderr


def test_version() -> None:
    result = run_to_exit("version")
    assert result.returncode == 0 and result.stdout.startswith("pyproxy "), result

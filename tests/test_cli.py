"""pyproxy.cli: the ``pyproxy`` command's check-config, version and run option parsing."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

import pyproxy
from pyproxy import cli, logs, tap

GOOD = ('[proxy]\nlisten = "tcp:6033"\nread_only_listen = "tcp:6034"\n\n'
        '[[backend.targets]]\nhost = "db-1"\n\n[[backend.targets]]\nhost = "db-2"\nrole = "reader"\n\n'
        '[[users]]\nname = "app"\npassword = "pw"\n')


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No PYPROXY_* setting of the test run's own leaks in; logging is reset after."""
    for name in list(os.environ):
        if name.startswith("PYPROXY_"):
            monkeypatch.delenv(name)
    yield
    structlog.reset_defaults()


def test_check_config_good(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Exit 0 and one line saying what the file will do."""
    path = tmp_path / "pyproxy.toml"
    path.write_text(GOOD)
    assert cli.main(["check-config", str(path)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out == (f"{path}: ok; listen tcp:6033; read-only listen tcp:6034; metrics off; 1 user; "
                   "backend db-1:3306 (writer), db-2:3306 (reader)\n")


def test_check_config_names_the_other_sources(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Users from Secrets Manager and the server's lookup need no [[users]]; the line says so."""
    path = tmp_path / "pyproxy.toml"
    path.write_text('[auth]\nlookup = true\nlookup_user = "lk"\n\n[[secrets]]\n'
                    'arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:app-AbCdEf"\n')
    assert cli.main(["check-config", str(path)]) == 0
    out, _ = capsys.readouterr()
    assert "; 0 users; 1 secret; users looked up on the server; " in out


def test_check_config_tls(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """TLS shows in the summary; a [tls] file that cannot be used is a problem, like a bad key."""
    path = tmp_path / "pyproxy.toml"
    path.write_text(GOOD + f'\n[tls]\ncert = "{tmp_path}/none.pem"\nkey = "{tmp_path}/none.key"\nrequire = true\n')
    assert cli.main(["check-config", str(path)]) == 1
    out, err = capsys.readouterr()
    assert err == f"{path}: cannot read [tls] cert {tmp_path}/none.pem: No such file or directory\n"
    trustme = pytest.importorskip("trustme")
    issued = trustme.CA().issue_cert("localhost")
    issued.cert_chain_pems[0].write_to_path(str(tmp_path / "none.pem"))
    issued.private_key_pem.write_to_path(str(tmp_path / "none.key"))
    assert cli.main(["check-config", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out.endswith("; client TLS required\n"), out


def test_check_config_bad(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Exit 1 and one line per problem on stderr, each naming the file and the key; the
    environment counts, as it would for ``pyproxy run``; no password is shown."""
    path = tmp_path / "pyproxy.toml"
    path.write_text(GOOD.replace('password = "pw"', "password = 918273645")
                    + '\n[pool]\nmax_connections = 0\nidle_timeout = "long"\n')
    monkeypatch.setenv("PYPROXY_PROXY_LISTN", "tcp:1")
    assert cli.main(["check-config", str(path)]) == 1
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert out == ""
    assert len(lines) == 4, lines
    assert all(line.startswith(f"{path}: ") for line in lines)
    for needle in ("PYPROXY_PROXY_LISTN", "pool.max_connections", "pool.idle_timeout", "users[0].password"):
        assert sum(needle in line for line in lines) == 1, (needle, lines)
    assert "918273645" not in err


def test_check_config_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["check-config"]) == 2
    assert "usage: pyproxy check-config FILE" in capsys.readouterr().err


def test_version_and_unknown_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["version"]) == 0
    assert capsys.readouterr().out == f"pyproxy {pyproxy.__version__}\n"
    assert cli.main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'serve'" in err and "check-config FILE" in err
    assert cli.main([]) == 2


def test_hash_password_and_token_subcommands(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """``pyproxy hash-password`` and ``pyproxy token`` are the same commands as
    ``pyproxy-hash-password`` and ``pyproxy-token``, under the ``pyproxy`` name."""
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("mypass\n"))
    assert cli.main(["hash-password"]) == 0
    assert capsys.readouterr().out == "*6C8989366EAF75BB670AD8EA7A7FC1176A95CEF4\n"
    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    assert cli.main(["hash-password"]) == 1
    assert capsys.readouterr().err.startswith("pyproxy hash-password: an empty password")
    with pytest.raises(SystemExit) as exited:
        cli.main(["token", "--help"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith("usage: pyproxy token")


def test_run_takes_the_plugin_options(tmp_path: Path) -> None:
    """``pyproxy run`` parses exactly twistd's ``-n pyproxy`` options: the plugin's own,
    loaded config included, in the foreground, with pyproxy's log observer."""
    path = tmp_path / "pyproxy.toml"
    path.write_text(GOOD)
    options = cli.RunOptions()
    options.parseOptions(["--nodaemon", "--pidfile=", "run", "--config", str(path),
                          "--no-backend-check", "--max-connections", "7"])
    assert options.subCommand == "run"
    assert isinstance(options.subOptions, tap.Options)
    assert options.subOptions["parsed"].pool.max_connections == 7
    assert options["nodaemon"] and options["pidfile"] == ""
    assert options["logger"] is logs.twisted_observer
    assert options.loadedPlugins["run"].tapname == "pyproxy"


def test_run_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown option is one line (and a hint), exit status 2, nothing started."""
    assert cli.main(["run", "--no-such-option"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[0] == "pyproxy run: option --no-such-option not recognized"


"""The ``pyproxy`` command: ``run``, ``check-config``, ``version``, ``hash-password`` and ``token``.

``pyproxy run`` is ``twistd --nodaemon --pidfile= pyproxy`` under a name
people would guess: the same options (pyproxy.tap.Options), the same start-up
checks, in the foreground as systemd and containers expect.  It takes the
plugin from pyproxy itself rather than from Twisted's plugin scan, so it works
wherever pyproxy imports, and never tries to write Twisted's plugin cache on a
read-only system.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from twisted.application.service import ServiceMaker
from twisted.python import usage
from twisted.scripts.twistd import ServerOptions, runApp

import pyproxy
from pyproxy import config as configuration

USAGE = """\
Usage: pyproxy COMMAND [ARGS]

  run [--config FILE] [OPTIONS]  run pyproxy in the foreground (pyproxy run --help)
  check-config FILE              check a configuration file and the PYPROXY_* variables;
                                 one line per problem, exit status 1 if there is any
  version                        print pyproxy's version
  hash-password                  print the stored form of a password read from standard input
                                 (or asked for twice on a terminal), for [[users]] password_hash
  token [--audience A] ...       print an IAM token to log in with (pyproxy token --help)
"""

# The same plugin twistd finds in twisted/plugins/pyproxy_plugin.py.
MAKER = ServiceMaker("pyproxy", "pyproxy.tap", "A MySQL/MariaDB connection-pooling proxy", "pyproxy")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pyproxy`` console script and ``python -m pyproxy``."""
    args = list(sys.argv[1:] if argv is None else argv)
    command, rest = (args[0], args[1:]) if args else ("", [])
    if command == "run":
        return run(rest)
    if command == "check-config":
        return check_config(rest)
    if command == "hash-password":
        from pyproxy import scripts
        return scripts.hash_password(rest, prog="pyproxy hash-password")
    if command == "token":
        from pyproxy import scripts
        return scripts.token(rest, prog="pyproxy token")
    if command in ("version", "--version"):
        print(f"pyproxy {pyproxy.__version__}")
        return 0
    if command in ("help", "-h", "--help"):
        sys.stdout.write(USAGE)
        return 0
    sys.stderr.write(USAGE + (f"pyproxy: unknown command {command!r}\n" if command else ""))
    return 2


def check_config(args: Sequence[str]) -> int:
    """Loads ``FILE`` as ``pyproxy run`` would (environment variables included) and
    prints every problem, one per line on stderr, or a one-line summary."""
    if len(args) != 1 or args[0].startswith("-"):
        sys.stderr.write("usage: pyproxy check-config FILE\n")
        return 2
    path = args[0]
    config, problems = configuration.check(path, os.environ)
    if config is not None:
        from pyproxy.tls import BackendTLSCache, ServerTLS, TLSConfigError  # noqa: PLC0415

        try:
            if config.tls.cert:
                ServerTLS.load(config.tls.cert, config.tls.key)
            BackendTLSCache(config.backend.tls, config.backend.ca, config.backend.server_name)
        except TLSConfigError as exc:
            config, problems = None, [str(exc)]
    if config is None:
        for problem in problems:
            sys.stderr.write(f"{path}: {problem}\n")
        return 1
    print(f"{path}: ok; {summary(config)}")
    return 0


def summary(config: configuration.Config) -> str:
    """What a configuration will do, in one line."""
    servers = ", ".join(f"{server.name} ({server.role})" for server in config.backend.servers())
    users = len(config.users)
    parts = [f"listen {config.proxy.listen}"]
    if config.proxy.read_only_listen:
        parts.append(f"read-only listen {config.proxy.read_only_listen}")
    parts.append(f"metrics {config.metrics.listen or 'off'}")
    parts.append(f"{users} user{'s' if users != 1 else ''}")
    if config.secrets:
        parts.append(f"{len(config.secrets)} secret{'s' if len(config.secrets) != 1 else ''}")
    if config.auth.lookup:
        parts.append("users looked up on the server")
    parts.append(f"backend {servers}")
    if config.tls.cert:
        parts.append(f"client TLS {'required' if config.tls.require else 'offered'}")
    if config.backend.tls != "off":
        parts.append(f"backend TLS {config.backend.tls}")
    return "; ".join(parts)


class RunOptions(ServerOptions):
    """twistd's own options, with pyproxy as its only command, named ``run``."""

    @property
    def subCommands(self) -> Iterator[tuple[str, None, Any, str]]:
        self.loadedPlugins = {"run": MAKER}
        yield ("run", None, MAKER.options, MAKER.description)

    def getSynopsis(self) -> str:
        return "Usage: pyproxy"


def run(args: Sequence[str]) -> int:
    """``pyproxy run [pyproxy options]``: twistd in the foreground, without a pid file.

    Returns only on a usage error; otherwise twistd runs until pyproxy stops
    and exits the process itself (re-raising the signal that stopped it).
    """
    options = RunOptions()
    try:
        options.parseOptions(["--nodaemon", "--pidfile=", "run", *args])
    except usage.UsageError as exc:
        sys.stderr.write(f"pyproxy run: {exc}\n(pyproxy run --help lists the options)\n")
        return 2
    runApp(options)
    return 0

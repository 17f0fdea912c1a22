"""SQLAlchemy's dialect compliance suite, run against a server directly and through pyproxy.

SQLAlchemy's source distribution (not its wheel) holds the suite every third-party dialect
runs, ``test/dialect/test_suite.py`` (one line: ``from sqlalchemy.testing.suite import *``),
with the pytest set-up it needs: ``test/conftest.py`` loads the ``sqla_testing`` plugin and
puts the sdist's own ``lib/`` first on ``sys.path``, ``setup.cfg`` has ``[sqla_testing]`` and
``pyproject.toml`` the ``[tool.pytest.ini_options]``.  This module

* fetches that sdist for the installed SQLAlchemy version, once, with
  ``pip download --no-deps --no-binary sqlalchemy sqlalchemy==VERSION`` into a cache folder
  (``$XDG_CACHE_HOME/pyproxy-tests`` or ``~/.cache/pyproxy-tests``); ``PYPROXY_SQLA_SDIST``
  may name a tarball to use instead.  ``--no-binary sqlalchemy`` rather than ``:all:``: the
  latter would also build the sdist's build dependencies (Cython) from source, minutes of work;
* unpacks what the suite needs (``lib/``, ``test/``, ``setup.cfg``, ``pyproject.toml``);
* prepares the server the way the sdist's README.unittests.rst describes: a user, the test
  database and the ``test_schema`` / ``test_schema_2`` schemas, dropped and created afresh so
  every run starts from the same state;
* runs, in the unpacked folder and with a timeout::

      python -m pytest test/dialect/test_suite.py --dburi URL -p no:cacheprovider \\
          --junitxml FILE --maxfail=0

  (``--maxfail=0`` lifts the sdist's ``--maxfail=250``);
* reads the junit XML and compares two runs test by test.

From the command line, to look into a difference by hand: it starts the server the integration
tests would use (a sandbox mariadbd unless ``PYPROXY_TEST_MYSQL`` / ``PYPROXY_TEST_DOCKER`` say
otherwise) and a pyproxy in front of it, runs the suite both ways and prints the comparison.
Arguments after ``--`` go to the suite's pytest (``-k``, ``-x``, a test id instead of the file)::

    python -m integration.sqlalchemy_suite.suite [--driver mysqldb] [--only proxy] [-- -x -k Foo]
"""

from __future__ import annotations

import argparse
import collections
import importlib.metadata
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from integration.servers import DbServer

#: The file the suite runs, relative to the unpacked sdist.
SUITE_FILE = "test/dialect/test_suite.py"
#: Schemas the suite uses besides its database (``test_schema_2`` only on some backends).
EXTRA_SCHEMAS = ("test_schema", "test_schema_2")
#: Top-level entries of the sdist the suite needs; docs and examples are left packed.
_NEEDED = ("lib", "test", "setup.cfg", "pyproject.toml")
#: How bad a status is, when one test has several junit entries.
_RANK = {"passed": 0, "skipped": 1, "xfailed": 1, "failed": 2, "error": 3}


class SdistUnavailable(Exception):
    """The SQLAlchemy source distribution cannot be had here (no network, no cached copy)."""


class SuiteError(RuntimeError):
    """A suite run did not produce results: it timed out or pytest itself failed."""


@attrs.frozen
class Outcome:
    """One test's result: ``status`` is passed, failed, error, skipped or xfailed."""

    status: str
    text: str = ""


@attrs.frozen
class SuiteRun:
    """One run of the suite: where its output went and what each test did."""

    name: str
    dburi: str
    returncode: int
    seconds: float
    junit_path: Path
    log_path: Path
    results: dict[str, Outcome]

    def counts(self) -> collections.Counter[str]:
        return collections.Counter(outcome.status for outcome in self.results.values())

    def summary(self) -> str:
        counts = self.counts()
        parts = [f"{counts[s]} {s}" for s in ("passed", "failed", "error", "skipped", "xfailed")
                 if counts[s]]
        return f"{', '.join(parts) or 'no tests'} in {self.seconds:.1f}s"

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"<cannot read {self.log_path}: {exc}>"
        return "\n".join(text.splitlines()[-lines:])


# --- getting the suite -----------------------------------------------------------------------


def installed_version() -> str:
    """Return the installed SQLAlchemy's version."""
    return importlib.metadata.version("sqlalchemy")


def cache_dir() -> Path:
    """Return the folder cached downloads live in."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pyproxy-tests"


def fetch_sdist(version: str, cache: Path | None = None, timeout: float = 300.0) -> Path:
    """Return the path of SQLAlchemy ``version``'s sdist, downloading it on first use.

    Raises:
        SdistUnavailable: pip could not download it; the message ends with pip's output.
    """
    override = os.environ.get("PYPROXY_SQLA_SDIST")
    if override:
        if not Path(override).is_file():
            raise SdistUnavailable(f"PYPROXY_SQLA_SDIST={override} is not a file")
        return Path(override)
    cache = cache or cache_dir()
    target = cache / f"sqlalchemy-{version}.tar.gz"
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="download-", dir=cache) as download:
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "sqlalchemy",
            "--disable-pip-version-check", "--no-input", "--timeout", "20", "--retries", "1",
            "--dest", download, f"sqlalchemy=={version}",
        ]
        try:
            proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise SdistUnavailable(f"pip download of sqlalchemy=={version} took over "
                                   f"{timeout:.0f}s") from exc
        found = sorted(Path(download).glob("*.tar.gz"))
        if proc.returncode != 0 or len(found) != 1:
            output = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
            raise SdistUnavailable(
                f"pip download of the sqlalchemy=={version} sdist failed "
                f"(exit {proc.returncode}, files {[p.name for p in found]}):\n{output}"
            )
        # Renaming inside one folder is atomic: a concurrent run sees all or nothing.
        found[0].replace(target)
    return target


def unpack(sdist: Path, destination: Path) -> Path:
    """Unpack the parts of ``sdist`` the suite needs into ``destination``; return the root.

    Raises:
        SdistUnavailable: the archive is not a SQLAlchemy sdist with the dialect suite.
    """
    destination.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(sdist) as archive:
            members = [m for m in archive.getmembers()
                       if len(parts := m.name.split("/")) > 1 and parts[1] in _NEEDED]
            roots = {m.name.split("/")[0] for m in members}
            if len(roots) != 1:
                raise SdistUnavailable(f"{sdist}: expected one top-level folder, got {roots}")
            if hasattr(tarfile, "data_filter"):
                archive.extractall(destination, members=members, filter="data")
            else:  # Python < 3.11.4
                archive.extractall(destination, members=members)  # noqa: S202
    except (tarfile.TarError, OSError) as exc:
        raise SdistUnavailable(f"cannot unpack {sdist}: {exc}") from exc
    root = destination / roots.pop()
    if not (root / SUITE_FILE).is_file():
        raise SdistUnavailable(f"{sdist} has no {SUITE_FILE}")
    return root


def obtain_source(destination: Path, version: str | None = None) -> Path:
    """Fetch (or reuse) the sdist and unpack it under ``destination``; return its root."""
    return unpack(fetch_sdist(version or installed_version()), destination)


# --- the database ----------------------------------------------------------------------------


def quote_identifier(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def reset_schemas(server: DbServer, database: str, create: bool = True) -> None:
    """Drop and (unless ``create`` is false) create ``database`` and the suite's extra schemas.

    ``server.connect()`` is an autocommit admin connection. Only these three names are
    touched; on an existing server (``PYPROXY_TEST_MYSQL``) each must be the test run's own
    (a ``test_schema`` of someone else's stops the run with ForeignObject, and is not lost),
    and is dropped when the run ends.
    """
    # Imported here: the module's library half needs nothing from the project.
    from integration import servers  # noqa: PLC0415

    for name in (database, *EXTRA_SCHEMAS):
        servers.claim_database(server, name)
    conn = server.connect()
    try:
        with conn.cursor() as cur:
            for name in (database, *EXTRA_SCHEMAS):
                cur.execute(f"DROP DATABASE IF EXISTS {quote_identifier(name)}")
                if not create:
                    continue
                # utf8mb4's default collation, as the connection's (charset=utf8mb4) is:
                # utf8mb4_unicode_ci here (README.unittests.rst's server setting) would fail
                # CastTypeDecoratorTest with "Illegal mix of collations", both ways.
                cur.execute(f"CREATE DATABASE {quote_identifier(name)} CHARACTER SET utf8mb4")
    finally:
        conn.close()


def dburi(host: str, port: int, user: str, password: str, database: str,
          driver: str = "pymysql") -> str:
    """Return the ``--dburi`` for ``mysql+DRIVER`` at ``host:port``, as README.unittests.rst's."""
    quote = urllib.parse.quote
    return (f"mysql+{driver}://{quote(user, safe='')}:{quote(password, safe='')}"
            f"@{host}:{port}/{quote(database, safe='')}?charset=utf8mb4")


# --- running it ------------------------------------------------------------------------------


def suite_env() -> dict[str, str]:
    """The environment for the suite's pytest: ours, minus settings of the pytest running us."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def run_suite(source: Path, uri: str, out_dir: Path, name: str, timeout: float,
              pytest_args: Sequence[str] = ()) -> SuiteRun:
    """Run the dialect suite in ``source`` against ``uri``; output goes to ``out_dir``.

    ``pytest_args`` are appended (``-x``, ``-k EXPR``); those naming tests of the suite file
    (``test/dialect/test_suite.py::Class::test``) replace the file as what is run.

    Raises:
        SuiteError: the run exceeded ``timeout`` seconds (it is killed) or wrote no junit file.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    junit = out_dir / f"{name}.xml"
    log = out_dir / f"{name}.log"
    targets = [a for a in pytest_args if a.startswith(SUITE_FILE + "::")]
    options = [a for a in pytest_args if a not in targets]
    cmd = [
        sys.executable, "-m", "pytest", *(targets or [SUITE_FILE]), "--dburi", uri,
        "-p", "no:cacheprovider", f"--junitxml={junit}", "--maxfail=0", *options,
    ]
    started = time.monotonic()
    with open(log, "wb") as log_file:
        log_file.write(("$ " + " ".join(cmd) + "\n").encode())
        log_file.flush()
        proc = subprocess.Popen(cmd, cwd=source, env=suite_env(), stdin=subprocess.DEVNULL,
                                stdout=log_file, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            returncode = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            run = SuiteRun(name, uri, -9, time.monotonic() - started, junit, log, {})
            raise SuiteError(f"the {name} run did not finish within {timeout:.0f}s; "
                             f"tail of {log}:\n{run.log_tail()}") from None
    seconds = time.monotonic() - started
    run = SuiteRun(name, uri, returncode, seconds, junit, log, {})
    if not junit.is_file():
        raise SuiteError(f"the {name} run (exit {returncode}) wrote no {junit}; "
                         f"tail of {log}:\n{run.log_tail()}")
    return attrs.evolve(run, results=parse_junit(junit))


# --- results ---------------------------------------------------------------------------------


def parse_junit(path: Path) -> dict[str, Outcome]:
    """Return each test's outcome from a pytest junit XML file, keyed ``classname::name``.

    A test with several entries or several result elements (a failed call and an error in
    teardown) gets the worst status and all the texts.
    """
    results: dict[str, Outcome] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        test_id = f"{case.get('classname', '')}::{case.get('name', '')}"
        status, texts = "passed", []
        for child in case:
            if child.tag in ("failure", "error"):
                child_status = "failed" if child.tag == "failure" else "error"
            elif child.tag == "skipped":
                child_status = "xfailed" if child.get("type") == "pytest.xfail" else "skipped"
            else:
                continue
            message = child.get("message") or ""
            body = (child.text or "").strip()
            texts.append("\n".join(filter(None, [message, body])))
            if _RANK[child_status] > _RANK[status]:
                status = child_status
        previous = results.get(test_id)
        if previous is not None:
            if _RANK[previous.status] > _RANK[status]:
                status = previous.status
            texts.insert(0, previous.text)
        results[test_id] = Outcome(status, "\n".join(filter(None, texts)))
    return results


def excerpt(text: str, head: int = 3, tail: int = 8, width: int = 300) -> list[str]:
    """Return the first and last lines of a failure text (the message, then the exception)."""
    lines = [line[:width] for line in text.strip().splitlines()]
    if len(lines) > head + tail + 1:
        lines = [*lines[:head], f"... ({len(lines) - head - tail} lines)", *lines[-tail:]]
    return lines


def compare(first: SuiteRun, second: SuiteRun, detailed: int = 25, listed: int = 200) -> list[str]:
    """Return a report line per test whose status differs between the runs (empty: none).

    The first ``detailed`` differences come with excerpts of their failure or skip texts.
    """
    lines: list[str] = []
    ids = sorted(first.results.keys() | second.results.keys())
    shown = 0
    missing = Outcome("not run")
    for test_id in ids:
        a = first.results.get(test_id, missing)
        b = second.results.get(test_id, missing)
        if a.status == b.status:
            continue
        shown += 1
        if shown > listed:
            continue
        lines.append(f"{test_id}: {first.name} {a.status}, {second.name} {b.status}")
        if shown <= detailed:
            for run, outcome in ((first, a), (second, b)):
                if outcome.text:
                    lines.append(f"    [{run.name}]")
                    lines.extend(f"      {line}" for line in excerpt(outcome.text))
    if shown > listed:
        lines.append(f"... and {shown - listed} more")
    return lines


def mismatch_report(first: SuiteRun, second: SuiteRun, differences: Iterable[str],
                    what: str = "the dialect suite") -> str:
    """Return the assertion message for runs of ``what`` whose results differ."""
    differences = list(differences)
    count = sum(1 for line in differences if not line.startswith((" ", "...")))
    return "\n".join([
        f"{what}'s results differ for {count} test(s)",
        f"  {first.name}: {first.summary()} (exit {first.returncode}, log {first.log_path})",
        f"  {second.name}: {second.summary()} (exit {second.returncode}, log {second.log_path})",
        *differences,
    ])


def proxy_log_summary(log_text: str) -> str:
    """Return a one-line digest of a pyproxy JSON log: sessions, pins by reason, errors."""
    events: collections.Counter[str] = collections.Counter()
    pins: collections.Counter[str] = collections.Counter()
    for line in log_text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict):
            continue
        events[str(record.get("event"))] += 1
        if record.get("event") == "session_pinned":
            pins[str(record.get("reason"))] += 1
    problems = sum(n for e, n in events.items() if re.search(r"error|fail|broken|timeout", e))
    pin_text = "; ".join(f"{n}x {reason}" for reason, n in pins.most_common())
    return (f"{events['client_connected']} client sessions, {events['backend_opened']} backend "
            f"connections opened, {sum(pins.values())} pinned ({pin_text or '-'}), "
            f"{problems} error-like events")


# --- command line ----------------------------------------------------------------------------

#: Base names of the suite's account and database; each run adds its own suffix
#: (integration.servers.own_name), as for every account the tests create.
USER = "sqla_suite"
PASSWORD = "sqla_suite_pw"
DATABASE = "sqla_test"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m integration.sqlalchemy_suite.suite",
        description="Run SQLAlchemy's dialect suite directly and through pyproxy; compare.",
    )
    parser.add_argument("--driver", default="pymysql", help="mysql+DRIVER (default pymysql)")
    parser.add_argument("--only", choices=("direct", "proxy", "both"), default="both")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per run")
    parser.add_argument("--pool-size", type=int, default=20)
    parser.add_argument("pytest_args", nargs="*", help="after --: more args for the suite")
    args = parser.parse_args(argv)

    # Imported here: the module's library half needs nothing from the project.
    from integration import servers  # noqa: PLC0415

    user, database = servers.own_name(USER), servers.own_name(DATABASE)
    workdir = Path(tempfile.mkdtemp(prefix="pyproxy-sqla-suite-"))
    source = obtain_source(workdir / "src")
    server = servers.open_db_server(os.environ)
    proxy = None
    runs: list[SuiteRun] = []
    try:
        server.create_user(user, PASSWORD)
        if args.only in ("direct", "both"):
            reset_schemas(server, database)
            uri = dburi(server.host, server.port, user, PASSWORD, database, args.driver)
            runs.append(run_suite(source, uri, workdir, "direct", args.timeout, args.pytest_args))
            print(f"direct: {runs[-1].summary()}  (log {runs[-1].log_path})")
        if args.only in ("proxy", "both"):
            proxy = servers.start_proxy(
                server, workdir / "proxy",
                users=[{"name": user, "password": PASSWORD, "create": False}],
                pool={"max_connections": args.pool_size, "borrow_timeout": 60},
            )
            reset_schemas(server, database)
            uri = dburi(proxy.host, proxy.port, user, PASSWORD, database, args.driver)
            runs.append(run_suite(source, uri, workdir, "via-pyproxy", args.timeout,
                                  args.pytest_args))
            print(f"via pyproxy: {runs[-1].summary()}  (log {runs[-1].log_path})")
            print(f"pyproxy: {proxy_log_summary(proxy.log_text())}  (log {proxy.log_path})")
        for run in runs:
            for test_id, outcome in sorted(run.results.items()):
                if outcome.status in ("failed", "error"):
                    print(f"[{run.name}] {outcome.status.upper()} {test_id}")
                    print("\n".join(f"    {line}" for line in excerpt(outcome.text)))
        if len(runs) == 2:
            differences = compare(*runs)
            print(mismatch_report(*runs, differences) if differences
                  else "identical results directly and through pyproxy")
            return 1 if differences else 0
        return 0
    finally:
        if proxy is not None:
            proxy.stop()
        server.cleanup()
        print(f"outputs kept in {workdir}")


if __name__ == "__main__":
    sys.exit(main())

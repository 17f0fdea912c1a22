"""The Lambda examples (``examples/lambda/``), their handlers run here against a test pyproxy.

No AWS: each handler is called as the Lambda runtime would call it, twice in one
execution environment (the second call reuses the first one's connection), then
again after pyproxy closed that connection as idle (``idle_client_timeout``), as
happens to a frozen environment, which must connect again by itself.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from integration import drivers, servers
from integration.drivers import bounded  # noqa: F401  (fixture)
from pyproxy.sandbox import child_env

pytestmark = pytest.mark.usefixtures("bounded")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "lambda"
NODE_MODULES = Path(__file__).resolve().parent / "node" / "node_modules"

#: Runs the Node handler as the runtime would: one call, then another when told
#: (a line on stdin), each result a JSON line.
NODE_RUNNER = """
import { createInterface } from 'node:readline';
import { handler } from './index.mjs';
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
for (const name of ['pyproxy', 'again', 'after idle']) {
  console.log(JSON.stringify(await handler({ name })));
  if (name !== 'after idle' && (await lines.next()).done) break;
}
process.exit(0);
"""


@pytest.fixture
def proxy(make_proxy: Any) -> servers.ProxyProcess:
    return make_proxy(proxy={"idle_client_timeout": 1})


def lambda_env(proxy: servers.ProxyProcess) -> dict[str, str]:
    return {"DB_HOST": proxy.host, "DB_PORT": str(proxy.port), "DB_USER": servers.APP_USER,
            "DB_PASSWORD": servers.APP_PASSWORD, "DB_NAME": servers.APP_DATABASE}


def closed_idle(proxy: servers.ProxyProcess) -> int:
    return sum(event.get("reason") == "idle_client_timeout"
               for event in drivers.log_events(proxy, "client_closed"))


def wait_for_idle_close(proxy: servers.ProxyProcess, before: int) -> None:
    """Until pyproxy has closed one more client as idle (or the test's bound)."""
    while closed_idle(proxy) == before:
        time.sleep(0.1)


def check(results: list[dict[str, Any]], proxy: servers.ProxyProcess) -> None:
    """Three 200 answers from the database through pyproxy, on two client connections
    (the first reused, then one after pyproxy closed it)."""
    assert [result["statusCode"] for result in results] == [200, 200, 200], results
    bodies = [json.loads(result["body"]) for result in results]
    assert [body["greeting"] for body in bodies] == ["hello, pyproxy", "hello, again", "hello, after idle"]
    assert {body["database"] for body in bodies} == {servers.APP_DATABASE}
    assert len(drivers.log_events(proxy, "client_connected")) == 2, drivers.log_tail(proxy)


@pytest.fixture
def python_example(monkeypatch: pytest.MonkeyPatch, proxy: servers.ProxyProcess) -> Iterator[Any]:
    """The Python example, imported as the runtime imports it, with its environment."""
    for name, value in lambda_env(proxy).items():
        monkeypatch.setenv(name, value)
    spec = importlib.util.spec_from_file_location("lambda_function", EXAMPLES / "python" / "lambda_function.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    if module._connection is not None and module._connection.open:
        module._connection.close()


def test_python_handler(python_example: Any, proxy: servers.ProxyProcess) -> None:
    before = closed_idle(proxy)
    results = [python_example.lambda_handler({"name": "pyproxy"}, None),
               python_example.lambda_handler({"name": "again"}, None)]
    wait_for_idle_close(proxy, before)
    results.append(python_example.lambda_handler({"name": "after idle"}, None))
    check(results, proxy)


def test_node_handler(proxy: servers.ProxyProcess, tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None or not (NODE_MODULES / "mysql2").is_dir():
        pytest.skip("needs node and mysql2 in integration/node/node_modules (scripts/install-deps)")
    # The example as it would be bundled: index.mjs beside node_modules.
    shutil.copy(EXAMPLES / "node" / "index.mjs", tmp_path / "index.mjs")
    shutil.copy(EXAMPLES / "node" / "package.json", tmp_path / "package.json")
    (tmp_path / "node_modules").symlink_to(NODE_MODULES)
    (tmp_path / "runner.mjs").write_text(NODE_RUNNER)
    runner = subprocess.Popen([node, "runner.mjs"], cwd=tmp_path, env={**child_env(), **lambda_env(proxy)},
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    before = closed_idle(proxy)
    try:
        assert runner.stdin is not None and runner.stdout is not None
        results = [json.loads(runner.stdout.readline() or "null")]
        runner.stdin.write("next\n")
        runner.stdin.flush()
        results.append(json.loads(runner.stdout.readline() or "null"))
        wait_for_idle_close(proxy, before)
        runner.stdin.write("next\n")
        runner.stdin.flush()
        results.append(json.loads(runner.stdout.readline() or "null"))
        assert runner.wait(timeout=30) == 0, runner.stderr.read() if runner.stderr else ""
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()
    assert None not in results, runner.stderr.read() if runner.stderr else ""
    check(results, proxy)

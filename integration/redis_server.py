"""A throwaway Redis (Debian's ``redis-server``) for pyproxy instances sharing one backend budget
(``[budget] redis``): the integration tests and the benchmark's ``balanced`` workload both start
one, so it lives here rather than in either."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from pyproxy.sandbox import free_port, tail, terminate

REDIS_SERVER = shutil.which("redis-server") or (
    "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None)
MISSING = "redis-server is not installed (scripts/install-deps installs Debian's redis-server)"


class RedisServer:
    """A throwaway redis-server on a free 127.0.0.1 port, keeping nothing on disk but its log.

    Needs the redis package (``pip install 'pyproxy[redis]'``), imported only here, to see
    that the server answers.
    """

    def __init__(self, directory: Path) -> None:
        if REDIS_SERVER is None:
            raise RuntimeError(MISSING)
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        """Start (or start again, on the same port) and wait until it answers a PING."""
        import redis  # noqa: PLC0415 - callers without the package get an ImportError here

        assert REDIS_SERVER is not None
        self.directory.mkdir(parents=True, exist_ok=True)
        log_path = self.directory / "redis.log"
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(self.directory)],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        client = self.client()
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return
            except redis.exceptions.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"redis-server did not start on 127.0.0.1:{self.port}; "
                                       f"tail of {log_path}:\n{tail(log_path)}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            terminate(self.process)

    def client(self) -> Any:
        import redis  # noqa: PLC0415

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

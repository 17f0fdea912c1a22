"""A real HAProxy (Debian's ``haproxy``) in front of pyproxy instances, for the tests that need
a load balancer speaking the PROXY protocol."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from integration import servers
from pyproxy.sandbox import free_port, terminate

HAPROXY = shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists()
                                      else None)
MISSING = "haproxy is not installed (scripts/install-deps installs Debian's haproxy)"


class HAProxy:
    """One haproxy process: a TCP frontend per name, each balancing round-robin over its
    pyproxy ports with ``option`` (``send-proxy`` for PROXY v1, ``send-proxy-v2``)."""

    def __init__(self, directory: Path, frontends: dict[str, tuple[list[int], str]]) -> None:
        if HAPROXY is None:
            raise RuntimeError(MISSING)
        self.ports = {name: free_port() for name in frontends}
        lines = ["global", "    maxconn 4000", "defaults", "    mode tcp", "    balance roundrobin",
                 "    timeout connect 5s", "    timeout client 60s", "    timeout server 60s"]
        for name, (backends, option) in frontends.items():
            lines += [f"frontend front_{name}", f"    bind 127.0.0.1:{self.ports[name]}",
                      f"    default_backend back_{name}", f"backend back_{name}"]
            lines += [f"    server pyproxy{i} 127.0.0.1:{port} {option}"
                      for i, port in enumerate(backends)]
        config = directory / "haproxy.cfg"
        directory.mkdir(parents=True, exist_ok=True)
        config.write_text("\n".join(lines) + "\n")
        self.log = directory / "haproxy.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen([HAPROXY, "-f", str(config), "-db"], stdout=log,
                                            stderr=log, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not all(servers._accepts_connections("127.0.0.1", p) for p in self.ports.values()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"haproxy did not start: {self.log.read_text()}")
            time.sleep(0.05)

    def stop(self) -> None:
        terminate(self.process, 5)

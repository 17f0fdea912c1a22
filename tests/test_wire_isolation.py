"""pyproxy.wire stays a codec with no I/O: importing it must not import Twisted."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pyproxy.wire

WIRE_DIR = Path(pyproxy.wire.__file__).parent

# Run in a fresh interpreter: this test process has long since imported Twisted.
PROBE = """
import importlib, json, pkgutil, sys
import pyproxy.wire
names = sorted("pyproxy.wire." + m.name for m in pkgutil.iter_modules(pyproxy.wire.__path__))
for name in names:
    importlib.import_module(name)
print(json.dumps({
    "imported": names,
    "twisted": sorted(m for m in sys.modules if m == "twisted" or m.startswith("twisted.")),
}))
"""


def test_wire_imports_nothing_from_twisted() -> None:
    """Importing every module of pyproxy/wire/ in a fresh interpreter leaves twisted out of sys.modules."""
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60,
                            cwd=WIRE_DIR.parent.parent, check=True)
    report = json.loads(result.stdout)
    expected = sorted("pyproxy.wire." + m.name for m in pkgutil.iter_modules([str(WIRE_DIR)]))
    assert report["imported"] == expected
    assert len(expected) >= 7  # buffer, commands, constants, framing, handshake, responses, response_tracker
    assert report["twisted"] == []

"""pyproxy's optional compiled build: the per-query code compiled ahead of time with mypyc.

Everything else about the package is in setup.cfg.  Without PYPROXY_MYPYC=1
this file adds nothing and the install is pure Python.  With it, the modules
below are compiled to C extensions (their .py files are still installed, and
an extension is imported in preference to its source), which takes mypy,
a C compiler and Python's headers at build time and nothing more at run
time.  ``packaging/build_backend.py`` asks for mypy in an isolated build.
"""

from __future__ import annotations

import os

from setuptools import Extension, setup

#: The modules compiled, all into one shared library, so that calls between
#: them and their classes' attributes stay native.  That is where mypyc gains:
#: code that mostly reads attributes of interpreted objects (Twisted's
#: protocols, attrs classes) runs slower compiled than in CPython's own
#: specialising interpreter.  So the codec, and the per-query code around
#: CommandPhase, which works on it and on ResponseTracker (prepared.py too:
#: interpreted, its every read of CommandPhase's attributes went through a
#: descriptor of the native class); not the protocols (Twisted subclasses),
#: nor pool.py, whose unit tests stand in duck-typed connections that the
#: compiled code's type checks would refuse.
COMPILED = (
    "pyproxy/wire/buffer.py",
    "pyproxy/wire/commands.py",
    "pyproxy/wire/framing.py",
    "pyproxy/wire/responses.py",
    "pyproxy/wire/response_tracker.py",
    "pyproxy/command_phase.py",
    "pyproxy/flow.py",
    "pyproxy/hygiene.py",
    "pyproxy/idle.py",
    "pyproxy/release.py",
    "pyproxy/session.py",
    "pyproxy/sqltext.py",
    "pyproxy/prepared.py",
    "pyproxy/pool.py",
    "pyproxy/frontend.py",
)


def compiled_extensions() -> list[Extension]:
    """The mypyc extensions when PYPROXY_MYPYC=1, else none."""
    if os.environ.get("PYPROXY_MYPYC", "") != "1":
        return []
    try:
        from mypyc.build import mypycify
    except ImportError as exc:
        raise SystemExit("PYPROXY_MYPYC=1 needs mypy installed (pip install mypy), or a build "
                         "with build isolation, which installs it") from exc
    return mypycify(list(COMPILED), group_name="pyproxy_mypyc")


setup(ext_modules=compiled_extensions())

"""pyproxy's build backend: setuptools', asking for mypy only for the compiled build.

``pip install .`` builds in an isolated environment that holds only what the
backend asks for.  The compiled build (PYPROXY_MYPYC=1, see setup.py) needs
mypy there; the pure-Python build must not download it.  A static
``[build-system] requires`` cannot say "only then", so these two hooks add it
to what setuptools asks for; every other hook is setuptools' own.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F401,F403 - the other hooks, unchanged

#: The mypy (mypyc) that the compiled build was written and tested against.
MYPY = "mypy >= 2.4, < 3"
VARIABLE = "PYPROXY_MYPYC"

ConfigSettings = dict[str, str | list[str]] | None


@contextmanager
def _pure_python() -> Iterator[None]:
    """setuptools runs setup.py to learn its own requirements, before mypy can be
    installed: that run must not compile."""
    saved = os.environ.pop(VARIABLE, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[VARIABLE] = saved


def _requires(hook: Callable[[ConfigSettings], list[str]], config_settings: ConfigSettings) -> list[str]:
    compiled = os.environ.get(VARIABLE, "") == "1"
    with _pure_python():
        requires = hook(config_settings)
    return requires + [MYPY] if compiled else requires


def get_requires_for_build_wheel(config_settings: ConfigSettings = None) -> list[str]:
    return _requires(_setuptools.get_requires_for_build_wheel, config_settings)


def get_requires_for_build_editable(config_settings: ConfigSettings = None) -> list[str]:
    return _requires(_setuptools.get_requires_for_build_editable, config_settings)

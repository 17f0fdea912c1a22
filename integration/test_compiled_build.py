"""The optional compiled build: ``PYPROXY_MYPYC=1 pip install .`` (setup.py).

mypyc compiles the per-query modules to C extensions and checks their annotated
types at run time, where Python never did: a ``bytes`` parameter refuses a
bytearray, an ``int`` attribute refuses None.  So the compiled build is built
here into a throwaway venv, offline, and the whole unit test suite runs
against it, after a check that the extensions, not the sources beside them,
are what was imported.  The pure-Python install is test_install.py's (and
the suite's own run).
"""

from __future__ import annotations

import ast
import importlib.util
import shutil
import sysconfig
from pathlib import Path

import pytest

from integration.test_install import ROOT, copy_checkout, pip_install, run, throwaway_venv

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("mypyc") is None,
                       reason="the compiled build needs mypy (mypyc), a test extra: pip install 'mypy>=2.4'"),
    pytest.mark.skipif(shutil.which((sysconfig.get_config_var("CC") or "cc").split()[0]) is None,
                       reason="the compiled build needs the C compiler Python was built with"),
]


def compiled_modules() -> list[str]:
    """The modules setup.py compiles (its COMPILED), as dotted names."""
    for node in ast.parse((ROOT / "setup.py").read_text()).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "COMPILED"
                                                for t in node.targets):
            return [path.removesuffix(".py").replace("/", ".") for path in ast.literal_eval(node.value)]
    raise AssertionError("setup.py has no COMPILED")


#: Run in the venv: the compiled modules must be extensions inside it, and then the
#: unit tests run in the same interpreter, so with the very modules checked.
RUN_TESTS = """
import importlib, sys
import pytest
venv = sys.argv[1]
for name in sys.argv[2].split(","):
    module = importlib.import_module(name)
    assert module.__file__.startswith(venv) and module.__file__.endswith(".so"), module.__file__
    print(module.__file__)
sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", *sys.argv[3:]]))
"""


def test_compiled_build_passes_the_unit_tests(tmp_path: Path) -> None:
    """PYPROXY_MYPYC=1 gives extension modules for every module setup.py lists, and
    the unit tests pass against them (about 25 s to build, 20-40 s to test)."""
    source = tmp_path / "pyproxy-src"
    copy_checkout(source)
    python = throwaway_venv(tmp_path)
    pip_install(python, source, PYPROXY_MYPYC="1")

    modules = compiled_modules()
    assert "pyproxy.wire.response_tracker" in modules, modules
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = run([str(python), "-c", RUN_TESTS, str(python.parent.parent), ",".join(modules),
                  str(ROOT / "tests")], elsewhere, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert output.count(".so\n") == len(modules), output
    assert " passed" in output, output

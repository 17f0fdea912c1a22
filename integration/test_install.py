"""README's launch command after README's install: ``twistd pyproxy`` found from any directory.

Twisted finds ``twistd`` plugins only in ``twisted/plugins`` directories on ``sys.path``, so
how pyproxy is installed decides whether ``twistd pyproxy`` exists at all.  These tests run the
real ``twistd`` console script from a directory outside the clone, with no PYTHONPATH (the
sandbox and the other integration tests set one, which would hide the problem):

* against the installed pyproxy (what ``scripts/install-deps`` made: an editable install), as
  README's "Running it for real" has a user do;
* against this checkout installed into throwaway virtual environments, once regular and once
  editable, so both install modes are proven whatever this machine has installed.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: What an install needs from the checkout (setup.cfg's packages and metadata; setup.py and
#: the build backend for the optional compiled build).
INSTALLED_FROM = ("setup.cfg", "setup.py", "pyproject.toml", "packaging/build_backend.py", "README.rst",
                  "pyproxy", "twisted")
TIMEOUT = 120


def twistd_script() -> Path:
    """The ``twistd`` console script Twisted's install made for this interpreter."""
    for directory in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(directory, "twistd")
        if candidate.is_file():
            return candidate
    found = shutil.which("twistd")
    assert found, "no twistd console script: is Twisted installed (scripts/install-deps)?"
    return Path(found)


def outside_env() -> dict[str, str]:
    """The environment of a user's shell: no PYTHONPATH, no PYPROXY_* settings."""
    return {k: v for k, v in os.environ.items()
            if k != "PYTHONPATH" and not k.startswith("PYPROXY_")}


def run(cmd: list[str], cwd: Path, timeout: float = TIMEOUT, **env: str) -> subprocess.CompletedProcess[str]:
    """``cmd`` in a user's environment (``outside_env``), plus ``env``."""
    return subprocess.run(cmd, cwd=cwd, env={**outside_env(), **env}, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, check=False)


def copy_checkout(source: Path) -> None:
    """Copies to ``source`` what an install reads from this checkout, and no build's
    leftovers: an extension built in place (``setup.py build_ext --inplace``) would be
    imported from an editable install in place of the source."""
    for name in INSTALLED_FROM:
        item = ROOT / name
        target = source / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if item.is_dir():
            shutil.copytree(item, target, ignore=shutil.ignore_patterns("__pycache__", "dropin.cache", "*.so"))
        else:
            shutil.copy2(item, target)


def throwaway_venv(tmp_path: Path) -> Path:
    """A venv that sees the machine's packages (Twisted and the rest); returns its python."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages",
                    str(venv)], check=True, timeout=TIMEOUT)
    return venv / "bin" / "python"


def pip_install(python: Path, source: Path, *options: str, **env: str) -> None:
    """``pip install`` of ``source`` with no index and no build isolation: the machine's
    setuptools and wheel (and mypy) build it offline."""
    installed = run([str(python), "-m", "pip", "install", "--no-index", "--no-deps", "--no-build-isolation",
                     "--disable-pip-version-check", "-q", *options, str(source)], source.parent, **env)
    assert installed.returncode == 0, installed.stdout + installed.stderr


def assert_pyproxy_help(result: subprocess.CompletedProcess[str]) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Unknown command" not in output, output
    assert "Usage: twistd [options] pyproxy [options]" in result.stdout, output
    assert "--config=" in result.stdout, output


def test_installed_twistd_knows_pyproxy(tmp_path: Path) -> None:
    """``twistd pyproxy --help`` and ``--version`` from a directory outside the clone."""
    assert not tmp_path.resolve().is_relative_to(ROOT)
    assert_pyproxy_help(run([str(twistd_script()), "pyproxy", "--help"], tmp_path))
    version = run([str(twistd_script()), "pyproxy", "--version"], tmp_path)
    assert version.returncode == 0, version.stdout + version.stderr
    assert version.stdout.strip() == f"pyproxy {importlib.metadata.version('pyproxy')}", version.stdout


#: Run in the throwaway environment: where the plugin module and pyproxy were imported from.
WHERE_FROM = """
import sys
from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
import twisted.plugins
makers = [p for p in getPlugins(IServiceMaker, twisted.plugins) if p.tapname == "pyproxy"]
assert makers, "getPlugins() found no pyproxy"
import pyproxy
import pyproxy.wire.response_tracker
print(sys.modules["twisted.plugins.pyproxy_plugin"].__file__)
print(pyproxy.__file__)
print(pyproxy.wire.response_tracker.__file__)
"""


@pytest.mark.parametrize("editable", [False, True], ids=["regular", "editable"])
def test_fresh_install_gives_twistd_pyproxy(tmp_path: Path, editable: bool) -> None:
    """``pip install [-e] .`` of this checkout, then ``twistd pyproxy --help`` and ``pyproxy
    version`` from elsewhere.

    The venv sees the machine's packages (Twisted and the rest), but pyproxy and its plugin
    must come from this install: the copy of the checkout, or the venv's own site-packages.
    """
    source = tmp_path / "pyproxy-src"
    copy_checkout(source)
    python = throwaway_venv(tmp_path)
    venv = python.parent.parent
    pip_install(python, source, *(["-e"] if editable else []))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    assert_pyproxy_help(run([str(python), str(twistd_script()), "pyproxy", "--help"], elsewhere))

    # The console script the install made: the pyproxy command.
    command = run([str(venv / "bin" / "pyproxy"), "version"], elsewhere)
    assert command.returncode == 0, command.stdout + command.stderr
    assert command.stdout.strip() == f"pyproxy {importlib.metadata.version('pyproxy')}", command.stdout

    found = run([str(python), "-c", WHERE_FROM], elsewhere)
    assert found.returncode == 0, found.stdout + found.stderr
    plugin_file, package_file, codec_file = map(Path, found.stdout.split())
    home = source if editable else venv
    assert plugin_file.is_relative_to(home), (plugin_file, home)
    assert package_file.is_relative_to(home), (package_file, home)
    # Without PYPROXY_MYPYC=1 the install is pure Python (test_compiled_build.py has the other).
    assert codec_file == package_file.parent / "wire" / "response_tracker.py", codec_file

    # The console scripts setup.cfg names are installed with it.
    hashed = subprocess.run([str(venv / "bin" / "pyproxy-hash-password")], input="mypass\n",
                            capture_output=True, text=True, cwd=elsewhere, env=outside_env(),
                            timeout=TIMEOUT)
    assert hashed.stdout == "*6C8989366EAF75BB670AD8EA7A7FC1176A95CEF4\n", hashed.stderr
    helped = subprocess.run([str(venv / "bin" / "pyproxy-token"), "--help"], capture_output=True,
                            text=True, cwd=elsewhere, env=outside_env(), timeout=TIMEOUT)
    assert helped.returncode == 0 and "usage: pyproxy-token" in helped.stdout, helped.stderr

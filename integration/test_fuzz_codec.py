"""The codec fuzzer (fuzz/fuzz_codec.py) run for a bounded time, and its harness checked.

It lives with the integration tests for its running time (CI_SECONDS of fuzzing), not for any
server.  A longer run is ``python3 fuzz/fuzz_codec.py -max_total_time=3600 fuzz/corpus``.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

atheris = pytest.importorskip("atheris")

FUZZ = Path(__file__).resolve().parent.parent / "fuzz"
CI_SECONDS = 20


def harness() -> Any:
    spec = importlib.util.spec_from_file_location("fuzz_codec", FUZZ / "fuzz_codec.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fuzzer_runs_without_a_crash(tmp_path: Path) -> None:
    """CI_SECONDS of coverage-guided fuzzing from the seed corpus and every input that once
    crashed (fuzz/regressions): libFuzzer exits 0 and says how many inputs it tried."""
    corpus = tmp_path / "corpus"
    result = subprocess.run(
        [sys.executable, str(FUZZ / "fuzz_codec.py"), "--seed-corpus", str(corpus),
         f"-max_total_time={CI_SECONDS}", f"-artifact_prefix={tmp_path}/", "-print_final_stats=1",
         str(corpus), str(FUZZ / "regressions")],
        cwd=tmp_path, capture_output=True, text=True, timeout=CI_SECONDS + 120, check=False)
    output = result.stdout + result.stderr
    crashes = sorted(path.name for path in tmp_path.glob("crash-*"))
    assert result.returncode == 0 and not crashes, (crashes, output[-4000:])
    runs = re.search(r"Done (\d+) runs in (\d+) second", output)
    assert runs is not None, output[-2000:]
    print(f"fuzz_codec: {runs[1]} inputs in {runs[2]} s")
    assert int(runs[1]) > 1000


def test_crash_inputs_pass_now() -> None:
    """Each input that once crashed the codec is handled now (replayed in-process)."""
    fuzz = harness()
    inputs = sorted((FUZZ / "regressions").iterdir())
    assert inputs
    for path in inputs:
        fuzz.test_one_input(path.read_bytes())


def test_harness_lets_other_exceptions_through(monkeypatch: pytest.MonkeyPatch) -> None:
    """The harness swallows only what the codec may raise: any other exception is a crash."""
    fuzz = harness()

    def broken(*args: object) -> None:
        raise KeyError("a bug")

    monkeypatch.setattr(fuzz, "parse_err", broken)
    with pytest.raises(KeyError):
        fuzz.test_one_input(b"\x02\x00\xff\x01\x02")

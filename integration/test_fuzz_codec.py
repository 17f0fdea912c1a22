"""The fuzzers (fuzz/fuzz_codec.py, fuzz/fuzz_login.py) run for a bounded time, and their
harnesses checked.

It lives with the integration tests for its running time (CI_SECONDS of fuzzing per fuzzer),
not for any server.  A longer run is ``python3 fuzz/fuzz_codec.py -max_total_time=3600
fuzz/corpus`` (or fuzz_login.py with fuzz/corpus-login).
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
REGRESSIONS = FUZZ / "regressions"
# Both fuzzers together take about 30 s of CI.
CI_SECONDS = 15
FUZZERS = ("codec", "login")


def harness(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"fuzz_{name}", FUZZ / f"fuzz_{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", FUZZERS)
def test_fuzzer_runs_without_a_crash(name: str, tmp_path: Path) -> None:
    """CI_SECONDS of coverage-guided fuzzing from the seed corpus and every input that once
    crashed this target (fuzz/regressions/NAME): libFuzzer exits 0 and says how many inputs
    it tried."""
    corpus = tmp_path / "corpus"
    result = subprocess.run(
        [sys.executable, str(FUZZ / f"fuzz_{name}.py"), "--seed-corpus", str(corpus),
         f"-max_total_time={CI_SECONDS}", f"-artifact_prefix={tmp_path}/", "-print_final_stats=1",
         str(corpus), str(REGRESSIONS / name)],
        cwd=tmp_path, capture_output=True, text=True, timeout=CI_SECONDS + 120, check=False)
    output = result.stdout + result.stderr
    crashes = sorted(path.name for path in tmp_path.glob("crash-*"))
    assert result.returncode == 0 and not crashes, (crashes, output[-4000:])
    runs = re.search(r"Done (\d+) runs in (\d+) second", output)
    assert runs is not None, output[-2000:]
    print(f"fuzz_{name}: {runs[1]} inputs in {runs[2]} s")
    assert int(runs[1]) > 1000


@pytest.mark.parametrize("name", FUZZERS)
def test_crash_inputs_pass_now(name: str) -> None:
    """Each input that once crashed a target is handled now (replayed in-process)."""
    fuzz = harness(name)
    inputs = sorted((REGRESSIONS / name).iterdir())
    assert inputs
    for path in inputs:
        fuzz.test_one_input(path.read_bytes())


def test_codec_harness_lets_other_exceptions_through(monkeypatch: pytest.MonkeyPatch) -> None:
    """The harness swallows only what the codec may raise: any other exception is a crash."""
    fuzz = harness("codec")

    def broken(*args: object) -> None:
        raise KeyError("a bug")

    monkeypatch.setattr(fuzz, "parse_err", broken)
    with pytest.raises(KeyError):
        fuzz.test_one_input(b"\x02\x00\xff\x01\x02")


def test_login_seeds_reach_every_step() -> None:
    """The seed corpus holds what it claims: the good logins of every kind log in (the OK is
    sent), the bad ones get one ERR and a close; none breaks the contract."""
    fuzz = harness("login")
    outcomes: dict[str, tuple[bool, bool]] = {}
    check = fuzz.check_output

    def recorded(client: Any, transport: Any, logged_in: bool) -> None:
        outcomes[name] = (logged_in, bool(transport.disconnecting))
        check(client, transport, logged_in)

    fuzz.check_output = recorded
    for name, data in fuzz.seeds().items():
        fuzz.test_one_input(data)
    logged_in = {name for name, (accepted, _) in outcomes.items() if accepted}
    assert {"native", "native_pieces", "empty_password", "hashed_native", "switch_to_native", "sha2_fast",
            "sha2_full_tls", "clear_tls", "iam_token", "change_user", "quit", "schema"} == logged_in
    assert all(closed for name, (accepted, closed) in outcomes.items() if not accepted)


@pytest.mark.parametrize("fault", ["exception", "exception_in_a_callback", "unhandled_deferred", "error_logged",
                                   "late_write", "partial_packet"])
def test_login_harness_catches_what_a_reactor_would(fault: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception out of the protocol, one in a Deferred's callback, a Deferred that fails
    unseen, an error in pyproxy's log, a write after the close and a torn packet each count
    as a crash."""
    fuzz = harness("login")
    frontend = sys.modules["pyproxy.frontend"]
    refused = frontend.FrontendProtocol.login_refused

    def faulty(self: Any, reason: str) -> None:
        refused(self, reason)
        if fault == "exception_in_a_callback":
            raise KeyError("a bug")
        if fault == "unhandled_deferred":
            fuzz.defer.fail(KeyError("a bug"))
        if fault == "error_logged":
            self.log.error("something_broke")
        if fault == "late_write":
            self.proxy.reactor.callLater(1, self.transport.write, b"\x01\x00\x00\x09\x00")
        if fault == "partial_packet":
            self.transport.write(b"\x05\x00\x00")

    def broken_parser(payload: bytes) -> None:
        raise KeyError("a bug")

    if fault == "exception":
        monkeypatch.setattr(sys.modules["pyproxy.login"], "parse_handshake_response41", broken_parser)
    monkeypatch.setattr(frontend.FrontendProtocol, "login_refused", faulty)
    with pytest.raises(KeyError if fault == "exception" else fuzz.Crash):
        fuzz.test_one_input(fuzz.seeds()["wrong_password"])

"""The sweep's bookkeeping (integration/mariadb_tests/sweep.py): which tests it leaves out
without running them, how it names a failure, and its results file surviving a resume."""

from __future__ import annotations

from pathlib import Path

import pytest

from integration.mariadb_tests import suite, sweep


def _suite(tmp_path: Path, tests: dict[str, str], extra: dict[str, str] | None = None) -> Path:
    """A suite folder with main/NAME.test (+ .result) per entry, and ``extra`` files."""
    (tmp_path / "main").mkdir()
    (tmp_path / "include").mkdir()
    for name, text in tests.items():
        (tmp_path / "main" / f"{name}.test").write_text(text)
        (tmp_path / "main" / f"{name}.result").write_text("")
    for path, text in (extra or {}).items():
        (tmp_path / path).write_text(text)
    return tmp_path


def _exclusion(suite_dir: Path, name: str) -> tuple[str, str] | None:
    return sweep.static_exclusion(suite_dir, f"main.{name}", sweep._SourceScanner(suite_dir))


def test_static_exclusions(tmp_path: Path) -> None:
    suite_dir = _suite(tmp_path, {
        "plain": "--source include/have_innodb.inc\nSELECT 1;\n",
        "restarts": "--source include/restart_mysqld.inc\n",
        "indirect": "--source include/helper.inc\n",
        "shuts": "--shutdown_server\n",
        "opt": "SELECT 1;\n",
        "opt_given": "SELECT 1;\n",
        "repl": "source include/master-slave.inc;\n",
        "big": "--source include/big_test.inc\n",
        "off": "SELECT 1;\n",
    }, {
        "main/disabled.def": "# comment : no\noff   : MDEV-1 unstable\n",
        "include/helper.inc": "--source include/kill_mysqld.inc\n",
        "include/have_innodb.inc": "",
        "main/opt-master.opt": "--lower-case-table-names=1\n",
        "main/opt_given-master.opt": "--default-storage-engine=MyISAM --loose-innodb\n",
    })
    (suite_dir / "main" / "noresult.test").write_text("SELECT 1;\n")
    assert _exclusion(suite_dir, "plain") is None
    assert _exclusion(suite_dir, "restarts") == ("restarts-server",
                                                 "sources include/restart_mysqld.inc")
    assert _exclusion(suite_dir, "indirect")[0] == "restarts-server"
    assert _exclusion(suite_dir, "shuts")[0] == "restarts-server"
    assert _exclusion(suite_dir, "opt") == ("server-options",
                                            "opt-master.opt: --lower-case-table-names=1")
    # Options every sweep server has already do not exclude a test.
    assert _exclusion(suite_dir, "opt_given") is None
    assert _exclusion(suite_dir, "repl")[0] == "replication"
    assert _exclusion(suite_dir, "big")[0] == "big-test"
    assert _exclusion(suite_dir, "noresult")[0] == "missing"
    assert _exclusion(suite_dir, "off") == ("disabled", "disabled.def: MDEV-1 unstable")


@pytest.mark.parametrize(("output", "cls"), [
    ("mysqltest: At line 30: query 'connect  a, localhost, foo' failed: ER_ACCESS_DENIED_ERROR "
     "(1045): Access denied for user 'foo'@'127.0.0.1' (using password: NO)\n",
     "expected-accounts"),
    ("mysqltest: At line 21: query 'KILL CONNECTION_ID()' failed with wrong errno "
     "ER_NOT_SUPPORTED_YET (1235): 'pyproxy supports only KILL [QUERY | CONNECTION] <id>', "
     "instead of ER_CONNECTION_KILLED (1927)...\n", "expected-pooler"),
    ("--- a\n+++ b\n@@ -4,6 +4,6 @@\n SELECT database();\n database()\n-NULL\n+test\n",
     "expected-config"),
    ("--- a\n+++ b\n@@ -1,3 +1,3 @@\n SELECT 1;\n-1\n+2\n", "pyproxy-difference"),
])
def test_proxy_class(output: str, cls: str) -> None:
    assert sweep.proxy_class(output)[0] == cls


def test_direct_class() -> None:
    skipped = suite.Outcome("main.x", "ps", "skip", 0.1, "reason: Need regular protocol\n")
    assert sweep.direct_class(skipped) == ("skips-itself", "reason: Need regular protocol")
    failed = suite.Outcome("main.x", "plain", "fail", 0.1,
                           "mysqltest: At line 3: query 'SET debug_dbug=\"+d,x\"' failed: 1193\n")
    assert sweep.direct_class(failed)[0] == "debug-build"
    diff = suite.Outcome("main.x", "plain", "fail", 0.1, "--- a\n+++ b\n@@\n-1\n+2\n")
    assert sweep.direct_class(diff) == ("fails-directly", "-1")


def test_results_file_round_trip_and_classes(tmp_path: Path) -> None:
    results = tmp_path / "results.tsv"
    rows = {
        ("main.a", "plain"): sweep.Row("main.a", "plain", "pass", "pass", "ok", "", "0.10", "0.20"),
        ("main.a", "ps"): sweep.Row("main.a", "ps", "pass", "fail", "pyproxy-difference", "-1"),
        ("main.b", "plain"): sweep.Row("main.b", "plain"),
    }
    classes_file = tmp_path / "classes.txt"
    classes_file.write_text("# comment\nmain.a ps expected-pooler session counters\n")
    sweep.apply_classes(rows, sweep.read_classes(classes_file))
    sweep.write_results(results, rows, ["main.b", "main.a"], ["Wall time: 12s (finished)"])
    text = results.read_text()
    assert "# Wall time: 12s" in text
    assert "#   main      plain:     2 tests,     1 pass directly,     1 through pyproxy,     1 not run" in text
    back = sweep.read_results(results)
    assert back == rows
    assert back[("main.a", "ps")].cls == "expected-pooler"
    assert back[("main.a", "ps")].note == "session counters"
    assert [line.split("\t")[0] for line in text.splitlines() if line.startswith("main.")] == [
        "main.b", "main.a", "main.a"]
    assert sweep._previous_wall(results) == 12.0


def test_unknown_class_is_refused(tmp_path: Path) -> None:
    classes_file = tmp_path / "classes.txt"
    classes_file.write_text("main.a both not-a-class why\n")
    with pytest.raises(ValueError, match="unknown class"):
        sweep.read_classes(classes_file)

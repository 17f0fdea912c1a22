"""pyproxy.scripts: the small commands, run in-process with their streams replaced."""

from __future__ import annotations

import io

import pytest

from pyproxy import auth, scripts


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_hash_password_reads_the_first_line_of_stdin() -> None:
    """Piped in, the password is the first line without its newline; the stored form is printed."""
    out, err = io.StringIO(), io.StringIO()
    assert scripts.hash_password([], stdin=io.StringIO("mypass\nignored\n"), stdout=out, stderr=err) == 0
    assert out.getvalue() == "*6C8989366EAF75BB670AD8EA7A7FC1176A95CEF4\n"
    assert err.getvalue() == ""


def test_hash_password_asks_twice_on_a_terminal() -> None:
    """On a terminal the password is asked for twice; two different answers print nothing."""
    answers = iter(["s3cret", "s3cret"])
    out = io.StringIO()
    assert scripts.hash_password([], stdin=Terminal(), stdout=out, prompt=lambda _: next(answers)) == 0
    assert out.getvalue() == auth.stored_hash(b"s3cret") + "\n"
    answers = iter(["s3cret", "s3creT"])
    out, err = io.StringIO(), io.StringIO()
    assert scripts.hash_password([], stdin=Terminal(), stdout=out, stderr=err,
                                 prompt=lambda _: next(answers)) == 1
    assert out.getvalue() == "" and "differ" in err.getvalue() and "s3cret" not in err.getvalue()


def test_hash_password_refuses_an_empty_password_and_arguments() -> None:
    """An empty password has no stored form; a password given as an argument is refused."""
    err = io.StringIO()
    assert scripts.hash_password([], stdin=io.StringIO("\n"), stdout=io.StringIO(), stderr=err) == 1
    assert "empty" in err.getvalue()
    with pytest.raises(SystemExit):
        scripts.hash_password(["hunter2"], stdin=io.StringIO(""), stderr=io.StringIO())

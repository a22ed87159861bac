"""The CLI turns the project's user errors into one line (exit 2) and lets a bug keep its traceback."""
import pytest

from jest_ds import cli
from jest_ds.errors import ConfigError, DataError


def _raising(exc):
    def command(args):
        raise exc
    return command


@pytest.mark.parametrize("exc", [ConfigError("config error: x = 1: must be 2"), DataError("shard a.tar: bad\njson"),
                                 FileNotFoundError("data.root = nowhere: no such directory")])
def test_user_errors_are_one_line_exit_2(monkeypatch, capsys, exc):
    monkeypatch.setattr(cli, "_config_list", _raising(exc))
    assert cli.main(["config", "list"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("jest-ds: error:") and "\n" not in err and "Traceback" not in err


@pytest.mark.parametrize("exc", [ValueError("a bug"), KeyError("a bug"), TypeError("a bug")])
def test_a_bug_keeps_its_traceback(monkeypatch, exc):
    """A ValueError/KeyError raised by the code itself is not a user error: it propagates (the console
    script then prints its traceback and exits 1), with or without --debug."""
    monkeypatch.setattr(cli, "_config_list", _raising(exc))
    with pytest.raises(type(exc), match="a bug"):
        cli.main(["config", "list"])
    with pytest.raises(type(exc), match="a bug"):
        cli.main(["config", "list", "--debug"])

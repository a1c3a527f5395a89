"""The pieces behind the CLI's one-line errors, in-process: what is still accepted (so that the
refusals in test_cli_hostile.py do not refuse good input), and the rules themselves."""

from __future__ import annotations

import os

import pytest

from crowbar import config
from crowbar.cli.client import CliError, seg
from crowbar.cli.main import MAX_LINE, one_line
from crowbar.db.session import UnusableDatabase, make_engine


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:3000", "https://crowbar.example", "http://[::1]:3000", "http://crowbar.example/prefix",
    "unix:///run/crowbar/api.sock", "unix:///home/Jane Doe/lab/api.sock", "unix://relative.sock",
    "unix:///tmp/" + os.fsdecode(b"\xff") + ".sock",  # a socket is any file name
])
def test_endpoints_that_are_fine(url):
    config.check_endpoint(url)


@pytest.mark.parametrize("given, expected", [
    ("127.0.0.1:3000", "http://127.0.0.1:3000"), ("http://h:1/", "http://h:1"),
    ("unix:/run/a.sock", "unix:///run/a.sock"),
])
def test_endpoint_spellings(given, expected):
    assert config.endpoint(given) == expected


@pytest.mark.parametrize("url", ["http://[::1", "http://h:99999", "gopher://h", "http://:1", "unix:", "http://h/?q",
                                 "http://a\x1b[2Jb"])
def test_endpoints_refused(url):
    with pytest.raises(ValueError, match="endpoint"):
        config.check_endpoint(url)


def test_segments():
    assert seg("n1.example.com") == "n1.example.com"
    assert seg(42) == "42"
    assert seg("a/b?c#d e") == "a%2Fb%3Fc%23d%20e"
    assert seg(".") == "%2E" and seg("..") == "%2E%2E"
    assert seg("日本") == "%E6%97%A5%E6%9C%AC"
    for bad in ("", os.fsdecode(b"\xff")):
        with pytest.raises(CliError):
            seg(bad)


def test_one_line():
    assert one_line("a\n  b\tc") == "a b c"
    assert one_line("node 'a\x1b[2Jb'") == "node 'a\\x1b[2Jb'"  # no terminal escape reaches the terminal
    long = one_line("x" * 100_000 + " [HTTP 422]")
    assert len(long) <= MAX_LINE and long.endswith("[HTTP 422]")


def test_make_data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("CROWBAR_DATA_DIR", raising=False)
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    assert config.make_data_dir(tmp_path / "d") == tmp_path / "d" and (tmp_path / "d").is_dir()
    assert config.make_data_dir(tmp_path / "d") == tmp_path / "d"  # already there
    with pytest.raises(ValueError, match="does not exist"):
        config.make_data_dir(tmp_path / "p" / "d")
    assert not (tmp_path / "p").exists()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(ValueError, match="home directory"):
        config.make_data_dir()
    (tmp_path / "home").mkdir()
    assert config.make_data_dir() == tmp_path / "home" / ".local" / "share" / "crowbar"
    monkeypatch.setenv("CROWBAR_DATA_DIR", str(tmp_path / "q" / "d"))  # the variable is as explicit as the flag
    with pytest.raises(ValueError, match="parent directory"):
        config.make_data_dir()


def test_make_engine_creates_no_directory(tmp_path):
    with pytest.raises(UnusableDatabase, match="does not exist"):
        make_engine(f"sqlite:///{tmp_path}/a/b/crowbar.db")
    assert not (tmp_path / "a").exists()
    make_engine(f"sqlite:///{tmp_path}/crowbar.db").dispose()  # an existing directory is fine
    with pytest.raises(UnusableDatabase, match="unknown database engine"):
        make_engine("bogus://x")
    with pytest.raises(UnusableDatabase) as refused:
        make_engine("postgresql://user:pa55word@host:notaport/db")
    assert "pa55word" not in str(refused.value)

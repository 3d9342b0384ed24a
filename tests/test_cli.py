"""Every subcommand's --help renders (argparse formats help lazily: a stray '%' only fails when asked)."""

from __future__ import annotations

import argparse

import pytest

from alexnet import cli


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _all_parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    out = []
    for name, p in _subparsers(cli.build_parser()).items():
        out.append((name, p))
        out.extend((f"{name} {sub}", q) for sub, q in _subparsers(p).items())
    return out


def test_every_command_is_registered() -> None:
    names = {n for n, _ in _all_parsers()}
    assert set(cli.COMMANDS) <= names
    assert {"bench data", "bench model"} <= names


@pytest.mark.parametrize("name,parser", _all_parsers(), ids=lambda v: v if isinstance(v, str) else "")
def test_help_renders(name: str, parser: argparse.ArgumentParser) -> None:
    text = parser.format_help()
    assert text.startswith("usage: alexnet " + name)


def test_unknown_command_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["no-such-command"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "no-such-command" in err

"""Argument helpers shared by the subcommands."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

from alexnet.config import parse_value
from alexnet.errors import UserError, shown


def parse_assignments(items: list[str] | None, flag: str) -> dict[str, Any]:
    """``K=V`` pairs (V parsed as YAML) into a dict; dotted keys nest (model_options.lrn=none)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"{flag} {shown(item)}: expected KEY=VALUE")
        node = out
        *parents, leaf = key.split(".")
        for k in parents:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise UserError(f"{flag} {shown(item)}: {k} is given a value and options at once")
        if leaf in node:  # never a silent last-one-wins
            raise UserError(f"{flag} {key}: given twice")
        node[leaf] = parse_value(value, f"{flag} {shown(item)}")
    return out


def optional_engine_module(name: str, import_root: str, package: str, why: str, extra: str) -> Any:
    """``alexnet.engine.<name>``, or one line saying how to install the optional ``package`` when
    importing ``import_root`` is what failed; any other ImportError is a bug, raised as it is."""
    import importlib

    try:
        return importlib.import_module(f"alexnet.engine.{name}")
    except ImportError as e:
        if (e.name or "").split(".")[0] != import_root:
            raise
        raise UserError(f"{why} needs {package}: pip install 'alexnet[{extra}]'") from None


def at_least(lo: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer ≥ ``lo``, else one line naming the option (exit 2), as
    train's options are checked (no option of any command is accepted that cannot work)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{shown(text)} is not an integer") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be at least {lo}, not {value}")
        return value

    return parse


def print_stopped(exit_code: int, checkpoint: object, again: str, signal: str | None = None) -> None:
    """What a run stopped by SIGTERM/SIGINT/SIGUSR1 (exit 143/130) says on stderr: where its
    checkpoint is and the command that resumes it."""
    where = f"checkpoint written to {checkpoint}" if checkpoint else "no checkpoint written"
    print(f"stopped by {signal or ('SIGINT' if exit_code == 130 else 'SIGTERM')}: {where}\nresume with: {again}",
          file=sys.stderr, flush=True)


def add_engine_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engine")
    g.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")
    g.add_argument("--workers", type=int, default=None, help="loader worker processes (default: automatic)")
    g.add_argument("--amp", choices=["none", "bf16", "fp16"], default=None, help="autocast dtype")
    g.add_argument("--channels-last", action="store_true", default=None, help="NHWC memory format")
    g.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")


def add_log_every_argument(p: argparse.ArgumentParser) -> None:
    """``--log-every SECONDS``: applied by :func:`alexnet.cli.main` (see :mod:`alexnet.progress`)."""
    p.add_argument("--log-every", type=float, default=None, metavar="SECONDS",
                   help="when the output is not a terminal: a progress line every SECONDS (default: $ALEXNET_LOG_EVERY "
                        "or 30; 0 = none) instead of a redrawn bar")


def apply_log_every(args: argparse.Namespace) -> None:
    """``--log-every``: set the interval for this process and those it starts; refused where the
    command prints no progress at all (it would have no effect)."""
    from alexnet.progress import set_log_every

    for flag, silent in (("--no-progress", getattr(args, "no_progress", False)), ("--quiet", getattr(args, "quiet", False)),
                         ("no --progress", getattr(args, "progress", True) is False)):
        if silent:
            raise UserError(f"--log-every has no effect with {flag}: this command then prints no progress")
    set_log_every(args.log_every)

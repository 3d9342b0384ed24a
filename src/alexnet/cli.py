"""Command line: ``alexnet <command> ...``; each command lives in a module with
``add_arguments(parser)`` and ``run(args) -> int``, imported only when used."""

from __future__ import annotations

import argparse
import importlib.util
import importlib
import os
import sys
from typing import Sequence

from alexnet import __version__, signals
from alexnet.errors import Terminated, UserError

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("alexnet.commands.demo", "train alexnet-cifar on the built-in data and write a report"),
    "train": ("alexnet.commands.train", "train a model"),
    "evaluate": ("alexnet.commands.evaluate", "top-1/top-5 error of runs (an ensemble if several)"),
    "prepare": ("alexnet.commands.prepare", "prepare a dataset once (ImageNet archives, folders, CIFAR, IDX, synthetic)"),
    "shard": ("alexnet.commands.shard", "export a prepared dataset to litdata shards (a folder or s3://) to stream"),
    "download": ("alexnet.commands.download", "download and prepare imagenette, imagewoof, cifar10, cifar100"),
    "predict": ("alexnet.commands.predict", "top-5 classes of images"),
    "neighbors": ("alexnet.commands.neighbors", "nearest neighbours in the last hidden layer (Figure 4 right)"),
    "filters": ("alexnet.commands.filters", "the first-layer kernels as an image (Figure 3)"),
    "report": ("alexnet.commands.report", "regenerate a run's report"),
    "export": ("alexnet.commands.export", "export weights, a self-contained ONNX or torch.export graph, or a Hub folder"),
    "import": ("alexnet.commands.import_weights", "import published weights (Caffe's bvlc_alexnet) as a run folder"),
    "push": ("alexnet.commands.push", "upload a run's weights and model card to the Hugging Face Hub"),
    "experiment": ("alexnet.commands.experiment", "reproduce one of the paper's claims"),
    "bench": ("alexnet.commands.bench", "measure throughput"),
    "slurm": ("alexnet.commands.slurm", "write (and submit) a SLURM job: torchrun on N nodes, requeued on the scheduler's warning"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse's default prints usage too)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _available() -> dict[str, tuple[str, str]]:
    return {n: v for n, v in COMMANDS.items() if importlib.util.find_spec(v[0]) is not None}


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="alexnet", description="AlexNet (Krizhevsky, Sutskever & Hinton, NIPS 2012), reproduced.")
    parser.add_argument("--version", action="version", version=f"alexnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name, (module, help_) in _available().items():
        p = sub.add_parser(name, help=help_, description=help_)
        importlib.import_module(module).add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # First of all: SIGTERM unwinds like Ctrl-C, so cleanup code runs and partial work is kept or
    # removed as it would be for Ctrl-C; a signal that arrives while modules are imported (torch
    # takes seconds) is recorded and acted on once the import is done (alexnet.signals). The
    # training loop and prepare install their own handlers on top of this one.
    restore = signals.install()
    try:
        return _main(argv)
    finally:
        restore()


def _refuse_empty(argv: list[str]) -> None:
    """An empty argument ('' or --opt=) means nothing any command can use (as a path it would be
    read as the current folder): refused, naming the option it was given to."""
    for i, a in enumerate(argv):
        flag = a[:-1] if a.startswith("--") and a.endswith("=") else None
        if a.strip() == "" or flag:
            name = flag or (argv[i - 1] if i and argv[i - 1].startswith("-") else f"argument {i + 1}")
            raise UserError(f"{name} {a.partition('=')[2] if flag else a!r}: an empty value; give a name or a value")


def _main(argv: Sequence[str] | None) -> int:
    given = list(sys.argv[1:] if argv is None else argv)
    # The command's name for a message, even before the arguments are parsed (a signal then).
    command = next((a for a in given if a in COMMANDS), "command")
    try:
        _refuse_empty(given)
        parser = build_parser()
        args = parser.parse_args(given)
        command = args.command
        if getattr(args, "log_every", None) is not None:
            from alexnet.commands.common import apply_log_every

            apply_log_every(args)
        rc = int(importlib.import_module(args._module).run(args) or 0)
        late = signals.take_pending()  # arrived during the command's last import
        if late is not None:
            signals.stop_now(late)
        return rc
    except UserError as e:
        print(f"alexnet {command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"alexnet {command}: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print(f"alexnet {command}: terminated", file=sys.stderr)
        return 143
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as e:
        # A fault of the machine rather than of the code (a full disk, a read-only place, a file
        # removed under us): one line naming the file. Writers keep their last good state.
        from alexnet.files import DISK_FULL, os_error_line

        hint = "; free space, then rerun the command (what was written before is intact)" if e.errno in DISK_FULL else ""
        print(f"alexnet {command}: error: {os_error_line(e)}{hint}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

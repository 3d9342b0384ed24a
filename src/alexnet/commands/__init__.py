"""One module per subcommand: ``add_arguments(parser)`` and ``run(args) -> int``.

Building the command line imports every command module (for its ``add_arguments``), so these
modules import torch and the rest of the package inside ``run``: ``alexnet --help`` and a typo'd
option answer at once instead of after torch's import, and each command loads only what it uses."""

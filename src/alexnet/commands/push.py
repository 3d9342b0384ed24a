"""``alexnet push RUN REPO_ID``: upload a run's weights to the Hugging Face Hub, as the folder
``alexnet export RUN --format hub`` writes (``model.safetensors``, ``config.json``, a model card
``README.md``), through ``huggingface_hub``'s ``PyTorchModelHubMixin.push_to_hub``. The token is the
one ``hf auth login`` stored, ``$HF_TOKEN``, or ``--token``."""

from __future__ import annotations

import argparse

from alexnet.commands.export import hub_module


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN_OR_WEIGHTS", help="run folder, .safetensors, or torchvision's alexnet-owt-*.pth")
    p.add_argument("repo_id", metavar="REPO_ID", help="the model repository, e.g. you/alexnet-cifar10 (created if missing)")
    p.add_argument("--private", action="store_true", default=None, help="create the repository as private")
    p.add_argument("--token", default=None, help="a Hub access token (default: hf auth login's, or $HF_TOKEN)")
    p.add_argument("--branch", default=None, help="the branch to commit to (default: main)")
    p.add_argument("--commit-message", default=None)


def run(args: argparse.Namespace) -> int:
    from alexnet.engine.inference import load

    hf_hub = hub_module()
    trained = load(args.run, "cpu")
    url = hf_hub.push(trained, args.repo_id, private=args.private, token=args.token, commit_message=args.commit_message,
                      branch=args.branch)
    print(url)
    return 0

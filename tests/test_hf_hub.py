"""Publishing on the Hugging Face Hub: the run's weights carry their recipe, metrics and git commit;
``alexnet export --format hub`` writes model.safetensors + config.json + a model card that
``from_pretrained`` reads back; ``alexnet push`` hands that folder to huggingface_hub's upload
(replaced here by a recorder: nothing can be uploaded from the tests)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet import models
from alexnet.cli import main
from alexnet.data.sources import synthetic
from alexnet.engine.checkpoint import read_weights

pytest.importorskip("huggingface_hub")
from alexnet.engine.hf_hub import Pretrained  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run trained for one short epoch and evaluated (eval.json), by the real commands."""
    root = tmp_path_factory.mktemp("hf")
    data = synthetic.build(root / "data", size=36, train_per_class=10, val_per_class=2)
    out = root / "run"
    assert main(["train", "--data", str(data), "--model", "alexnet-cifar", "--out", str(out), "--epochs", "1",
                 "--batch-size", "16", "--workers", "0", "--no-progress", "--model-opt", "dropout=0.1"]) == 0
    assert main(["evaluate", str(out), "--workers", "0", "--quiet", "--json"]) == 0
    return out


def test_the_runs_weights_carry_recipe_metrics_and_git_commit(run: Path) -> None:
    _, meta = read_weights(run / "model.safetensors")
    assert meta["recipe"]["epochs"] == 1 and meta["recipe"]["batch_size"] == 16 and meta["recipe"]["model"] == "alexnet-cifar"
    assert not {"workers", "device", "save_every"} & set(meta["recipe"])  # where it ran is not how it was made
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert meta["metrics"]["val_top1_err"] == rows[-1]["val_top1_err"] and meta["metrics"]["epoch"] == 1
    assert "img_per_s" not in meta["metrics"]  # timings differ between a resumed run and an uninterrupted one
    env = json.loads((run / "environment.json").read_text())
    assert meta["git_sha"] == env["git_sha"] and meta["torch_version"] == torch.__version__


def test_export_hub_writes_weights_config_and_card(run: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "hub"
    assert main(["export", str(run), "--format", "hub", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    sd, meta = read_weights(out / "model.safetensors")
    run_sd, run_meta = read_weights(run / "model.safetensors")
    assert sd.keys() == run_sd.keys() and all(torch.equal(sd[k], run_sd[k]) for k in sd)  # keys unchanged, stats kept
    evaluation = json.loads((run / "eval.json").read_text())
    assert meta["eval"] == evaluation and meta["recipe"] == run_meta["recipe"]
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == "alexnet-cifar" and config["num_classes"] == 10 and config["model_options"] == {"dropout": 0.1}
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: alexnet" in card and "license: mit" in card
    assert "pipeline_tag: image-classification" in card
    for text in ("## Architecture", "89,578 parameters", "`dropout=0.1`", "## Training recipe", "`epochs=1`",
                 "## Data", "circle", "## Metrics", f"{100 * evaluation['center']['top1_err']:.2f}%",
                 "## Licence", "MIT", "@inproceedings{krizhevsky2012imagenet", run_meta["git_sha"] or "not recorded"):
        assert text in card, text
    # The Hub's conventions: YAML front matter with model-index results from eval.json, no datasets: for
    # the built-in data (no Hub dataset), MIT for weights of data this package generates.
    import yaml

    front = yaml.safe_load(card.split("---\n")[1])
    assert front["library_name"] == "alexnet" and front["license"] == "mit" and "datasets" not in front
    assert {"alexnet", "image-classification", "alexnet-cifar"} <= set(front["tags"])
    (entry,) = front["model-index"]
    metrics = {(r["dataset"]["split"], m["name"]): m["value"] for r in entry["results"] for m in r["metrics"]}
    assert metrics[("validation", "top-1 accuracy, centre crop (%)")] == round(100 * (1 - evaluation["center"]["top1_err"]), 2)
    assert metrics[("validation", "top-5 accuracy, centre crop (%)")] == round(100 * (1 - evaluation["center"]["top5_err"]), 2)
    assert (("validation", "top-5 accuracy, 10-crop (%)") in metrics) == ("ten_crop" in evaluation)
    assert all(m["type"] in ("accuracy", "top-5-accuracy") for r in entry["results"] for m in r["metrics"])
    # an install line that works from the card alone: the package from its repository, at the commit
    from alexnet import SOURCE_URL

    sha = run_meta["git_sha"]
    assert f'pip install "alexnet[hub] @ git+{SOURCE_URL}{"@" + sha if sha else ""}"' in card
    assert f"The code: {SOURCE_URL}" in card
    from alexnet.models.flops import flops_per_image

    g = flops_per_image(lambda: models.create("alexnet-cifar", 10, dropout=0.1), 32, backward=False) / 1e9
    assert f"{g:.3f} GFLOPs per image" in card and 0.02 < g < 0.03  # 3 conv layers on 32×32: about 24.6 MFLOPs
    assert "built-in synthetic data" in card and "ImageNet" not in card.split("## Licence")[1].split("##")[0]
    # an existing, non-empty folder is not overwritten
    assert main(["export", str(run), "--format", "hub", "--out", str(out)]) == 2
    assert "not an empty folder" in capsys.readouterr().err


def test_weights_trained_on_imagenet_name_the_dataset_and_its_terms() -> None:
    from alexnet.engine.hf_hub import IMAGENET_ID, dataset_id
    import yaml

    wnids = [f"n{i:08d}" for i in range(1000)]
    meta = {"classes": wnids, "class_names": wnids, "input_size": 32, "input_norm": "mean_image_std",
            "image_size": [36, 36], "data": "/data/imagenet-prepared", "git_sha": "0123456789abcdef",
            "eval": {"center": {"top1_err": 0.4285, "top5_err": 0.1992, "n": 50000}}}
    card = str(Pretrained("alexnet-cifar", 1000, {}, meta).generate_model_card())
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["datasets"] == [IMAGENET_ID] == ["imagenet-1k"]
    assert front["license"] == "other" and front["license_name"] == "imagenet-terms-of-access"
    assert front["license_link"].startswith("https://image-net.org/")
    (entry,) = front["model-index"]
    (result,) = entry["results"]
    assert result["dataset"]["type"] == "imagenet-1k" and result["task"]["type"] == "image-classification"
    assert [m["value"] for m in result["metrics"]] == [57.15, 80.08]
    assert "non-commercial research and educational use only" in card and "@0123456789abcdef" in card
    # torchvision's and Caffe's weights are ImageNet's; 1000 classes that are not WNIDs, or ten WNIDs
    # (Imagenette), are not
    assert dataset_id({"source": "torchvision", "classes": []}) == dataset_id({"source": "caffe"}) == IMAGENET_ID
    assert dataset_id({"classes": [f"c{i}" for i in range(1000)]}) is None
    assert dataset_id({"classes": wnids[:10], "data": "/nowhere/imagenette"}) is None
    from alexnet.data.sources.idx import FASHION_NAMES

    assert dataset_id({"classes": list(range(10)), "class_names": FASHION_NAMES}) == "fashion_mnist"


def test_forward_flops_per_image_in_closed_form() -> None:
    from alexnet.models.flops import flops_per_image

    # one 3→8 conv, 5×5, no padding, on 32×32: 28×28 outputs × 8 maps × (3·25) multiply-adds × 2
    conv = flops_per_image(lambda: torch.nn.Conv2d(3, 8, 5), 32, backward=False)
    assert conv == 2 * 28 * 28 * 8 * 3 * 25
    # two towers (groups=2) halve a convolution's cost; the paper's net forward is 1.45 GFLOPs (0.72 G multiply-adds)
    towers = flops_per_image(lambda: torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.Conv2d(4, 8, 3, groups=2)),
                             10, backward=False)
    assert towers == 2 * 10 * 10 * 4 * 3 + 2 * 8 * 8 * 8 * (4 // 2) * 9
    assert abs(flops_per_image(lambda: models.create("alexnet", 1000), 224, backward=False) / 1e9 - 1.449) < 0.001


def test_from_pretrained_reads_the_folder_back(run: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "hub"
    assert main(["export", str(run), "--format", "hub", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    m = Pretrained.from_pretrained(str(out))
    assert isinstance(m.net, models.CifarNet) and not m.training
    ref = models.create("alexnet-cifar", 10, dropout=0.1)
    _, meta = read_weights(run / "model.safetensors")
    from safetensors.torch import load_file

    ref.load_state_dict({k: v for k, v in load_file(run / "model.safetensors").items() if not k.startswith("_data")})
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(m(x), ref.eval()(x))
    assert m.meta["classes"] == meta["classes"] and m.data_stats["mean"].shape == (3, 36, 36)
    # the folder is also what every alexnet command reads
    img = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(img)
    assert main(["predict", str(out), str(img), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)[0]["top5"]) == 5


class Recorder:
    """Stands in for the Hub: records create_repo and what upload_folder was given."""

    def __init__(self) -> None:
        self.created: list[dict] = []
        self.uploads: list[dict] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from huggingface_hub import HfApi
        from huggingface_hub.hf_api import RepoUrl

        rec = self

        def create_repo(api, repo_id, **kw):
            rec.created.append({"repo_id": repo_id, **kw})
            return RepoUrl(f"https://huggingface.co/{repo_id}")

        def upload_folder(api, *, repo_id, folder_path, **kw):
            folder = Path(folder_path)
            rec.uploads.append({"repo_id": repo_id, "files": sorted(p.name for p in folder.iterdir()),
                                "card": (folder / "README.md").read_text(),
                                "meta": read_weights(folder / "model.safetensors")[1], **kw})
            return f"https://huggingface.co/{repo_id}/commit/0123abc"

        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "upload_folder", upload_folder)


def test_push_uploads_the_hub_folder(run: Path, monkeypatch, capsys) -> None:
    rec = Recorder()
    rec.install(monkeypatch)
    assert main(["push", str(run), "someone/alexnet-cifar-demo", "--private", "--commit-message", "first"]) == 0
    assert capsys.readouterr().out.strip() == "https://huggingface.co/someone/alexnet-cifar-demo/commit/0123abc"
    assert rec.created == [{"repo_id": "someone/alexnet-cifar-demo", "private": True, "exist_ok": True}]
    (up,) = rec.uploads
    assert up["repo_id"] == "someone/alexnet-cifar-demo" and up["repo_type"] == "model" and up["commit_message"] == "first"
    assert up["files"] == ["README.md", "config.json", "model.safetensors"]
    assert 'Pretrained.from_pretrained("someone/alexnet-cifar-demo")' in up["card"]
    assert up["meta"]["eval"] == json.loads((run / "eval.json").read_text())


def test_push_refuses_a_bad_repo_id_before_any_upload(run: Path, monkeypatch, capsys) -> None:
    rec = Recorder()
    rec.install(monkeypatch)
    assert main(["push", str(run), "not a/valid//id"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "not a valid Hub repository id" in err and "Traceback" not in err
    assert rec.created == [] and rec.uploads == []


def test_a_failed_upload_is_one_line(run: Path, monkeypatch, capsys) -> None:
    from huggingface_hub import HfApi

    def refuse(api, repo_id, **kw):
        raise OSError("Invalid user token.")

    monkeypatch.setattr(HfApi, "create_repo", refuse)
    assert main(["push", str(run), "someone/x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == ["alexnet push: error: someone/x: upload failed (OSError: Invalid user token.)"]

"""torch.hub: ``hubconf.py`` at the repository root, loaded from the checkout with ``source="local"``;
weights from a path or a URL (a local HTTP server), ours (safetensors, with the data statistics)
or torchvision's .pth for alexnet_owt."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from alexnet import models
from alexnet.engine.checkpoint import save_weights
from alexnet.engine.torch_hub import cache_path
from test_download import Server

ROOT = Path(__file__).resolve().parents[1]
ENTRIES = {"alexnet": ("alexnet", 1000, 60_965_224), "alexnet_owt": ("alexnet-owt", 1000, 61_100_840),
           "alexnet_cifar": ("alexnet-cifar", 10, 89_578), "lenet5": ("lenet5", 10, 62_006)}


@pytest.fixture(autouse=True)
def _hub_dir(tmp_path, monkeypatch):
    """torch.hub's cache (downloads) in the test's folder, never the user's."""
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))


def hub_load(entry: str, **kwargs):
    return torch.hub.load(str(ROOT), entry, source="local", trust_repo=True, **kwargs)


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_the_entry_points_are_the_four_models() -> None:
    import importlib.util

    # torch.hub.list reads GitHub only; this is its rule for what an entry point is.
    spec = importlib.util.spec_from_file_location("hubconf", ROOT / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    assert sorted(f for f in dir(hubconf) if callable(getattr(hubconf, f)) and not f.startswith("_")) == sorted(ENTRIES)
    assert all(importlib.util.find_spec(d) for d in hubconf.dependencies)


@pytest.mark.parametrize("entry", sorted(ENTRIES))
def test_each_entry_builds_its_model(entry: str) -> None:
    name, classes, count = ENTRIES[entry]
    m = hub_load(entry)
    assert isinstance(m, models.info(name).cls) and n_params(m) == count
    assert m.state_dict().keys() == models.create(name, classes).state_dict().keys()


def test_num_classes_and_options_reach_the_model() -> None:
    m = hub_load("alexnet", num_classes=10, lrn="none", towers=1)
    ref = models.create("alexnet", 10, lrn="none", towers=1)
    assert n_params(m) == n_params(ref)
    assert not any(type(x).__name__ == "LocalResponseNorm" for x in m.modules())


@pytest.fixture
def cifar_weights(tmp_path) -> tuple[Path, torch.nn.Module, dict]:
    torch.manual_seed(0)
    net = models.create("alexnet-cifar", 10, dropout=0.2)
    meta = {"model": "alexnet-cifar", "model_options": {"dropout": 0.2}, "num_classes": 10,
            "classes": [f"c{i}" for i in range(10)], "class_names": [f"n{i}" for i in range(10)], "input_size": 32,
            "input_norm": "mean_image_std", "data": None, "image_size": [36, 36], "git_sha": "abc123"}
    stats = {"mean": torch.rand(3, 36, 36) * 255, "eigval": torch.tensor([0.2, 0.02, 0.004]), "eigvec": torch.eye(3)}
    path = tmp_path / "served" / "cifar-run.safetensors"
    save_weights(net, path, meta, stats)
    return path, net.eval(), {"meta": meta, "stats": stats}


def _same_outputs(a: torch.nn.Module, b: torch.nn.Module, size: int = 32) -> None:
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(a.eval()(x), b.eval()(x))


def test_weights_from_a_path_carry_the_metadata_and_data_statistics(cifar_weights) -> None:
    path, net, ref = cifar_weights
    m = hub_load("alexnet_cifar", weights=str(path))
    _same_outputs(m, net)
    assert not m.training
    assert m.meta["classes"] == ref["meta"]["classes"] and m.meta["git_sha"] == "abc123"
    torch.testing.assert_close(m.data_stats["mean"], ref["stats"]["mean"])
    assert hub_load("alexnet_cifar", weights=str(path), num_classes=10, dropout=0.2).meta["image_size"] == [36, 36]


def test_weights_from_a_url_are_downloaded_once_into_the_hub_cache(cifar_weights) -> None:
    path, net, _ = cifar_weights
    with Server(path.parent) as srv:
        url = f"{srv.url}/{path.name}"
        m = hub_load("alexnet_cifar", weights=url, progress=False)
        again = hub_load("alexnet_cifar", weights=url, progress=False)
    _same_outputs(m, net)
    _same_outputs(again, net)
    assert [p for p, _ in srv.requests] == [f"/files/{path.name}"]  # the second load used the cache
    assert cache_path(url).read_bytes() == path.read_bytes() and cache_path(url).name == path.name


def test_a_hash_in_the_file_name_is_checked(cifar_weights, tmp_path) -> None:
    from alexnet.errors import UserError

    path, net, _ = cifar_weights
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    good = path.with_name(f"cifar-{digest[:8]}.safetensors")
    bad = path.with_name("cifar-00000000.safetensors")
    good.write_bytes(path.read_bytes())
    bad.write_bytes(path.read_bytes())
    with Server(path.parent) as srv:
        _same_outputs(hub_load("alexnet_cifar", weights=f"{srv.url}/{good.name}", progress=False, check_hash=True), net)
        with pytest.raises(UserError, match="hash"):
            hub_load("alexnet_cifar", weights=f"{srv.url}/{bad.name}", progress=False, check_hash=True)
    assert [p.name for p in (Path(torch.hub.get_dir()) / "checkpoints").rglob("*") if p.is_file()] == [good.name]


def test_mismatched_weights_are_refused(cifar_weights) -> None:
    from alexnet.errors import UserError

    path, _, _ = cifar_weights
    with pytest.raises(UserError, match="'alexnet-cifar', not 'lenet5'.*'alexnet_cifar' entry point"):
        hub_load("lenet5", weights=str(path))
    with pytest.raises(UserError, match="has 10 classes, not num_classes=100"):
        hub_load("alexnet_cifar", weights=str(path), num_classes=100)
    with pytest.raises(UserError, match="trained with lrn='paper', not 'none'"):
        hub_load("alexnet_cifar", weights=str(path), lrn="none")
    with pytest.raises(UserError, match="no such weights file"):
        hub_load("alexnet_cifar", weights=str(path.with_name("missing.safetensors")))


def test_alexnet_owt_loads_torchvisions_pth(tmp_path) -> None:
    import torchvision

    torch.manual_seed(0)
    tv = torchvision.models.alexnet(num_classes=10).eval()
    pth = tmp_path / "served" / "alexnet-owt-test.pth"
    pth.parent.mkdir()
    torch.save(tv.state_dict(), pth)
    with Server(pth.parent) as srv:
        m = hub_load("alexnet_owt", weights=f"{srv.url}/{pth.name}", progress=False)
    _same_outputs(m, tv, size=224)
    assert m.meta["input_norm"] == "mean_std" and m.data_stats is None


def test_a_checkout_loads_its_own_src_package(tmp_path) -> None:
    """Without PYTHONPATH (and with any other installed copy of the package), hubconf imports the
    package from the checkout's src/ folder."""
    import os
    import subprocess
    import sys

    code = ("import torch\n"
            f"m = torch.hub.load({str(ROOT)!r}, 'lenet5', source='local', trust_repo=True, num_classes=3)\n"
            "import alexnet; print(alexnet.__file__, type(m).__name__, m.classifier[-1].out_features)\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    path, cls, classes = r.stdout.split()
    assert Path(path) == ROOT / "src" / "alexnet" / "__init__.py" and cls == "LeNet5" and classes == "3"

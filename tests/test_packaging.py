"""What ships: the wheel carries py.typed and the recipes; the READMEs and the documentation's pages
link only to files in the repository."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
READMES = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
# Pages the documentation's build generates (docs/hooks.py): links to them are checked by `mkdocs build --strict`.
GENERATED_PAGES = {ROOT / "docs" / "reference" / "cli.md"}
LINK = re.compile(r"\]\(([^)\s]+)\)")
# Files a reader is told about in prose (`like/this.md`): they must exist in the repository too.
MENTIONED = re.compile(r"(?<![\w/.-])([\w./-]+\.md)\b")
WRITTEN = {"report.md"}  # files the commands write into run and experiment folders


@pytest.mark.parametrize("readme", READMES, ids=lambda p: str(p.relative_to(ROOT)))
def test_readme_points_only_to_files_in_the_repository(readme: Path) -> None:
    text = readme.read_text()
    for target in LINK.findall(text):
        if target.startswith(("http://", "https://", "#", "mailto:")):
            continue
        path = (readme.parent / target.split("#")[0]).resolve()
        if path in GENERATED_PAGES:
            continue
        assert path.is_relative_to(ROOT) and path.exists(), f"{readme.name} links to {target}, not in the repository"
    for name in MENTIONED.findall(text):
        if Path(name).name in WRITTEN or (readme.parent / name).resolve() in GENERATED_PAGES:
            continue
        assert (readme.parent / name).exists() or (ROOT / name).exists(), \
            f"{readme.name} mentions {name}, which is not in the repository"


@pytest.mark.slow
def test_the_wheel_ships_py_typed_and_the_recipes(tmp_path: Path) -> None:
    import shutil

    # Built from a copy: setuptools writes build/ and *.egg-info beside the sources it builds.
    src = tmp_path / "src"
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "src" / "alexnet", src / "alexnet", ignore=shutil.ignore_patterns("__pycache__"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(tmp_path / "dist"), str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("alexnet-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "alexnet/py.typed" in names
    assert "alexnet/configs/paper.yaml" in names


# TorchCodec's compatibility table (its README): the torch each release needs.
TORCHCODEC_NEEDS_TORCH = {(0, 10): (2, 10), (0, 11): (2, 11), (0, 12): (2, 11), (0, 13): (2, 11), (0, 14): (2, 11),
                          (0, 15): (2, 11), (0, 16): (2, 11), (0, 17): (2, 11)}


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split("."))


def test_dependency_floors_are_what_the_compat_job_tests() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    floors = {m[1]: _version(m[2]) for d in deps if (m := re.fullmatch(r"([\w-]+)>=([\d.]+)", d.strip()))}
    makefile = (ROOT / "Makefile").read_text()
    compat = makefile[makefile.index("$(COMPAT_STAMP):"):]
    pins = {name: _version(v) for name, v in re.findall(r'"(torch|torchvision)==([\d.]+)"', compat)}
    # The floors are the oldest stack that is tested, no lower: torch 2.11 / torchvision 0.26.
    assert floors["torch"] == pins["torch"][:2] and floors["torchvision"] == pins["torchvision"][:2], (floors, pins)
    assert floors["torch"] >= (2, 4)  # torch.library.custom_op: the fused LRN
    assert floors["torchvision"] >= (0, 19)  # batched nvJPEG decode_jpeg
    # TorchCodec is a core dependency only where every torch the floor admits can load it.
    assert TORCHCODEC_NEEDS_TORCH[floors["torchcodec"][:2]] <= floors["torch"]

"""The README a newcomer reads in minutes, and the documentation site whose reference pages and results
tables are generated (docs/hooks.py), so they cannot drift from the parsers and the committed results."""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# the `fashion` recipe's test result that README and docs/experiments.md quote
FASHION_RESULT = "benchmarks/results/fashion-mnist-pad2-nodrop-2026-12-04.json"


def _hooks():
    spec = importlib.util.spec_from_file_location("alexnet_docs_hooks", ROOT / "docs" / "hooks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_readme_is_at_most_12_kb_and_says_what_the_quick_start_produces() -> None:
    size = README.stat().st_size
    assert size <= 12 * 1024, f"README.md is {size:,} bytes; the reference belongs in docs/"
    text = README.read_text()
    headings = re.findall(r"^## (.+)$", text, re.M)
    for h in ("Quick start", "Models", "Commands", "Results", "Citing", "Documentation"):
        assert h in headings, h
    assert any(h.startswith("ImageNet") for h in headings)
    assert "make demo" in text and "make test" in text and "runs/demo/" in text
    # the one result line, with where it came from, equal to what the results file says
    demo = "benchmarks/results/demo-2026-12-02.json"
    n = _hooks().demo_numbers(ROOT / demo)
    line = text[text.index("Result: "):].split("\n\n")[0]
    for key in ("val_top1_err_center", "val_top1_err_ten_crop", "wall_s"):
        assert n[key] in line, (key, n[key])
    assert n["val_top1_err_center"] == "8.6 ± 1.1%" and demo in line and "git dcf0676" in line
    for model in ("`alexnet`", "`alexnet-owt`", "`alexnet-cifar`", "`lenet5`"):
        assert f"| {model} |" in text
    assert "@inproceedings{krizhevsky2012imagenet" in text


def test_every_command_of_the_cli_has_a_row_in_the_readme() -> None:
    sys.path.insert(0, str(ROOT / "src"))
    from alexnet.cli import build_parser

    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    rows = re.findall(r"^\| `alexnet (\w+)", README.read_text(), re.M)
    assert set(sub.choices) <= set(rows), set(sub.choices) - set(rows)


def test_the_readme_content_moved_into_the_pages_keeps_its_numbers() -> None:
    pages = {p.name: p.read_text() for p in (ROOT / "docs").glob("*.md")}
    # the Quick start's measurements and their provenance
    assert "<!-- generated: demo-table benchmarks/results/demo-2026-12-02.json -->" in pages["getting-started.md"]
    built = _hooks().expand(pages["getting-started.md"], ROOT / "docs", "https://x/y")
    assert "| **8.6 ± 1.1%** / **5.9 ± 0.7%** (seeds: 7.4, 8.9, 9.6 / 5.2, 6.5, 6.0) | 0.1 ± 0.1% / 0.1 ± 0.0% | 87 ± 4 s |" in built
    assert "git dcf0676" in built and "Python 3.11.7" in built and "**179 s**" in built
    assert "benchmarks/results/make-demo-fresh-clone-2026-12-02.log" in pages["getting-started.md"]
    # the fault model, the loader, resume, the speed tables, the dependencies' reasons
    assert "No command overwrites a file it did not write" in pages["reliability.md"]
    assert "DIR/<split>/index.npy" in pages["data.md"]
    assert "bitwise identical" in pages["training.md"] and "--max-restarts" in pages["training.md"]
    assert "benchmarks/results/cpu-step-2026-12-02.json" in pages["speed.md"]
    assert "| `[docs]`" in pages["dependencies.md"]
    assert "19,144 img/s" in pages["experiments.md"]


def test_the_cli_reference_lists_every_command_and_option_and_imports_no_torch() -> None:
    code = ("import sys; sys.path.insert(0, 'docs'); import hooks; text = hooks.cli_reference(); "
            "assert 'torch' not in sys.modules, 'torch imported'; sys.stdout.write(text)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    text = r.stdout
    sys.path.insert(0, str(ROOT / "src"))
    from alexnet.cli import build_parser

    def walk(parser: argparse.ArgumentParser, name: str) -> None:
        assert f"`{name}` {{#{name.replace(' ', '-')}}}" in text, name
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for child, p in action.choices.items():
                    walk(p, f"{name} {child}")
            elif action.help != argparse.SUPPRESS and not isinstance(action, argparse._HelpAction):
                for opt in action.option_strings:
                    assert f"`{opt}`" in text, (name, opt)

    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    for cmd, p in sub.choices.items():
        walk(p, f"alexnet {cmd}")
    assert "%(default)s" not in text


def test_the_experiments_page_shows_the_table_generated_from_every_results_folder() -> None:
    hooks = _hooks()
    sys.path.insert(0, str(ROOT / "src"))
    from alexnet.experiments.summary import CLAIMS, experiment_folders, table

    root = ROOT / "benchmarks" / "results" / "experiments-medium"
    folders = experiment_folders(root)
    # every committed folder named after an experiment is in it, whichever are added later
    assert [f.name for f in folders] == [n for n in CLAIMS if (root / n / "results.json").is_file()]
    assert {"lrn", "dropout", "pooling", "relu-vs-tanh", "towers", "depth", "baselines"} <= {f.name for f in folders}
    page = (ROOT / "docs" / "experiments.md").read_text()
    assert "<!-- generated: experiments-summary benchmarks/results/experiments-medium -->" in page
    assert "| claim (§) | the paper | ours | verdict |" not in page  # never typed by hand
    built = hooks.expand(page, ROOT / "docs", "https://example.org/repo")
    assert table(folders) in built
    assert "lrn-none 15.61 ± 0.44% vs lrn-paper 13.82 ± 0.38% top-1; Δ +1.79 [+0.85, +2.74] points" in built
    # data-scale's table comes from the report the experiment wrote
    assert "| 58000 | 10.18 ± 0.12% | 15.37 ± 0.01% | 20.44 ± 0.65% | 12.76 ± 0.23% |" in built


def test_a_folder_added_under_the_results_joins_the_table(tmp_path: Path) -> None:
    import json
    import shutil

    sys.path.insert(0, str(ROOT / "src"))
    from alexnet.experiments.summary import experiment_folders, main

    src = ROOT / "benchmarks" / "results" / "experiments-medium"
    shutil.copytree(src / "lrn", tmp_path / "lrn", ignore=shutil.ignore_patterns("*.png", "*.log"))
    assert [f.name for f in experiment_folders(tmp_path)] == ["lrn"]
    shutil.copytree(src / "lrn", tmp_path / "pooling", ignore=shutil.ignore_patterns("*.png", "*.log"))
    proto = json.loads((tmp_path / "pooling" / "protocol.json").read_text())
    (tmp_path / "pooling" / "protocol.json").write_text(json.dumps({**proto, "experiment": "pooling"}))
    (tmp_path / "lrn-old").mkdir()  # not named after an experiment: left out
    assert [f.name for f in experiment_folders(tmp_path)] == ["lrn", "pooling"]
    assert main([str(tmp_path / "nothing-here")]) == 2


def test_links_into_the_repository_become_web_links_and_a_missing_file_fails() -> None:
    hooks = _hooks()
    docs = ROOT / "docs"
    out = hooks.repo_links("see [r](../benchmarks/README.md#targets) and ![p](../benchmarks/results/"
                           "experiments-medium/data-scale/error_vs_size.png) and [t](training.md)", docs, "https://x/y")
    assert "(https://x/y/blob/main/benchmarks/README.md#targets)" in out
    assert "(https://x/y/raw/main/benchmarks/results/experiments-medium/data-scale/error_vs_size.png)" in out
    assert "[t](training.md)" in out  # a page of the site: MkDocs checks it
    with pytest.raises(Exception, match="not in the repository"):
        hooks.repo_links("[gone](../benchmarks/no-such-file.md)", docs, "https://x/y")


def test_the_design_page_is_architecture_md(tmp_path: Path) -> None:
    hooks = _hooks()
    page = (ROOT / "docs" / "design.md").read_text()
    assert "<!-- include: ARCHITECTURE.md -->" in page
    built = hooks.expand(page, ROOT / "docs", "https://x/y")
    assert "## Where a newcomer adds" in built and "## Layout of the source tree" in built
    with pytest.raises(Exception, match="no heading"):
        hooks.expand("<!-- include: ARCHITECTURE.md ## No such heading -->", ROOT / "docs", "https://x/y")


def test_scale_out_pages_enter_the_nav_only_where_present(tmp_path: Path, monkeypatch) -> None:
    hooks = _hooks()
    nav = [{"Home": "index.md"}, {"Reliability": "reliability.md"}, {"The paper": "paper.md"}]
    monkeypatch.setattr(hooks, "DOCS", tmp_path)
    cfg = hooks.on_config({"nav": [dict(e) for e in nav]})
    assert cfg["nav"] == nav and cfg["repo_url"] == hooks.source_url()
    (tmp_path / "scale-out").mkdir()
    for name in ("streaming.md", "owt.md", "slurm.md"):
        (tmp_path / "scale-out" / name).write_text("# x\n")
    cfg = hooks.on_config({"nav": [dict(e) for e in nav]})
    assert cfg["nav"][2] == {"Scale-out": ["scale-out/owt.md", "scale-out/slurm.md", "scale-out/streaming.md"]}
    assert cfg["nav"][3] == {"The paper": "paper.md"}


def test_the_source_url_and_the_docs_extra() -> None:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    sys.path.insert(0, str(ROOT / "src"))
    import alexnet

    assert project["urls"]["Source"] == alexnet.SOURCE_URL == _hooks().source_url()
    extras = project["optional-dependencies"]
    assert {re.split(r"[<>=\[]", d)[0] for d in extras["docs"]} == {"mkdocs", "mkdocs-material", "mkdocstrings"}
    assert "docs" in re.search(r"\[(.*)\]", extras["all"][0]).group(1).split(",")


def test_the_public_api_is_documented_in_one_style() -> None:
    """Google style (mkdocs.yml: docstring_style: google), which the API pages render."""
    import inspect

    sys.path.insert(0, str(ROOT / "src"))
    from alexnet import experiments, models
    from alexnet.data.sources.base import Source
    from alexnet.engine import inference, train

    for fn, sections in ((models.create, ("Args:", "Returns:", "Raises:")), (train.run, ("Args:", "Returns:", "Raises:")),
                         (inference.load, ("Args:", "Returns:", "Raises:")), (inference.image_classifier, ("Args:", "Returns:")),
                         (experiments.run_experiment, ("Args:", "Returns:")), (Source.items, ("Args:", "Yields:"))):
        doc = inspect.getdoc(fn) or ""
        for section in sections:
            assert f"\n{section}\n" in doc, (fn.__qualname__, section)
        documented = set(re.findall(r"^    (\*{0,2}\w+):", doc.split("Args:")[1].split("\n\n")[0], re.M)) if "Args:" in doc else set()
        params = {("**" if p.kind is p.VAR_KEYWORD else "") + n for n, p in inspect.signature(fn).parameters.items()
                  if n != "self"}
        assert documented == params, (fn.__qualname__, documented ^ params)
    for cls in (models.ModelInfo, Source, experiments.ExperimentInfo, inference.Trained):
        assert "\nAttributes:\n" in (inspect.getdoc(cls) or ""), cls.__name__


def test_the_readme_results_quote_the_generated_table() -> None:
    """Every interval README's results summary quotes is one the tables generated from the committed
    results give (signs and typography aside), so the summary cannot drift from the results."""
    sys.path.insert(0, str(ROOT / "src"))
    from alexnet.experiments.summary import experiment_folders, table

    text = README.read_text()
    results = text[text.index("## Results"):text.index("## Citing")]

    def norm(s: str) -> str:
        return s.replace("−", "-").replace("+", "")

    generated = norm(table(experiment_folders(ROOT / "benchmarks" / "results" / "experiments-medium")))
    # and the Fashion-MNIST recipe's distance to its goal, as the docs' fashion-table gives it
    generated += norm(_hooks().fashion_numbers(ROOT / FASHION_RESULT)["below_goal"])
    quoted = re.findall(r"\[[−+\-]?\d+\.\d+, [−+\-]?\d+\.\d+\]", results)
    assert len(quoted) >= 6
    for interval in quoted:
        # a difference quoted as a size ("beat ... by 2.08 [1.33, 2.83]") is the table's negative one
        lo, hi = norm(interval)[1:-1].split(", ")
        flipped = f"[-{hi}, -{lo}]" if not lo.startswith("-") else None
        assert norm(interval) in generated or (flipped and flipped in generated), interval


def test_the_fashion_table_is_generated_from_the_results_and_says_whether_the_goal_is_reached(tmp_path: Path) -> None:
    import json

    hooks = _hooks()
    committed = "benchmarks/results/fashion-mnist-2026-12-03.json"
    n = hooks.fashion_numbers(ROOT / committed)
    # 91.37, 91.26, 91.23: mean 91.287, sample std 0.074; 93 − mean = 1.713 ± t(2; 0.975) · 0.0426 = ±0.183
    assert n["accuracy"] == "91.29 ± 0.07%" and n["seeds"] == 3
    assert n["below_goal"] == "+1.71 [+1.53, +1.90]" and n["verdict"] == "not reached"
    page = (ROOT / "docs" / "experiments.md").read_text()
    assert f"<!-- generated: fashion-table {committed} -->" in page
    built = hooks.expand(page, ROOT / "docs", "https://x/y")
    assert "| **91.29 ± 0.07%** (3 seeds) | 91.37, 91.26, 91.23 |" in built
    assert "| HOG + SVM (published) | 92.6% |" in built and "git ab8cc9f." in built and "(dirty tree)" not in built
    # README quotes the same number, and the file it came from
    results = README.read_text()
    results = results[results.index("## Results"):results.index("## Citing")]
    assert n["accuracy"].replace("%", "") in results and committed in results and "git ab8cc9f" in results

    def verdict(accuracies: list[float]) -> str:
        f = tmp_path / "r.json"
        f.write_text(json.dumps({"rows": [{"test_accuracy_center": a} for a in accuracies]}))
        return hooks.fashion_numbers(f)["verdict"]

    assert verdict([0.94, 0.945, 0.95]) == "reached"  # 93 − mean = −1.5 ± 1.24 points
    assert verdict([0.92, 0.94]) == "not resolved (the interval contains it)"  # mean 93%, wide interval
    assert verdict([0.95]) == "reached" and verdict([0.91]) == "not reached"  # one seed: the mean alone
    with pytest.raises(Exception, match="no such results file"):
        hooks.fashion_table("benchmarks/results/nothing.json")


def test_the_recipe_search_table_lists_the_held_out_variants_and_refuses_a_test_file() -> None:
    hooks = _hooks()
    pattern = "benchmarks/results/fashion-mnist-heldout-*-2026-12-04.json"
    built = hooks.fashion_search(pattern)
    # best held-out accuracy first: the recipe's choice (padding 2, no dropout) heads the table, its first
    # version (no overrides) follows
    rows = [line for line in built.splitlines() if line.startswith("| `") or line.startswith("| none")]
    assert len(rows) == 2 and rows[0].startswith("| `--set crop_padding=2`, `--model-opt dropout=0` | 92.55% | 6.39% |")
    assert rows[1].startswith("| none (the recipe as at git 68f3c1d) | ")
    assert "held-out part of the training set" in built and "(dirty tree)" not in built and "68f3c1d" in built
    page = (ROOT / "docs" / "experiments.md").read_text()
    assert f"<!-- generated: fashion-search {pattern} -->" in page
    with pytest.raises(Exception, match="not a held-out part of the training set"):
        hooks.fashion_search("benchmarks/results/fashion-mnist-2026-12-03.json")
    with pytest.raises(Exception, match="not a test accuracy"):
        hooks.fashion_numbers(ROOT / "benchmarks/results/fashion-mnist-heldout-pad2-nodrop-2026-12-04.json")
    with pytest.raises(Exception, match="matches no results file"):
        hooks.fashion_search("benchmarks/results/nothing-*.json")


def test_the_chosen_recipe_was_scored_once_on_the_test_set_and_is_the_recipe_readme_quotes() -> None:
    from alexnet.config import resolve

    hooks = _hooks()
    committed = FASHION_RESULT
    doc = json.loads((ROOT / committed).read_text())
    n = hooks.fashion_numbers(ROOT / committed)
    assert doc["scored_on"] == "official test set" and n["seeds"] == 3
    # the variant that ran is the recipe as it is now: its two overrides are what configs/fashion.yaml says
    assert doc["overrides"] == ["--set crop_padding=2", "--model-opt dropout=0"]
    cfg = resolve("fashion", {"data": "x"})
    assert cfg.crop_padding == 2 and cfg.model_options["dropout"] == 0
    page = (ROOT / "docs" / "experiments.md").read_text()
    assert f"<!-- generated: fashion-table {committed} -->" in page
    built = hooks.expand(page, ROOT / "docs", "https://x/y")
    assert "recipe `fashion` as at git 68f3c1d, `--set crop_padding=2`, `--model-opt dropout=0` (12 epochs)" in built
    results = README.read_text()
    results = results[results.index("## Results"):results.index("## Citing")]
    assert f"**{n['accuracy']}**" in results and committed in results and "git 68f3c1d" in results
    assert n["verdict"] in results  # the goal's verdict as the interval gives it

"""MkDocs hooks (mkdocs.yml ``hooks:``): what the site shows that must not drift from the code and the
committed results is generated here, at every build.

* ``reference/cli.md``: the command-line reference, from :func:`alexnet.cli.build_parser` (the parsers
  ``alexnet`` itself uses; building them imports no torch, so the build stays fast).
* ``<!-- generated: experiments-summary DIR -->`` in a page: the claims table of every experiment folder
  under ``DIR`` (:func:`alexnet.experiments.summary.experiment_folders`), from their ``results.json``;
  a folder added there joins the table at the next build.
* ``<!-- generated: demo-table FILE -->``: the demo's table (errors and wall time over the seeds) from
  the results file ``benchmarks/demo_time.py`` wrote.
* ``<!-- generated: fashion-table FILE -->``: the test accuracy of the ``fashion`` recipe on Fashion-MNIST
  per seed and over the seeds, against the dataset's published table and the project's goal, from the
  results file ``benchmarks/fashion_mnist.py`` wrote.
* ``<!-- generated: fashion-search GLOB -->``: the recipe variants ``benchmarks/fashion_mnist.py`` scored
  on a held-out part of the training set (the files GLOB matches), one row each: the table a recipe is
  chosen from before the test set is used.
* ``<!-- include: PATH -->`` or ``<!-- include: PATH ## Heading -->``: a file of the repository (or one
  section of it), e.g. ARCHITECTURE.md as the design page, or a table an experiment wrote into its
  committed report.md.
* Links into the repository outside docs/ (``../benchmarks/results/...``) become links to the file in the
  repository's web view (``[project.urls] Source`` in pyproject.toml); a link to a file that does not
  exist stops the build.
* The "Scale-out" section of the navigation lists the pages of docs/scale-out/ that exist.
"""

from __future__ import annotations

import argparse
import posixpath
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SRC = ROOT / "src"

CLI_PAGE = "reference/cli.md"
SCALE_OUT = ["owt.md", "lars.md", "slurm.md", "streaming.md"]  # their order; any other page follows, sorted
SCALE_OUT_BEFORE = "The paper"  # the section goes before this nav entry
LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)")
GENERATED = re.compile(r"<!-- generated: ([\w-]+) (\S+) -->")
INCLUDE = re.compile(r"<!-- include: (\S+)(?: (#+ [^>]*?))? -->")


class DocsError(Exception):
    """A page that cannot be built as written (a missing file, a missing section)."""


def _error(message: str) -> Exception:
    try:
        from mkdocs.exceptions import PluginError

        return PluginError(message)
    except ImportError:  # the functions below are also used without MkDocs (tests)
        return DocsError(message)


def _checkout_package() -> None:
    """Make ``import alexnet`` read this checkout's src/ (not another installed copy): MkDocs and its
    plugins may reorder sys.path after the hooks are loaded, so this runs before each import."""
    if str(SRC) in sys.path:
        sys.path.remove(str(SRC))
    sys.path.insert(0, str(SRC))
    loaded = sys.modules.get("alexnet")
    if loaded is not None and Path(loaded.__file__ or "").resolve().parent != SRC / "alexnet":
        raise _error(f"alexnet was imported from {loaded.__file__}, not from {SRC}")


# -- the repository's web address ------------------------------------------------------------------


def source_url() -> str:
    """``[project.urls] Source`` from pyproject.toml: where the repository is published."""
    text = (ROOT / "pyproject.toml").read_text()
    m = re.search(r'^Source\s*=\s*"([^"]+)"', text, re.M)
    if not m:
        raise _error("pyproject.toml has no [project.urls] Source")
    return m.group(1).rstrip("/")


# -- the command-line reference ----------------------------------------------------------------------


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _default(action: argparse.Action) -> str:
    if action.default in (None, argparse.SUPPRESS, False) or isinstance(action, argparse._HelpAction):
        return ""
    if action.default is True and action.nargs == 0:
        return ""
    return f"`{action.default}`"


def _name(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"`{action.metavar or action.dest}`"
    names = ", ".join(f"`{o}`" for o in action.option_strings)
    if action.nargs == 0:
        return names
    meta = action.metavar or (("{" + ",".join(map(str, action.choices)) + "}") if action.choices else action.dest.upper())
    if isinstance(meta, tuple):
        meta = " ".join(meta)
    return f"{names} `{meta}`"


def _arguments(parser: argparse.ArgumentParser) -> list[str]:
    formatter = parser._get_formatter()
    rows = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)):
            continue
        if action.help == argparse.SUPPRESS:
            continue
        text = formatter._expand_help(action) if action.help else ""  # %(default)s as --help shows it
        rows.append(f"| {_name(action)} | {_cell(text)} | {_default(action)} |")
    if not rows:
        return []
    return ["| argument | what it does | default |", "|---|---|---|", *rows]


def _subparsers(parser: argparse.ArgumentParser) -> tuple[dict[str, argparse.ArgumentParser], dict[str, str]]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return {}, {}
    return dict(subs[0].choices), {a.dest: a.help or "" for a in subs[0]._choices_actions}


def _command(name: str, p: argparse.ArgumentParser, help_: str, level: int) -> list[str]:
    anchor = name.replace(" ", "-")
    usage = " ".join(p.format_usage().split())
    usage = usage[len("usage: "):] if usage.startswith("usage: ") else usage
    out = ["", f"{'#' * level} `{name}` {{#{anchor}}}", "", _cell(p.description or help_), "",
           "```text", usage, "```", ""]
    out += _arguments(p)
    if p.epilog:
        out += ["", p.epilog]
    children, helps = _subparsers(p)
    for child, cp in children.items():
        out += _command(f"{name} {child}", cp, helps.get(child, ""), level + 1)
    return out


def cli_reference() -> str:
    """The Markdown of the command-line reference, from the parsers ``alexnet`` builds."""
    _checkout_package()
    from alexnet.cli import build_parser

    parser = build_parser()
    commands, helps = _subparsers(parser)
    out = ["# Command-line reference", "",
           "Generated from the argparse parsers of `alexnet` at every build of this site (`docs/hooks.py`), "
           "so it lists exactly what `alexnet COMMAND --help` prints. Every command prints one line and "
           "exits 2 on bad input ([reliability](../reliability.md)).", "",
           "| command | what it does |", "|---|---|"]
    out += [f"| [`alexnet {name}`](#alexnet-{name}) | {_cell(helps.get(name, ''))} |" for name in commands]
    for name, p in commands.items():
        out += _command(f"alexnet {name}", p, helps.get(name, ""), 2)
    return "\n".join(out) + "\n"


# -- generated tables and included files ---------------------------------------------------------------


def experiments_summary(folder: str) -> str:
    """The claims table of the experiment folders under ``folder`` (relative to the repository)."""
    _checkout_package()
    from alexnet.experiments.summary import experiment_folders, table

    folders = experiment_folders(ROOT / folder)
    if not folders:
        raise _error(f"{folder}: no experiment folder with a results.json")
    names = " ".join(f.name for f in folders)
    return (table(folders) + f"\n*Generated at build time from the `results.json`, `protocol.json` and "
            f"`provenance.json` of {names} in `{folder}/`: `python -m alexnet.experiments.summary {folder}` "
            f"prints the same table.*\n")


def _commit(env: dict[str, Any]) -> str:
    """A results file's commit as the tables cite it: the short SHA, marked when the tree was dirty."""
    return f"{str(env.get('git_sha'))[:7]}{' (dirty tree)' if env.get('git_dirty') else ''}"


def _pm(stat: dict[str, float], scale: float = 100.0, digits: int = 1, unit: str = "%") -> str:
    return f"{scale * stat['mean']:.{digits}f} ± {scale * stat['std']:.{digits}f}{unit}"


def demo_numbers(path: str | Path) -> dict[str, str]:
    """The demo's headline numbers as the pages and the README quote them, from ``benchmarks/demo_time.py``'s file."""
    import json

    d = json.loads(Path(path).read_text())
    s = d["summary"]
    return {key: _pm(s[key]) for key in ("val_top1_err_center", "val_top1_err_ten_crop", "val_top5_err_center",
                                          "val_top5_err_ten_crop")} | {"wall_s": _pm(s["wall_s"], 1.0, 0, " s")}


def demo_table(file: str) -> str:
    """The demo's table from a results file of ``benchmarks/demo_time.py`` (relative to the repository)."""
    import json

    path = ROOT / file
    if not path.is_file():
        raise _error(f"{file}: no such results file")
    d = json.loads(path.read_text())
    rows, env, n = d["rows"], d["environment"], demo_numbers(path)
    seeds = ", ".join(str(r["seed"]) for r in rows)

    def each(key: str) -> str:
        return ", ".join(f"{100 * r[key]:.1f}" for r in rows)

    return ("| `alexnet demo --seed S`, S = " + seeds + " | val top-1 err (centre / 10-crop) | "
            "val top-5 err (centre / 10-crop) | wall time |\n|---|--:|--:|--:|\n"
            f"| `alexnet-cifar`, built-in data, paper SGD + crops, flips, PCA noise, annealed | "
            f"**{n['val_top1_err_center']}** / **{n['val_top1_err_ten_crop']}** (seeds: {each('val_top1_err_center')} / "
            f"{each('val_top1_err_ten_crop')}) | {n['val_top5_err_center']} / {n['val_top5_err_ten_crop']} | {n['wall_s']} |\n\n"
            f"*Generated at build time from `{file}`: `{d.get('command')}`, {len(rows)} seeds one after another, "
            f"{env.get('processor')} ({env.get('cpu_count')} cores), Python {env.get('python')}, torch {env.get('torch')}, "
            f"torchvision {env.get('torchvision')}, {env.get('date_utc')}, git {_commit(env)}.*\n")


FASHION_GOAL = 0.93  # the test accuracy published CNNs of the CIFAR net's size reach on Fashion-MNIST


def fashion_numbers(path: str | Path) -> dict[str, Any]:
    """The headline of a ``benchmarks/fashion_mnist.py`` results file as the pages and the README quote
    it: test accuracy mean ± sample std over the seeds, and the mean's distance below the goal with its
    95% t interval (``alexnet.experiments.stats.one_sample``), in points."""
    import json
    import statistics

    _checkout_package()
    from alexnet.experiments.stats import one_sample

    d = json.loads(Path(path).read_text())
    if d.get("scored_on", "official test set") != "official test set":
        raise _error(f"{path}: scored on the {d['scored_on']}, not the test set: not a test accuracy")
    rows = d["rows"]
    acc = [r["test_accuracy_center"] for r in rows]
    below = one_sample([FASHION_GOAL - a for a in acc])
    return {"accuracy": _pm({"mean": statistics.fmean(acc), "std": statistics.stdev(acc) if len(acc) > 1 else 0.0},
                            digits=2),
            "seeds": len(acc), "below_goal": below.text(digits=2).split(", p =")[0],
            # below the goal, above it, or neither, by the interval (one seed: by the mean alone)
            "verdict": ("not reached" if (below.low if below.low is not None else below.diff) > 0 else
                        "reached" if (below.high if below.high is not None else below.diff) < 0 else
                        "not resolved (the interval contains it)")}


def fashion_table(file: str) -> str:
    """The ``fashion`` recipe's test accuracy from a results file of ``benchmarks/fashion_mnist.py``
    (relative to the repository), beside the dataset's published numbers the file records."""
    import json

    path = ROOT / file
    if not path.is_file():
        raise _error(f"{file}: no such results file")
    d = json.loads(path.read_text())
    rows, env, n = d["rows"], d["environment"], fashion_numbers(path)

    def published(v: Any) -> str:
        return f"{100 * v[0]:.1f}–{100 * v[1]:.1f}%" if isinstance(v, list) else f"{100 * v:.1f}%"

    variant = "".join(f", `{o}`" for o in d.get("overrides", []))
    lines = ["| method | test accuracy (10,000 images) | per seed | training time per run |", "|---|--:|--:|--:|",
             f"| `alexnet-cifar`, recipe `fashion` as at git {str(env.get('git_sha'))[:7]}{variant} "
             f"({rows[0]['epochs']} epochs) "
             f"| **{n['accuracy']}** "
             f"({n['seeds']} seeds) | " + ", ".join(f"{100 * r['test_accuracy_center']:.2f}" for r in rows)
             + " | " + ", ".join(f"{r['train_wall_s']:.0f} s" for r in rows) + " |"]
    lines += [f"| {name} (published) | {published(v)} | | |" for name, v in d["published_test_accuracy"].items()]
    goal = (f"the goal, {100 * FASHION_GOAL:.0f}% test accuracy: {n['verdict']}; goal minus the mean "
            f"{n['below_goal']} points (95% t interval over the seeds)")
    return ("\n".join(lines) + f"\n\n{goal[0].upper() + goal[1:]}.\n\n*Generated at build time from `{file}`: "
            f"`{d.get('command')}`, seeds {', '.join(str(r['seed']) for r in rows)} one after another, "
            f"{env.get('processor')} ({env.get('cpu_count')} cores), Python {env.get('python')}, torch {env.get('torch')}, "
            f"{env.get('date_utc')}, git {_commit(env)}.*\n")


def fashion_search(pattern: str) -> str:
    """The recipe variants scored on a held-out part of Fashion-MNIST's training set (results files of
    ``benchmarks/fashion_mnist.py`` matching ``pattern``, relative to the repository), one row each, in
    the order of their held-out accuracy."""
    import json
    import statistics

    files = sorted(ROOT.glob(pattern))
    if not files:
        raise _error(f"{pattern}: matches no results file")
    docs = []
    for f in files:
        d = json.loads(f.read_text())
        if not str(d.get("scored_on", "")).startswith("held-out"):
            raise _error(f"{f.relative_to(ROOT)}: scored on the {d.get('scored_on', 'official test set')}, "
                         "not a held-out part of the training set")
        docs.append((statistics.fmean(r["heldout_accuracy_center"] for r in d["rows"]), f, d))
    lines = ["| overrides of recipe `fashion` | held-out accuracy (last epoch) "
             "| training error on augmented images, last epoch | epochs | seeds | training time per run | git |",
             "|---|--:|--:|--:|--:|--:|--:|"]
    for mean, f, d in sorted(docs, key=lambda t: -t[0]):
        rows = d["rows"]
        sha = str(d["environment"].get("git_sha"))[:7]
        variant = ", ".join(f"`{o}`" for o in d.get("overrides", [])) or f"none (the recipe as at git {sha})"
        lines.append(f"| {variant} | {100 * mean:.2f}% | "
                     + ", ".join(f"{100 * r['train_top1_err_per_epoch'][-1]:.2f}%" for r in rows)
                     + f" | {rows[0]['epochs']} | {', '.join(str(r['seed']) for r in rows)} | "
                     + ", ".join(f"{r['train_wall_s']:.0f} s" for r in rows)
                     + f" | {_commit(d['environment'])} |")
    env = docs[0][2]["environment"]
    dates = sorted(str(d["environment"].get("date_utc")) for _, _, d in docs)  # when each run started
    when = dates[0] if dates[0] == dates[-1] else f"runs started {dates[0]} to {dates[-1]}"
    return ("\n".join(lines) + f"\n\n*Generated at build time from `{pattern}` ({len(files)} files): "
            f"{docs[0][2]['scored_on']}, {docs[0][2]['data']}; {env.get('processor')} ({env.get('cpu_count')} "
            f"cores), torch {env.get('torch')}, {when}.*\n")


GENERATORS = {"experiments-summary": experiments_summary, "demo-table": demo_table, "fashion-table": fashion_table,
              "fashion-search": fashion_search}


def section(text: str, heading: str | None) -> str:
    """``text`` from the line ``heading`` to the next heading of its level or above (the heading left out)."""
    if not heading:
        return text
    level = len(heading) - len(heading.lstrip("#"))
    lines = text.split("\n")
    try:
        start = next(i for i, ln in enumerate(lines) if ln.strip() == heading.strip())
    except StopIteration:
        raise _error(f"no heading {heading!r}") from None
    end = len(lines)
    for i in range(start + 1, len(lines)):
        m = re.match(r"(#+) ", lines[i])
        if m and len(m.group(1)) <= level:
            end = i
            break
    return "\n".join(lines[start + 1:end]).strip("\n") + "\n"


def repo_links(markdown: str, base: Path, url: str) -> str:
    """Links from ``base`` (a folder) to files of the repository outside docs/ become web links; a
    link to a missing file raises. Links into docs/ are left to MkDocs, which checks them."""

    def fix(m: re.Match[str]) -> str:
        bang, label, target = m.groups()
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            return m.group(0)
        path, _, anchor = target.partition("#")
        resolved = (base / path).resolve()
        if resolved == DOCS or DOCS in resolved.parents:
            return m.group(0)
        if not (resolved == ROOT or ROOT in resolved.parents):
            raise _error(f"{target}: a link outside the repository")
        if not resolved.exists():
            raise _error(f"{target}: a link to {resolved.relative_to(ROOT)}, which is not in the repository")
        rel = posixpath.join(*resolved.relative_to(ROOT).parts) if resolved != ROOT else ""
        kind = "raw" if bang else ("tree" if resolved.is_dir() else "blob")
        return f"{bang}[{label}]({url}/{kind}/main/{rel}{'#' + anchor if anchor else ''})"

    return LINK.sub(fix, markdown)


def expand(markdown: str, page_dir: Path, url: str) -> str:
    """Every marker of a page expanded, then its repository links rewritten."""

    def include(m: re.Match[str]) -> str:
        path = (ROOT / m.group(1)).resolve()
        if not path.is_file():
            raise _error(f"include: {m.group(1)} is not a file of the repository")
        body = section(path.read_text(), m.group(2))
        # Its links are relative to its own folder: rewritten from there (docs/ ones made relative to the page).
        body = LINK.sub(lambda k: _rebase(k, path.parent, page_dir), body)
        note = f"\n*From [`{m.group(1)}`]({posixpath.relpath(path, page_dir)}), included at build time.*\n"
        return body + note

    def generate(m: re.Match[str]) -> str:
        if m.group(1) not in GENERATORS:
            raise _error(f"generated: unknown table {m.group(1)!r}; known: {', '.join(GENERATORS)}")
        return GENERATORS[m.group(1)](m.group(2))

    markdown = GENERATED.sub(generate, markdown)
    markdown = INCLUDE.sub(include, markdown)
    return repo_links(markdown, page_dir, url)


def _rebase(m: re.Match[str], src_dir: Path, page_dir: Path) -> str:
    bang, label, target = m.groups()
    if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
        return m.group(0)
    path, sep, anchor = target.partition("#")
    rel = posixpath.relpath((src_dir / path).resolve(), page_dir)
    return f"{bang}[{label}]({rel}{sep}{anchor})"


# -- MkDocs' hooks -----------------------------------------------------------------------------------


def on_config(config: Any) -> Any:
    config["repo_url"] = source_url()
    pages = sorted(p.name for p in (DOCS / "scale-out").glob("*.md")) if (DOCS / "scale-out").is_dir() else []
    pages.sort(key=lambda n: (SCALE_OUT.index(n) if n in SCALE_OUT else len(SCALE_OUT), n))
    nav = config["nav"]
    if pages and not any(isinstance(e, dict) and "Scale-out" in e for e in nav):
        at = next((i for i, e in enumerate(nav) if isinstance(e, dict) and SCALE_OUT_BEFORE in e), len(nav))
        nav.insert(at, {"Scale-out": [f"scale-out/{n}" for n in pages]})
    return config


def on_files(files: Any, config: Any) -> Any:
    from mkdocs.structure.files import File

    files.append(File.generated(config, CLI_PAGE, content=cli_reference()))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    page_dir = (DOCS / page.file.src_uri).parent
    return expand(markdown, page_dir, config["repo_url"])

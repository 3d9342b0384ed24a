"""Hostile and careless input, each ending in one line naming the file or value and the reason,
exit 2, no traceback: YAML that expands to gigabytes or repeats a key, bytes that are not UTF-8,
JSON of the wrong shape, devices this torch lacks, options of the wrong type, statistics that are
not finite, a cache path that is a file, options that cannot take effect, empty paths, and a
setting given two ways. Many cases share one driver process (tests/test_faults.py's)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file
import test_faults
from test_faults import cli, copy_run, ds, image_tree, one_line, run  # noqa: F401 (fixtures)

# tests/test_faults.py's driver, which also reports argparse's refusals (SystemExit 2) as exit codes
DRIVER = test_faults.DRIVER.replace("        except BaseException:", "        except SystemExit as e:\n            rc = e.code\n"
                                    "        except BaseException:")


def drive(cases: list[list[str]]) -> list[dict]:
    r = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(cases)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]

LAUGHS = "\n".join(["a: &a [x, x, x, x, x, x, x, x, x, x]"] + [
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]" for i in range(8)]) + "\nmodel: *i\n"


def _err(case: dict) -> str:
    line = one_line(case["err"], case["rc"])
    assert len(line) < 400, line  # bounded, whatever the value was
    return line


def test_yaml_that_expands_or_repeats_keys_and_bytes_that_are_not_utf8(ds: Path, run: Path, tmp_path: Path) -> None:
    laughs, dup, latin = tmp_path / "laughs.yaml", tmp_path / "dup.yaml", tmp_path / "latin.yaml"
    laughs.write_text(LAUGHS)
    assert len(LAUGHS) < 1500  # a 1.3 KB recipe that would expand to 10^9 strings
    dup.write_text("lr: 0.01\nepochs: 2\nlr: 0.1\n")
    latin.write_bytes("# réglages\nlr: 0.01\n".encode("latin-1"))
    shared = copy_run(run, tmp_path / "shared")
    (shared / "config.yaml").write_text(LAUGHS)
    metrics = copy_run(run, tmp_path / "metrics")
    with open(metrics / "metrics.jsonl", "ab") as f:
        f.write(b'{"epoch": 3, "note": "\xff\xfe"}\n')
    base = ["train", "--data", str(ds), "--model", "lenet5", "--out", str(tmp_path / "never"), "--workers", "0"]
    r = drive([[*base, "--recipe", str(laughs)],
               [*base, "--set", "model_options=" + "{a: &a [1, 1, 1], b: [*a, *a, *a]}"],
               ["train", "--out", str(shared), "--resume", "--workers", "0"],
               [*base, "--recipe", str(dup)],
               [*base, "--recipe", str(latin)],
               ["report", str(metrics)],
               [*base, "--set", "lr=" + "9" * 5000 + "x"]])
    assert f"{laughs}: not valid YAML (aliases are not accepted (*a) at line 2)" in _err(r[0])
    assert "--set 'model_options={a: &a" in _err(r[1]) and "aliases are not accepted (*a)" in r[1]["err"]
    assert f"{shared / 'config.yaml'}: not valid YAML (aliases are not accepted (*a)" in _err(r[2])
    assert f"{dup}: not valid YAML (duplicate key 'lr' at line 3)" in _err(r[3])
    assert f"{latin}: not UTF-8 text (byte 3)" in _err(r[4])
    assert f"{metrics / 'metrics.jsonl'}: not UTF-8 text" in _err(r[5])
    assert "lr='99999" in _err(r[6]) and " ...)" in r[6]["err"]  # the value shown, cut short
    assert not (tmp_path / "never").exists() or not any((tmp_path / "never").iterdir())


def test_devices_options_and_data_files_of_the_wrong_kind(ds: Path, run: Path, tmp_path: Path) -> None:
    listed = shutil.copytree(ds, tmp_path / "listed")
    (listed / "meta.json").write_text("[1, 2, 3]\n")
    nan = shutil.copytree(ds, tmp_path / "nan")
    st = load_file(str(nan / "stats.safetensors"))
    st["mean"][0, 0, 0] = float("nan")
    save_file(st, str(nan / "stats.safetensors"))
    image = _png(tmp_path)
    tree = image_tree(tmp_path / "tree", per_class=2, val_per_class=1)
    base = ["train", "--model", "alexnet-cifar", "--out", str(tmp_path / "never"), "--workers", "0", "--epochs", "1"]
    r = drive([[*base, "--data", str(ds), "--device", "mps"],
               ["predict", str(run), str(image), "--device", "mps"],
               [*base, "--data", str(ds), "--model-opt", "dropout=abc"],
               [*base, "--data", str(listed)],
               [*base, "--data", str(nan)],
               ["evaluate", str(run), "--batch-size", "0"],
               ["prepare", str(tree), "--out", str(tmp_path / "p1"), "--quality", "80", "--encoding", "raw"],
               ["prepare", str(tree), "--out", str(tmp_path / "p2"), "--quality", "80"],
               ["neighbors", str(run), "--query", "0", "--out", str(tmp_path / "n.png"), "--k", "0"]])
    assert "device 'mps': not supported; accepted: auto, cpu, cuda, cuda:N" in _err(r[0])
    assert "device 'mps': not supported" in _err(r[1])
    assert "option dropout='abc' of model 'alexnet-cifar': expected a number (default" in _err(r[2])
    assert f"{listed / 'meta.json'}: not a JSON object" in _err(r[3])
    assert f"{nan / 'stats.safetensors'}: 'mean' holds NaN or infinite values" in _err(r[4])
    assert "argument --batch-size: must be at least 1, not 0" in _err(r[5])
    assert "--quality 80 has no effect with --encoding raw" in _err(r[6])
    assert "--quality 80 has no effect: these 40×40 images are stored raw" in _err(r[7])
    assert "argument --k: must be at least 1, not 0" in _err(r[8])
    assert not (tmp_path / "p1").exists() and not (tmp_path / "p2").exists()


def _png(tmp: Path) -> Path:
    from PIL import Image

    p = tmp / "src.png"
    Image.new("RGB", (36, 36), (120, 30, 200)).save(p)
    return p


def test_empty_paths_and_a_setting_given_two_ways(ds: Path, run: Path, tmp_path: Path) -> None:
    base = ["train", "--data", str(ds), "--model", "lenet5", "--out", str(tmp_path / "never"), "--workers", "0"]
    r = drive([["evaluate", ""],
               ["train", "--data", str(ds), "--out", ""],
               ["prepare", "", "--out", str(tmp_path / "p")],
               ["train", "--data=", "--out", str(tmp_path / "x")],
               [*base, "--lr", "0.1", "--set", "lr=0.2"],
               [*base, "--set", "epochs=1", "--set", "epochs=3"],
               [*base, "--model-opt", "activation=tanh", "--set", "model_options.activation=relu"],
               [*base, "--keep", "1", "--set", "keep_checkpoints=3"],
               [*base, "--no-progress", "--set", "progress=true"]])
    assert _err(r[0]) == "alexnet evaluate: error: argument 2 '': an empty value; give a name or a value"
    assert _err(r[1]) == "alexnet train: error: --out '': an empty value; give a name or a value"
    assert "argument 2 '': an empty value" in _err(r[2])
    assert _err(r[3]) == "alexnet train: error: --data '': an empty value; give a name or a value"
    assert "lr is given twice: --lr and --set lr=0.2; give it once" in _err(r[4])
    assert "--set epochs: given twice" in _err(r[5])
    assert "model option activation is given twice: --model-opt and --set model_options" in _err(r[6])
    assert "keep_checkpoints is given twice: --keep and --set keep_checkpoints=3" in _err(r[7])
    assert "progress is given twice: --no-progress and --set progress=True" in _err(r[8])
    assert not (tmp_path / "never").exists() or not any((tmp_path / "never").iterdir())
    assert [c["rc"] for c in r] == [2] * len(r)


def test_a_cache_path_that_is_a_file_is_named_as_such(tmp_path: Path) -> None:
    a_file = tmp_path / "cache-file"
    a_file.write_text("x")
    rc, _, err = cli(["train", "--data", "synthetic", "--model", "lenet5", "--out", str(tmp_path / "run"), "--epochs", "1",
                      "--workers", "0", "--no-progress"], env={"ALEXNET_CACHE": str(a_file)})
    assert one_line(err, rc) == f"alexnet train: error: ALEXNET_CACHE={a_file}: not a folder (a file is there); point it at a folder"
    assert a_file.read_text() == "x"

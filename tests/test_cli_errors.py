"""The command line on bad input (issue #8): one readable line on stderr and exit status 2, a traceback
only with ``--debug``; argparse's own errors exit 2 with its usage and one error line.

Complements ``tests/test_train.py::test_cli_errors_are_one_line`` (``--root`` missing, a graph naming
unknown concepts, an unknown loss weight, a missing image folder) and its ``counterfactual --do zz=1``.
"""

from __future__ import annotations

import json
import shutil

import pytest

from pyro_causalvae import checkpoint as ckpt
from pyro_causalvae.cli import main

from test_safe_loading import assert_one_line_error, cli, make_run


@pytest.fixture
def run(tmp_path):
    return make_run(tmp_path)


def train_argv(run, out, *extra):
    data = run.parent / "data"
    return ["train", "--dataset", "folder", "--root", data, "--labels", data / "labels.csv", "--out", out, "--epochs", "1",
            "--batch-size", "8", "--style-dim", "2", "--no-progress", *extra]


def assert_argparse_error(code, err, pattern):
    assert code == 2 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert lines[0].startswith("usage: pyro-causalvae") and "error:" in lines[-1], err
    assert pattern in lines[-1], err


# ---------------------------------------------------------------------------------------------------
# run directories and data files
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", [["evaluate"], ["intervene"], ["counterfactual", "--do", "a=1"]])
def test_missing_run_directory(tmp_path, capsys, command):
    code, err = cli([command[0], tmp_path / "no-such-run", *command[1:]], capsys)
    assert_one_line_error(code, err, "no-such-run", "does not exist")


def test_run_directory_without_a_checkpoint_or_config(run, capsys):
    ckpt.checkpoints(run)[0].unlink()
    assert_one_line_error(*cli(["evaluate", run], capsys), r"no checkpoint-\*\.pt")
    (run / "config.json").unlink()
    assert_one_line_error(*cli(["evaluate", run], capsys), "missing config.json")


def test_missing_data_files_of_a_run(run, capsys):
    data = run.parent / "data"
    (data / "labels.csv").unlink()
    assert_one_line_error(*cli(["evaluate", run], capsys), "label CSV file not found")
    shutil.rmtree(data)
    assert_one_line_error(*cli(["counterfactual", run, "--do", "a=1"], capsys), "not found")


# ---------------------------------------------------------------------------------------------------
# queries: --do, --concept, --values, --sweep, --index, --image
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "do, match",
    [
        ("a:1", r"--do 'a:1' must be CONCEPT=VALUE"),
        ("a", r"must be CONCEPT=VALUE"),
        ("a=abc", r"'abc' is not a number"),
        ("a=", r"'' is not a number"),
        ("a=nan", r"do\['a'\] is not finite"),
        ("a=inf", r"do\['a'\] is not finite"),
        ("a=1e40", r"do\['a'\] is not finite"),
        ("zz=1", r"unknown concept 'zz'.*concepts are \['a', 'b', 'c'\]"),
        ("=1", r"unknown concept ''"),
    ],
)
def test_counterfactual_bad_do(run, capsys, do, match):
    assert_one_line_error(*cli(["counterfactual", run, "--do", do], capsys), match)


def test_counterfactual_same_concept_twice_is_refused(run, capsys):
    assert_one_line_error(*cli(["counterfactual", run, "--do", "a=1", "--do", "a=2"], capsys), r"--do a is given twice")


def test_counterfactual_without_do_is_an_argparse_error(run, capsys):
    assert_argparse_error(*cli(["counterfactual", run], capsys), "the following arguments are required: --do")


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--concept", "zz"], r"unknown concept 'zz'"),
        (["--concept", "a", "--values", "nan"], r"do\['a'\] is not finite"),
        (["--concept", "a", "--concept", "b", "--values", "1"], r"--values applies to one --concept"),
        (["--values", "1"], r"--values applies to one --concept"),
        (["--sweep", "0"], r"--sweep .*0"),
        (["--sweep", "-2"], r"--sweep .*-2"),
    ],
)
def test_intervene_bad_arguments(run, capsys, extra, match):
    assert_one_line_error(*cli(["intervene", run, *extra], capsys), match)


def test_intervene_non_numeric_value_is_an_argparse_error(run, capsys):
    assert_argparse_error(*cli(["intervene", run, "--concept", "a", "--values", "abc"], capsys), "invalid float value: 'abc'")


@pytest.mark.parametrize("index", ["8", "-1", "1000"])
def test_index_out_of_range(run, capsys, index):
    assert_one_line_error(*cli(["counterfactual", run, "--do", "a=1", "--index", index], capsys),
                          rf"--index {index} is out of range: the run's data has 8 images")


def test_bad_image_files(run, tmp_path, capsys):
    from PIL import Image

    assert_one_line_error(*cli(["counterfactual", run, "--do", "a=1", "--image", tmp_path / "nope.png"], capsys),
                          "cannot read image file .*nope.png")
    (tmp_path / "text.png").write_text("not an image")
    assert_one_line_error(*cli(["intervene", run, "--image", tmp_path / "text.png"], capsys), "cannot read image file")
    Image.new("RGB", (8, 8)).save(tmp_path / "small.png")
    assert_one_line_error(*cli(["counterfactual", run, "--do", "a=1", "--image", tmp_path / "small.png"], capsys),
                          r"has shape \(3, 8, 8\) but the model expects \(3, 16, 16\)")


# ---------------------------------------------------------------------------------------------------
# argparse errors, --debug, Ctrl-C
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv, pattern",
    [
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        ([], "the following arguments are required: command"),
        (["evaluate"], "the following arguments are required: run_dir"),
        (["evaluate", "x", "--bogus"], "unrecognized arguments: --bogus"),
        (["train", "--dataset", "mnist", "--out", "x"], "invalid choice: 'mnist'"),
        (["train", "--dataset", "pendulum", "--out", "x", "--epochs", "two"], "invalid int value: 'two'"),
        (["counterfactual", "x", "--do", "a=1", "--index", "first"], "invalid int value: 'first'"),
    ],
)
def test_argparse_errors_exit_2_without_traceback(capsys, argv, pattern):
    assert_argparse_error(*cli(argv, capsys), pattern)


@pytest.mark.parametrize("where", ["after", "before"])
def test_debug_shows_the_traceback(tmp_path, capsys, where):
    """``--debug`` after the command (the subcommand's flag) or before it (the top-level flag)."""
    argv = ["evaluate", str(tmp_path / "nope"), "--debug"] if where == "after" else ["--debug", "evaluate", str(tmp_path / "nope")]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        main(argv)


def test_interrupt_exits_130(run, capsys, monkeypatch):
    import pyro_causalvae.cli as cli_module

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_module, "run_evaluate", interrupted)
    code, err = cli(["evaluate", run], capsys)
    assert code == 130 and err.strip() == "interrupted"


# ---------------------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "extra, match",
    [
        (["--epochs", "0"], "epochs must be a positive integer, got 0"),
        (["--batch-size", "-1"], "batch_size must be a positive integer"),
        (["--lr", "nan"], "lr must be a positive finite number, got nan"),
        (["--style-dim", "-1", "--graph", "a->b"], "style_dim must be a non-negative integer"),
        ([], r"--graph learn .* needs at least 16; .*labels.csv' has 7\. Give the graph with --graph FILE"),
        (["--weight", "kl=nan"], "loss weight kl must be a finite number"),
        (["--weight", "kl"], "--weight 'kl' must be NAME=VALUE"),
        (["--graph", "a-b"], "--graph 'a-b' is neither a file nor edges written parent->child"),
        (["--graph", "a->b,b-c"], "edge 'b-c' must be written parent->child"),
        (["--graph", "missing.csv"], "--graph file not found: 'missing.csv'"),
        (["--true-graph", "a->zz"], r"--true-graph 'a->zz': graph has node\(s\) \['zz'\] that are not concepts"),
        (["--test-fraction", "1"], r"test fraction must be a number in \[0, 1\), got 1\.0"),
        (["--concepts", "a,q"], r"no concept column\(s\) \['q'\]"),
        (["--image-column", "img"], r"has no column 'img' \(the image column given\)"),
        (["--graph", "a->b,b->a"], "cycle: a -> b -> a"),
        (["--graph", "true"], "this dataset has no known graph; give it with --true-graph FILE"),
        (["--size", "16"], "--size does not apply to --dataset folder"),
        (["--device", "gpu"], r"device.*'gpu'"),
        (["--device", "meta"], r"device.*'meta'"),
        (["--seed", "-1"], r"(?i)seed"),
        (["--graph", "a->b", "--object", "a,zz"], r"decoder_groups must name concepts.*unknown \['zz'\]"),
        (["--graph", "a->b", "--object", "a,b", "--object", "b,c"], r"more than once \['b'\]"),
        (["--graph", "a->b", "--decoder", "joint", "--object", "a,b"], "--object needs --decoder composite or layered"),
    ],
)
def test_train_bad_settings(run, tmp_path, capsys, extra, match):
    out = tmp_path / "new-run"
    assert_one_line_error(*cli(train_argv(run, out, *extra), capsys), match)
    assert not ckpt.checkpoints(out)  # refused before any training


@pytest.mark.parametrize(
    "content, match",
    [
        ("{oops", r"edges\.json"),
        ('{"nodes": ["a"]}', r"edges\.json"),
        ("[1, 2]", r"edges\.json"),
        ('[["a", "b", "c"]]', r"edges\.json|pair"),
    ],
)
def test_train_bad_graph_json_file(run, tmp_path, capsys, content, match):
    (tmp_path / "edges.json").write_text(content)
    out = tmp_path / "new-run"
    assert_one_line_error(*cli(train_argv(run, out, "--graph", tmp_path / "edges.json"), capsys), match)


def test_train_bad_threshold_is_refused_before_training(run, tmp_path, capsys):
    out = tmp_path / "new-run"
    assert_one_line_error(*cli(train_argv(run, out, "--graph", "a->b,b->c", "--threshold", "nan"), capsys), "threshold")
    assert not ckpt.checkpoints(out)


def test_train_into_an_existing_run_or_a_file(run, tmp_path, capsys):
    assert_one_line_error(*cli(train_argv(run, run), capsys), "already holds checkpoints")
    (tmp_path / "a-file").write_text("x")
    assert_one_line_error(*cli(train_argv(run, tmp_path / "a-file"), capsys), "a-file")


def test_train_celeba_missing_folder_is_one_line(tmp_path, capsys):
    code, err = cli(["train", "--dataset", "celeba", "--root", tmp_path / "celeba", "--out", tmp_path / "r"], capsys)
    assert_one_line_error(code, err, "CelebA folder not found", "img_align_celeba", "list_attr_celeba.txt")


def test_train_object_groups_reach_the_model(run, tmp_path, capsys):
    out = tmp_path / "objects"
    code, err = cli(train_argv(run, out, "--graph", "a->b,b->c", "--object", "c, a"), capsys)
    assert code == 0, err
    model = json.loads((out / "config.json").read_text())["model"]
    assert model["decoder"] == "layered" and model["decoder_groups"] == [["c", "a"], ["b"]]

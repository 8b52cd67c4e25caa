"""Every error the command line can reach: one line ``pyro-causalvae: error: ...`` on stderr and exit
status 2, in a real process of its own (issue 16, item 5).

The cases are those of issue 16 (hostile files, overwritten folders, concurrent runs, resume settings,
full disks, memory limits, oversized inputs, malformed checkpoints and configs) and of the tables in
docs/hardening.md. They all run in one subprocess, ``tests/cli_runner.py``, which imports the package
once and forks one child process per case (a case costs a fork, not an interpreter start-up). The data
are tiny (16 images of 16x16 pixels; a real run is trained once, 2 steps).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hostile import eps_named_png, fake_ghostscript, png_header_only
from test_safe_loading import Payload, make_run, tiny_dataset

from pyro_causalvae import checkpoint as ckpt
from pyro_causalvae.cli import main
from pyro_causalvae.rundir import RunLock

HERE = Path(__file__).resolve().parent
ONE_LINE = re.compile(r"^pyro-causalvae: error: [^\n]+\n?$")


def train_args(data: Path, out: Path, *extra, graph: str = "a->b,b->c") -> list[str]:
    return ["train", "--dataset", "folder", "--root", str(data), "--labels", str(data / "labels.csv"), "--out", str(out),
            "--epochs", "1", "--batch-size", "8", "--style-dim", "2", "--graph", graph, "--no-progress", *map(str, extra)]


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _poison(state: dict, value: float) -> None:
    """Fill the first weight of the model's state with ``value`` (NaN or inf)."""
    name = next(k for k, v in state["model"].items() if torch.is_tensor(v) and k.endswith("weight"))
    state["model"][name].fill_(value)


def _edit_state(run: Path, edit) -> None:
    path = ckpt.latest_checkpoint(run)
    state = torch.load(path, weights_only=True)
    edit(state)
    torch.save(state, path)


class World:
    """The files the cases use, built once."""

    def __init__(self, root: Path):
        self.root = root
        self.data = root / "data"
        tiny_dataset(n=16).to_folder(self.data)
        (root / "q").mkdir()
        self.q = make_run(root / "q")  # a run to query (hand-built: config.json + a checkpoint)
        self.base = root / "base"  # a run trained by the CLI (2 steps), to resume
        assert main(train_args(self.data, self.base)) == 0
        self.marker = root / "ghostscript-ran"
        self.gs_env = fake_ghostscript(root / "bin", self.marker)
        self.evil = eps_named_png(root / "evil.png")
        self.bomb = png_header_only(root / "bomb.png", 30000, 30000)
        self.big = png_header_only(root / "big.png", 9000, 9000)  # under Pillow's limits, over ours

    def folder_with(self, name: str, index: int, make) -> Path:
        d = _copy(self.data, self.root / name)
        target = d / f"{index:05d}.png"
        target.unlink()
        make(target)
        return d

    def run_copy(self, name: str, edit_state=None, edit_config=None, src: Path | None = None) -> Path:
        run = _copy(src or self.base, self.root / name)
        if edit_state is not None:
            _edit_state(run, edit_state)
        if edit_config is not None:
            _edit_json(run / "config.json", edit_config)
        return run


def build_cases(w: World) -> dict[str, dict]:
    """name -> {"argv", "pattern", and optionally "env", "fsize", "code"}."""
    r = w.root
    data, q, base = w.data, w.q, w.base
    cases: dict[str, dict] = {}

    def add(name, argv, pattern, **kw):
        cases[name] = {"argv": [str(a) for a in argv], "pattern": pattern, **kw}

    # --- hostile image files --------------------------------------------------------------------
    add("eps-as-png-image", ["counterfactual", q, "--do", "a=1", "--image", w.evil], r"evil\.png.*not a PNG, JPEG, BMP, TIFF or WEBP",
        env=w.gs_env)
    evil_dir = w.folder_with("evil-data", 0, lambda t: eps_named_png(t))
    add("eps-in-data-folder", train_args(evil_dir, r / "o-evil"), r"00000\.png.*not a PNG", env=w.gs_env)
    add("bomb-image", ["intervene", q, "--image", w.bomb], r"bomb\.png.*decompression bomb")
    add("big-image", ["counterfactual", q, "--do", "a=1", "--image", w.big], r"declares 9000x9000 pixels, more than the limit")
    bomb_dir = w.folder_with("bomb-data", 1, lambda t: png_header_only(t, 30000, 30000))
    add("bomb-in-data-folder", train_args(bomb_dir, r / "o-bomb"), r"00001\.png.*decompression bomb")
    outside = r / "outside"
    outside.mkdir()
    shutil.copy(data / "00002.png", outside / "secret.png")
    link_dir = w.folder_with("link-data", 2, lambda t: t.symlink_to(outside / "secret.png"))
    add("symlink-out-of-folder", train_args(link_dir, r / "o-link"), r"00002\.png.*symbolic link to .*secret\.png', outside the image folder.*--follow-symlinks")
    long_dir = _copy(data, r / "long-csv")
    lines = (long_dir / "labels.csv").read_text().splitlines()
    lines[3] = lines[3] + "x" * 140_000
    (long_dir / "labels.csv").write_text("\n".join(lines) + "\n")
    add("csv-cell-too-long", train_args(long_dir, r / "o-long"), r"labels\.csv.*line \d+: field larger than field limit")

    # --- numeric settings out of range ------------------------------------------------------------
    add("lr-1e39", train_args(data, r / "o-lr", "--lr", "1e39"), r"lr must be at most 1 .*got 1e\+39")
    add("lr-nan", train_args(data, r / "o-lrn", "--lr", "nan"), r"lr must be a positive finite number, got nan")
    add("epochs-huge", train_args(data, r / "o-ep", "--epochs", "10000000"), r"epochs must be at most 100000")
    add("epochs-0", train_args(data, r / "o-ep0", "--epochs", "0"), r"epochs must be a positive integer, got 0")
    add("batch-negative", train_args(data, r / "o-bs", "--batch-size", "-1"), r"batch_size must be a positive integer")
    add("weight-huge", train_args(data, r / "o-w", "--weight", "kl=1e30"), r"loss weight kl must be at most 1e\+06")
    add("weight-nan", train_args(data, r / "o-wn", "--weight", "kl=nan"), r"loss weight kl must be a finite number")
    add("keep-last-0", train_args(data, r / "o-kl", "--keep-last", "0"), r"keep_last must be a positive integer")
    add("checkpoint-every-negative", train_args(data, r / "o-ce", "--checkpoint-every", "-1"), r"checkpoint_every must be a non-negative integer")
    add("checkpoint-interval-0", train_args(data, r / "o-ci", "--checkpoint-interval", "0"), r"checkpoint_interval must be a number of seconds")
    add("peer-timeout-huge", train_args(data, r / "o-pt", "--peer-timeout", "1e9"), r"peer_timeout must be a number of seconds")
    add("workers-huge", train_args(data, r / "o-wk", "--workers", "100000"), r"num_workers must be at most 256")
    add("seed-negative", train_args(data, r / "o-sd", "--seed", "-1"), r"seed must be an integer in \[0, 2\*\*32 - 1\]")
    add("size-huge", ["train", "--dataset", "pendulum", "--size", "100000", "--out", r / "o-sz", "--no-progress"],
        r"--size must be an integer in \[16, 1024\]")
    add("size-over-memory", ["train", "--dataset", "pendulum", "--size", "1024", "--out", r / "o-sz2", "--no-progress"],
        r"--dataset pendulum --size 1024 .* needs .* more than the budget", env={"PYRO_CAUSALVAE_MEMORY_LIMIT": "1G"})
    add("style-dim-huge", train_args(data, r / "o-cd", "--style-dim", str(10**100)), r"model field 'style_dim' = 1e\+100 is out of range")
    add("sweep-3000", ["intervene", q, "--sweep", "3000"], r"--sweep must be >= 1 and at most 100, got 3000")
    add("sweep-0", ["intervene", q, "--sweep", "0"], r"--sweep must be >= 1 and at most 100, got 0")
    add("values-too-many", ["intervene", q, "--concept", "a", "--values", *["0.5"] * 101], r"--values takes at most 100 values")
    add("threshold-nan", train_args(data, r / "o-th", "--threshold", "nan"), r"--threshold must be a finite number >= 0, got nan")

    # --- memory ---------------------------------------------------------------------------------------
    add("decoded-images-over-budget", train_args(data, r / "o-mem"), r"decoding \d+ images of 16x16 pixels .* needs [\d.]+ KB of memory, more than the budget",
        env={"PYRO_CAUSALVAE_MEMORY_LIMIT": "4K"})
    add("model-over-budget", train_args(data, r / "o-mem2", "--style-dim", "30000"), r"the command line: the model \(style_dim=30000.*needs .* more than the budget",
        env={"PYRO_CAUSALVAE_MEMORY_LIMIT": "40M"})
    add("memory-env-malformed", train_args(data, r / "o-mem3"), r"PYRO_CAUSALVAE_MEMORY_LIMIT='lots' must be a number of bytes",
        env={"PYRO_CAUSALVAE_MEMORY_LIMIT": "lots"})

    # --- --out, locks --------------------------------------------------------------------------------
    mine = r / "mine"
    mine.mkdir()
    (mine / "config.json").write_text('{"my": "own settings"}')
    (mine / "losses.png").write_bytes(b"my figure")
    (mine / "notes.txt").write_text("mine")
    add("out-not-a-run", train_args(data, mine), r"out_dir .*mine is not empty and is not a run of pyro_causalvae: training would overwrite config\.json, losses\.png there; .*--force")
    other = r / "other-files"
    other.mkdir()
    (other / "a.txt").write_text("x")
    add("out-other-files", train_args(data, other), r"is not empty and is not a run of pyro_causalvae: it holds 1 other file\(s\) \(a\.txt\)")
    (r / "a-file").write_text("x")
    add("out-is-a-file", train_args(data, r / "a-file"), r"a-file exists and is not a directory")
    add("out-holds-checkpoints", train_args(data, base), r"already holds checkpoints; pass --resume")
    locked = w.run_copy("locked")
    add("locked-run", train_args(data, locked, "--resume", "--epochs", "2"), rf"is in use by another training \(PID {os.getpid()} on host")
    cases["locked-run"]["lock"] = str(locked)

    # --- resume ----------------------------------------------------------------------------------------
    add("resume-other-seed", train_args(data, w.run_copy("r-seed"), "--resume", "--epochs", "2", "--seed", "7"),
        r"cannot resume .* with other settings than the run's: seed \(the run: 0, now: 7\)")
    add("resume-other-graph", train_args(data, w.run_copy("r-graph"), "--resume", "--epochs", "2", graph="a->c"),
        r"cannot resume .*: graph \(the run: .*\[\"a\", \"b\"\].*now: .*\[\"a\", \"c\"\]")
    add("resume-no-optim", train_args(data, w.run_copy("r-optim", lambda s: s.pop("optim")), "--resume", "--epochs", "2"),
        r"checkpoint-\d+\.pt has no optimiser state \(field 'optim'\): it can be queried but not resumed")
    add("resume-no-history", train_args(data, w.run_copy("r-hist", lambda s: s.pop("history")), "--resume", "--epochs", "2"),
        r"checkpoint-\d+\.pt: field 'history' must be a list")
    add("resume-batch-negative", train_args(data, w.run_copy("r-batch", lambda s: s.update(batch=-3)), "--resume", "--epochs", "2"),
        r"checkpoint-\d+\.pt: field 'batch' must be an integer >= 0, got -3")
    add("resume-epoch-string", train_args(data, w.run_copy("r-epoch", lambda s: s.update(epoch="abc")), "--resume", "--epochs", "2"),
        r"checkpoint-\d+\.pt: field 'epoch' must be an integer >= 0, got 'abc'")
    add("resume-sums-shape", train_args(data, w.run_copy("r-sums", lambda s: s.update(sums=torch.zeros(2))), "--resume", "--epochs", "2"),
        r"checkpoint-\d+\.pt: field 'sums' must be a float tensor of shape")
    add("resume-nan-parameter", train_args(data, w.run_copy("r-nan", lambda s: _poison(s, float("nan"))), "--resume", "--epochs", "2"),
        r"checkpoint-\d+\.pt: field 'model' holds non-finite values in \S+weight \(a diverged run\)")
    add("resume-state-mismatch", train_args(data, w.run_copy("r-mismatch", edit_config=lambda c: c["model"].update(hidden=32)), "--resume", "--epochs", "2"),
        r"checkpoint-\d+\.pt does not match \S*config\.json: .*size mismatch")  # --resume builds the run's own widths
    add("resume-config-hidden-1e100", train_args(data, w.run_copy("r-huge", edit_config=lambda c: c["model"].update(hidden=10**100)),
                                                 "--resume", "--epochs", "2"),
        r"the command line and \S*config\.json: model field 'hidden' = 1e\+100 is out of range \(at most 65536\)")

    # --- disk full -------------------------------------------------------------------------------------
    add("disk-full", train_args(data, r / "o-full"), r"cannot write .*checkpoint-0000000\d\.pt: file too large \(a file-size limit\) \(EFBIG\).*the files already in that folder are intact",
        fsize=200_000)

    # --- malformed run directories for the queries -------------------------------------------------------
    add("config-hidden-1e100", ["evaluate", w.run_copy("c-hidden", src=q, edit_config=lambda c: c["model"].update(hidden=10**100))],
        r"config\.json: model field 'hidden' = 1e\+100 is out of range")
    add("config-channels-1e12", ["intervene", w.run_copy("c-chan", src=q, edit_config=lambda c: c["model"].update(channels=10**12))],
        r"config\.json: model field 'channels' = 1e\+12 is out of range")
    add("config-over-memory", ["evaluate", w.run_copy("c-mem", src=q, edit_config=lambda c: c["model"].update(hidden=4096, channels=512))],
        r"config\.json: the model \(.*channels=512, hidden=4096.*\) needs [0-9.]+ MB of memory, more than the budget of 100\.0 MB",
        env={"PYRO_CAUSALVAE_MEMORY_LIMIT": "100M"})
    add("config-not-json", ["evaluate", w.run_copy("c-json", src=q)], r"config\.json is not valid JSON")
    (r / "c-json" / "config.json").write_text("{oops")
    add("config-no-model", ["evaluate", w.run_copy("c-nomodel", src=q, edit_config=lambda c: c.pop("model"))],
        r'config\.json must be a JSON object with a "model" section')
    add("config-data-string", ["evaluate", w.run_copy("c-data", src=q, edit_config=lambda c: c.update(data="pendulum"))],
        r'the "data" section must be a JSON object, got str')
    add("config-unknown-key", ["evaluate", w.run_copy("c-key", src=q, edit_config=lambda c: c["model"].update(bogus=1))],
        r"config\.json: model config has missing key\(s\) \[\] and unknown key\(s\) \['bogus'\]")
    add("checkpoint-not-a-dict", ["evaluate", w.run_copy("k-list", src=q)], r"is not a checkpoint written by fit")
    torch.save([1, 2], ckpt.latest_checkpoint(r / "k-list"))
    add("checkpoint-epoch-negative", ["evaluate", w.run_copy("k-epoch", src=q, edit_state=lambda s: s.update(epoch=-1))],
        r"checkpoint-\d+\.pt: field 'epoch' must be an integer >= 0, got -1")
    add("checkpoint-nan-parameter", ["counterfactual", w.run_copy("k-nan", src=q, edit_state=lambda s: _poison(s, float("inf"))), "--do", "a=1"],
        r"field 'model' holds non-finite values in \S+weight")
    add("checkpoint-pickle", ["evaluate", w.run_copy("k-pickle", src=q)], r"refusing to load .*checkpoint-\d+\.pt: it is not a plain-tensor checkpoint")
    torch.save({"model": Payload(r / "pwned")}, ckpt.latest_checkpoint(r / "k-pickle"))
    add("checkpoint-truncated", ["evaluate", w.run_copy("k-trunc", src=q)], r"refusing to load")
    path = ckpt.latest_checkpoint(r / "k-trunc")
    path.write_bytes(path.read_bytes()[:100])

    # --- the tables of docs/hardening.md (command line) -------------------------------------------------
    add("missing-run", ["evaluate", r / "no-such-run"], r"run directory .*no-such-run does not exist")
    add("run-without-checkpoint", ["evaluate", w.run_copy("no-ckpt", src=q)], r"no checkpoint-\*\.pt in")
    ckpt.latest_checkpoint(r / "no-ckpt").unlink()
    add("do-no-equals", ["counterfactual", q, "--do", "a:1"], r"--do 'a:1' must be CONCEPT=VALUE")
    add("do-not-a-number", ["counterfactual", q, "--do", "a=abc"], r"--do 'a=abc': 'abc' is not a number")
    add("do-nan", ["counterfactual", q, "--do", "a=nan"], r"do\['a'\] is not finite \(as float32\): nan")
    add("do-unknown", ["counterfactual", q, "--do", "zz=1"], r"unknown concept 'zz' in do")
    add("do-twice", ["counterfactual", q, "--do", "a=1", "--do", "a=2"], r"--do a is given twice")
    add("values-several-concepts", ["intervene", q, "--values", "1"], r"--values applies to one --concept")
    add("index-out-of-range", ["counterfactual", q, "--do", "a=1", "--index", "8"], r"--index 8 is out of range")
    add("image-missing", ["counterfactual", q, "--do", "a=1", "--image", r / "nope.png"], r"cannot read image file .*nope\.png")
    add("query-out-suffix", ["intervene", q, "--out", data / "labels.csv"], r"--out .*labels\.csv must name a \.png file")
    add("evaluate-out-suffix", ["evaluate", q, "--out", r / "metrics.txt"], r"--out .*metrics\.txt must name a \.json file")
    add("graph-cycle", train_args(data, r / "o-cyc", graph="a->b,b->a"), r"cycle: a -> b -> a")
    add("graph-bad-edge", train_args(data, r / "o-edge", graph="a-b"), r"--graph 'a-b' is neither a file nor edges written parent->child")
    add("graph-true-unknown", train_args(data, r / "o-true", graph="true"), r"--graph true: this dataset has no known graph")
    add("weight-no-value", train_args(data, r / "o-wv", "--weight", "kl"), r"--weight 'kl' must be NAME=VALUE")
    add("weight-unknown", train_args(data, r / "o-wu", "--weight", "foo=1"), r"unknown loss weight 'foo'")
    add("device-gpu", train_args(data, r / "o-dev", "--device", "gpu"), r"device must be 'cpu', 'cuda' or 'cuda:N', got 'gpu'")
    add("size-on-folder", train_args(data, r / "o-size", "--size", "16"), r"--size does not apply to --dataset folder")
    add("folder-without-root", ["train", "--dataset", "folder", "--out", r / "o-nr"], r"--dataset folder needs --labels LABELS.csv \(and --root IMAGE_FOLDER unless")
    add("celeba-missing", ["train", "--dataset", "celeba", "--root", r / "celeba", "--out", r / "o-cel"], r"CelebA folder not found")
    return cases


DEBUG_CASES = ["missing-run", "resume-no-optim", "bomb-image"]
ARGPARSE = [(["frobnicate"], "invalid choice: 'frobnicate'"), (["evaluate", "x", "--bogus"], "unrecognized arguments: --bogus"),
            (["train", "--dataset", "pendulum", "--out", "x", "--epochs", "two"], "invalid int value: 'two'")]


def _debug_variants(case: dict) -> list[list[str]]:
    argv = case["argv"]
    return [["--debug", *argv], [argv[0], "--debug", *argv[1:]], [*argv, "--debug"]]


@pytest.fixture(scope="module")
def walked(tmp_path_factory):
    """Build every case, run them all in tests/cli_runner.py, return ``{name: (case, result)}``."""
    w = World(tmp_path_factory.mktemp("walk"))
    cases = build_cases(w)
    names = list(cases)
    runs = [cases[n] for n in names]
    for n in DEBUG_CASES:
        runs += [{**cases[n], "argv": v} for v in _debug_variants(cases[n])]
    runs += [{"argv": a} for a, _ in ARGPARSE]
    spec = w.root / "cases.json"
    spec.write_text(json.dumps([{k: c[k] for k in ("argv", "env", "fsize") if k in c} for c in runs]))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE)]), "OMP_NUM_THREADS": "1"}
    env.pop("PYRO_CAUSALVAE_MEMORY_LIMIT", None)
    locks = [RunLock(c["lock"]) for c in runs if "lock" in c]  # held by this process: another live training
    try:
        proc = subprocess.run([sys.executable, str(HERE / "cli_runner.py"), str(spec), str(w.root / "results.json")],
                              env=env, capture_output=True, text=True, timeout=900)
    finally:
        for lock in locks:
            lock.release()
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((w.root / "results.json").read_text())
    return w, names, cases, results


def _names():
    return [
        # kept in step with build_cases (checked by test_every_case_is_walked)
        "eps-as-png-image", "eps-in-data-folder", "bomb-image", "big-image", "bomb-in-data-folder", "symlink-out-of-folder",
        "csv-cell-too-long", "lr-1e39", "lr-nan", "epochs-huge", "epochs-0", "batch-negative", "weight-huge", "weight-nan",
        "keep-last-0", "checkpoint-every-negative", "checkpoint-interval-0", "peer-timeout-huge", "workers-huge",
        "seed-negative", "size-huge", "size-over-memory", "style-dim-huge", "sweep-3000", "sweep-0", "values-too-many",
        "threshold-nan", "decoded-images-over-budget", "model-over-budget", "memory-env-malformed", "out-not-a-run",
        "out-other-files", "out-is-a-file", "out-holds-checkpoints", "locked-run", "resume-other-seed", "resume-other-graph",
        "resume-no-optim", "resume-no-history", "resume-batch-negative", "resume-epoch-string", "resume-sums-shape",
        "resume-nan-parameter", "resume-state-mismatch", "resume-config-hidden-1e100", "disk-full", "config-hidden-1e100", "config-channels-1e12",
        "config-over-memory", "config-not-json", "config-no-model", "config-data-string", "config-unknown-key",
        "checkpoint-not-a-dict", "checkpoint-epoch-negative", "checkpoint-nan-parameter", "checkpoint-pickle",
        "checkpoint-truncated", "missing-run", "run-without-checkpoint", "do-no-equals", "do-not-a-number", "do-nan",
        "do-unknown", "do-twice", "values-several-concepts", "index-out-of-range", "image-missing", "query-out-suffix",
        "evaluate-out-suffix", "graph-cycle", "graph-bad-edge", "graph-true-unknown", "weight-no-value", "weight-unknown",
        "device-gpu", "size-on-folder", "folder-without-root", "celeba-missing",
    ]


def test_every_case_is_walked(walked):
    _, names, _, _ = walked
    assert names == _names()


@pytest.mark.parametrize("name", _names())
def test_cli_error_is_one_line_exit_2(walked, name):
    w, names, cases, results = walked
    case, res = cases[name], results[names.index(name)]
    assert res["code"] == 2, (name, res["code"], res["err"][-2000:])
    assert ONE_LINE.match(res["err"]), (name, res["err"][-2000:])
    assert re.search(case["pattern"], res["err"]), (name, case["pattern"], res["err"])
    assert "Traceback" not in res["err"]
    assert not w.marker.exists(), "the stand-in Ghostscript was run"
    assert not (w.root / "pwned").exists(), "a planted pickle was run"


def test_refused_runs_left_the_files_as_they_were(walked):
    w, names, cases, results = walked
    assert (w.root / "mine" / "config.json").read_text() == '{"my": "own settings"}'
    assert (w.root / "mine" / "losses.png").read_bytes() == b"my figure"
    assert sorted(p.name for p in (w.root / "mine").iterdir()) == ["config.json", "losses.png", "notes.txt"]
    assert not list((w.root / "o-full").glob("checkpoint-*")) and not list((w.root / "o-full").glob(".*.tmp"))
    for name in ("r-seed", "r-graph"):  # a refused resume rewrites nothing
        assert (w.root / name / "config.json").read_text() == (w.base / "config.json").read_text()


@pytest.mark.parametrize("name", DEBUG_CASES)
def test_debug_anywhere_shows_the_traceback(walked, name):
    w, names, cases, results = walked
    start = len(names) + 3 * DEBUG_CASES.index(name)
    for res in results[start:start + 3]:
        assert res["code"] == 1 and "Traceback (most recent call last)" in res["err"], res["err"][-1500:]


def test_argparse_errors_are_usage_and_one_line(walked):
    w, names, cases, results = walked
    for (argv, pattern), res in zip(ARGPARSE, results[-len(ARGPARSE):], strict=True):
        lines = res["err"].strip().splitlines()
        assert res["code"] == 2 and lines[0].startswith("usage: pyro-causalvae") and pattern in lines[-1], res["err"]


def test_the_real_entry_point(tmp_path):
    """One case through ``python -m pyro_causalvae`` itself (the runner forks from an imported package)."""
    env = {**os.environ, "PYTHONPATH": str(HERE.parent), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "pyro_causalvae", "intervene", str(tmp_path / "nope"), "--sweep", "3000"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and ONE_LINE.match(proc.stderr), proc.stderr

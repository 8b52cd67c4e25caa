"""Runs command-line cases for tests/test_cli_walk.py, each in its own process:

    python tests/cli_runner.py CASES.json RESULTS.json

The runner imports the package once, then forks one child per case; the child sets the case's
environment, working folder and resource limits, runs ``pyro_causalvae.cli.main(argv)`` exactly as
``python -m pyro_causalvae`` does (an uncaught exception prints its traceback and exits 1), and exits
with its status. Each case: ``{"argv": [...], "env": {...}, "fsize": bytes | null, "timeout": s}``;
each result: ``{"code": int, "out": str, "err": str, "seconds": float}``.
"""

import json
import os
import resource
import signal
import sys
import tempfile
import time
import traceback

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import torch  # noqa: E402

import pyro_causalvae.cli as cli  # noqa: E402
from pyro_causalvae import datasets, metrics, plotting, queries, train  # noqa: E402,F401  (the commands' lazy imports, once)

torch.set_num_threads(1)
cli.build_parser()


def child(case: dict, out_path: str, err_path: str) -> None:
    fd_out = os.open(out_path, os.O_WRONLY | os.O_TRUNC)
    fd_err = os.open(err_path, os.O_WRONLY | os.O_TRUNC)
    os.dup2(fd_out, 1)
    os.dup2(fd_err, 2)
    os.environ.update(case.get("env") or {})
    if case.get("fsize"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (case["fsize"], case["fsize"]))
    if case.get("cwd"):
        os.chdir(case["cwd"])
    try:
        code = cli.main(case["argv"])
    except SystemExit as e:  # argparse
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:  # what the interpreter does with an uncaught exception
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run(case: dict) -> dict:
    with tempfile.NamedTemporaryFile(delete=False) as o, tempfile.NamedTemporaryFile(delete=False) as e:
        paths = o.name, e.name
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:
        child(case, *paths)
    deadline = t0 + case.get("timeout", 120)
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            status = -1
            break
        time.sleep(0.01)
    code = os.waitstatus_to_exitcode(status) if status != -1 else "timeout"
    texts = []
    for p in paths:
        with open(p, encoding="utf-8", errors="replace") as f:
            texts.append(f.read())
        os.unlink(p)
    return {"code": code, "out": texts[0], "err": texts[1], "seconds": time.monotonic() - t0}


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as f:
        cases = json.load(f)
    results = [run(c) for c in cases]
    with open(sys.argv[2], "w", encoding="utf-8") as f:
        json.dump(results, f)

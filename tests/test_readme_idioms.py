"""The README's code runs as written (on a small Pendulum), so that a claim in the docs cannot drift from
the code. The notebooks' idioms are executed by `pytest --nbmake examples` in CI.

Each ```python block of README.md's "Using the library" section is executed in one namespace, with only
the sizes made small (the substitutions below); the block's own assertions-by-comment are then checked.
"""

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"

#: (what the README says, what the test runs instead): sizes only
SMALL = [
    ('Pendulum(split="train")', 'Pendulum(split="train", size=16)'),
    ("fit(model, train, epochs=12)", "fit(model, train, epochs=1, batch_size=256, progress=False)"),
    ("num_samples=1000", "num_samples=100"),
]


def readme_blocks() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Using the library"): text.index("## Command line")]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_readme_code_runs_and_means_what_it_says():
    blocks = readme_blocks()
    assert len(blocks) >= 2
    code = "\n".join(blocks)
    for said, run in SMALL:
        assert said in code, f"README no longer says {said!r}: update this test's substitutions"
        code = code.replace(said, run)
    torch.manual_seed(0)
    ns: dict = {}
    exec(compile(code, str(README), "exec"), ns)  # noqa: S102 - the project's own README
    model = ns["model"]
    # the counterfactual written with handlers is model.counterfactual's
    library = model.counterfactual(ns["x"], do={"light_angle": 1.2}, units="natural")["concepts"][0]
    assert torch.allclose(model.denormalise(ns["cf_concepts"]), library, atol=1e-4)
    k = model.concepts.index("light_angle")
    assert torch.allclose(ns["cf_concepts"][:, k], model.normalise(torch.tensor(1.2), "light_angle").expand(8))
    # seeing a long shadow moves the light angle away from the vertical (pi / 2): a low sun
    seen = model.denormalise(ns["light"].sample((2000,)).flatten(), "light_angle")
    prior = ns["train"].scm.sample(20000, seed=0)[:, k]
    assert (seen - torch.pi / 2).abs().mean() > (prior - torch.pi / 2).abs().mean() + 0.1
    assert ns["images"].dtype == torch.uint8 and ns["images"].shape == (4, 3, 96, 96)

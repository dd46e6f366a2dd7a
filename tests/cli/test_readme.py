"""Every command in README.md's code blocks runs, as a user pastes it, from one working directory.

The install lines are run by `.ci/run` (the test command, and the main job cut short); here
each `transferlab-*` and `tensorboard` command runs in README order, trainings cut short by a
suffix, sweeps cut to the first value of each swept key, `<date>/<time>` filled with the newest
dir there. Pretrained runs find random weights the test saved where torchvision caches them.
"""

import os
import re
import shlex
from pathlib import Path

import pytest
import torch
import torchvision
from omegaconf import OmegaConf

from tests.support.cli import console, run_cli
from tests.support.data import DATA_ENV, real_dataset
from transferlab.config import config_dir

pytestmark = pytest.mark.cli  # runs the installed commands, as a user would

README = Path(__file__).parents[2] / "README.md"
SHORT = ["trainer.max_epochs=1", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1",
         "data.image_size=32", "data.num_workers=0", "callbacks.progress_bar.refresh_rate=0"]
# What the README's pretrained commands load: the ResNet-18 sweeps, the VGG16-bn U-Net encoder.
PRETRAINED = ("resnet18", "vgg16_bn")


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"^ *```{language}\n(.*?)^ *```", README.read_text(), re.M | re.S)


def readme_commands() -> list[str]:
    commands = []
    for block in code_blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith(("transferlab-", "tensorboard", ".venv/bin/tensorboard")):
                commands.append(line)
    return commands


def first_values(args: list[str]) -> list[str]:
    """A sweep cut to one job: each swept key (on the command line or in the experiment's
    hydra.sweeper.params) keeps its first value."""
    out = [a.split("=")[0] + "=" + a.split("=", 1)[1].split(",")[0] if "," in a else a for a in args]
    for arg in args:
        if arg.startswith("experiment="):
            exp = OmegaConf.load(Path(config_dir()) / "experiment" / f"{arg.split('=')[1]}.yaml")
            swept = OmegaConf.select(exp, "hydra.sweeper.params") or {}
            out += [f"{k}={str(v).split(',')[0]}" for k, v in swept.items()]
    return out


def filled(arg: str, cwd: Path) -> str:
    """`../shared/data` becomes $TRANSFERLAB_DATA_DIR; `<date>/<time>` the newest such dir."""
    arg = arg.replace("../shared/data", os.environ[DATA_ENV])
    if "<date>/<time>" not in arg:
        return arg
    key, _, path = arg.rpartition("=")
    found = sorted(cwd.glob(path.replace("<date>/<time>", "[0-9]*/[0-9]*")))
    assert found, f"README command refers to {path}, but nothing under {cwd} matches"
    return (f"{key}=" if key else "") + str(found[-1].relative_to(cwd))


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory):
    real_dataset("hymenoptera"), real_dataset("covid_lung")
    cwd = tmp_path_factory.mktemp("user")
    torch_home = cwd.parent / f"{cwd.name}-torch"
    for arch in PRETRAINED:
        weights = torchvision.models.get_model_weights(arch).DEFAULT
        file = torch_home / "hub" / "checkpoints" / Path(weights.url).name
        file.parent.mkdir(parents=True, exist_ok=True)
        torch.save(torchvision.models.get_model(arch).state_dict(), file)
    return cwd, {"TORCH_HOME": str(torch_home)}


def test_the_readme_has_the_commands_this_test_expects():
    commands = readme_commands()
    assert sum(c.startswith("transferlab-train") for c in commands) >= 8
    assert any(c.startswith("transferlab-report") for c in commands)
    assert any("resume=" in c for c in commands)


def test_every_readme_command_runs(user_dir):
    cwd, env = user_dir
    for command in readme_commands():
        program, *args = shlex.split(command)
        program = Path(program).name
        if program == "tensorboard":
            args = [filled(a, cwd) for a in args] + ["--inspect"]
        elif program == "transferlab-train" and not any(a.startswith(("--", "resume=")) for a in args):
            args = first_values(args) + SHORT
        args = [filled(a, cwd) for a in args]
        result = run_cli(program, *args, cwd=cwd, env=env, timeout=600)
        assert result.returncode == 0, f"{command}\n{console(result)[-3000:]}"
        if program == "transferlab-train" and args[:1] != ["--help"] and "--cfg" not in args:
            assert "status      completed" in console(result), f"{command}\n{console(result)[-2000:]}"


def test_the_readme_python_snippets_run(user_dir):
    """Each snippet with its run paths pointing at the newest classification run made above."""
    cwd, _ = user_dir
    runs = [r for r in sorted(cwd.glob("outputs/runs/[0-9]*/[0-9]*"))
            if '"val/acc"' in (r / "summary.json").read_text()]
    snippets = [b for b in code_blocks("python") if "outputs/runs/" in b]
    assert len(snippets) >= 2
    for snippet in snippets:
        code = snippet.replace("outputs/runs/.../checkpoints/last.ckpt", f"{runs[-1]}/checkpoints/last.ckpt")
        code = code.replace("outputs/runs/<date>/<time>", str(runs[-1]))
        namespace = {}
        exec(filled(code, cwd), namespace)
        assert "model" in namespace, snippet  # it ran, and made what the README says

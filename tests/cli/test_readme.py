"""Every command in README.md's code blocks runs, as a user pastes it.

The install lines are run by `.ci/run` (the test command, and the main job cut short); here
each `transferlab-*` and `tensorboard` command runs in README order, section by section (each
section from a working directory of its own, so sections run side by side; a section that
continues the one before it, `<date>/<time>` first, shares its directory), trainings cut short by
a suffix, sweeps cut to the first value of each swept key, `<date>/<time>` filled with the newest
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
SHORT = ["trainer.max_epochs=2",  # 2: experiments with a warmup epoch need one more
         "trainer.limit_train_batches=1", "trainer.limit_val_batches=1",
         "trainer.limit_test_batches=1",
         "data.image_size=32", "data.num_workers=0", "callbacks.progress_bar.refresh_rate=0"]
# What the README's pretrained commands load: the ResNet-18 sweeps, the VGG16-bn U-Net encoder.
PRETRAINED = ("resnet18", "vgg16_bn")


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"^ *```{language}\n(.*?)^ *```", README.read_text(), re.M | re.S)


def readme_sections() -> list[tuple[str, list[str]]]:
    """(section heading, its commands) in README order; a section whose first command continues
    an earlier run (`<date>/<time>`) joins the section before it."""
    sections: list[tuple[str, list[str]]] = []
    for part in re.split(r"^## ", README.read_text(), flags=re.M)[1:]:
        commands = []
        for block in re.findall(r"^ *```bash\n(.*?)^ *```", part, re.M | re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split(" #")[0].strip()
                if line.startswith(("transferlab-", "tensorboard", ".venv/bin/tensorboard")):
                    commands.append(line)
        if not commands:
            continue
        if "<date>/<time>" in commands[0] and sections:
            sections[-1][1].extend(commands)
        else:
            sections.append((part.splitlines()[0].split(":")[0], commands))
    return sections


def readme_commands() -> list[str]:
    return [c for _, commands in readme_sections() for c in commands]


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
def torch_home(tmp_path_factory) -> dict:
    real_dataset("hymenoptera"), real_dataset("covid_lung")
    home = tmp_path_factory.mktemp("torch")
    for arch in PRETRAINED:
        weights = torchvision.models.get_model_weights(arch).DEFAULT
        file = home / "hub" / "checkpoints" / Path(weights.url).name
        file.parent.mkdir(parents=True, exist_ok=True)
        torch.save(torchvision.models.get_model(arch).state_dict(), file)
    return {"TORCH_HOME": str(home)}


def test_the_readme_has_the_commands_this_test_expects():
    commands = readme_commands()
    assert sum(c.startswith("transferlab-train") for c in commands) >= 8
    assert any(c.startswith("transferlab-report") for c in commands)
    assert any("resume=" in c for c in commands)


@pytest.mark.parametrize("section,commands", [
    pytest.param(name, commands, id=name, marks=pytest.mark.xdist_group(f"readme {name}"))
    for name, commands in readme_sections()
])
def test_every_readme_command_runs(torch_home, tmp_path, section, commands):
    cwd = tmp_path / "user"
    cwd.mkdir()
    for command in commands:
        program, *args = shlex.split(command)
        program = Path(program).name
        if program == "tensorboard":
            args = [filled(a, cwd) for a in args] + ["--inspect"]
        elif program == "transferlab-train" and not any(a.startswith(("--", "resume=")) for a in args):
            args = first_values(args) + SHORT
        args = [filled(a, cwd) for a in args]
        result = run_cli(program, *args, cwd=cwd, env=torch_home, timeout=600)
        assert result.returncode == 0, f"{command}\n{console(result)[-3000:]}"
        if program == "transferlab-train" and args[:1] != ["--help"] and "--cfg" not in args:
            assert "status      completed" in console(result), f"{command}\n{console(result)[-2000:]}"


def test_the_readme_python_snippets_run(classification_run, tmp_path, monkeypatch):
    """Each snippet with its run paths pointing at a finished classification run."""
    real_dataset("hymenoptera")
    monkeypatch.chdir(tmp_path)
    snippets = [b for b in code_blocks("python") if "outputs/runs/" in b]
    assert len(snippets) >= 2
    for snippet in snippets:
        code = snippet.replace("outputs/runs/.../checkpoints/last.ckpt",
                               f"{classification_run}/checkpoints/last.ckpt")
        code = code.replace("outputs/runs/<date>/<time>", str(classification_run))
        namespace = {}
        exec(filled(code, tmp_path), namespace)
        assert "model" in namespace, snippet  # it ran, and made what the README says

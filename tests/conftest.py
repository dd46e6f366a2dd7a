import os

# Two cores shared with other processes: OpenMP's busy-waiting threads slow torch down 5-10x under
# that contention. Set before torch is imported; the CLI subprocesses inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from tests.support.cli import TINY, console, run_cli, the_run_dir  # noqa: E402
from tests.support.data import make_image_folder, make_mask_folder, real_dataset  # noqa: E402


@pytest.fixture
def hymenoptera() -> Path:
    return real_dataset("hymenoptera")


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return make_image_folder(tmp_path / "folder")


def train_run(tmp: Path, *args: str) -> Path:
    """A finished transferlab-train run (2 epochs, He init, CPU) and its run dir."""
    result = run_cli("transferlab-train", *TINY, *args, cwd=tmp)
    assert result.returncode == 0, console(result)[-3000:]
    return the_run_dir(tmp)
@pytest.fixture(scope="session")
def classification_run(tmp_path_factory) -> Path:
    """A finished classification run on a tiny synthetic ImageFolder (data.root in its config)."""
    tmp = tmp_path_factory.mktemp("classification_run")
    # Noisy pixels keep the tiny model's probabilities off exactly 0 and 1 (plain colours drove
    # its logits to ~1e10), so probability comparisons mean something.
    data = make_image_folder(tmp / "data", noise=40.0)
    return train_run(tmp, f"data.root={data}", "data.image_size=32")


@pytest.fixture(scope="session")
def segmentation_run(tmp_path_factory) -> Path:
    """A finished U-Net run on tiny synthetic 32 px masks, trained at their own size."""
    tmp = tmp_path_factory.mktemp("segmentation_run")
    data = make_mask_folder(tmp / "data")
    return train_run(tmp, "task=segmentation", "data=segmentation_folder", f"data.root={data}",
                     "data.image_size=32", "data.batch_size=2")


@pytest.fixture(autouse=True)
def _torch_threads():
    torch.set_num_threads(2)


@pytest.fixture
def seeded():
    """torch's global RNG seeded for this test only: the same weights and random draws whatever
    ran before, and the tests after it see the RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield

"""Transfer transfers: a source model trained here, on a set built so that what it learns is what
the target needs, makes feature extraction on a small target set clearly better than He's random
features, through the real path (a run dir as `init.weights_path`, its normalisation, frozen
features, the shared feature cache).

The source learns the orientation of stripes (four orientations) on cluttered backgrounds; the
target tells two of them apart from 6 images per class. Random features are dominated by the
clutter, so a linear head on 12 images does little better than chance (0.55 to 0.77 when this was
written); the source's features keep the orientation and reach 1.0 on every seed.
"""

import pytest
import torch

from tests.support.data import make_gratings
from transferlab.config import compose
from transferlab.fit import fit
from transferlab.models.backbones import UNetBackbone
from transferlab.models.init import Pretrained

COMMON = ["trainer=cpu", "logger=none", "data.image_size=32", "data.num_workers=0",
          "data.augment=false", "callbacks.progress_bar.refresh_rate=0"]
# Far from ImageNet's: a target run that normalised as ImageNet would show in its record.
SOURCE_NORMALISATION = ["data.mean=[0.5,0.5,0.5]", "data.std=[0.1,0.1,0.1]"]
MARGIN = 0.15  # the source's best val accuracy minus He's, on every seed


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A ResNet-18 trained from He init to tell four stripe orientations apart (~15 s)."""
    root = tmp_path_factory.mktemp("transfer")
    data = make_gratings(root / "source_data", ["vertical", "diagonal", "horizontal", "antidiagonal"],
                         train=120, val=20, seed=0)
    run = root / "source"
    cfg = compose([*COMMON, *SOURCE_NORMALISATION, f"data.root={data}", "init=he", "freeze=full",
                   "optimizer=adamw", "optimizer.lr=1e-3", "scheduler=none", "trainer.max_epochs=5",
                   "data.batch_size=32", "cache=off"], run)
    assert fit(cfg, run) >= 0.9, "the source did not learn its task"
    return run


def test_feature_extraction_from_the_source_beats_he_on_every_seed(source, tmp_path):
    target = make_gratings(tmp_path / "target_data", ["vertical", "horizontal"], train=6, val=30, seed=1)
    # One cache for all, and He normalised as the source is, so that the two arms' entries differ
    # in the frozen weights alone: a cache keyed without them would hand He's features on.
    cache = tmp_path / "cache"
    scores = {}
    for seed in (0, 1, 2):
        for init in ("he", "pretrained"):  # He first, so the source's run finds He's entries there
            run = tmp_path / f"{init}-{seed}"
            # the source's normalisation comes from its run dir; He's is set to the same
            same = SOURCE_NORMALISATION if init == "he" else []
            cfg = compose([*COMMON, *same, f"data.root={target}", f"init={init}", f"init.weights_path={source}",
                           "freeze=feature_extraction", "optimizer=adamw", "optimizer.lr=1e-2",
                           "scheduler=none", "trainer.max_epochs=20", "data.batch_size=8",
                           f"seed={seed}", f"callbacks.feature_cache.dir={cache}"], run)
            scores[init, seed] = fit(cfg, run)
        record = torch.load(next((tmp_path / f"pretrained-{seed}" / "checkpoints").glob("best-*.ckpt")),
                            weights_only=True)["hyper_parameters"]["preprocess"]
        assert (record["mean"], record["std"]) == ([0.5] * 3, [0.1] * 3), "not the source's normalisation"
    for seed in (0, 1, 2):
        assert scores["pretrained", seed] >= 0.9, scores
        assert scores["pretrained", seed] - scores["he", seed] >= MARGIN, scores


def test_a_classifier_run_of_another_network_is_refused_naming_both(source):
    unet = UNetBackbone(num_classes=2)
    with pytest.raises(Exception, match=r"\(a resnet18 run\) do not fit vgg16_bn \(UNet\)"):
        Pretrained(weights_path=str(source))(unet)

"""Someone else's masks through the new segmentation networks, end to end in this process:
`data=segmentation_folder` trains, predicts masks at each image's own size, evaluates Dice / IoU,
and exports to ONNX (batch, height and width dynamic) with the parity check passing. About half
a minute per network, most of it the ONNX export."""

import numpy as np
import pytest
from PIL import Image

from transferlab.config import compose
from transferlab.evaluate import evaluate
from transferlab.export import export
from transferlab.fit import fit
from transferlab.inference import load

# Not the sizes the network trains at (32 px): predictions must come back at these.
SIZES = [(40, 30), (52, 36), (33, 47), (64, 41), (45, 45), (38, 60)]
NETWORKS = {
    "lraspp": ["backbone=tv_segmentation", "backbone.name=lraspp_mobilenet_v3_large"],
    "unet_resnet18": ["backbone=unet", "backbone.encoder=resnet18"],
}


def someone_elses_masks(root):
    """Image/mask pairs of several sizes, masks named `<id>_mask.png`: a bright disc on noise."""
    rng = np.random.default_rng(0)
    for split, sizes in (("train", SIZES), ("val", SIZES[:3])):
        for i, (width, height) in enumerate(sizes):
            yy, xx = np.mgrid[:height, :width]
            cy, cx = rng.integers(height // 4, 3 * height // 4), rng.integers(width // 4, 3 * width // 4)
            r = height // 4
            mask = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8) * 255
            image = rng.integers(0, 60, (height, width), dtype=np.uint8) + (mask // 255) * 150
            for folder, pixels, suffix in (("images", image, ""), ("masks", mask, "_mask")):
                (root / split / folder).mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels.astype(np.uint8)).save(root / split / folder / f"case{i}{suffix}.png")
    return root


@pytest.mark.parametrize("network", list(NETWORKS))
def test_someone_elses_masks_train_predict_at_their_sizes_evaluate_and_export(network, tmp_path):
    data = someone_elses_masks(tmp_path / "masks")
    run = tmp_path / "run"
    cfg = compose(["task=segmentation", "data=segmentation_folder", f"data.root={data}",
                   "data.mask_suffix=_mask", *NETWORKS[network], "init=he", "trainer=cpu",
                   "trainer.max_epochs=1", "logger=none", "data.image_size=32", "data.batch_size=2",
                   "data.num_workers=0", "callbacks.progress_bar.refresh_rate=0"], run)
    fit(cfg, run)

    predictor = load(run, device="cpu")
    predictions = predictor.predict(data / "val" / "images")
    assert [p.mask.shape for p in predictions] == [(h, w) for w, h in SIZES[:3]]
    assert all(set(np.unique(p.mask)) <= {0, 1} for p in predictions)

    result = evaluate(run, "val", device="cpu", num_workers=0)
    assert result.n_images == 3
    assert 0 <= result.metrics["dice"] <= 1 and 0 <= result.metrics["iou"] <= 1
    assert set(result.metrics["per_class"]) == {"background", "foreground"}

    exported = export(run, "onnx")  # checked on the val images, at another height and width too
    assert exported["max_abs_diff"] <= exported["tolerance"]
    assert any("at 48x40" in label for label, _ in exported["diffs"])

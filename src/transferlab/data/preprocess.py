"""The eval transform a run's checkpoint names (`preprocess` hyperparameter): inference sees each
image as validation did, through the same functions, without the training data or the config."""

from torchvision.transforms import v2

from transferlab.data import classification, segmentation

TRANSFORMS = {"classification": classification.eval_transform, "segmentation": segmentation.eval_transform}


def eval_transform(preprocess: dict) -> v2.Compose:
    make = TRANSFORMS[preprocess["task"]]
    return make(preprocess["image_size"], preprocess["mean"], preprocess["std"])

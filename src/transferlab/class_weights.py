"""`model.class_weights`: the weight of each class in the classification loss, decided once per run
from the setting and the train split's class counts, then handed to the module as plain floats
(stored in its hparams, so a checkpoint carries the weights it was trained with).

- `none` (or null): every class weighs 1, plain cross-entropy.
- `auto`: inverse class frequency of the train split, scaled so that a balanced split gets all
  ones: w_c = N / (C * n_c) for N training images, C classes, n_c images of class c.
- `[w1, w2, ...]`: one weight per class, in class order (the order the run logs).
"""

import math

from transferlab.errors import ConfigError


def decide_class_weights(setting, counts: list[int], class_names: list[str]) -> list[float] | None:
    """The loss weights for `setting`, given the train split's images per class (class order)."""
    if setting is None or setting == "none":
        return None
    if setting == "auto":
        empty = [name for name, n in zip(class_names, counts) if n == 0]
        if empty:
            raise ConfigError(f"model.class_weights=auto: class(es) {empty} have no training "
                              "images, so they have no inverse frequency")
        total = sum(counts)
        return [total / (len(counts) * n) for n in counts]
    if isinstance(setting, str) or not isinstance(setting, (list, tuple)):
        raise ConfigError(f"model.class_weights={setting}: use auto, none or a list of one weight "
                          f"per class ({len(class_names)} classes: {class_names})")
    if len(setting) != len(class_names):
        raise ConfigError(
            f"model.class_weights has {len(setting)} weight(s) but the data has {len(class_names)} "
            f"classes {class_names}: give one weight per class, in that order"
        )
    bad = [w for w in setting if isinstance(w, bool) or not isinstance(w, (int, float))
           or not math.isfinite(w) or w < 0]
    if bad or not any(setting):
        raise ConfigError(f"model.class_weights={list(setting)}: weights are finite numbers >= 0, "
                          "not all zero")
    return [float(w) for w in setting]


def describe(weights: list[float] | None, class_names: list[str]) -> str:
    if weights is None:
        return "none (every class weighs 1)"
    return ", ".join(f"{name} {w:.4g}" for name, w in zip(class_names, weights))

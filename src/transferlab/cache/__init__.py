"""The `cache` group, a speed-up outside the core: cached outputs of the frozen part of a network.

When only the head trains, everything below it is a fixed function of the image: frozen
weights, BatchNorm on running statistics, Dropout off (frozen stages run in eval mode). So its
output, the head's input, is computed once per image, stored on disk, and the head trains on
those tensors: an epoch costs a few matrix products instead of a pass through the backbone.

- `plan`: which part of a fit trains on what (a pure function of the freeze schedule);
- `cut`: running a network up to a stage's output, and from there on;
- `store`: the entries, their keys, and the batches served from them;
- `callback`: `FeatureCache`, the one point of contact with a fit (the trainer, the module's
  backbone, the datamodule's `images_to_encode` / `serve`).

The core imports nothing from here: the cache is attached by its config's `_target_`.
"""

from transferlab.cache.callback import FeatureCache

__all__ = ["FeatureCache"]

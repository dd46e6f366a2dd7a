"""Cache entries: what they are keyed by, how they are built, and how they are served."""

import hashlib
import logging
import os
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from transferlab.cache.cut import forward_until
from transferlab.data.sampling import mix_seeds
from transferlab.models.backbones import HEAD, Backbone, Stages
from transferlab.modules.base import Precomputed

log = logging.getLogger("transferlab.cache")

FORMAT = 2  # bump when the stored layout changes: old entries are then never read


def weights_digest(stages: Stages, upto: str) -> str:
    """Identity of every tensor of the stages up to and including `upto` (weights and BatchNorm
    statistics): what the cached output is a function of."""
    h = hashlib.blake2b(digest_size=16)
    for name, items in stages.items():
        if name == HEAD:
            break
        for i, item in enumerate(items):
            tensors = item.state_dict().items() if isinstance(item, nn.Module) else [("", item)]
            for key, tensor in tensors:
                t = tensor.detach().cpu().contiguous()  # channels_last or not: the same digest
                h.update(f"{name}.{i}.{key}|{t.dtype}|{tuple(t.shape)}".encode())
                h.update(t.reshape(-1).view(torch.uint8).numpy())
        if name == upto:
            break
    return h.hexdigest()


def files_digest(samples: list[tuple[Path, int]]) -> str:
    """Each file's path, label, size and modification time: an edited, added or removed image
    changes it, and a stat is cheap enough for any dataset (no content hashing)."""
    h = hashlib.blake2b(digest_size=16)
    for path, label in samples:
        st = os.stat(path)
        h.update(f"{path}|{label}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


@torch.inference_mode()
def encode(
    backbone: Backbone, cut: str, dataset: Dataset, passes: int, batch_size: int,
    num_workers: int, device: torch.device, autocast: Callable = nullcontext,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The output of stage `cut` for every image, `passes` times: (passes, N, ...) float32 and
    (N,) labels. The caller puts the network in eval mode."""
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
        persistent_workers=num_workers > 0 and passes > 1,
    )
    # NHWC input makes every conv take oneDNN's/cuDNN's NHWC kernels: ~1.3x on a CPU, the same
    # values up to float rounding. Fine for a head's input; stages that train after a cut, with
    # BatchNorm on small batches, amplify rounding, so there the layout is the one training on
    # images would use (NHWC under trainer=fast), and the cached run computes what it computes.
    first_conv = next((m for m in backbone.net.modules() if isinstance(m, nn.Conv2d)), None)
    nhwc = cut == HEAD or (
        first_conv is not None and first_conv.weight.is_contiguous(memory_format=torch.channels_last)
    )
    layout = torch.channels_last if nhwc else torch.contiguous_format
    views, labels = [], []
    for _ in range(passes):
        features, labels = [], []
        for x, y in loader:
            with autocast():
                f = forward_until(backbone, cut, x.to(device, memory_format=layout))
            # Stored in the standard layout: a channels_last feature map (SqueezeNet's) would
            # send the head's convs down other kernels than in training on images.
            features.append(f.float().cpu().contiguous())
            labels.append(torch.as_tensor(y))
        views.append(torch.cat(features))
    return torch.stack(views), torch.cat(labels)


def readable(path: Path) -> bool:
    """Whether a cache entry loads. Entries are written whole (temporary file, then rename), so a
    damaged one comes from elsewhere (a full disk, a copy cut short): it is rebuilt, not trusted."""
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
        return {"features", "labels"} <= set(stored)
    except Exception as err:  # truncated zip, unpickling errors: torch raises several types
        log.warning("feature cache: %s is damaged (%s: %s); building it again", path.name,
                    type(err).__name__, err)
        return False


def write_entry(path: Path, entry: dict) -> None:
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save(entry, tmp)
    tmp.replace(path)  # a reader without the lock (another machine's job) never sees half a file


class CachedInputs(Precomputed):
    """A batch of the frozen part's outputs and the module that runs the rest on them. Lightning
    moves it to the device by its `to`, as it moves tensors."""

    def __init__(self, features: torch.Tensor, rest: nn.Module):
        self.features = features
        self.rest = rest

    def logits(self) -> torch.Tensor:
        return self.rest(self.features)

    def to(self, *args, **kwargs) -> "CachedInputs":
        return CachedInputs(self.features.to(*args, **kwargs), self.rest)


class CachedViews(Dataset):
    """K cached views per image (K=1: the val transform's) of the output of a cut, served as
    `(CachedInputs, labels)` batches. Each epoch draws one view per image, as augmentation would,
    from (seed, epoch) alone, so a resumed run draws the same.

    Batches are cut straight from the stored tensors (`__getitems__`, which DataLoader calls with
    a batch of keys): per-image indexing and collating cost more than the head's whole step.
    Keys are `(index, epoch)` from the datamodule's epoch samplers, or plain indices.
    """

    def __init__(self, views: torch.Tensor, labels: torch.Tensor, rest: nn.Module, seed: int = 0):
        self.views = views
        self.labels = labels
        self.rest = rest
        self.seed = seed
        self._draws: tuple[int, torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def draws(self, epoch: int) -> torch.Tensor:
        if self._draws is None or self._draws[0] != epoch:
            g = torch.Generator().manual_seed(mix_seeds(self.seed, epoch))
            self._draws = epoch, torch.randint(len(self.views), (len(self),), generator=g)
        return self._draws[1]

    def __getitems__(self, keys: list) -> tuple[CachedInputs, torch.Tensor]:
        epoch = keys[0][1] if isinstance(keys[0], tuple) else 0
        index = torch.tensor([k[0] if isinstance(k, tuple) else k for k in keys])
        view = self.draws(epoch)[index] if len(self.views) > 1 else 0
        return CachedInputs(self.views[view, index], self.rest), self.labels[index]

    def __getitem__(self, key) -> tuple[CachedInputs, torch.Tensor]:
        inputs, labels = self.__getitems__([key])
        return CachedInputs(inputs.features[0], self.rest), labels[0]

"""The normalisation of images before the network, as one concept: ImageNet's statistics, the
fallback wherever no weights say otherwise (`transferlab.models.init` decides a run's, once)."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Normalization = tuple[tuple[float, ...], tuple[float, ...]]  # (mean, std) per RGB channel

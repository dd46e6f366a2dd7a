class ConfigError(ValueError):
    """A setting that cannot work; raised before any training step."""


class DataError(ValueError):
    """A dataset file or folder that cannot be used; the message names it."""

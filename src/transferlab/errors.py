from pathlib import Path

SHOWN = 20  # files a message names; it counts the rest


class ConfigError(ValueError):
    """A setting that cannot work; raised before any training step."""


class DataError(ValueError):
    """A dataset file or folder that cannot be used; the message names it."""


class BadFilesError(DataError):
    """Image files that do not decode, all found in one pass: `bad` holds every (path, reason)."""

    def __init__(self, bad: list[tuple[Path, str]]):
        self.bad = list(bad)
        super().__init__(
            f"{len(self.bad)} image file(s) cannot be decoded:\n  "
            + first_few([f"{f}: {why}" for f, why in self.bad])
            + "\nRemove or fix them, or set on_bad_file=skip (or warn; for training "
            "data.on_bad_file) to go on without them."
        )

    def __reduce__(self):  # pickling (a sweep job's result) rebuilds it from the list
        return type(self), (self.bad,)


def first_few(lines: list[str], sep: str = "\n  ") -> str:
    """The first SHOWN of `lines` joined by `sep`, then how many more there are."""
    text = sep.join(lines[:SHOWN])
    if len(lines) > SHOWN:
        text += f"{sep}... and {len(lines) - SHOWN} more"
    return text

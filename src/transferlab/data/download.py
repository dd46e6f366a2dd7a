import logging
import shutil
from pathlib import Path

from torchvision.datasets.utils import download_and_extract_archive

from transferlab.errors import DataError

log = logging.getLogger(__name__)


def ensure_dataset(root: Path, url: str | None, md5: str | None, splits: tuple[str, ...]) -> None:
    """Make sure `root` holds the splits; download and verify the archive if it can.

    The archive must unpack to a single folder, which becomes `root`.
    """
    if all((root / s).is_dir() for s in splits):
        return
    layout = " and ".join(f"{root / s}/<class>/<image>" for s in splits)
    if root.exists() or url is None:
        raise DataError(
            f"dataset not found: expected {layout}. Put the data there, or point data.root "
            "(or TRANSFERLAB_DATA_DIR, a folder holding datasets by name) at it."
        )
    staging = root.parent / f".{root.name}.download"
    try:
        download_and_extract_archive(url, str(staging), md5=md5, remove_finished=True)
    except Exception as err:  # offline, refused, or a checksum mismatch
        shutil.rmtree(staging, ignore_errors=True)
        raise DataError(
            f"dataset not found at {root} and downloading {url} failed ({err}). "
            f"Download and unpack it by hand so that {layout} exist, or set data.root."
        ) from err
    unpacked = [p for p in staging.iterdir() if p.is_dir()]
    if len(unpacked) != 1:
        raise DataError(f"archive {url} did not unpack to one folder: {unpacked}")
    unpacked[0].rename(root)
    staging.rmdir()
    log.info("downloaded %s to %s", url, root)

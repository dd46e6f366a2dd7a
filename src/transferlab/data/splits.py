"""Which file goes to train, val and test: the one place that decides it.

Both datamodules list their files as `Item`s (the path relative to `data.root`, the class, the
group) and hand them here with the `data.*` split settings; everything below is a pure function of
those, so a split is checked by fast tests without images.

Rules:
- An explicit folder wins: `val/` is the val split and `test/` the test split when present.
  What is missing is carved out of the training pool: `data.test_fraction` (null: no test split)
  and `data.val_fraction` of its images, per class (stratified).
- `data.folds=K data.fold=i`: the training pool and any `val/` folder are dealt into K folds
  (stratified); fold i is val, the others train. The test split is held out first, the same for
  every fold.
- `data.group_by=<column>` (with `manifest.csv`): the files of one group (a patient) always land
  in the same split or fold; a group takes the class most of its files have.
- Which file goes where follows a hash of (`data.split_seed`, its relative path): the split does
  not depend on the training `seed`, on the order the file system lists files, or on the machine,
  so every run of a sweep gets the same one, and adding a file moves at most that file's class
  boundary.
"""

import csv
import hashlib
import json
import logging
import math
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from transferlab.errors import ConfigError, DataError, first_few

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Item:
    key: str  # path relative to data.root with '/' separators: what split.json lists
    label: str = ""  # the stratum, a class name; segmentation has one stratum
    group: str | None = None  # files of one group share a split; None: a group of its own


@dataclass(frozen=True)
class SplitSettings:
    """The `data.*` keys that pick the split; `check` names every bad one at once."""

    val_fraction: float | None = 0.2
    test_fraction: float | None = None
    split_seed: int = 0
    folds: int | None = None
    fold: int | None = None
    group_by: str | None = None

    def check(self) -> None:
        problems = []
        for key in ("val_fraction", "test_fraction"):
            value = getattr(self, key)
            if value is not None and not (_is_number(value) and 0 < value < 1):
                problems.append(f"data.{key}={value} is outside (0, 1)"
                                + ("; use null for no test split" if key == "test_fraction" else ""))
        if (_is_number(self.val_fraction) and _is_number(self.test_fraction) and self.folds is None
                and self.val_fraction + self.test_fraction >= 1):
            problems.append(f"data.val_fraction={self.val_fraction} + data.test_fraction="
                            f"{self.test_fraction} leave nothing to train on (their sum must be < 1)")
        if self.folds is not None and not (_is_int(self.folds) and self.folds >= 2):
            problems.append(f"data.folds={self.folds}: a number of folds is an integer >= 2")
        elif self.folds is not None and self.fold is None:
            problems.append(f"data.folds={self.folds} needs data.fold=<0..{self.folds - 1}>, the "
                            f"fold that is val (all of them: -m data.fold={_range(self.folds)})")
        elif self.folds is not None and not (_is_int(self.fold) and 0 <= self.fold < self.folds):
            problems.append(f"data.fold={self.fold} is out of range for data.folds={self.folds}: "
                            f"choose 0..{self.folds - 1}")
        if self.folds is None and self.fold is not None:
            problems.append(f"data.fold={self.fold} without data.folds: set data.folds=K too")
        if not _is_int(self.split_seed):
            problems.append(f"data.split_seed={self.split_seed} is not an integer")
        if problems:
            raise ConfigError("split settings: " + "; ".join(problems))


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _range(n: int) -> str:
    return ",".join(str(i) for i in range(n))


def assign(pool: list[Item], settings: SplitSettings,
           explicit: dict[str, list[Item]] | None = None) -> dict[str, list[Item]]:
    """train / val / test (test only when there is one) from the training `pool` and the
    `explicit` val and test folders' items, by the rules in this module's docstring."""
    settings.check()
    explicit = dict(explicit or {})  # a folder with no usable image stays: the caller names it
    if "test" in explicit and settings.test_fraction is not None:
        raise ConfigError(
            f"data.test_fraction={settings.test_fraction} but a test folder exists and is the "
            "test split; drop data.test_fraction (or the folder)"
        )
    if settings.folds is not None:
        pool = pool + explicit.get("val", [])  # k-fold deals every non-test image into the folds
    split = {"test": explicit["test"]} if "test" in explicit else {}
    carve = {} if settings.test_fraction is None else {"test": settings.test_fraction}
    if settings.folds is None and "val" not in explicit:
        if settings.val_fraction is None:
            raise ConfigError("there is no val folder and data.val_fraction=null: set "
                              "data.val_fraction (e.g. 0.2) to carve val out of the training images")
        carve["val"] = settings.val_fraction
    if carve:  # both fractions are of the whole pool: 0.2 and 0.2 give 60 / 20 / 20
        split |= holdout(pool, carve, settings)
        pool = split.pop("train")
    if settings.folds is not None:
        split |= kfold(pool, settings.folds, settings.fold, settings.split_seed)
    else:
        split |= {"train": pool} | ({"val": explicit["val"]} if "val" in explicit else {})
    split = {name: sorted(split[name], key=lambda i: i.key) for name in SPLITS if name in split}
    check_groups_apart(split, settings.group_by)
    return split


def order(seed: int, name: str) -> str:
    """A file's (or group's) place in the seeded shuffle: stable across machines and versions."""
    return hashlib.sha256(f"{seed}\0{name}".encode()).hexdigest()


def units(items: Iterable[Item]) -> dict[str, list[Item]]:
    """The indivisible units: by group, ungrouped files alone; each named for the seeded order."""
    found: dict[str, list[Item]] = defaultdict(list)
    for item in items:
        found[f"group:{item.group}" if item.group is not None else f"file:{item.key}"].append(item)
    return found


def strata(items: Iterable[Item]) -> dict[str, dict[str, list[Item]]]:
    """label -> units of that label; a group with several labels counts as its commonest (ties:
    the first name), so stratification stays approximate for mixed groups."""
    by_label: dict[str, dict[str, list[Item]]] = defaultdict(dict)
    for name, members in units(items).items():
        counts = Counter(i.label for i in members)
        label = min(counts, key=lambda lab: (-counts[lab], lab))
        by_label[label][name] = members
    return dict(sorted(by_label.items()))


def holdout(items: list[Item], fractions: dict[str, float],
            settings: SplitSettings) -> dict[str, list[Item]]:
    """Carve `fractions` (split -> fraction of the items) out of every class; the rest is train.

    Units go in seeded order to the first split they bring closer to its target (fraction x the
    class's images), so ungrouped classes get round(n x fraction) images each. Every class must
    end with something in every split: a class too small for that is an error naming it.
    """
    result: dict[str, list[Item]] = {name: [] for name in (*fractions, "train")}
    short = []
    for label, members in strata(items).items():
        n = sum(len(u) for u in members.values())
        placed: dict[str, list[Item]] = {name: [] for name in result}
        for name in sorted(members, key=lambda u: order(settings.split_seed, u)):
            unit = members[name]
            target = next((s for s, f in fractions.items()
                           if len(placed[s]) + len(unit) / 2 <= n * f + 1e-9), "train")
            placed[target] += unit
        empty = [s for s, got in placed.items() if not got]
        if empty:
            short.append((label, n, len(members), empty))
        for s, got in placed.items():
            result[s] += got
    if short:
        raise DataError(_too_few(short, fractions, settings))
    return result


def _too_few(short, fractions: dict[str, float], settings: SplitSettings) -> str:
    asked = " and ".join(f"data.{s}_fraction={f}" for s, f in fractions.items())
    lines = []
    for label, n, n_units, empty in short:
        what = f"class {label!r}" if label else "the data"
        size = (f"{n} image(s) in {n_units} group(s) of data.group_by={settings.group_by}"
                if settings.group_by else f"{n} image(s)")
        lines.append(f"{what} has {size}: none left for {', '.join(empty)}")
    need = min_images(list(fractions.values()))
    return (f"too few images per class for {asked}:\n  " + first_few(lines) + "\nAdd images or "
            f"choose larger fractions; ungrouped, each class needs at least {need} images for these")


def min_images(fractions: list[float]) -> int:
    """The smallest class size that leaves every split of `fractions` and train non-empty."""
    for n in range(1, 100_000):
        taken = [math.floor(n * f + 0.5 + 1e-9) for f in fractions]
        if all(taken) and n - sum(taken) >= 1:
            return n
    return 100_000


def fold_of(items: list[Item], folds: int, seed: int) -> dict[str, int]:
    """item key -> its fold. Per class, units (largest first, then in seeded order) go to the fold
    with the fewest of that class's images, ties to the fold with the fewest images overall, so
    folds are stratified and within one image per class of each other when ungrouped."""
    where: dict[str, int] = {}
    totals = [0] * folds
    short = []
    for label, members in strata(items).items():
        if len(members) < folds:
            short.append(f"{'class ' + repr(label) if label else 'the data'} has "
                         f"{len(members)} {'group' if _grouped(members) else 'image'}(s)")
            continue
        counts = [0] * folds
        for name in sorted(members, key=lambda u: (-len(members[u]), order(seed, u))):
            f = min(range(folds), key=lambda i: (counts[i], totals[i], i))
            counts[f] += len(members[name])
            totals[f] += len(members[name])
            where |= {item.key: f for item in members[name]}
    if short:
        raise DataError(f"data.folds={folds} needs at least {folds} images (or groups) per class "
                        "in the training pool:\n  " + first_few(short))
    return where


def _grouped(members: dict[str, list[Item]]) -> bool:
    return any(name.startswith("group:") for name in members)


def kfold(items: list[Item], folds: int, fold: int, seed: int) -> dict[str, list[Item]]:
    where = fold_of(items, folds, seed)
    return {"train": [i for i in items if where[i.key] != fold],
            "val": [i for i in items if where[i.key] == fold]}


def check_groups_apart(split: dict[str, list[Item]], group_by: str | None) -> None:
    """A group in two splits is a leak: explicit folders that share a patient, for one."""
    seen: dict[str, set[str]] = defaultdict(set)
    for name, items in split.items():
        for item in items:
            if item.group is not None:
                seen[item.group].add(name)
    shared = [f"{g} in {', '.join(s for s in SPLITS if s in where)}"
              for g, where in sorted(seen.items()) if len(where) > 1]
    if shared:
        raise DataError(
            f"{len(shared)} group(s) of data.group_by={group_by} are in more than one split, so "
            "the splits overlap (explicit folders must keep each group in one):\n  "
            + first_few(shared)
        )


def identical_files(folders: dict[str, list[Path]], scan=None) -> list[str]:
    """Explicit split folders must not share a file: one file linked into two folders (symlink or
    hard link) is an error naming every such file. The same bytes under two names is logged and
    returned, not refused: small sets hold blank or repeated images on purpose. `scan` (a
    `transferlab.data.scan.ScanCache`): the digests of files unchanged since an earlier run."""
    every = [(split, path) for split, files in folders.items() for path in files]
    paths = [path for _, path in every]
    digests = scan.lookup(paths, "sha1") if scan is not None else [_sha1(p) for p in paths]
    first: dict[object, tuple[str, Path]] = {}
    linked, copies = [], []
    for (split, path), content in zip(every, digests):
        stat = scan.stat(path) if scan is not None else path.stat()
        for key, found in (((stat.st_dev, stat.st_ino), linked), (content, copies)):
            if key in first and first[key][0] != split:
                found.append(f"{path} ({split}) = {first[key][1]} ({first[key][0]})")
            first.setdefault(key, (split, path))
    if linked:
        raise DataError(f"{len(linked)} file(s) are in more than one split folder (the same file, "
                        "linked), so the explicit splits overlap; keep each in one:\n  "
                        + first_few(linked))
    if copies:
        log.info("%d file(s) in one split folder have the same bytes as a file in another; "
                 "scores on them are not held out:\n  %s", len(copies), first_few(copies))
    return copies


def _sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def read_groups(manifest: Path, column: str, ids: Iterable[str]) -> dict[str, str]:
    """id -> group, from `manifest` (a CSV with an `id` column holding each image's file stem).
    Names every id the manifest lacks; a missing file or column is an error naming the key."""
    if not manifest.is_file():
        raise DataError(f"data.group_by={column} reads the groups from {manifest}, which does not "
                        "exist: a CSV with an `id` column (the image file stem) and a "
                        f"`{column}` column; or set data.manifest=<file>")
    with manifest.open(newline="") as f:
        rows = list(csv.DictReader(f))
    columns = list(rows[0]) if rows else []
    missing = [c for c in ("id", column) if c not in columns]
    if missing:
        raise ConfigError(f"data.group_by={column}: {manifest} has no column(s) {missing}; its "
                          f"columns are {columns}")
    groups = {row["id"]: row[column] for row in rows}
    ids = list(ids)
    absent = [i for i in ids if not groups.get(i)]
    if absent:
        raise DataError(f"{len(absent)} image(s) have no {column} in {manifest} (matched by the "
                        "`id` column to the file stem):\n  " + first_few(absent))
    return {i: groups[i] for i in ids}


def class_counts(split: dict[str, list[Item]]) -> dict[str, dict[str, int]]:
    return {name: dict(sorted(Counter(i.label for i in items).items()))
            for name, items in split.items()}


def describe(split: dict[str, list[Item]]) -> str:
    """One line per split with its class counts, for the log at start."""
    lines = []
    for name, counts in class_counts(split).items():
        per_class = ", ".join(f"{label} {n}" for label, n in counts.items() if label)
        lines.append(f"{name:<5} {sum(counts.values()):>5}" + (f"  ({per_class})" if per_class else ""))
    return "\n".join(lines)


def record(split: dict[str, list[Item]], settings: SplitSettings, root: Path, layout: str) -> dict:
    """split.json: how the split was made and its file lists (paths relative to `root`)."""
    return {
        "root": str(root), "layout": layout,
        "settings": {k: getattr(settings, k) for k in SplitSettings.__dataclass_fields__},
        "counts": class_counts(split),
        "files": {name: [i.key for i in items] for name, items in split.items()},
    }


def split_files(found: dict[str, list[Item]], settings: SplitSettings,
                manifest: Path) -> dict[str, list[Item]]:
    """The split of a datamodule's `found` items (split folder -> items; `train` is the pool, a
    single folder counts as train), with groups from `manifest` when `settings.group_by` is set."""
    if settings.group_by:
        stems = {i.key: Path(i.key).stem for found_items in found.values() for i in found_items}
        groups = read_groups(manifest, settings.group_by, sorted(set(stems.values())))
        found = {s: [Item(i.key, i.label, groups[stems[i.key]]) for i in found_items]
                 for s, found_items in found.items()}
    explicit = {s: found[s] for s in ("val", "test") if s in found}
    return assign(found.get("train", []), settings, explicit)


def write_record(path: Path, record: dict) -> None:
    """split.json; a resumed run must find the split it started with (same files per split)."""
    if path.is_file():
        before = json.loads(path.read_text()).get("files")
        if before != record["files"]:
            changed = [s for s in SPLITS if (before or {}).get(s) != record["files"].get(s)]
            raise DataError(f"the split differs from the one in {path} ({', '.join(changed)}): "
                            "the data or the split settings changed since this run started; "
                            "start a new run")
    path.write_text(json.dumps(record, indent=1))

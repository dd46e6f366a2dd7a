"""The split rules (`transferlab.data.splits`) on file names alone: no images, no torch."""

from collections import Counter

import pytest

from transferlab.data.splits import (
    Item,
    SplitSettings,
    assign,
    fold_of,
    min_images,
    read_groups,
)
from transferlab.errors import ConfigError, DataError


def items(counts: dict[str, int], prefix: str = "", groups_of: int = 0) -> list[Item]:
    """`counts[label]` files per class; `groups_of=g` puts every g consecutive files of a class in
    one group (named after the class, so groups never mix classes)."""
    return [Item(f"{prefix}{label}/{i:03d}.png", label,
                 f"{label}-{i // groups_of}" if groups_of else None)
            for label, n in counts.items() for i in range(n)]


def keys(found: list[Item]) -> set[str]:
    return {i.key for i in found}


def per_class(found: list[Item]) -> dict[str, int]:
    return dict(Counter(i.label for i in found))


@pytest.mark.parametrize("counts, val, test, expected", [
    # round(n x fraction) per class, the rest trains
    ({"a": 10, "b": 20}, 0.2, None, {"val": {"a": 2, "b": 4}, "train": {"a": 8, "b": 16}}),
    ({"a": 10, "b": 20}, 0.2, 0.2,
     {"test": {"a": 2, "b": 4}, "val": {"a": 2, "b": 4}, "train": {"a": 6, "b": 12}}),
    ({"a": 124, "b": 121}, 0.2, 0.2,  # ants/bees train folder as one pool
     {"test": {"a": 25, "b": 24}, "val": {"a": 25, "b": 24}, "train": {"a": 74, "b": 73}}),
    ({"a": 3, "b": 50}, 0.25, None, {"val": {"a": 1, "b": 13}, "train": {"a": 2, "b": 37}}),
])
def test_fractions_split_every_class_in_proportion(counts, val, test, expected):
    split = assign(items(counts), SplitSettings(val_fraction=val, test_fraction=test))
    assert {name: per_class(found) for name, found in split.items()} == expected
    every = [k for found in split.values() for k in keys(found)]
    assert sorted(every) == sorted(keys(items(counts)))  # each file exactly once


def test_same_split_seed_same_files_whatever_the_order_and_another_seed_differs():
    pool = items({"a": 30, "b": 30})
    settings = SplitSettings(val_fraction=0.2, test_fraction=0.2, split_seed=3)
    first = assign(pool, settings)
    again = assign(list(reversed(pool)), settings)
    assert {n: keys(f) for n, f in first.items()} == {n: keys(f) for n, f in again.items()}
    other = assign(pool, SplitSettings(val_fraction=0.2, test_fraction=0.2, split_seed=4))
    assert keys(other["val"]) != keys(first["val"])
    assert per_class(other["val"]) == per_class(first["val"])  # still stratified


def test_adding_a_file_moves_nothing_but_that_class_boundary():
    pool = items({"a": 20, "b": 20})
    before = assign(pool, SplitSettings(val_fraction=0.25))
    after = assign(pool + [Item("b/new.png", "b")], SplitSettings(val_fraction=0.25))
    assert {i.key for i in before["val"] if i.label == "a"} == {
        i.key for i in after["val"] if i.label == "a"}


@pytest.mark.parametrize("folds, counts, groups_of", [
    (5, {"a": 23, "b": 17}, 0),
    (3, {"a": 9, "b": 9}, 0),
    (4, {"a": 30, "b": 12}, 3),
    (5, {"": 98}, 2),  # segmentation: one stratum, groups of two
])
def test_folds_are_disjoint_cover_the_pool_and_are_stratified(folds, counts, groups_of):
    pool = items(counts, groups_of=groups_of)
    vals = []
    for fold in range(folds):
        split = assign(pool, SplitSettings(folds=folds, fold=fold, split_seed=1))
        assert keys(split["train"]).isdisjoint(keys(split["val"]))
        assert keys(split["train"]) | keys(split["val"]) == keys(pool)
        vals.append(keys(split["val"]))
    assert sum(len(v) for v in vals) == len(pool) and set().union(*vals) == keys(pool)
    for label, n in counts.items():
        sizes = [sum(1 for i in pool if i.key in v and i.label == label) for v in vals]
        assert max(sizes) - min(sizes) <= max(groups_of, 1), sizes  # within one unit


def test_fold_test_split_is_held_out_first_and_the_same_for_every_fold():
    pool = items({"a": 20, "b": 20})
    tests = [keys(assign(pool, SplitSettings(folds=4, fold=f, test_fraction=0.2))["test"])
             for f in range(4)]
    assert all(t == tests[0] for t in tests) and len(tests[0]) == 8
    split = assign(pool, SplitSettings(folds=4, fold=0, test_fraction=0.2))
    assert keys(split["test"]).isdisjoint(keys(split["train"]) | keys(split["val"]))


def test_folds_take_the_val_folder_into_the_pool_and_keep_the_test_folder():
    train, val, test = items({"a": 8}, "train/"), items({"a": 4}, "val/"), items({"a": 3}, "test/")
    split = assign(train, SplitSettings(folds=3, fold=1), {"val": val, "test": test})
    assert keys(split["test"]) == keys(test)
    assert keys(split["train"]) | keys(split["val"]) == keys(train) | keys(val)


@pytest.mark.parametrize("settings", [
    SplitSettings(val_fraction=0.3, test_fraction=0.2),
    SplitSettings(folds=5, fold=2),
    SplitSettings(folds=3, fold=0, test_fraction=0.25),
])
def test_a_group_never_lands_in_two_splits(settings):
    pool = items({"a": 40, "b": 40}, groups_of=3)
    split = assign(pool, settings)
    where = {}
    for name, found in split.items():
        for item in found:
            assert where.setdefault(item.group, name) == name, item.group


def test_explicit_folders_win_and_their_overlap_in_groups_is_an_error():
    train = items({"a": 6}, "train/", groups_of=2)
    val = items({"a": 2}, "val/", groups_of=2)  # groups a-0 again: one patient in both
    split = assign(train, SplitSettings(), {"val": items({"a": 2}, "val/")})
    assert keys(split["val"]) == keys(items({"a": 2}, "val/"))
    with pytest.raises(DataError, match=r"a-0 in train, val"):
        assign(train, SplitSettings(group_by="patient"), {"val": val})


@pytest.mark.parametrize("settings, message", [
    (SplitSettings(val_fraction=0), r"data.val_fraction=0 is outside \(0, 1\)"),
    (SplitSettings(val_fraction=1.5), r"data.val_fraction=1.5 is outside"),
    (SplitSettings(test_fraction=0.0), r"data.test_fraction=0.0 is outside.*null"),
    (SplitSettings(val_fraction=0.5, test_fraction=0.5), r"sum must be < 1"),
    (SplitSettings(folds=5, fold=5), r"data.fold=5 is out of range for data.folds=5: choose 0..4"),
    (SplitSettings(folds=5, fold=-1), r"data.fold=-1 is out of range"),
    (SplitSettings(folds=5), r"data.folds=5 needs data.fold=<0..4>.*-m data.fold=0,1,2,3,4"),
    (SplitSettings(fold=1), r"data.fold=1 without data.folds"),
    (SplitSettings(folds=1, fold=0), r"data.folds=1: .* >= 2"),
    (SplitSettings(val_fraction=None), r"data.val_fraction=null"),
])
def test_bad_settings_name_the_key(settings, message):
    with pytest.raises(ConfigError, match=message):
        assign(items({"a": 10}), settings)


def test_every_bad_key_is_named_at_once():
    with pytest.raises(ConfigError) as err:
        assign(items({"a": 10}), SplitSettings(val_fraction=2, test_fraction=-1, fold=3))
    assert all(k in str(err.value) for k in ("val_fraction=2", "test_fraction=-1", "fold=3"))


def test_classes_too_small_for_the_fractions_are_all_named():
    with pytest.raises(DataError) as err:
        assign(items({"big": 50, "tiny": 2, "one": 1, "three": 3}),
               SplitSettings(val_fraction=0.2, test_fraction=0.2))
    text = str(err.value)
    assert "class 'tiny' has 2 image(s): none left for test, val" in text
    assert "class 'one' has 1 image(s): none left for test, val" in text
    assert "'big'" not in text and "'three'" not in text and "at least 3 images" in text
    assert min_images([0.2, 0.2]) == 3  # 3 x 0.2 rounds to 1 each, and 1 is left to train


def test_too_few_per_class_for_the_folds_is_an_error_naming_the_class():
    with pytest.raises(DataError, match=r"data.folds=5 .*\n  class 'b' has 4 image"):
        fold_of(items({"a": 10, "b": 4}), 5, 0)


def test_test_fraction_with_a_test_folder_is_an_error():
    with pytest.raises(ConfigError, match="data.test_fraction=0.2 but a test folder exists"):
        assign(items({"a": 10}), SplitSettings(test_fraction=0.2), {"test": items({"a": 2}, "t/")})


def test_groups_come_from_the_manifest_and_missing_ids_are_all_named(tmp_path):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("id,patientid,view\np1_0,1,PA\np1_1,1,AP\np2_0,2,PA\n")
    assert read_groups(manifest, "patientid", ["p1_0", "p2_0"]) == {"p1_0": "1", "p2_0": "2"}
    with pytest.raises(DataError, match=r"2 image\(s\) have no patientid.*\n  p3_0\n  p4_0"):
        read_groups(manifest, "patientid", ["p1_0", "p3_0", "p4_0"])
    with pytest.raises(ConfigError, match=r"data.group_by=patient: .* no column\(s\) \['patient'\]"
                                          r".*'patientid'"):
        read_groups(manifest, "patient", ["p1_0"])
    with pytest.raises(DataError, match="data.group_by=patientid reads the groups from"):
        read_groups(tmp_path / "none.csv", "patientid", ["p1_0"])

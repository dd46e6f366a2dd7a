"""The scan of a dataset's files is remembered: a second run decodes and hashes nothing unchanged,
an edited file is scanned again, a bad file stays bad, a damaged record is scanned afresh; each
file is read once for its decode check and its digest, in processes or threads alike."""

import hashlib

import pytest

from tests.support.data import make_image_folder, write_image
from transferlab.data import images, sampling, scan
from transferlab.data.classification import ImageFolderDataModule
from transferlab.errors import BadFilesError


@pytest.fixture
def counted(monkeypatch):
    calls = {"inspected": 0}

    def inspect(path, real=images.inspect_file):
        calls["inspected"] += 1
        return real(path)

    monkeypatch.setattr(sampling, "inspect_file", inspect)
    return calls


def setup(root, cache, **kw):
    data = ImageFolderDataModule(str(root), image_size=32, num_workers=0, scan_cache=str(cache), **kw)
    data.setup("fit")
    return data


def test_a_second_run_reads_no_unchanged_file(tmp_path, counted):
    root = make_image_folder(tmp_path / "data")  # 12 train + 6 val images
    setup(root, tmp_path / "cache")
    assert counted == {"inspected": 18}, "one read per file for the decode check and the digest"
    setup(root, tmp_path / "cache")
    assert counted == {"inspected": 18}, "the second run scanned again"
    write_image(root / "train" / "cats" / "0.png", color=(1, 2, 3))  # edited: size or mtime moves
    (root / "train" / "cats" / "0.png").touch()
    data = setup(root, tmp_path / "cache")
    assert counted == {"inspected": 19} and len(data.train_set) == 12


def test_a_bad_file_stays_bad_and_a_damaged_record_is_scanned_afresh(tmp_path, counted):
    root = make_image_folder(tmp_path / "data")
    (root / "train" / "dogs" / "broken.png").write_bytes(b"not a png")
    for _ in range(2):
        with pytest.raises(BadFilesError, match="broken.png"):
            setup(root, tmp_path / "cache")
    assert counted["inspected"] == 19
    (record,) = (tmp_path / "cache").glob("scan-*.json")
    record.write_text(record.read_text()[:40])  # cut short
    with pytest.raises(BadFilesError, match="broken.png"):
        setup(root, tmp_path / "cache")
    assert counted["inspected"] == 38


def test_files_under_lists_what_rglob_lists_in_the_same_order(tmp_path):
    """The scandir walk replaces sorted(rglob + is_file): same files (links to files in, linked
    folders not entered), same order (Path's part-wise order, not the string's: "a-b" after "a")."""
    import os

    from transferlab.data.images import files_under

    for name in ("a/x.png", "a-b/x.png", "a/b/y.png", "a.png", ".hidden.png", "z/Ü.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    os.symlink(tmp_path / "a.png", tmp_path / "link.png")
    os.symlink(tmp_path / "a", tmp_path / "linked_dir")
    assert files_under(tmp_path) == sorted(p for p in tmp_path.rglob("*") if p.is_file())


@pytest.mark.parametrize("processes_from", [1, 10_000], ids=["processes", "threads"])
def test_processes_and_threads_find_the_same(tmp_path, monkeypatch, processes_from):
    """Many files are inspected in forked processes, few in threads; both give each file's
    problem and digest, in the files' order."""
    root = make_image_folder(tmp_path / "data")
    (root / "train" / "dogs" / "broken.png").write_bytes(b"not a png")
    (root / "train" / "dogs" / "empty.png").write_bytes(b"")
    files = sorted(root.rglob("*.png"))
    monkeypatch.setattr(scan, "PROCESSES_FROM", processes_from)
    monkeypatch.setattr(scan, "cpu_cores", lambda: 2)
    found = scan.map_files(images.inspect_file, files)
    assert [f.name for f, (problem, _) in zip(files, found) if problem] == ["broken.png", "empty.png"]
    assert found[files.index(root / "train" / "dogs" / "empty.png")][1] == hashlib.sha1(b"").hexdigest()
    assert [digest for _, digest in found] == [hashlib.sha1(f.read_bytes()).hexdigest() for f in files]


def test_an_unreadable_file_is_bad_now_and_asked_again_next_run(tmp_path, monkeypatch):
    """A file the run may not read is named as bad, and not remembered as bad: a chmod does not
    change its mtime, so a remembered verdict would outlive the fix."""
    root = make_image_folder(tmp_path / "data")
    locked = root / "train" / "dogs" / "0.png"

    def denied(path, real=images.inspect_file):
        if path == locked:
            return f"PermissionError: [Errno 13] Permission denied: '{path}'", "?"
        return real(path)

    monkeypatch.setattr(sampling, "inspect_file", denied)
    with pytest.raises(BadFilesError, match="PermissionError"):
        setup(root, tmp_path / "cache")
    monkeypatch.setattr(sampling, "inspect_file", images.inspect_file)  # the permission fixed
    assert len(setup(root, tmp_path / "cache").train_set) == 12

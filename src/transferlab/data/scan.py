"""What a run learns about a dataset's files, remembered for the next run: whether each file
decodes and a digest of its bytes, keyed by its path, size and modification time.

A sweep's jobs, or the same command run again, then read none of the files a second time: they
list and stat them (an edited, added or removed file is scanned again, on its own), and load one
JSON record per data root from `data.scan_cache` (the feature cache's dir by default). Parallel
jobs each write the whole record to a temporary file and rename it, so a reader never sees half
of one; two jobs racing lose nothing but the time to scan twice.

A file is read once for both values (`inspect`), and many files are inspected in processes:
PIL parses a small file's headers in Python, holding the GIL, so threads use about one core.
"""

import hashlib
import json
import logging
import multiprocessing
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from transferlab.devices import cpu_cores

log = logging.getLogger(__name__)

FORMAT = 1  # bump when an entry's meaning changes: older records are then ignored
SLOTS = {"problem": 2, "sha1": 3}  # where an entry [size, mtime_ns, problem, sha1] holds them
# Files from which to fork: `python scripts/bench.py --only scan` on 2 cores gave threads 0.06 s
# against processes 0.11 s for 100 ants/bees photos (their decoder releases the GIL), 0.17 s
# against 0.11 s for 1,000 CIFAR-10 JPEGs, 12.9 s against 2.8 s for all 60,000.
PROCESSES_FROM = 1000
T = TypeVar("T")
R = TypeVar("R")


def map_files(fn: Callable[[T], R], items: Sequence[T], threads: int = 8) -> list[R]:
    """`fn` over `items` in order: in one forked process per core for many items on Linux (where
    DataLoader workers fork too), else in threads (also inside a daemonic worker process, which
    may not have children). `fn` must be a module-level function."""
    cores = cpu_cores()
    forks = sys.platform.startswith("linux") and not multiprocessing.current_process().daemon
    if len(items) >= PROCESSES_FROM and cores > 1 and forks:
        chunk = max(1, len(items) // (cores * 16))
        with ProcessPoolExecutor(cores, mp_context=multiprocessing.get_context("fork")) as pool:
            return list(pool.map(fn, items, chunksize=chunk))
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(fn, items))


class ScanCache:
    """`inspect(file)` -> (its decode problem or None, the sha1 of its bytes), remembered."""

    def __init__(self, root: Path, folder: Path, inspect: Callable[[Path], tuple[str | None, str]]):
        self.inspect = inspect
        self.root = Path(root).resolve()
        # Files are keyed relative to the root as given (absolute), sparing a realpath per file.
        self.prefix = os.path.join(os.path.abspath(root), "")
        self.stats: dict[str, os.stat_result] = {}  # path -> its stat, once per run
        name = hashlib.blake2b(str(self.root).encode(), digest_size=8).hexdigest()
        self.path = Path(folder) / f"scan-{name}.json"
        self.entries: dict[str, list] = {}  # relative path -> [size, mtime_ns, problem, sha1]
        self.changed = False
        try:
            stored = json.loads(self.path.read_text())
            if stored.get("format") == FORMAT and stored.get("root") == str(self.root):
                self.entries = stored["files"]
        except (OSError, ValueError, KeyError):  # none yet, or one cut short: scan afresh
            pass

    def stat(self, path: Path) -> os.stat_result:
        name = os.fspath(path)
        if name not in self.stats:
            self.stats[name] = os.stat(name)
        return self.stats[name]

    def _current(self, path: Path) -> tuple[str, os.stat_result, list | None]:
        name = os.fspath(path)
        if not name.startswith(self.prefix):  # relative, or outside the root as given
            name = os.path.abspath(name)
        key = name[len(self.prefix):] if name.startswith(self.prefix) else os.path.relpath(name, self.prefix)
        stat = self.stat(path)
        entry = self.entries.get(key)
        fresh = entry is not None and entry[:2] == [stat.st_size, stat.st_mtime_ns]
        return key, stat, entry if fresh else None

    def lookup(self, files: list[Path], value: str) -> list:
        """Each file's `value` ("problem" or "sha1"), from the record where the file is unchanged,
        else inspected (both values at once) and recorded."""
        slot = SLOTS[value]
        known = [self._current(f) for f in files]
        todo = [i for i, (_, _, entry) in enumerate(known) if entry is None or entry[slot] == "?"]
        computed = dict(zip(todo, map_files(self.inspect, [files[i] for i in todo])))
        results = []
        for i, (key, stat, entry) in enumerate(known):
            if i in computed:
                entry = [stat.st_size, stat.st_mtime_ns, *computed[i]]
                if entry[3] != "?":  # an unreadable file (permissions) is asked again next run
                    self.entries[key] = entry
                    self.changed = True
            results.append(entry[slot])
        if todo:
            log.info("inspected %d of %d file(s) (decoded, digested); the other %d unchanged since %s",
                     len(todo), len(files), len(files) - len(todo), self.path)
        return results

    def save(self) -> None:
        if not self.changed:
            return
        record = {"format": FORMAT, "root": str(self.root), "files": self.entries}
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(record, separators=(",", ":")))
            tmp.replace(self.path)
        except OSError as err:  # a read-only or full disk costs the next run a rescan, no more
            tmp.unlink(missing_ok=True)
            log.warning("the scan of %s was not recorded in %s (%s)", self.root, self.path, err)
        self.changed = False


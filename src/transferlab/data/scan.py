"""What a run learns about a dataset's files, remembered for the next run: whether each file
decodes and a digest of its bytes, keyed by its path, size and modification time.

A sweep's jobs, or the same command run again, then read none of the files a second time: they
list and stat them (an edited, added or removed file is scanned again, on its own), and load one
JSON record per data root from `data.scan_cache` (the feature cache's dir by default). Parallel
jobs each write the whole record to a temporary file and rename it, so a reader never sees half
of one; two jobs racing lose nothing but the time to scan twice.
"""

import hashlib
import json
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

log = logging.getLogger(__name__)

FORMAT = 1  # bump when an entry's meaning changes: older records are then ignored
SLOTS = {2: "decoded", 3: "hashed"}  # an entry's computed values: the decode problem, the sha1


class ScanCache:
    def __init__(self, root: Path, folder: Path):
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
        name = os.path.abspath(path)
        key = name[len(self.prefix):] if name.startswith(self.prefix) else os.path.relpath(name, self.prefix)
        stat = self.stat(path)
        entry = self.entries.get(key)
        fresh = entry is not None and entry[:2] == [stat.st_size, stat.st_mtime_ns]
        return key, stat, entry if fresh else None

    def lookup(self, files: list[Path], slot: int, compute: Callable[[Path], str | None],
               workers: int = 8) -> list:
        """`compute(file)` for each file (slot 2: the decode problem, 3: the sha1), from the record
        where the file is unchanged, else computed (in threads) and recorded."""
        known = [self._current(f) for f in files]
        todo = [i for i, (_, _, entry) in enumerate(known) if entry is None or entry[slot] == "?"]
        with ThreadPoolExecutor(workers) as pool:
            computed = dict(zip(todo, pool.map(compute, [files[i] for i in todo])))
        results = []
        for i, (key, stat, entry) in enumerate(known):
            if i in computed:
                entry = entry or [stat.st_size, stat.st_mtime_ns, "?", "?"]
                entry[slot] = computed[i]
                self.entries[key] = entry
                self.changed = True
            results.append(entry[slot])
        if todo:
            log.info("%s %d of %d file(s); the other %d unchanged since %s", SLOTS[slot],
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


def sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()

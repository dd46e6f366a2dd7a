"""`summary.json`: the one file that says how a run went; the closing block and the sweep
report read it, the `RunSummary` callback (`transferlab.callbacks`) writes it. Imports nothing
heavy, so a run that fails before torch loads still records why."""

import json
from pathlib import Path


def update_summary(path: Path, **fields) -> None:
    data = read_summary(path)
    data.update(fields)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)  # a run killed mid-write never leaves half a file


def read_summary(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}

"""Incremental result storage for an evaluation run directory.

`cells.jsonl` gets one line per finished cell (a perplexity cell = one document x length x method; a
passkey cell = one trial), appended and flushed as soon as it is computed, so an interrupted run keeps
every finished cell and a re-run skips them. `config.json` records the fields every result depends on;
a run directory refuses a config that disagrees with them (naming the fields).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from yarn_jax.errors import ConfigError


def write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def check_settings(path: Path, fixed: dict, what: str) -> None:
    """Refuse (ConfigError naming the fields) when the JSON at `path` records other values for `fixed`'s keys."""
    if not path.exists():
        return
    old = json.loads(path.read_text())
    diff = sorted(k for k in fixed if k in old and old[k] != fixed[k])
    if diff:
        raise ConfigError(what + " " + ", ".join(f"{k} ({old[k]!r} there, {fixed[k]!r} now)" for k in diff)
                          + "; choose another --out or delete the directory")


class RunStore:
    """The run directory's cells. With write=False (processes other than 0 of a multi-process run) nothing
    touches the disk; `cells` is then filled from process 0's (see `distributed.share_from_primary`)."""

    def __init__(self, out_dir: str | os.PathLike, fixed: dict, *, write: bool = True):
        self.dir = Path(out_dir)
        self.write = write
        self.cells: dict[str, dict] = {}
        if not write:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        check_settings(self.dir / "config.json", fixed, f"{self.dir} holds results computed with other")
        write_json_atomic(self.dir / "config.json", fixed)
        self.cells_path = self.dir / "cells.jsonl"
        if self.cells_path.exists():
            lines = self.cells_path.read_text().splitlines()
            for i, line in enumerate(lines):
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    if i == len(lines) - 1:  # a line cut by an interruption: drop it, recompute that cell
                        tmp = self.cells_path.with_name("cells.jsonl.tmp")
                        tmp.write_text("".join(x + "\n" for x in lines[:-1]))
                        os.replace(tmp, self.cells_path)
                        continue
                    raise ConfigError(f"{self.cells_path} line {i + 1} is corrupt") from None
                self.cells[rec["key"]] = rec

    def get(self, key: str) -> dict | None:
        return self.cells.get(key)

    def add(self, record: dict) -> None:
        self.cells[record["key"]] = record
        if not self.write:
            return
        with self.cells_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

"""Run directories (eval.py's, train.py's, a sweep's): the settings check, incremental result storage,
atomic JSON and CSV.


`cells.jsonl` gets one line per finished cell (a perplexity cell = one document x length x method; a
passkey cell = one trial), appended and flushed as soon as it is computed, so an interrupted run keeps
every finished cell and a re-run skips them. `config.json` records the fields every result depends on and
the identity of the inputs (model files, tokenizer, each document's tokens: see fingerprint.py); a run
directory refuses a config that disagrees with the fields, and inputs whose content changed (naming what),
unless asked to compute new cells for them.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Callable

from yarn_jax.errors import ConfigError
from yarn_jax.fingerprint import describe_change
from yarn_jax.outputs import atomic_write_text, writing


def write_json_atomic(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2))


def read_json_record(path: Path) -> dict:
    """A run directory's JSON record (config.json, train_config.json); ConfigError when it is damaged."""
    try:
        old = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: damaged ({type(e).__name__}: {e}); this run directory's record cannot be "
                          "checked — restore the file or choose another --out") from None
    if not isinstance(old, dict):
        raise ConfigError(f"{path}: damaged (not a JSON object); restore the file or choose another --out")
    return old


def check_settings(path: Path, fixed: dict, what: str,
                   describe: dict[str, Callable[[object, object], str]] | None = None) -> None:
    """Refuse (ConfigError naming the fields) when the JSON at `path` records other values for `fixed`'s keys.
    `describe[field](old, new)` words the difference of a field whose values are too large to print."""
    if not path.exists():
        return
    old = read_json_record(path)
    describe = describe or {}
    diff = sorted(k for k in fixed if k in old and old[k] != fixed[k])
    if diff:
        parts = [f"{k} ({describe[k](old[k], fixed[k])})" if k in describe else f"{k} ({old[k]!r} there, "
                 f"{fixed[k]!r} now)" for k in diff]
        raise ConfigError(what + " " + ", ".join(parts) + "; choose another --out or delete the directory")


class RunStore:
    """The run directory's cells. With write=False (processes other than 0 of a multi-process run) nothing
    touches the disk; `cells` is then filled from process 0's (see `distributed.share_from_primary`).

    `inputs` = {"model": model identity, "tokenizer": digest, "documents": {name: digest}}: a re-run whose
    model or tokenizer changed, or whose documents changed under the same names, is refused naming what
    changed — or, with recompute_changed, records the new identity (cells are keyed by it, so the old ones
    are no longer matched; they stay in cells.jsonl)."""

    def __init__(self, out_dir: str | os.PathLike, fixed: dict, inputs: dict | None = None, *, write: bool = True,
                 recompute_changed: bool = False):
        self.dir = Path(out_dir)
        self.write = write
        self.cells: dict[str, dict] = {}
        if not write:
            return
        config_path = self.dir / "config.json"
        check_settings(config_path, fixed, f"{self.dir} holds results computed with other")
        record = {**fixed}
        if inputs is not None:
            old = read_json_record(config_path).get("inputs") if config_path.exists() else None
            changed = _changed_inputs(old or {}, inputs)
            if changed and not recompute_changed:
                raise ConfigError(f"{self.dir}: inputs changed since its cells were computed — "
                                  + "; ".join(changed) + ". Pass --recompute-changed to compute new cells for "
                                  "them (the old ones are kept in cells.jsonl), or choose another --out")
            docs = {**((old or {}).get("documents") or {}), **inputs.get("documents", {})}
            record["inputs"] = {**inputs, "documents": docs}
        self.dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(config_path, record)
        self.cells_path = self.dir / "cells.jsonl"
        if self.cells_path.exists():
            self._read_cells()

    def _read_cells(self) -> None:
        try:
            lines = self.cells_path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise ConfigError(f"{self.cells_path}: damaged (not UTF-8 text); move it away to recompute") from None
        for i, line in enumerate(lines):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                if i == len(lines) - 1:  # a line cut by an interruption: drop it, recompute that cell
                    atomic_write_text(self.cells_path, "".join(x + "\n" for x in lines[:-1]))
                    continue
                raise ConfigError(f"{self.cells_path} line {i + 1} is corrupt; move the file away to recompute "
                                  "its cells") from None
            if not isinstance(rec, dict) or not isinstance(rec.get("key"), str):
                raise ConfigError(f"{self.cells_path} line {i + 1} is not a result record (no 'key'); move the "
                                  "file away to recompute its cells")
            self.cells[rec["key"]] = rec

    def get(self, key: str) -> dict | None:
        return self.cells.get(key)

    def add(self, record: dict) -> None:
        self.cells[record["key"]] = record
        if not self.write:
            return
        with writing(self.cells_path), self.cells_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())


def _changed_inputs(old: dict, new: dict) -> list[str]:
    """Descriptions of what differs between two recorded input identities (empty: nothing)."""
    out = []
    if old.get("model") and old["model"] != new.get("model"):
        out.append(f"model: {describe_change(old['model'], new['model'])}")
    if old.get("tokenizer") and old["tokenizer"] != new.get("tokenizer"):
        out.append("tokenizer.json: its content changed")
    od, nd = old.get("documents") or {}, new.get("documents") or {}
    docs = sorted(k for k in od.keys() & nd.keys() if od[k] != nd[k])
    if docs:
        out.append(f"document(s) {', '.join(docs[:4])}{' ...' if len(docs) > 4 else ''}: content changed")
    return out


def write_csv_atomic(path, rows: list[dict]) -> None:
    """Rows as CSV (columns: every key, in first-seen order), written atomically; nothing for no rows."""
    if not rows:
        return
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())

"""Shared ending of the benchmark scripts: JSON with every run and the summary, and a markdown table."""

from __future__ import annotations

import json
from pathlib import Path


def report(out: str | Path, runs, rows: list[dict], columns: list[tuple[str, str]]) -> None:
    """Write {"runs", "summary"} to `out`; print the summary as a markdown table of (header, format) columns
    (format: a str.format spec applied to the row dict, e.g. "{tok_s:.1f}"), then as JSON."""
    Path(out).write_text(json.dumps({"runs": runs, "summary": rows}, indent=2))
    print("| " + " | ".join(h for h, _ in columns) + " |")
    print("|" + "---|" * len(columns))
    for r in rows:
        print("| " + " | ".join(fmt.format(**r) for _, fmt in columns) + " |")
    print(json.dumps(rows))

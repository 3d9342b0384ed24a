"""A run's ``metrics.jsonl``: one JSON object per epoch, appended by training, read by resume,
reports and experiments through :func:`read_metrics`, the one reader."""

from __future__ import annotations

import json
from pathlib import Path

from alexnet.errors import UserError


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a metrics.jsonl. A torn last line (training killed mid-write) is dropped; a bad
    line elsewhere is an error naming the file and line."""
    path = Path(path)
    try:
        lines = path.read_bytes().decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start})") from None
    rows = []
    numbered = [(i + 1, s) for i, s in enumerate(lines) if s.strip()]
    for j, (lineno, line) in enumerate(numbered):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if j == len(numbered) - 1:
                break
            raise UserError(f"{path}:{lineno}: not JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{lineno}: expected a JSON object per line")
        rows.append(row)
    return rows


__all__ = ["read_metrics"]

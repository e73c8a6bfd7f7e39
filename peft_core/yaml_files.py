"""The one YAML reader: a mapping from a file, with its ``include`` files merged underneath it.

Used for study files and for run configs (ours and the study's ``default_*.yml`` + method files).
Errors are one line naming the file (and the line of a syntax error).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def read_yaml(path: str | Path, _stack: tuple[Path, ...] = ()) -> dict[str, Any]:
    """``path`` as a mapping; ``include: FILE`` or ``include: [FILE, ...]`` (relative to the file)
    are merged first, so the including file wins. An include cycle is an error."""
    path = Path(path).resolve()
    if path in _stack:
        raise ValueError(f"{_stack[-1]}: include: cycle through {path}")
    if not path.is_file():
        where = f"{_stack[-1]}: include: " if _stack else ""
        raise ValueError(f"{where}file not found: {path}")
    try:
        content = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        raise ValueError(f"{path}:{mark.line + 1 if mark else '?'}: not valid YAML") from None
    if not isinstance(content, dict):
        raise ValueError(f"{path}: expected a mapping of keys to values")
    includes = content.pop("include", [])
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list):
        raise ValueError(f"{path}: include: expected a file or a list of files")
    merged: dict[str, Any] = {}
    for inc in includes:
        merge(merged, read_yaml(path.parent / str(inc), _stack + (path,)))
    merge(merged, content)
    return merged


def merge(base: dict, extra: dict) -> None:
    """``extra`` into ``base`` in place; nested mappings merge, anything else is replaced."""
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value

"""Text that hsmpi writes: one place that makes any string safe for HDF5, JSON and a log line.

Strings reach hsmpi's files from places it does not control: the MPI library
(Open MPI's `MPI_Get_library_version` counts its terminating NUL, so mpi4py
hands back a string ending in one), host names, task and file names (a path
with bytes that are not UTF-8 arrives with lone surrogates), a user's
exception.  HDF5 refuses embedded NULs in variable-length strings, a strict
JSON reader refuses lone surrogates, and a terminal obeys escape sequences.
`clean` maps every such string to printable UTF-8 that still says what was there.
"""

from __future__ import annotations

import json
import re
import sys
from typing import IO, Any

# C0 and C1 control characters (Unicode category Cc); newline and tab are kept where a text may span lines
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_CONTROL_LINES = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _valid_utf8(text: str) -> str:
    """Lone surrogates (undecodable bytes smuggled in by surrogateescape, or stray halves) as U+FFFD."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:  # surrogateescape: recover the original bytes, then decode them the forgiving way
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a stray half of a surrogate pair
        return _SURROGATE.sub("\ufffd", text)


def _escape(match: re.Match[str]) -> str:
    return f"\\x{ord(match.group()):02x}"


def clean(text: Any, *, lines: bool = False) -> str:
    """`text` as printable UTF-8: trailing NULs dropped, other control characters written as `\\xNN`.

    Bytes are decoded as UTF-8 (invalid sequences become U+FFFD).  With
    `lines`, newlines and tabs stay; otherwise they are escaped too, so the
    result is one line.
    """
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", "replace")
    elif not isinstance(text, str):
        text = str(text)
    text = _valid_utf8(text.rstrip("\x00"))
    return (_CONTROL_LINES if lines else _CONTROL).sub(_escape, text)


def clean_tree(value: Any) -> Any:
    """Every string in nested dicts, lists and tuples cleaned (dict keys too); other values as they are."""
    if isinstance(value, str):
        return clean(value, lines=True)
    if isinstance(value, dict):
        return {clean_tree(k) if isinstance(k, str) else k: clean_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_tree(v) for v in value]
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """`json.dumps` of `value` with every string cleaned first."""
    return json.dumps(clean_tree(value), **kwargs)


def say(message: Any, file: IO[str] | None = None) -> None:
    """Print one message, cleaned (newlines kept), and flush: every line hsmpi shows goes through here."""
    stream = sys.stdout if file is None else file
    print(clean(message, lines=True), file=stream, flush=True)

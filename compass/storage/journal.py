"""The history journal: every acknowledged row is on disk before its response is sent.

``durability: journal`` (the default) appends each request row, as one JSON line, to a segment
file under ``<home>/journal/`` with a plain ``write()`` before the handler returns, then lets the
history writer batch it into DuckDB as ``batched`` does. A ``kill -9`` cannot lose a row whose
``write()`` returned: the kernel holds the bytes. The next start (or ``compass sql`` on the
stopped file) inserts the rows that had not reached DuckDB, so the cost per request is one
small write (microseconds), not a DuckDB commit and fsync (~12 ms on this machine's disk; see
BENCHMARKS.md).

What this does not survive is the machine itself going down before the kernel writes its page
cache out (a power cut, a kernel crash): for that, ``durability: strict`` waits for DuckDB's
fsync'd commit.

A segment is removed once every row appended to it is in DuckDB; recovery skips rows whose id
is already there, so a crash between the insert and the removal duplicates nothing, and a last
line torn by a crash mid-``write()`` (a request never acknowledged) is dropped.

The fleet store's outage spool (``compass.storage.spool``) uses the same segments: ``rotate``
closes the open segment so everything before it can be replayed from disk, ``retire`` removes a
replayed one, and ``bytes`` is what is on disk, for the spool's bound.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import os
from pathlib import Path
from typing import Any

import msgspec

log = logging.getLogger("compass.journal")

SEGMENT_BYTES = 8 * 1024 * 1024
PREFIX, SUFFIX = "history-", ".jsonl"


def _enc_hook(value: Any) -> Any:
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item):
        return item()
    raise NotImplementedError(f"cannot journal {type(value).__name__}")


_ENCODER = msgspec.json.Encoder(enc_hook=_enc_hook)


def segment_number(path: Path) -> int:
    return int(path.name[len(PREFIX) : -len(SUFFIX)])


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob(f"{PREFIX}*{SUFFIX}"), key=segment_number)


class Journal:
    """Append-only segments of request rows; ``committed`` retires them."""

    def __init__(self, directory: Path, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.directory = directory
        self.segment_bytes = segment_bytes
        directory.mkdir(parents=True, exist_ok=True)
        existing = segments(directory)
        self._seq = segment_number(existing[-1]) + 1 if existing else 1
        self._appended: dict[int, int] = {}
        self._committed: dict[int, int] = {}
        self._bytes: dict[int, int] = {}
        self._fd = -1
        self._size = 0
        self._open()

    def path(self, seq: int) -> Path:
        return self.directory / f"{PREFIX}{seq:012d}{SUFFIX}"

    def _open(self) -> None:
        self._fd = os.open(self.path(self._seq), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._size = 0
        self._appended[self._seq] = 0
        self._committed[self._seq] = 0
        self._bytes[self._seq] = 0

    def append(self, row: dict[str, Any]) -> int:
        """Write ``row`` (keys starting with ``_`` are left out); returns its segment number."""
        data = _ENCODER.encode({k: v for k, v in row.items() if not k.startswith("_")}) + b"\n"
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        seq = self._seq
        self._appended[seq] += 1
        self._size += len(data)
        self._bytes[seq] += len(data)
        if self._size >= self.segment_bytes:
            self.rotate()
        return seq

    def rotate(self) -> int:
        """Close the open segment and open the next; returns the closed segment's number."""
        os.close(self._fd)
        self._seq += 1
        self._open()
        return self._seq - 1

    def retire(self, seq: int) -> None:
        """Segment ``seq`` (closed) is in the store by other means (replayed): remove it."""
        if seq == self._seq:
            raise ValueError("the open segment cannot be retired; rotate first")
        self.path(seq).unlink(missing_ok=True)
        for counts in (self._appended, self._committed, self._bytes):
            counts.pop(seq, None)

    def closed_segments(self, through: int) -> list[int]:
        return sorted(s for s in self._appended if s <= through and s != self._seq)

    @property
    def bytes(self) -> int:
        return sum(self._bytes.values())

    def committed(self, seqs: list[int]) -> None:
        """These rows are in DuckDB; a full, finished segment is removed."""
        for seq in seqs:
            self._committed[seq] = self._committed.get(seq, 0) + 1
        for seq in [s for s in self._appended if s != self._seq]:
            if self._committed.get(seq, 0) >= self._appended[seq]:
                self.path(seq).unlink(missing_ok=True)
                del self._appended[seq], self._committed[seq], self._bytes[seq]

    @property
    def pending(self) -> int:
        return sum(self._appended[s] - self._committed.get(s, 0) for s in self._appended)

    def close(self) -> None:
        """After a clean stop every row is in DuckDB: nothing is left to recover."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self.pending == 0:
            for seq in list(self._appended):
                self.path(seq).unlink(missing_ok=True)
        else:
            log.warning(
                "journal: %d rows not in DuckDB stay in %s for the next start", self.pending, self.directory
            )


def read_rows(
    path: Path, timestamp_columns: tuple[str, ...], binary_columns: tuple[str, ...] = ()
) -> list[dict[str, Any]]:
    rows = []
    for number, line in enumerate(path.read_bytes().splitlines(), 1):
        try:
            row = msgspec.json.decode(line)
        except msgspec.DecodeError:
            log.warning("journal: %s line %d is torn (a crash mid-write) and is skipped", path.name, number)
            continue
        for column in timestamp_columns:
            if isinstance(row.get(column), str):
                row[column] = dt.datetime.fromisoformat(row[column])
        for column in binary_columns:  # msgspec writes bytes as base64
            if isinstance(row.get(column), str):
                row[column] = base64.b64decode(row[column])
        rows.append(row)
    return rows


def recover(con: Any, directory: Path) -> int:
    """Insert the journal's rows that are not in ``requests`` yet, then remove the segments."""
    from compass.storage.history import REQUEST_COLUMNS, insert_requests

    if not directory.is_dir():
        return 0
    found = segments(directory)
    if not found:
        return 0
    timestamps = tuple(name for name, kind in REQUEST_COLUMNS.items() if kind == "timestamp")
    binary = tuple(name for name, kind in REQUEST_COLUMNS.items() if kind == "binary")
    rows = [row for path in found for row in read_rows(path, timestamps, binary)]
    ids = list({row["id"] for row in rows if row.get("id")})
    present: set[str] = set()
    for start in range(0, len(ids), 1000):
        chunk = ids[start : start + 1000]
        marks = ", ".join("?" for _ in chunk)
        present.update(
            r[0] for r in con.execute(f"SELECT id FROM requests WHERE id IN ({marks})", chunk).fetchall()
        )
    missing, seen = [], set(present)
    for row in rows:
        if row.get("id") and row["id"] not in seen:
            seen.add(row["id"])
            missing.append(row)
    for start in range(0, len(missing), 512):
        insert_requests(con, missing[start : start + 512])
    for path in found:
        path.unlink(missing_ok=True)
    if missing:
        log.warning("journal: recovered %d acknowledged rows that a crash kept out of DuckDB", len(missing))
    return len(missing)

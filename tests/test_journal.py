"""The history journal: acknowledged rows on disk until DuckDB has them, recovered after a crash."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb

from compass.storage.history import insert_requests, utcnow
from compass.storage.journal import Journal, recover, segments
from compass.storage.migrations import migrate


def row(i: int) -> dict:
    return {
        "id": f"chatcmpl-{i}",
        "created_at": utcnow(),
        "tenant": "local",
        "stream": False,
        "routing": {"method": "test", "attempts": [i]},
        "status": 200,
        "total_ms": 1.5,
        "demo": False,
    }


def database(tmp_path: Path) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(str(tmp_path / "compass.duckdb"))
    migrate(con)
    return con


def test_rows_written_but_never_inserted_are_recovered_once(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j")
    rows = [row(i) for i in range(5)]
    for r in rows:
        journal.append(r)
    con = database(tmp_path)
    insert_requests(con, rows[:2])  # the writer got two of them in before the "crash"
    assert recover(con, tmp_path / "j") == 3
    stored = con.execute("SELECT id, created_at, routing FROM requests ORDER BY id").fetchall()
    assert [s[0] for s in stored] == [r["id"] for r in rows]
    assert isinstance(stored[4][1], dt.datetime) and stored[4][1] == rows[4]["created_at"]
    assert segments(tmp_path / "j") == []
    assert recover(con, tmp_path / "j") == 0


def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j")
    journal.append(row(1))
    journal.append(row(2))
    (segment,) = segments(tmp_path / "j")
    with segment.open("ab") as f:
        f.write(b'{"id": "chatcmpl-3", "created_')  # killed inside write(): never acknowledged
    con = database(tmp_path)
    assert recover(con, tmp_path / "j") == 2


def test_segments_rotate_and_go_once_their_rows_are_committed(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j", segment_bytes=300)
    seqs = [journal.append(row(i)) for i in range(6)]
    assert len(set(seqs)) > 1 and len(segments(tmp_path / "j")) >= len(set(seqs))
    journal.committed(seqs[:-1])
    assert journal.pending == 1
    assert len(segments(tmp_path / "j")) <= 2  # finished segments are gone, the open one stays
    journal.committed(seqs[-1:])
    journal.close()
    assert segments(tmp_path / "j") == []


def test_a_new_journal_continues_the_numbering(tmp_path: Path) -> None:
    first = Journal(tmp_path / "j")
    first.append(row(1))
    first.close()  # one row not committed: the segment stays for recovery
    assert len(segments(tmp_path / "j")) == 1
    second = Journal(tmp_path / "j")
    assert second.append(row(2)) > 1


def test_a_prompt_vector_survives_the_journal_byte_for_byte(tmp_path: Path) -> None:
    """Layer 2 files feedback under the request's stored vector: base64 in the journal, BLOB in DuckDB."""
    import numpy as np

    vector = np.random.default_rng(0).standard_normal(384).astype(np.float32)
    journal = Journal(tmp_path / "j")
    journal.append({**row(0), "embedding": vector.tobytes()})
    journal.append(row(1))
    con = database(tmp_path)
    assert recover(con, tmp_path / "j") == 2
    stored = dict(con.execute("SELECT id, embedding FROM requests").fetchall())
    assert np.array_equal(np.frombuffer(stored["chatcmpl-0"], dtype=np.float32), vector)
    assert stored["chatcmpl-1"] is None

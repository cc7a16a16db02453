"""SQLite records of predictions and files, so a gateway restart keeps its history.

A prediction is stored whole as JSON next to the columns the listing sorts and filters on. Live
predictions are written when they are created, when they start and when they finish (not per token):
a crash loses at most the partial output of predictions that were running, and those are marked
failed on the next start.
"""

import json
import sqlite3
import threading
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    model TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

TERMINAL = ("succeeded", "failed", "canceled", "aborted")


def load_record(text: str) -> dict:
    """A stored record. Rows written before non-finite numbers were refused may hold NaN or Infinity,
    which no JSON answer can carry: they read as null, so a listing never fails on an old row."""
    return json.loads(text, parse_constant=lambda _: None)


class Store:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        # One connection shared by the event loop and the worker threads, serialised by a lock:
        # writes are few (three per prediction) and short.
        self.db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        self.lock = threading.Lock()

    def close(self) -> None:
        with self.lock:
            self.db.close()

    # ------------------------------------------------------------ predictions

    def save_prediction(self, record: dict) -> None:
        with self.lock:
            self.db.execute(
                "INSERT INTO predictions (id, model, status, created_at, record) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET status=excluded.status, record=excluded.record",
                (record["id"], record["model"], record["status"], record["created_at"], json.dumps(record)))

    def get_prediction(self, prediction_id: str) -> dict | None:
        with self.lock:
            row = self.db.execute("SELECT record FROM predictions WHERE id=?", (prediction_id,)).fetchone()
        return load_record(row[0]) if row else None

    def list_predictions(self, limit: int, before_seq: int | None = None, after_seq: int | None = None,
                         created_after: str | None = None, created_before: str | None = None
                         ) -> tuple[list[tuple[int, dict]], bool, bool]:
        """One page, newest first: (seq, record) pairs, whether older ones remain and whether newer
        ones do. `before_seq` pages towards older records, `after_seq` back towards newer ones.
        Timestamps compare as stored: ISO 8601 UTC strings sort in time order."""
        clauses, args = [], []
        if created_after:
            clauses.append("created_at >= ?")
            args.append(created_after)
        if created_before:
            clauses.append("created_at < ?")
            args.append(created_before)
        where = " AND ".join(clauses) or "1"
        with self.lock:
            if after_seq is not None:
                rows = self.db.execute(f"SELECT seq, record FROM predictions WHERE {where} AND seq > ? "
                                       "ORDER BY seq ASC LIMIT ?", [*args, after_seq, limit + 1]).fetchall()
                newer = len(rows) > limit
                rows = rows[:limit][::-1]
                older = bool(rows) and self._exists(where, args, "seq < ?", rows[-1][0])
            else:
                bound = [] if before_seq is None else [before_seq]
                rows = self.db.execute(f"SELECT seq, record FROM predictions WHERE {where}"
                                       f"{' AND seq < ?' if bound else ''} ORDER BY seq DESC LIMIT ?",
                                       [*args, *bound, limit + 1]).fetchall()
                older = len(rows) > limit
                rows = rows[:limit]
                newer = bool(rows) and self._exists(where, args, "seq > ?", rows[0][0])
        return [(seq, load_record(rec)) for seq, rec in rows], older, newer

    def _exists(self, where: str, args: list, clause: str, seq: int) -> bool:
        return self.db.execute(f"SELECT 1 FROM predictions WHERE {where} AND {clause} LIMIT 1",
                               [*args, seq]).fetchone() is not None

    def unfinished_predictions(self) -> list[dict]:
        marks = ",".join("?" * len(TERMINAL))
        with self.lock:
            rows = self.db.execute(f"SELECT record FROM predictions WHERE status NOT IN ({marks})",
                                   TERMINAL).fetchall()
        return [load_record(r[0]) for r in rows]

    # ------------------------------------------------------------ files

    def save_file(self, record: dict) -> None:
        with self.lock:
            self.db.execute("INSERT OR REPLACE INTO files (id, record) VALUES (?, ?)",
                            (record["id"], json.dumps(record)))

    def get_file(self, file_id: str) -> dict | None:
        with self.lock:
            row = self.db.execute("SELECT record FROM files WHERE id=?", (file_id,)).fetchone()
        return load_record(row[0]) if row else None

    def list_files(self) -> list[dict]:
        with self.lock:
            rows = self.db.execute("SELECT record FROM files ORDER BY rowid DESC").fetchall()
        return [load_record(r[0]) for r in rows]

    def delete_file(self, file_id: str) -> None:
        with self.lock:
            self.db.execute("DELETE FROM files WHERE id=?", (file_id,))

    # ------------------------------------------------------------ settings

    def meta(self, key: str, make) -> str:
        """A persisted setting (e.g. a secret), created with make() the first time."""
        with self.lock:
            row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
            if row:
                return row[0]
            value = make()
            self.db.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (key, value))
            return value

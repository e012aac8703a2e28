"""Blind A/B listening results: stimuli, pairs and votes in SQLite, with binomial statistics."""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import sqlite3
import threading
import time
import uuid

from keras_music.errors import KerasMusicError

DB_NAME = "listening.sqlite"
# z for a two-sided 95% interval.
Z95 = 1.959963984540054
REAL = "held-out"

SCHEMA = """
CREATE TABLE IF NOT EXISTS comparisons (
    name TEXT PRIMARY KEY, kind TEXT NOT NULL, first TEXT NOT NULL, second TEXT NOT NULL,
    first_dir TEXT NOT NULL, second_dir TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS stimuli (
    id TEXT PRIMARY KEY, side TEXT NOT NULL, file TEXT NOT NULL, seconds REAL NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS pairs (
    id TEXT PRIMARY KEY, comparison TEXT NOT NULL REFERENCES comparisons(name),
    a_stimulus TEXT NOT NULL REFERENCES stimuli(id), b_stimulus TEXT NOT NULL REFERENCES stimuli(id),
    first_is TEXT NOT NULL CHECK (first_is IN ('a', 'b')), created REAL NOT NULL,
    listener TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS votes (
    pair_id TEXT PRIMARY KEY REFERENCES pairs(id), choice TEXT NOT NULL CHECK (choice IN ('a', 'b')),
    chose_first INTEGER NOT NULL, reason TEXT NOT NULL DEFAULT '', created REAL NOT NULL);
"""


class ListeningError(KerasMusicError, ValueError):
    """A listening-test request cannot be honoured (unknown pair, double vote); the message says why."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


# ----------------------------------------------------------------------------- statistics

def wilson_interval(successes: int, trials: int, *, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (better coverage than the normal one at small n)."""
    if trials <= 0:
        return (0.0, 1.0)
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def binomial_p_value(successes: int, trials: int, *, p: float = 0.5) -> float:
    """Exact two-sided binomial test: the probability of outcomes no likelier than the observed one."""
    if trials <= 0:
        return 1.0
    probabilities = [math.comb(trials, k) * p ** k * (1 - p) ** (trials - k) for k in range(trials + 1)]
    observed = probabilities[successes]
    # The relative tolerance keeps outcomes tied with the observed one in the sum despite rounding.
    return min(1.0, sum(q for q in probabilities if q <= observed * (1 + 1e-7)))


def summarize(name: str, kind: str, *, first: str, second: str, votes: int, chose_first: int,
              listeners: int | None = None) -> dict:
    question = ("which is the human? (preference = share who picked the real piece)" if kind == "real"
                else f"which do you prefer? (preference = share who picked {first})")
    return {
        "name": name, "kind": kind, "first": first, "second": second, "question": question,
        "listeners": listeners, "votes": votes, "chose_first": chose_first,
        "preference": chose_first / votes if votes else None,
        "ci95": list(wilson_interval(chose_first, votes)) if votes else None,
        "p_value": binomial_p_value(chose_first, votes) if votes else None,
    }


# ----------------------------------------------------------------------------- storage

class Store:
    """One SQLite file in WAL mode; a connection per call, so any thread may use it."""

    def __init__(self, path: str):
        self.path = str(path)
        # Writers of this process take turns here rather than in SQLite's busy handler, whose sleeps
        # (up to 100 ms each) would be the tail latency of many listeners voting at once.
        self._writing = threading.Lock()
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        with self._connect() as connection:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.executescript(SCHEMA)
            columns = {row[1] for row in connection.execute("PRAGMA table_info(pairs)")}
            if "listener" not in columns:  # a vote file from before listener ids: its pairs have none
                connection.execute("ALTER TABLE pairs ADD COLUMN listener TEXT NOT NULL DEFAULT ''")

    @contextlib.contextmanager
    def _connect(self):
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE takes the write lock
        # up front, so concurrent voters queue on busy_timeout instead of failing mid-transaction).
        connection = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            connection.execute("PRAGMA busy_timeout=30000")
            # WAL with synchronous=NORMAL: a commit survives the process (crash, restart) without an fsync
            # each; only an OS crash or power loss may drop the last few. One fsync per vote made every
            # listener wait behind every other one's disk flush.
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute("PRAGMA foreign_keys=ON")
            yield connection
        finally:
            connection.close()

    @contextlib.contextmanager
    def _transaction(self):
        with self._writing, self._connect() as connection:
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise

    def add_comparison(self, name: str, kind: str, *, first: str, second: str, first_dir: str, second_dir: str):
        with self._transaction() as connection:
            connection.execute("INSERT OR IGNORE INTO comparisons VALUES (?, ?, ?, ?, ?, ?)",
                               (name, kind, first, second, first_dir, second_dir))

    def add_stimulus(self, side: str, file: str, *, seconds: float) -> str:
        stimulus = uuid.uuid4().hex
        with self._transaction() as connection:
            connection.execute("INSERT INTO stimuli VALUES (?, ?, ?, ?, ?)", (stimulus, side, file, seconds, time.time()))
        return stimulus

    def stimuli(self, side: str) -> list[dict]:
        with self._connect() as connection:
            rows = connection.execute("SELECT id, file, seconds FROM stimuli WHERE side = ? ORDER BY created",
                                      (side,)).fetchall()
        return [{"id": r[0], "file": r[1], "seconds": r[2]} for r in rows]

    def all_stimuli(self) -> dict[str, list[str]]:
        """Every side's stimulus ids, oldest first."""
        out: dict[str, list[str]] = {}
        with self._connect() as connection:
            for side, stimulus in connection.execute("SELECT side, id FROM stimuli ORDER BY created"):
                out.setdefault(side, []).append(stimulus)
        return out

    def stimulus_uses(self) -> dict[str, int]:
        """How many pairs each stimulus has been dealt in."""
        with self._connect() as connection:
            rows = connection.execute("SELECT s, COUNT(*) FROM (SELECT a_stimulus AS s FROM pairs UNION ALL "
                                      "SELECT b_stimulus FROM pairs) GROUP BY s").fetchall()
        return dict(rows)

    def add_pair(self, comparison: str, first_stimulus: str, *, second_stimulus: str, first_is: str,
                 listener: str = "") -> str:
        pair = uuid.uuid4().hex
        a, b = (first_stimulus, second_stimulus) if first_is == "a" else (second_stimulus, first_stimulus)
        with self._transaction() as connection:
            connection.execute("INSERT INTO pairs (id, comparison, a_stimulus, b_stimulus, first_is, created, listener) "
                               "VALUES (?, ?, ?, ?, ?, ?, ?)", (pair, comparison, a, b, first_is, time.time(), listener))
        return pair

    def pair_file(self, pair: str, side: str) -> str:
        """The stimulus file (relative to the studio's output area) behind side `a` or `b` of a pair."""
        if side not in ("a", "b"):
            raise ListeningError(f"side must be 'a' or 'b', got {side!r}", 404)
        with self._connect() as connection:
            row = connection.execute(f"SELECT s.file FROM pairs p JOIN stimuli s ON s.id = p.{side}_stimulus "
                                     "WHERE p.id = ?", (pair,)).fetchone()
        if row is None:
            raise ListeningError(f"unknown pair {pair!r}", 404)
        return row[0]

    def vote(self, pair: str, choice: str, reason: str = "", listener: str | None = None) -> dict:
        """Store the one vote on a pair; `listener`, when given, must be the listener the pair was dealt to."""
        if choice not in ("a", "b"):
            raise ListeningError(f"choice must be 'a' or 'b', got {choice!r}")
        with self._transaction() as connection:
            row = connection.execute("SELECT comparison, first_is, listener FROM pairs WHERE id = ?",
                                     (pair,)).fetchone()
            if row is None:
                raise ListeningError(f"unknown pair {pair!r}", 404)
            if listener and row[2] and listener != row[2]:
                raise ListeningError(f"pair {pair} was dealt to another listener", 403)
            try:
                connection.execute("INSERT INTO votes VALUES (?, ?, ?, ?, ?)",
                                   (pair, choice, int(choice == row[1]), reason, time.time()))
            except sqlite3.IntegrityError:
                raise ListeningError(f"pair {pair} already has a vote", 409) from None
        return {"pair_id": pair, "comparison": row[0], "choice": choice}

    def results(self) -> list[dict]:
        """Per comparison: votes, listeners who voted, and the statistics of summarize()."""
        with self._connect() as connection:
            rows = connection.execute(
                "SELECT c.name, c.kind, c.first, c.second, COUNT(v.pair_id), COALESCE(SUM(v.chose_first), 0), "
                "COUNT(DISTINCT CASE WHEN v.pair_id IS NOT NULL THEN p.listener END) "
                "FROM comparisons c LEFT JOIN pairs p ON p.comparison = c.name "
                "LEFT JOIN votes v ON v.pair_id = p.id GROUP BY c.name ORDER BY c.name").fetchall()
        return [summarize(name, kind, first=first, second=second, votes=votes, chose_first=chose, listeners=listeners)
                for name, kind, first, second, votes, chose, listeners in rows]

    def results_by_listener(self) -> list[dict]:
        """One row per comparison and listener who voted on it ('' = pairs dealt without a listener id)."""
        with self._connect() as connection:
            rows = connection.execute(
                "SELECT c.name, c.kind, c.first, c.second, p.listener, COUNT(*), SUM(v.chose_first) "
                "FROM votes v JOIN pairs p ON p.id = v.pair_id JOIN comparisons c ON c.name = p.comparison "
                "GROUP BY c.name, p.listener ORDER BY c.name, p.listener").fetchall()
        return [dict(summarize(name, kind, first=first, second=second, votes=votes, chose_first=chose),
                     listener=listener)
                for name, kind, first, second, listener, votes, chose in rows]

    def votes(self) -> list[dict]:
        with self._connect() as connection:
            rows = connection.execute(
                "SELECT v.pair_id, p.comparison, v.choice, v.chose_first, v.reason, v.created, p.listener FROM votes v "
                "JOIN pairs p ON p.id = v.pair_id ORDER BY v.created").fetchall()
        return [{"pair_id": r[0], "comparison": r[1], "choice": r[2], "chose_first": bool(r[3]), "reason": r[4],
                 "time": r[5], "listener": r[6]} for r in rows]

    def results_for_runs(self, run_dirs) -> list[dict]:
        """Results of comparisons between these run directories (either order), with votes."""
        wanted = {os.path.realpath(d) for d in run_dirs}
        with self._connect() as connection:
            rows = connection.execute("SELECT name, first_dir, second_dir FROM comparisons").fetchall()
        names = {name for name, a, b in rows if {os.path.realpath(a), os.path.realpath(b)} == wanted}
        return [r for r in self.results() if r["name"] in names and r["votes"]]


def results_csv(results: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["name", "kind", "first", "second", "listeners", "votes", "chose_first", "preference",
                     "ci95_low", "ci95_high", "p_value"])
    for r in results:
        low, high = r["ci95"] or (None, None)
        writer.writerow([r["name"], r["kind"], r["first"], r["second"], "" if r.get("listeners") is None else r["listeners"], r["votes"],
                         r["chose_first"], r["preference"], low, high, r["p_value"]])
    return out.getvalue()


def report_lines(results: list[dict]) -> list[str]:
    """Markdown lines for a report: one row per comparison."""
    lines = ["| comparison | question | listeners | votes | preference | 95% CI (Wilson) | p (two-sided binomial) |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['name']} | {r['question']} | {'-' if r.get('listeners') is None else r['listeners']} | {r['votes']} | {r['preference']:.3f} | "
                     f"{r['ci95'][0]:.3f}-{r['ci95'][1]:.3f} | {r['p_value']:.3g} |")
    return lines

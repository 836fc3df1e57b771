"""The labelling database: items, annotators, leases and judgements in SQLite (stdlib ``sqlite3``).

Durability and concurrency: the database runs in WAL mode with ``synchronous=FULL``, every write is one
``BEGIN IMMEDIATE`` transaction (SQLite's single writer lock, taken before reading what the write depends on), and
every operation opens its own connection. So two annotators submitting at once are serialised by SQLite, never
interleaved; a judgement is on disk when ``submit`` returns; and a server killed at any moment restarts on the same
file with every answered judgement and every open lease (the annotator gets the item they were looking at back).

Tokens: an annotator's token is shown once, when the annotator is added; only its SHA-256 is stored.

    store = LabelStore("sqlite:///labels.db")
    store.configure(per_item=2, aspects=["helpfulness"])
    store.add_items(read_pool("pool.jsonl")[0])
    token = store.add_annotator("alice")
    view = store.next_item(store.annotator_by_token(token))
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raw_rm.label.assignment import Slots, display_order, pick_item, remaining_for
from raw_rm.label.judgement import Judgement
from raw_rm.label.pool import PoolItem

logger = logging.getLogger(__name__)

SCHEMA_VERSION = "1"
DEFAULT_LEASE_S = 1800.0  # how long an item stays reserved for the annotator it was shown to
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, prompt TEXT NOT NULL, responses TEXT NOT NULL,
    source TEXT NOT NULL, extra TEXT NOT NULL, model_rewards TEXT, added_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS annotators (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, token_sha256 TEXT NOT NULL UNIQUE, added_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS leases (
    item_id INTEGER NOT NULL REFERENCES items(id), annotator_id INTEGER NOT NULL REFERENCES annotators(id),
    leased_at REAL NOT NULL, PRIMARY KEY (item_id, annotator_id));
CREATE TABLE IF NOT EXISTS judgements (
    id INTEGER PRIMARY KEY, item_id INTEGER NOT NULL REFERENCES items(id),
    annotator_id INTEGER NOT NULL REFERENCES annotators(id),
    decision TEXT NOT NULL CHECK (decision IN ('ranked', 'tie', 'skip')), ranks TEXT, strength TEXT,
    aspects TEXT NOT NULL, note TEXT NOT NULL, created_at REAL NOT NULL, UNIQUE (item_id, annotator_id));
"""


class StoreError(ValueError):
    """A request the database state refuses; ``status`` is the HTTP status, ``field`` the request field."""

    def __init__(self, status: int, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.status, self.field, self.message = status, field, message


@dataclass(frozen=True)
class Annotator:
    id: int
    name: str


@dataclass(frozen=True)
class Settings:
    per_item: int = 2  # annotators who judge each item
    aspects: tuple[str, ...] = ()  # optional per-aspect questions (the model's aspects)
    lease_s: float = DEFAULT_LEASE_S
    model: str | None = None  # the model whose rewards the items carry (validation), None without


@dataclass
class Item:
    id: int
    prompt: str
    responses: list[str]
    source: str
    extra: dict[str, Any] = field(default_factory=dict)
    model_rewards: list[float] | None = None


@dataclass(frozen=True)
class JudgementRow:
    annotator: str
    judgement: Judgement
    created_at: float


def db_path(url: str) -> Path:
    """The file of ``sqlite:///relative.db``, ``sqlite:////absolute.db`` (SQLAlchemy's spelling) or a plain path.

    Raises:
        ValueError: another scheme, or an in-memory database (labels must survive a restart).
    """
    if "://" not in url:
        return Path(url).expanduser()
    scheme, _, rest = url.partition("://")
    if scheme != "sqlite" or not rest.startswith("/") or rest in ("/", "/:memory:"):
        raise ValueError(f"--db {url}: expected sqlite:///FILE.db (relative) or sqlite:////ABS/FILE.db, or a path")
    return Path(rest[1:]).expanduser()


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class LabelStore:
    """Every read and write of the labelling database; safe to use from many threads and processes at once."""

    def __init__(self, url: str, *, timeout_s: float = 30.0) -> None:
        self.path = db_path(url)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.timeout_s = timeout_s
        with self._connect() as con:
            con.execute("PRAGMA journal_mode=WAL")  # readers never block the writer; persists in the file
            con.executescript(SCHEMA)
            con.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        con = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None)
        try:
            con.execute("PRAGMA synchronous=FULL")  # a committed judgement survives a crash of the machine too
            con.execute("PRAGMA foreign_keys=ON")
            yield con
        finally:
            con.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction holding SQLite's write lock from its first read (no lost updates)."""
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    # ------------------------------------------------------------------------------------- settings
    def settings(self) -> Settings:
        with self._connect() as con:
            meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
        return Settings(
            per_item=int(meta.get("per_item", Settings.per_item)),
            aspects=tuple(json.loads(meta.get("aspects", "[]"))),
            lease_s=float(meta.get("lease_s", DEFAULT_LEASE_S)),
            model=meta.get("model"),
        )

    def configure(
        self, *, per_item: int | None = None, aspects: Sequence[str] | None = None, lease_s: float | None = None
    ) -> Settings:
        """Change the session's settings (None keeps the stored value); returns the settings now in force."""
        if per_item is not None and per_item < 1:
            raise ValueError(f"per_item: expected >= 1, got {per_item}")
        if lease_s is not None and lease_s <= 0:
            raise ValueError(f"lease_s: expected > 0, got {lease_s}")
        for name in aspects or ():
            if not NAME_PATTERN.match(name):
                raise ValueError(f"aspect {name!r}: expected letters, digits, '_', '.', '-' (at most 64)")
        values = {
            "per_item": per_item,
            "lease_s": lease_s,
            "aspects": None if aspects is None else json.dumps(list(aspects)),
        }
        with self._write() as con:
            for key, value in values.items():
                if value is not None:
                    con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, str(value)))
        return self.settings()

    # ---------------------------------------------------------------------------------------- items
    def add_items(self, items: Sequence[PoolItem]) -> int:
        """Add the items not already in the database (by content key); returns how many were new."""
        now = time.time()
        with self._write() as con:
            before = con.execute("SELECT COUNT(*) FROM items").fetchone()[0]
            con.executemany(
                "INSERT OR IGNORE INTO items (key, prompt, responses, source, extra, added_at) VALUES (?,?,?,?,?,?)",
                [(it.key, it.prompt, json.dumps(it.responses), it.source, json.dumps(it.extra), now) for it in items],
            )
            return con.execute("SELECT COUNT(*) FROM items").fetchone()[0] - before

    def set_model_rewards(self, model: str, rewards: dict[int, list[float]]) -> None:
        """Record a reward model's reward of every response of these items (human validation of that model)."""
        with self._write() as con:
            con.executemany(
                "UPDATE items SET model_rewards = ? WHERE id = ?",
                [(json.dumps(r), item_id) for item_id, r in rewards.items()],
            )
            con.execute("INSERT OR REPLACE INTO meta VALUES ('model', ?)", (model,))

    def items(self) -> list[Item]:
        with self._connect() as con:
            rows = con.execute("SELECT id, prompt, responses, source, extra, model_rewards FROM items ORDER BY id")
            return [
                Item(i, p, json.loads(r), s, json.loads(e), None if m is None else json.loads(m))
                for i, p, r, s, e, m in rows
            ]

    # ----------------------------------------------------------------------------------- annotators
    def add_annotator(self, name: str) -> str:
        """Add an annotator and return their token (shown once; only its hash is kept).

        Raises:
            StoreError: a malformed or taken name.
        """
        if not NAME_PATTERN.match(name):
            raise StoreError(422, "name", f"{name!r}: expected 1-64 letters, digits, '_', '.' or '-'")
        token = secrets.token_urlsafe(24)
        with self._write() as con:
            if con.execute("SELECT 1 FROM annotators WHERE name = ?", (name,)).fetchone():
                raise StoreError(409, "name", f"annotator {name!r} exists already")
            con.execute(
                "INSERT INTO annotators (name, token_sha256, added_at) VALUES (?, ?, ?)",
                (name, token_hash(token), time.time()),
            )
        return token

    def annotator_by_token(self, token: str | None) -> Annotator | None:
        if not token:
            return None
        with self._connect() as con:
            row = con.execute("SELECT id, name FROM annotators WHERE token_sha256 = ?", (token_hash(token),)).fetchone()
        return None if row is None else Annotator(*row)

    def annotators(self) -> list[Annotator]:
        with self._connect() as con:
            return [Annotator(*r) for r in con.execute("SELECT id, name FROM annotators ORDER BY id")]

    # ----------------------------------------------------------------------------------- assignment
    def _slots(
        self, con: sqlite3.Connection, annotator: Annotator, now: float, lease_s: float
    ) -> tuple[list[Slots], set[int], int | None]:
        judged = dict(
            con.execute("SELECT item_id, COUNT(*) FROM judgements WHERE decision != 'skip' GROUP BY item_id").fetchall()
        )
        leased = dict(
            con.execute(
                "SELECT item_id, COUNT(*) FROM leases WHERE leased_at >= ? AND annotator_id != ? GROUP BY item_id",
                (now - lease_s, annotator.id),
            ).fetchall()
        )
        answered = {r[0] for r in con.execute("SELECT item_id FROM judgements WHERE annotator_id = ?", (annotator.id,))}
        own = con.execute(
            "SELECT item_id FROM leases WHERE annotator_id = ? AND leased_at >= ? ORDER BY leased_at DESC LIMIT 1",
            (annotator.id, now - lease_s),
        ).fetchone()
        slots = [
            Slots(i, judged.get(i, 0), leased.get(i, 0)) for (i,) in con.execute("SELECT id FROM items ORDER BY id")
        ]
        return slots, answered, None if own is None else own[0]

    def next_item(self, annotator: Annotator) -> tuple[Item, list[int]] | None:
        """(the item to show this annotator, its display order), leasing it to them; None when they are done."""
        settings = self.settings()
        now = time.time()
        with self._write() as con:
            slots, answered, own = self._slots(con, annotator, now, settings.lease_s)
            item_id = pick_item(slots, answered=answered, own_lease=own, per_item=settings.per_item)
            if item_id is None:
                return None
            con.execute("INSERT OR REPLACE INTO leases VALUES (?, ?, ?)", (item_id, annotator.id, now))
            p, r, s, e, m = con.execute(
                "SELECT prompt, responses, source, extra, model_rewards FROM items WHERE id = ?", (item_id,)
            ).fetchone()
        item = Item(item_id, p, json.loads(r), s, json.loads(e), None if m is None else json.loads(m))
        return item, display_order(item_id, annotator.name, len(item.responses))

    def progress_of(self, annotator: Annotator) -> dict[str, int]:
        """``{"answered", "remaining"}`` for one annotator's progress bar."""
        settings = self.settings()
        with self._connect() as con:
            slots, answered, _ = self._slots(con, annotator, time.time(), settings.lease_s)
        return {
            "answered": len(answered),
            "remaining": remaining_for(slots, answered=answered, per_item=settings.per_item),
        }

    def item_size(self, item_id: int) -> int | None:
        """How many responses the item has; None for an unknown item."""
        with self._connect() as con:
            row = con.execute("SELECT responses FROM items WHERE id = ?", (item_id,)).fetchone()
        return None if row is None else len(json.loads(row[0]))

    # ----------------------------------------------------------------------------------- judgements
    def submit(self, annotator: Annotator, judgement: Judgement) -> None:
        """Store a judgement of an item leased to this annotator (an expired lease still counts: a slow annotator's
        answer is kept, even if the item went to someone else meanwhile).

        Raises:
            StoreError: 404 unknown item; 409 not shown to this annotator, or answered already.
        """
        j = judgement
        with self._write() as con:
            if con.execute("SELECT 1 FROM items WHERE id = ?", (j.item_id,)).fetchone() is None:
                raise StoreError(404, "item_id", f"no item {j.item_id}")
            if con.execute(
                "SELECT 1 FROM judgements WHERE item_id = ? AND annotator_id = ?", (j.item_id, annotator.id)
            ).fetchone():
                raise StoreError(409, "item_id", f"item {j.item_id} is answered already by {annotator.name}")
            if (
                con.execute(
                    "SELECT 1 FROM leases WHERE item_id = ? AND annotator_id = ?", (j.item_id, annotator.id)
                ).fetchone()
                is None
            ):
                raise StoreError(409, "item_id", f"item {j.item_id} was not given to {annotator.name} (GET /api/next)")
            con.execute(
                "INSERT INTO judgements (item_id, annotator_id, decision, ranks, strength, aspects, note, created_at) "
                "VALUES (?,?,?,?,?,?,?,?)",
                (
                    j.item_id,
                    annotator.id,
                    j.decision,
                    None if j.ranks is None else json.dumps(j.ranks),
                    j.strength,
                    json.dumps(j.aspects),
                    j.note,
                    time.time(),
                ),
            )
            con.execute("DELETE FROM leases WHERE item_id = ? AND annotator_id = ?", (j.item_id, annotator.id))

    def judgements(self) -> dict[int, list[JudgementRow]]:
        """``{item_id: [JudgementRow, ...]}`` in submission order, skips included."""
        out: dict[int, list[JudgementRow]] = {}
        with self._connect() as con:
            rows = con.execute(
                "SELECT j.item_id, a.name, j.decision, j.ranks, j.strength, j.aspects, j.note, j.created_at "
                "FROM judgements j JOIN annotators a ON a.id = j.annotator_id ORDER BY j.id"
            )
            for item_id, name, decision, ranks, strength, aspects, note, created in rows:
                judgement = Judgement(
                    item_id, decision, None if ranks is None else json.loads(ranks), strength, json.loads(aspects), note
                )
                out.setdefault(item_id, []).append(JudgementRow(name, judgement, created))
        return out

    def progress(self) -> dict[str, Any]:
        """Per annotator ``{"name", "judged", "skipped", "open_leases"}`` and the items' totals."""
        settings = self.settings()
        now = time.time()
        with self._connect() as con:
            per = {
                name: {"name": name, "judged": 0, "skipped": 0, "open_leases": 0}
                for (name,) in con.execute("SELECT name FROM annotators ORDER BY id")
            }
            for name, decision, n in con.execute(
                "SELECT a.name, j.decision = 'skip', COUNT(*) FROM judgements j JOIN annotators a "
                "ON a.id = j.annotator_id GROUP BY a.name, j.decision = 'skip'"
            ):
                per[name]["skipped" if decision else "judged"] += n
            for name, n in con.execute(
                "SELECT a.name, COUNT(*) FROM leases l JOIN annotators a ON a.id = l.annotator_id "
                "WHERE l.leased_at >= ? GROUP BY a.name",
                (now - settings.lease_s,),
            ):
                per[name]["open_leases"] = n
            n_items = con.execute("SELECT COUNT(*) FROM items").fetchone()[0]
            counts = [
                n for (n,) in con.execute("SELECT COUNT(*) FROM judgements WHERE decision != 'skip' GROUP BY item_id")
            ]
        return {
            "annotators": list(per.values()),
            "items": n_items,
            "per_item": settings.per_item,
            "items_complete": sum(1 for n in counts if n >= settings.per_item),
            "items_started": len(counts),
            "judgements": sum(counts),
        }

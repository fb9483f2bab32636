"""Arena storage in one SQLite file (WAL mode): answers to show, rounds handed out, one row per vote.

    weitiao arena serve --answers answers.jsonl --db arena.sqlite     # fills it; `arena export` reads it

A round is a prompt with two models' answers, sides drawn at random; the page sees only the round id
and the two texts, so model names cannot leak before the vote. Rounds handed out live in the server's
memory (weitiao.eval.arena.app); one is written to `rounds` only together with its vote, so page loads
add no rows. `votes.model_a` is the model shown on side A (left), `model_b` on side B; `swapped` = 1 when
the draw put the alphabetically later model on A. Outcomes use FastChat's words: model_a, model_b, tie,
tie (bothbad). `meta` holds the random secret that signs voter cookies.

`answers.served` marks the answers the last `arena serve` was given: only those are drawn into rounds. A
model (or a prompt) missing from a later answers file is set aside, not deleted: its answers and the votes
cast on them stay in the file, and `arena rank` names set-aside models and says whether it counted them.
"""

from __future__ import annotations

import hashlib
import json
import random
import secrets
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from itertools import combinations
from pathlib import Path
from typing import Any

from weitiao.errors import UserError, where
from weitiao.io import read_jsonl

# tstamp: seconds since 1970 of the vote; null for a battle imported without one. extra: null for a vote cast on
# the page; for an imported battle JSON {"keys": its fields in file order, "fields": those no column holds}, so that
# export gives back what was imported (question_id, conversation_a/b, anony, language, dedup_tag, ...)
VOTES = """(id INTEGER PRIMARY KEY, round_id TEXT UNIQUE, prompt TEXT, model_a TEXT NOT NULL, model_b TEXT NOT NULL,
           swapped INTEGER, outcome TEXT NOT NULL, voter TEXT, tstamp REAL, extra TEXT)"""
VOTE_FIELDS = "id, round_id, prompt, model_a, model_b, swapped, outcome, voter, tstamp, extra"
SCHEMA = f"""
BEGIN;
CREATE TABLE IF NOT EXISTS answers (prompt TEXT NOT NULL, model TEXT NOT NULL, answer TEXT NOT NULL,
                                    served INTEGER NOT NULL DEFAULT 1, PRIMARY KEY (prompt, model));
CREATE TABLE IF NOT EXISTS rounds (id TEXT PRIMARY KEY, prompt TEXT, model_a TEXT, model_b TEXT,
                                   swapped INTEGER, created REAL);
CREATE TABLE IF NOT EXISTS votes {VOTES};
CREATE INDEX IF NOT EXISTS votes_voter ON votes (voter);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
COMMIT;
"""  # one transaction: another process opening the file meanwhile sees no tables or all of them
VOTE_COLUMNS = {"round_id", "prompt", "model_a", "model_b", "swapped", "outcome", "voter", "tstamp"}
CHOICES = {"a": "model_a", "b": "model_b", "tie": "tie", "bothbad": "tie (bothbad)"}


class ArenaStore:
    """All arena reads and writes; one short-lived connection per call, so server threads never share one."""

    def __init__(self, path: str | Path, create: bool = True) -> None:
        self.path = Path(path)
        if not create and not self.path.exists():
            raise UserError(f"{self.path}: no arena database here (run `weitiao arena serve --db {self.path}` first)")
        if self.path.is_dir():
            raise UserError(f"{self.path}: is a folder; expected an arena SQLite file")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._refuse_foreign()
            with self._db() as db:
                db.execute("PRAGMA journal_mode=WAL")  # readers never block the vote writer
                db.executescript(SCHEMA)
                if "served" not in {r[1] for r in db.execute("PRAGMA table_info(answers)")}:
                    self._add_column(db, "answers", "served INTEGER NOT NULL DEFAULT 1")  # all were served
                if "extra" not in {r[1] for r in db.execute("PRAGMA table_info(votes)")}:
                    self._add_column(db, "votes", "extra TEXT")  # every vote kept; imported ones without their extra
                db.execute("SELECT model_a, model_b, outcome, tstamp FROM votes LIMIT 1").fetchall()
            if any(r[1] == "tstamp" and r[3] for r in self._table_info("votes")):  # NOT NULL: an older database
                self._nullable_tstamp()
        except sqlite3.DatabaseError as e:  # "file is not a database", a foreign schema, ...
            raise UserError(f"{self.path}: not a readable arena database ({e})") from None

    def _refuse_foreign(self) -> None:
        """Leave an SQLite file that another program wrote untouched: read its tables without writing, and refuse
        it unless it is empty or holds our three tables and nothing else (nothing is added, not even WAL mode)."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
        try:
            tables = {
                r[0]
                for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                if not r[0].startswith("sqlite_")
            }
            votes = {r[1] for r in db.execute("PRAGMA table_info(votes)")}
        finally:
            db.close()
        ours = {"answers", "rounds", "votes", "meta"}
        if tables and (not {"answers", "rounds", "votes"} <= tables or tables - ours or not VOTE_COLUMNS <= votes):
            found = ", ".join(sorted(tables)) or "none"
            raise UserError(f"{self.path}: an SQLite database that weitiao arena did not write (tables: {found}); "
                            "left untouched; pass a new --db file")  # fmt: skip

    @staticmethod
    def _add_column(db: sqlite3.Connection, table: str, column: str) -> None:
        """A database from before `column`: add it (the rows already there get its default)."""
        try:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column}")
        except sqlite3.OperationalError as e:
            if "duplicate column" not in str(e):  # another process added it a moment ago
                raise

    def _table_info(self, table: str) -> list[tuple]:
        with self._db() as db:
            return db.execute(f"PRAGMA table_info({table})").fetchall()

    def _nullable_tstamp(self) -> None:
        """A database from before a vote's time could be unknown (votes.tstamp NOT NULL): `import_battles` wrote 0.0
        for a battle without one, and `arena export` gave it back as a time. Rebuild the table with a nullable
        tstamp in one transaction, turning those imported 0.0 times (round_id import:..., no battle of 1970) into
        null; votes cast on the page keep their times."""
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            db.execute("BEGIN IMMEDIATE")  # another process migrating meanwhile: wait, then find it done
            if any(r[1] == "tstamp" and r[3] for r in db.execute("PRAGMA table_info(votes)")):
                db.execute(f"CREATE TABLE votes_nullable_tstamp {VOTES}")
                db.execute(
                    f"INSERT INTO votes_nullable_tstamp ({VOTE_FIELDS}) SELECT id, round_id, prompt, model_a, "
                    "model_b, swapped, outcome, voter, "
                    "CASE WHEN round_id LIKE 'import:%' AND tstamp = 0 THEN NULL ELSE tstamp END, extra FROM votes"
                )
                db.execute("DROP TABLE votes")
                db.execute("ALTER TABLE votes_nullable_tstamp RENAME TO votes")
                db.execute("CREATE INDEX IF NOT EXISTS votes_voter ON votes (voter)")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            db.close()

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30)
        try:
            with db:  # commit on success, roll back on error
                yield db
        finally:
            db.close()

    # answers ----------------------------------------------------------------------------------------
    def serve_answers(self, rows: Sequence[dict]) -> int:
        """Store the answers and serve exactly these: every other answer in the file (an earlier run's model or
        prompt) is set aside, kept with its votes but never drawn. One model's answer to a prompt never changes
        under votes already cast on it (a different answer there is refused: serve new answers with a new --db),
        and two different answers to one prompt from one model are refused. Returns the answers served."""
        given: dict[tuple[str, str], str] = {}
        for r in rows:
            key = (r["prompt"], r["model"])
            if given.setdefault(key, r["answer"]) != r["answer"]:
                raise UserError(f"answers: model {key[1]!r} has two different answers to prompt {key[0][:60]!r}; "
                                "keep one")  # fmt: skip
        with self._db() as db:
            for (prompt, model), answer in given.items():
                old = db.execute("SELECT answer FROM answers WHERE prompt = ? AND model = ?", (prompt, model))
                if (
                    (row := old.fetchone())
                    and row[0] != answer
                    and db.execute(
                        "SELECT 1 FROM votes WHERE prompt = ? AND (model_a = ? OR model_b = ?) LIMIT 1",
                        (prompt, model, model),
                    ).fetchone()
                ):
                    raise UserError(
                        f"{self.path}: model {model!r} already has another answer to prompt {prompt[:60]!r}, and "
                        "votes were cast on it; serve new answers with a new --db"
                    )
            db.execute("UPDATE answers SET served = 0")  # one transaction with the insert: no round sees neither
            db.executemany("INSERT OR REPLACE INTO answers (prompt, model, answer, served) VALUES (?, ?, ?, 1)",
                           [(p, m, a) for (p, m), a in given.items()])  # fmt: skip
        return len(given)

    def count_answers(self) -> int:
        """Answers served now."""
        with self._db() as db:
            return db.execute("SELECT COUNT(*) FROM answers WHERE served = 1").fetchone()[0]

    def models(self) -> list[str]:
        """Models served now."""
        with self._db() as db:
            return [r[0] for r in db.execute("SELECT DISTINCT model FROM answers WHERE served = 1 ORDER BY model")]

    def set_aside(self) -> tuple[list[str], int]:
        """Models with answers in the file but none served now, and how many answers are not served."""
        with self._db() as db:
            models = db.execute("SELECT model FROM answers GROUP BY model HAVING MAX(served) = 0 ORDER BY model")
            n = db.execute("SELECT COUNT(*) FROM answers WHERE served = 0").fetchone()[0]
            return [r[0] for r in models], n

    def secret(self) -> bytes:
        """The key that signs voter cookies: random, made once per database, so cookies outlive restarts."""
        with self._db() as db:
            db.execute("INSERT OR IGNORE INTO meta VALUES ('secret', ?)", (secrets.token_hex(32),))
            return bytes.fromhex(db.execute("SELECT value FROM meta WHERE key = 'secret'").fetchone()[0])

    # rounds and votes -------------------------------------------------------------------------------
    def draw_round(self, rng: random.Random, skip_pairs: set[tuple[str, str]] = frozenset()) -> dict | None:
        """A random prompt, then two of its models (a sorted pair not in `skip_pairs`) on random sides, with
        their answers; None when no prompt has an allowed pair. Stores nothing."""
        with self._db() as db:
            models_of: dict[str, list[str]] = {}
            served = "SELECT prompt, model FROM answers WHERE served = 1 ORDER BY prompt, model"
            for prompt, model in db.execute(served):
                models_of.setdefault(prompt, []).append(model)
            allowed = {p: [c for c in combinations(ms, 2) if c not in skip_pairs] for p, ms in models_of.items()}
            prompts = [p for p, pairs in allowed.items() if pairs]
            if not prompts:
                return None
            prompt = rng.choice(prompts)
            pair = rng.choice(allowed[prompt])
            swapped = rng.random() < 0.5
            a, b = (pair[1], pair[0]) if swapped else pair
            q = "SELECT answer FROM answers WHERE prompt = ? AND model = ?"
            text_a, text_b = (db.execute(q, (prompt, m)).fetchone()[0] for m in (a, b))
        return {"prompt": prompt, "model_a": a, "model_b": b, "swapped": int(swapped), "a": text_a, "b": text_b}

    def record_vote(self, round_id: str, rnd: dict, choice: str, voter: str) -> dict:
        """Store a round drawn by `draw_round` with its vote; returns the revealed names. Raises ValueError
        (bad choice, round already voted)."""
        if choice not in CHOICES:
            raise ValueError(f"choice {choice!r}; expected one of {', '.join(CHOICES)}")
        row = (rnd["prompt"], rnd["model_a"], rnd["model_b"], rnd["swapped"])
        with self._db() as db:
            try:
                db.execute("INSERT INTO rounds VALUES (?, ?, ?, ?, ?, ?)", (round_id, *row, rnd.get("issued")))
                db.execute(
                    "INSERT INTO votes (round_id, prompt, model_a, model_b, swapped, outcome, voter, tstamp) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (round_id, *row, CHOICES[choice], voter, time.time()),
                )
            except sqlite3.IntegrityError:
                raise ValueError("this round already has a vote") from None
        return {"model_a": row[1], "model_b": row[2], "outcome": CHOICES[choice]}

    def has_vote(self, round_id: str) -> bool:
        with self._db() as db:
            return db.execute("SELECT 1 FROM votes WHERE round_id = ?", (round_id,)).fetchone() is not None

    def pair_votes(self, voter: str) -> dict[tuple[str, str], int]:
        """Votes `voter` has cast per (sorted) model pair."""
        with self._db() as db:
            rows = db.execute("SELECT model_a, model_b FROM votes WHERE voter = ?", (voter,)).fetchall()
        out: dict[tuple[str, str], int] = {}
        for a, b in rows:
            key = (min(a, b), max(a, b))
            out[key] = out.get(key, 0) + 1
        return out

    def votes(self) -> list[dict]:
        with self._db() as db:
            db.row_factory = sqlite3.Row
            return [dict(r) for r in db.execute("SELECT * FROM votes ORDER BY tstamp, id")]

    def battles(self) -> list[dict]:
        """Votes as FastChat-style battles (its clean_battle fields): model_a, model_b, winner, tstamp, judge (voter),
        prompt; tstamp is null for a battle imported without one (never an invented time). An imported battle comes
        back with the fields it had, in their order, and nothing added."""
        out = []
        for v in self.votes():
            cols = {"model_a": v["model_a"], "model_b": v["model_b"], "winner": v["outcome"], "tstamp": v["tstamp"],
                    "judge": v["voter"], "prompt": v["prompt"]}  # fmt: skip
            if v["extra"] is None:  # cast on the page (or imported by a weitiao that dropped the other fields)
                out.append(cols)
            else:
                extra = json.loads(v["extra"])
                out.append({k: cols[k] if k in cols else extra["fields"][k] for k in extra["keys"]})
        return out

    def import_battles(self, rows: Sequence[dict]) -> tuple[int, int, int]:
        """Add battles as votes, every field kept (`battles` gives them back); (added, skipped, restored). A battle
        already imported (the same fields, the k-th copy of them) is skipped, so importing a file twice does not
        count its votes twice; one imported by a weitiao that dropped its other fields (and stored a FastChat
        `question_id` as its prompt) gets them back: `restored`."""
        seen: dict[str, int] = {}
        values = []
        for r in rows:
            prompt = r.get("prompt") if isinstance(r.get("prompt"), str) else None  # else kept in `extra`
            cols = {"model_a", "model_b", "winner", "tstamp", "judge"} | ({"prompt"} if prompt is not None else set())
            extra = json.dumps({"keys": list(r), "fields": {k: v for k, v in r.items() if k not in cols}},
                               ensure_ascii=False)  # fmt: skip
            # the digest as before extra fields were kept (question_id stood for a missing prompt, a missing time
            # was 0.0), so battles imported by an older weitiao are recognised
            old_prompt = r.get("prompt") if r.get("prompt") is not None else r.get("question_id")
            fields = (None if old_prompt is None else str(old_prompt), r["model_a"], r["model_b"], r["winner"],
                      r.get("judge"), float(r.get("tstamp") or 0.0))  # fmt: skip
            digest = hashlib.sha1(json.dumps(fields).encode()).hexdigest()[:20]
            seen[digest] = seen.get(digest, -1) + 1
            t = r.get("tstamp")
            values.append((f"import:{digest}:{seen[digest]}", prompt, *fields[1:3], None, *fields[3:5],
                           None if t is None else float(t), extra))  # fmt: skip
        with self._db() as db:
            # votes cast on this database's page, exported and imported back (or into a copy of it), carry the
            # voter cookie and the exact time of the vote: the same battle, not a new one (it was counted twice)
            served = Counter(
                db.execute(
                    "SELECT prompt, model_a, model_b, outcome, voter, tstamp FROM votes "
                    "WHERE round_id NOT LIKE 'import:%' AND tstamp IS NOT NULL"
                ).fetchall()
            )
            fresh = []
            for v in values:
                key = (v[1], v[2], v[3], v[5], v[6], v[7])
                if served[key] > 0:
                    served[key] -= 1
                else:
                    fresh.append(v)
            before = db.total_changes
            db.executemany(
                "INSERT OR IGNORE INTO votes (round_id, prompt, model_a, model_b, swapped, outcome, voter, tstamp, "
                "extra) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                fresh,
            )
            added = db.total_changes - before
            db.executemany(
                "UPDATE votes SET prompt = ?, extra = ? WHERE round_id = ? AND extra IS NULL",
                [(v[1], v[8], v[0]) for v in fresh],
            )
            restored = db.total_changes - before - added
        return added, len(rows) - added, restored


# ---------------------------------------------------------------------------------------------- inputs


def read_answers(path: str | Path) -> list[dict]:
    """Rows {prompt, model, answer} from JSONL; a bad row raises UserError naming file:line and field, as does a
    model's second, different answer to one prompt (read before `serve` makes the --db: it left a new empty one)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: file not found")
    rows, first = [], {}
    for n, r in read_jsonl(path):
        for f in ("prompt", "model", "answer"):
            if not isinstance(r, dict) or not isinstance(r.get(f), str):
                raise UserError(f"{where(path, n, f)}: missing or not a string; rows are {{prompt, model, answer}}")
        for f in sorted(r.keys() - {"prompt", "model", "answer"}):  # e.g. a system prompt the page would not show
            raise UserError(f"{where(path, n, f)}: unknown field; rows are {{prompt, model, answer}}")
        if not r["prompt"].strip():  # a round asking nothing
            raise UserError(f"{where(path, n, 'prompt')}: empty; give the prompt the answers reply to")
        if not r["model"].strip() or r["model"] != r["model"].strip():  # ranked as a blank name, or beside "a" as "a "
            raise UserError(f"{where(path, n, 'model')}: {r['model']!r}; a model name is not empty and has no spaces "
                            "around it")  # fmt: skip
        n0, answer = first.setdefault((r["prompt"], r["model"]), (n, r["answer"]))
        if answer != r["answer"]:
            raise UserError(f"{where(path, n, 'answer')}: model {r['model']!r} answered this prompt differently at "
                            f"line {n0}; keep one")  # fmt: skip
        rows.append({"prompt": r["prompt"], "model": r["model"], "answer": r["answer"]})
    if len({r["model"] for r in rows}) < 2:
        raise UserError(f"{path}: answers from at least two models needed")
    if not paired_prompts(rows)[0]:  # the server started, and every round was a 404
        raise UserError(
            f"{path}: no prompt has answers from two models (a round shows two answers to one prompt, matched "
            "character for character); give a prompt the same text in each model's rows"
        )
    return rows


def paired_prompts(rows: Sequence[dict]) -> tuple[int, int]:
    """(prompts answered by two models or more, prompts answered by one only: never drawn into a round)."""
    models: dict[str, set[str]] = {}
    for r in rows:
        models.setdefault(r["prompt"], set()).add(r["model"])
    return sum(len(m) > 1 for m in models.values()), sum(len(m) == 1 for m in models.values())


def parse_models(spec: str) -> dict[str, tuple[str, str | None]]:
    """`a=MODEL[:ADAPTER],b=...` → {name: (model, adapter)}."""
    out: dict[str, tuple[str, str | None]] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, eq, target = part.partition("=")
        if not eq or not name or not target:
            raise UserError(f"--models {part!r}: expected NAME=MODEL[:ADAPTER]")
        model, _, adapter = target.partition(":")
        if name in out:
            raise UserError(f"--models {part!r}: the name {name!r} is given twice; name each model once")
        out[name] = (model, adapter or None)
    if len(out) < 2:
        raise UserError("--models: name at least two models, e.g. base=demo,tuned=demo:runs/demo/final")
    return out


def check_live(spec: str, prompts: Path | None) -> tuple[dict, list]:
    """The models and prompts of `--models SPEC --prompts FILE`, read and checked (nothing loaded)."""
    if prompts is None:
        raise UserError("--models needs --prompts FILE to answer")
    return parse_models(spec), arena_prompts(prompts)


def pregenerate(spec: str, prompts: Path | None, max_new_tokens: int = 128, seed: int = 0) -> list[dict]:
    """Answer every prompt with every model once (temperature 0.7, top-p 0.9, seeded) before serving."""
    from weitiao.progress import progress_bar

    models, ps = check_live(spec, prompts)
    rows: list[dict] = []
    with progress_bar() as bar:
        task = bar.add_task(f"answering {len(ps)} prompts", total=len(models), info="")
        for name, (model, adapter) in models.items():
            rows += _answer_all(name, model, adapter, ps, max_new_tokens, seed)
            bar.advance(task)
    return rows


def arena_prompts(path: Path) -> list:
    """The prompts to answer, each once: answers are keyed by the prompt as shown, so a second copy got a second
    sampled answer, and every answer was generated before that was refused."""
    from weitiao.eval.golden import load_prompts

    ps, first = load_prompts(path), {}
    for p in ps:
        if (where_first := first.setdefault(shown(p), p.source)) != p.source:
            raise UserError(f"{p.source}: the same prompt as {where_first}; the arena keeps one answer per model and "
                            "prompt: drop one")  # fmt: skip
    return ps


def _answer_all(name: str, model: str, adapter: str | None, ps: list, max_new_tokens: int, seed: int) -> list[dict]:
    from weitiao.infer.chat import load_chat_model

    m, tok = load_chat_model(model, adapter)
    return answer_rows(name, m, tok, ps, max_new_tokens, seed)


def answer_rows(name: str, m: Any, tok: Any, ps: list, max_new_tokens: int = 128, seed: int = 0) -> list[dict]:
    """A loaded model's answers as arena rows (temperature 0.7, top-p 0.9, seeded); a multi-turn prompt is
    shown as `role: text` lines."""
    from weitiao.data.templates import resolve_template
    from weitiao.eval.golden import check_context
    from weitiao.infer.generate import generate

    convs, template = [p.messages for p in ps], resolve_template(tok, "auto")
    check_context(m, tok, template, ps, max_new_tokens)  # past the context: answers from positions never trained
    gens = generate(m, tok, template, convs, max_new_tokens, 0.7, 0.9, seed=seed)
    return [{"prompt": shown(p), "model": name, "answer": g.text} for p, g in zip(ps, gens)]


def shown(p: Any) -> str:
    """A prompt as the vote page shows it: its text, or `role: text` lines for several messages."""
    multi = len(p.messages) > 1
    return "\n".join(f"{x['role']}: {x['content']}" for x in p.messages) if multi else p.messages[0]["content"]

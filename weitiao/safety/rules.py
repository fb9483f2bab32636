"""Rule sets (Q165): a YAML file of rules, validation with errors naming rule and field, programmatic checks,
and per-rule coverage of a data set.

    weitiao rules check examples/rules_zh.yaml
    weitiao rules coverage --rules examples/rules_zh.yaml runs/rules/sft.jsonl

A rule file is a YAML list (or {rules: [...]}) of
    {id, category: style|format|content|fact, text: the rule in words, when: optional regex on the user
     prompt (the rule is conditional: it only matters for prompts it matches), check: optional
     {regex, not_regex, max_length, min_length, required: [...], forbidden: [...], starts_with, ends_with,
      json_schema}}
Lengths count characters of the stripped reply as shown (grapheme clusters, `eval.style.chars`, as eval's
mean_len: 👍🏽 is 1, not 2 code points); starts_with/ends_with take a string or a list (any one);
json_schema is a JSON Schema (draft 2020-12, checked by the `jsonschema` library), applied to the reply
parsed as JSON (``` fences allowed).

Coverage reads data rows as training does (`weitiao.data.formats`, the format detected per row): an SFT row
gives its last user turn and reply, a preference pair its chosen and rejected replies; an empty reply is a
reply of length 0; a row training could not read is an error naming file:line. A prompt *exercises* a rule
when the rule is global (no `when`), when `when` matches the prompt, or when the row names the rule in
`rule_ids` (rows made for that rule). A data set covers a rule with the rows that exercise it; for rules with
a check we also count how many of those rows' replies pass it (a pair's chosen reply), and for preference
pairs how many pairs contrast it (chosen passes, rejected fails).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from weitiao.config import duplicate_key
from weitiao.data.files import RowError, iter_records
from weitiao.data.formats import Document, detect_format, parse_preference, parse_row
from weitiao.data.prompts import read_prompts as read_prompt_rows
from weitiao.errors import UserError
from weitiao.eval.style import chars
from weitiao.io import read_text
from weitiao.json_reply import parse_json_reply

CATEGORIES = ("style", "format", "content", "fact")
RULE_KEYS = {"id", "category", "text", "when", "check", "note"}
CHECK_KEYS = {"regex", "not_regex", "max_length", "min_length", "required", "forbidden", "starts_with", "ends_with",
              "json_schema"}  # fmt: skip


# ----------------------------------------------------------------------------- JSON Schema (jsonschema library)


def _at(path: Any) -> str:
    """A JSON location as `$.a.b[1]`."""
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)


def schema_errors(value: Any, schema: dict) -> list[str]:
    """Where `value` breaks `schema` (JSON Schema 2020-12, by `jsonschema`), as `$.path: message`; [] = conforms."""
    from jsonschema import Draft202012Validator

    errs = sorted(Draft202012Validator(schema).iter_errors(value), key=lambda e: [str(p) for p in e.absolute_path])
    return [f"{_at(e.absolute_path)}: {e.message}" for e in errs]


def _schema_problem(schema: Any, at: str = "check.json_schema") -> str | None:
    """A problem with the schema itself (checked against the 2020-12 meta-schema), or None."""
    from jsonschema import Draft202012Validator, SchemaError

    if not isinstance(schema, dict):
        return f"{at}: expected a mapping"
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as e:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e.absolute_path)
        return f"{at}{where}: {e.message}"
    return None


# ----------------------------------------------------------------------------- rules and checks


@dataclass
class Check:
    """Programmatic conditions on a reply; `failures` names each one it breaks."""

    regex: str | None = None
    not_regex: str | None = None
    max_length: int | None = None
    min_length: int | None = None
    required: list[str] = field(default_factory=list)
    forbidden: list[str] = field(default_factory=list)
    starts_with: list[str] = field(default_factory=list)
    ends_with: list[str] = field(default_factory=list)
    json_schema: dict | None = None

    def failures(self, reply: str) -> list[str]:
        """['check.field: why', ...] for every condition the reply breaks; [] = passes."""
        text, out = reply.strip(), []
        if self.regex and not re.search(self.regex, text):
            out.append(f"check.regex: no match for {self.regex!r}")
        if self.not_regex and (m := re.search(self.not_regex, text)):
            out.append(f"check.not_regex: matched {m.group()!r}")
        n = chars(text)  # as eval's mean_len counts: 👍🏽 is one character, not two code points
        if self.max_length is not None and n > self.max_length:
            out.append(f"check.max_length: {n} > {self.max_length}")
        if self.min_length is not None and n < self.min_length:
            out.append(f"check.min_length: {n} < {self.min_length}")
        out += [f"check.required: missing {p!r}" for p in self.required if p not in text]
        out += [f"check.forbidden: contains {p!r}" for p in self.forbidden if p in text]
        if self.starts_with and not any(text.startswith(s) for s in self.starts_with):
            out.append(f"check.starts_with: not one of {self.starts_with}")
        if self.ends_with and not any(text.endswith(s) for s in self.ends_with):
            out.append(f"check.ends_with: not one of {self.ends_with}")
        if self.json_schema is not None:
            try:
                errs = schema_errors(parse_json_reply(text, repair=False), self.json_schema)
            except ValueError as e:
                errs = [f"not JSON ({e})"]
            out += [f"check.json_schema: {e}" for e in errs[:3]]
        return out


@dataclass
class Rule:
    id: str
    category: str
    text: str
    when: str | None = None  # regex on the user prompt; None = global rule
    check: Check | None = None

    def exercised_by(self, prompt: str, rule_ids: list[str] | tuple = ()) -> bool:
        """Global, or `when` matches the prompt, or the prompt was made for this rule."""
        return self.when is None or bool(re.search(self.when, prompt)) or self.id in rule_ids

    def failures(self, reply: str) -> list[str]:
        return self.check.failures(reply) if self.check else []


@dataclass
class RuleSet:
    path: str
    rules: list[Rule]
    known: frozenset[str] = frozenset()  # every id in the file (rules may be an --ids subset); empty = rules' ids

    def by_id(self, rid: str) -> Rule:
        for r in self.rules:
            if r.id == rid:
                return r
        raise UserError(f"{self.path}: no rule {rid!r}")

    def system_prompt(self) -> str:
        """The rules in words, for a teacher's (or a baseline's) system prompt."""
        lines = [f"[{r.id}] {r.text}" for r in self.rules]
        return "你是一个AI助手。回答用户时必须严格遵守以下全部规则：\n" + "\n".join(lines)

    def exercised(self, prompt: str, rule_ids: list[str] | tuple = ()) -> list[Rule]:
        return [r for r in self.rules if r.exercised_by(prompt, rule_ids)]

    def failures(self, prompt: str, reply: str, rule_ids: list[str] | tuple = ()) -> dict[str, list[str]]:
        """rule id → failures, for the checked rules the prompt exercises (only failing rules listed)."""
        out = {}
        for r in self.exercised(prompt, rule_ids):
            if f := r.failures(reply):
                out[r.id] = f
        return out


def _str_list(v: Any) -> list[str] | None:
    """A string or a non-empty list of them as a list; None for anything else or an empty string (which every
    reply contains, starts and ends with: a check that always passes, or always fails as `forbidden`)."""
    v = [v] if isinstance(v, str) else v
    if isinstance(v, list) and v and all(isinstance(x, str) and x for x in v):
        return v
    return None


def _parse_check(raw: Any) -> tuple[Check | None, str | None]:
    """(Check, None) or (None, 'check.field: problem')."""
    if not isinstance(raw, dict) or not raw:
        return None, "check: expected a non-empty mapping"
    unknown = sorted(set(raw) - CHECK_KEYS)
    if unknown:
        return None, f"check.{unknown[0]}: unknown key (allowed: {', '.join(sorted(CHECK_KEYS))})"
    kw: dict[str, Any] = {}
    for k, v in raw.items():
        if k in ("regex", "not_regex"):
            if not isinstance(v, str):  # a list of patterns is not read as alternatives: say so, not "empty"
                return None, f"check.{k}: expected one pattern string, got {type(v).__name__} {v!r} (alternatives: a|b)"
            if not v:
                return None, f"check.{k}: expected a non-empty pattern (an empty one matches every reply)"
            try:
                re.compile(v)
            except re.error as e:
                return None, f"check.{k}: invalid pattern ({e})"
        elif k in ("max_length", "min_length"):
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                return None, f"check.{k}: expected a non-negative integer, got {v!r}"
        elif k in ("required", "forbidden", "starts_with", "ends_with"):
            v = _str_list(v)
            if v is None:
                return None, f"check.{k}: expected a non-empty string or a non-empty list of them"
        elif k == "json_schema" and (p := _schema_problem(v)):
            return None, p
        kw[k] = v
    if kw.get("min_length") is not None and kw.get("max_length") is not None and kw["min_length"] > kw["max_length"]:
        return None, f"check.min_length: {kw['min_length']} > max_length {kw['max_length']}"
    return Check(**kw), None


# What a pattern's match may look at outside the text it matches (sre opcodes): before it, after it
_LOOKS_BACK = {"AT_BEGINNING", "AT_BEGINNING_STRING", "AT_BEGINNING_LINE", "AT_BOUNDARY", "AT_NON_BOUNDARY"}
_LOOKS_AHEAD = {"AT_END", "AT_END_STRING", "AT_END_LINE", "AT_BOUNDARY", "AT_NON_BOUNDARY"}


def _looks(pattern: str) -> set[str]:
    """'back' and/or 'ahead' when a match of `pattern` may depend on text before/after it (anchors, \\b, lookarounds),
    so that matching a phrase alone does not say it matches inside a longer reply. Unknown constructs: both."""
    import re._parser as sre  # the parser `re` itself uses; its tree names every anchor and lookaround

    found: set[str] = set()

    def walk(items: Any) -> None:
        for op, arg in items:
            name = str(op)
            if name == "AT":
                found.update(d for d, names in (("back", _LOOKS_BACK), ("ahead", _LOOKS_AHEAD)) if str(arg) in names)
            elif name in ("ASSERT", "ASSERT_NOT"):
                found.add("back" if arg[0] < 0 else "ahead")
                walk(arg[1])
            elif name in ("LITERAL", "NOT_LITERAL", "ANY", "IN", "RANGE", "CATEGORY", "GROUPREF", "FAILURE"):
                continue
            elif name == "BRANCH":
                for b in arg[1]:
                    walk(b)
            elif name == "SUBPATTERN":
                walk(arg[-1])
            elif name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
                walk(arg[2])
            elif name == "ATOMIC_GROUP":
                walk(arg)
            else:  # GROUPREF_EXISTS and anything newer: not decided
                found.update(("back", "ahead"))

    try:
        walk(sre.parse(pattern))
    except Exception:
        return {"back", "ahead"}
    return found


def _always_matches(pattern: str, phrase: str, key: str) -> bool:
    """Whether `pattern` matches every stripped reply that `key` (required, starts_with, ends_with) makes hold `phrase`:
    it matches the phrase alone and looks at nothing on the side(s) where a reply may have more text."""
    blind = {"required": {"back", "ahead"}, "starts_with": {"ahead"}, "ends_with": {"back"}}[key]
    return re.search(pattern, phrase) is not None and not (_looks(pattern) & blind)


def _never_passes(r: Rule, other: Rule | None = None) -> str | None:
    """Why no reply passes rule r's check together with `other`'s (None: r alone), or None: a phrase r needs (required,
    every starts_with/ends_with option) holds a phrase forbidden there, is longer than a max_length there, or always
    matches a not_regex there (ends_with 。 beside not_regex 。$: decided only where the pattern's match cannot depend
    on the rest of the reply, so there is no false alarm)."""
    o = (other or r).check
    if r.check is None or o is None:
        return None
    by = f" (rule {other.id}{'' if other.when else ', a global rule'})" if other else ""
    needs = [("required", [p]) for p in r.check.required]
    needs += [(k, opts) for k in ("starts_with", "ends_with") if (opts := getattr(r.check, k))]
    for key, opts in needs:
        hits = [next((f for f in o.forbidden if f in x), None) for x in opts]
        what = f"check.{key}: {opts[0] if len(opts) == 1 else opts!r}"
        if all(hits):
            return f"{what}: contains {hits[0]!r}, forbidden{by}; no reply passes"
        if o.max_length is not None and min(map(chars, opts)) > o.max_length:
            return f"{what}: longer than max_length {o.max_length}{by}; no reply passes"
        if o.not_regex and all(_always_matches(o.not_regex, x, key) for x in opts):
            return f"{what}: always matches check.not_regex {o.not_regex!r}{by}; no reply passes"
    return None


def validate(items: Any, path: str, lines: list[int] | None = None) -> tuple[list[Rule], list[str]]:
    """Rules and every problem found, each as `path:line: rule ID: field: problem`."""
    if isinstance(items, dict) and "rules" in items:
        items = items["rules"]
    if not isinstance(items, list) or not items:
        return [], [f"{path}: expected a non-empty list of rules (or a mapping with a 'rules' list)"]
    rules, errors, seen, locs = [], [], {}, {}
    for i, raw in enumerate(items):
        loc = f"{path}:{lines[i]}" if lines and i < len(lines) else path
        name = f"rule #{i + 1}"
        if not isinstance(raw, dict):
            errors.append(f"{loc}: {name}: expected a mapping with id, category, text")
            continue
        rid = raw.get("id")
        if isinstance(rid, (str, int)) and not isinstance(rid, bool) and str(rid).strip():
            name = f"rule {rid}"
        elif rid is None or rid == "":
            errors.append(f"{loc}: {name}: id: missing or empty")
        else:  # 1.50, true, a list: YAML's reading of what may have been meant as text
            errors.append(f"{loc}: {name}: id: expected text, got {type(rid).__name__} {rid!r}; quote it")
            rid = None  # no rule under a guessed id
        problems = []
        unknown = sorted(set(raw) - RULE_KEYS)
        if unknown:
            problems.append(f"{unknown[0]}: unknown key (allowed: {', '.join(sorted(RULE_KEYS))})")
        if rid is not None and str(rid) in seen:
            problems.append(f"id: duplicate of rule #{seen[str(rid)]}")
        if raw.get("category") not in CATEGORIES:
            problems.append(f"category: {raw.get('category')!r} unknown; use one of {', '.join(CATEGORIES)}")
        if not isinstance(raw.get("text"), str) or not raw["text"].strip():
            problems.append("text: missing or empty (the rule in words)")
        when = raw.get("when")
        if when is not None and not isinstance(when, str):
            problems.append(f"when: expected a pattern string, got {type(when).__name__} {when!r} (quote it)")
        elif when is not None:
            try:
                re.compile(when)
                if not when:
                    problems.append("when: empty pattern (it matches every prompt); drop `when` for a global rule")
            except (re.error, TypeError) as e:
                problems.append(f"when: invalid pattern ({e})")
        check = None
        if "check" in raw and raw["check"] is not None:
            check, problem = _parse_check(raw["check"])
            if problem:
                problems.append(problem)
        errors += [f"{loc}: {name}: {p}" for p in problems]
        if rid is not None and str(rid) not in seen:
            seen[str(rid)] = i + 1
        if not problems and rid is not None:
            rule = Rule(str(rid), raw["category"], raw["text"].strip(), when, check)
            if problem := _never_passes(rule):
                errors.append(f"{loc}: {name}: {problem}")
            else:
                rules.append(rule)
                locs[rule.id] = loc
    # a global rule is exercised with every other rule: a reply cannot satisfy both when their checks contradict
    for r in rules:
        for g in rules:
            if g is not r and g.when is None and (problem := _never_passes(r, g)):
                errors.append(f"{locs[r.id]}: rule {r.id}: {problem}")
    return rules, errors


def read_rules(path: str | Path) -> tuple[list[Rule], list[str]]:
    """Parse and validate a rule file; returns (rules, errors) with line numbers where YAML gives them."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: rule file not found")
    text = read_text(p)
    try:
        data = yaml.safe_load(text)
        node = yaml.compose(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        return [], [f"{p}{f':{mark.line + 1}' if mark else ''}: not valid YAML ({getattr(e, 'problem', e)})"]
    except RecursionError:
        return [], [f"{p}: not valid YAML (nested too deeply)"]
    if dup := duplicate_key(p, node):  # YAML would keep the last `check:` or `when:` of a rule, silently
        return [], [dup]
    if isinstance(node, yaml.MappingNode):
        node = next((v for k, v in node.value if k.value == "rules"), None)
    lines = [n.start_mark.line + 1 for n in node.value] if isinstance(node, yaml.SequenceNode) else None
    rules, errors = validate(data, str(p), lines)
    return rules, [*errors, *_numeric_ids(p, node)]


def _numeric_ids(p: Path, rules: yaml.Node | None) -> list[str]:
    """Ids YAML reads as another whole number than written (`id: 010` is 8, `06` is 6): refused, not guessed."""
    found = []
    for item in rules.value if isinstance(rules, yaml.SequenceNode) else ():
        for k, v in item.value if isinstance(item, yaml.MappingNode) else ():
            if k.value == "id" and isinstance(v, yaml.ScalarNode) and v.tag.endswith(":int"):
                if str(number := yaml.safe_load(v.value)) != v.value:
                    found.append(f"{p}:{v.start_mark.line + 1}: id: {v.value} reads as the number {number} in YAML; "
                                 f"quote it: id: '{v.value}'")  # fmt: skip
    return found


def load_rules(path: str | Path, ids: list[str] | None = None) -> RuleSet:
    """A valid RuleSet (only `ids` if given), or UserError with the first problem (all: `weitiao rules check`)."""
    rules, errors = read_rules(path)
    if errors:
        more = f" (and {len(errors) - 1} more; run `weitiao rules check {path}`)" if len(errors) > 1 else ""
        raise UserError(errors[0] + more)
    known = frozenset(r.id for r in rules)
    if ids:
        missing = sorted(set(ids) - known)
        if missing:
            raise UserError(f"--ids: {path} has no rule {', '.join(missing)}")
        rules = [r for r in rules if r.id in ids]
    return RuleSet(str(path), rules, known)


# ----------------------------------------------------------------------------- prompts and coverage


@dataclass
class Prompt:
    text: str
    rule_ids: list[str] = field(default_factory=list)  # rules this prompt was made to exercise


@dataclass
class Sample:
    """A data row as coverage reads it: the last user turn, the reply (a pair's chosen), a pair's rejected reply,
    the rules the row names in `rule_ids`, and where it came from."""

    prompt: str
    reply: str
    rejected: str | None = None
    rule_ids: list[str] = field(default_factory=list)
    source: str = ""


_EMPTY = "\x00"  # stands in for an empty reply while the training parser reads the row
_REPLY_AT = {"alpaca": ("output", "content"), "prompt_completion": ("completion", "content"),
             "openai": ("messages", "content"), "sharegpt": ("conversations", "value"),
             "firefly": ("conversation", "assistant")}  # fmt: skip


def _fill_empty_reply(record: dict, fmt: str) -> dict:
    """The record with an empty final reply read as _EMPTY: training refuses such a row, coverage checks it."""
    key, text = _REPLY_AT[fmt]
    value = record.get(key)
    if isinstance(value, str) and not value.strip():
        return {**record, key: _EMPTY}
    last = value[-1] if isinstance(value, list) and value else None
    if isinstance(last, dict) and isinstance(last.get(text), str) and not last[text].strip():
        return {**record, key: [*value[:-1], {**last, text: _EMPTY}]}  # type: ignore[misc]
    return record


def row_prompt_reply(record: Any) -> tuple[str, str, str | None]:
    """(last user turn, reply, rejected or None) of a row of any training format, parsed as training parses it
    (format detected per row); an empty reply is "". Raises RowError."""
    if isinstance(record, RowError):
        raise record
    fmt = detect_format(record)
    if fmt == "preference":
        pair = parse_preference(record, strict=False)
        return pair.prompt[-1]["content"], pair.chosen, pair.rejected
    if fmt == "text":
        raise RowError("text", "a pre-training document has no prompt and reply; give SFT or preference rows")
    row = parse_row(_fill_empty_reply(record, fmt) if fmt in _REPLY_AT else record, fmt)
    if isinstance(row, Document):
        prompt, reply = row.prompt or "", row.text
    else:
        prompt = next((m["content"] for m in reversed(row.messages[:-1]) if m["role"] == "user"), "")
        reply = row.messages[-1].get("content") or ""
    return prompt, "" if reply == _EMPTY else reply, None


def _rule_ids(record: dict) -> list[str]:
    ids = record.get("rule_ids")
    if ids is None:
        return []
    ids = [ids] if isinstance(ids, str) else ids
    if not isinstance(ids, list) or not all(isinstance(x, (str, int)) for x in ids):
        raise RowError("rule_ids", f"expected a list of rule ids, got {ids!r}")
    return [str(x) for x in ids]


def to_sample(record: Any, source: str) -> Sample:
    """One data row as a Sample; a row training could not read either is UserError `source: field: problem`."""
    try:
        return Sample(*row_prompt_reply(record), _rule_ids(record), source)
    except RowError as e:
        raise UserError(f"{source}: {e}") from None


def read_jsonl(path: str | Path) -> list[Sample]:
    """Every row of a data file (JSONL or any file type training reads) as a Sample; a bad row raises UserError."""
    p = Path(path)
    return [to_sample(rec, f"{p}:{n}") for n, rec in iter_records(p)]


def read_prompts(path: str | Path, rs: RuleSet | None = None) -> list[Prompt]:
    """Prompts from JSONL rows with prompt / question / instruction(+input) / messages: one user turn, sent alone
    (`rules sft|dpo|eval` add at most the rules as the system prompt), so a row's own system prompt or earlier turns are
    refused naming file:line (they were dropped: the model answered the last turn without them). A row's
    `rule_ids` is a list of ids or one id (a CSV cell: its text was read letter by letter, R01 as R, 0, 1); with `rs`,
    an id that is no rule of its file is refused naming file:line, as coverage does."""
    out = []
    known = (rs.known or {r.id for r in rs.rules}) if rs else None
    for p in read_prompt_rows(path):
        if len(p.messages) > 1:
            what = "a system prompt" if p.messages[0]["role"] == "system" else "earlier turns"
            raise UserError(f"{p.source}: {what}: rules sft|dpo|eval send one user turn alone (with the rules as the "
                            "system prompt where asked), so it would be dropped; give the last user turn only, or "
                            "evaluate the conversation with `weitiao eval gen`")  # fmt: skip
        try:
            ids = _rule_ids(p.row)
        except RowError as e:
            raise UserError(f"{p.source}: {e}") from None
        if known is not None and (unknown := [x for x in ids if x not in known]):
            raise UserError(f"{p.source}: rule_ids: {unknown[0]!r} is no rule of {rs.path}")  # type: ignore[union-attr]
        out.append(Prompt(p.text, ids))
    return out


def coverage(rs: RuleSet, rows: list[Sample]) -> dict[str, Any]:
    """Per rule: rows that exercise it, passes/fails of its check (a pair's chosen reply), and pairs that
    contrast it (chosen passes, rejected fails)."""
    per = {r.id: {"category": r.category, "global": r.when is None, "checked": r.check is not None,
                  "exercised": 0, "pass": 0, "fail": 0, "contrast": 0} for r in rs.rules}  # fmt: skip
    known = rs.known or {r.id for r in rs.rules}
    for row in rows:
        if unknown := [x for x in row.rule_ids if x not in known]:  # a typo would leave its rule unexercised, silently
            raise UserError(f"{row.source}: rule_ids: {unknown[0]!r} is no rule of {rs.path}")
        for r in rs.exercised(row.prompt, row.rule_ids):
            c = per[r.id]
            c["exercised"] += 1
            if r.check:
                ok = not r.failures(row.reply)
                c["pass" if ok else "fail"] += 1
                if ok and row.rejected is not None and r.failures(row.rejected):
                    c["contrast"] += 1
    conditional = [k for k, v in per.items() if not v["global"]]
    return {
        "rows": len(rows),
        "rules": len(per),
        "conditional_rules_exercised": sum(per[k]["exercised"] > 0 for k in conditional),
        "conditional_rules": len(conditional),
        "uncovered": [k for k in conditional if per[k]["exercised"] == 0],
        "per_rule": per,
    }

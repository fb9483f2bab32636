"""Input screen for `weitiao serve`: scores user turns for prompt-injection signs; off by default.

    weitiao safety injection screen runs/inj/attacks.jsonl runs/inj/heldout_attacks.jsonl   # detection / FP
    weitiao serve --model demo --screen default          # or --screen my_screen.yaml (lead wires the flag)

Score = the sum of the weights of the distinct patterns that match any user turn (system turns come
from the operator and are trusted). Patterns cover override phrases, fake role tags and chat-template
tokens, requests for the system prompt or secrets, unbounded role-play, planted notes addressed to the
AI, and pinyin orders. Encoded payloads are decoded and scanned again: base64 runs, \\uXXXX escapes,
the text reversed, and CJK characters split by separators (忽/略/指/令). A request with score ≥
threshold is refused: the server answers with a normal chat reply whose finish_reason is
"content_filter" (nothing is generated), so OpenAI clients need no special error handling.

A screen built from the attack families it is measured on is optimistic on those families; the
held-out numbers of the model (not the screen) are the honest ones. See the detection/FP report.
A learned classifier (`weitiao safety injection train-screen`, weitiao.safety.screen_learned) is added
with the config key `classifier: FOLDER`: a request is then blocked when the patterns or it flag it,
with the same refusal.
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from weitiao.data.formats import join_text_parts
from weitiao.errors import UserError

log = logging.getLogger(__name__)
CJK = "\u4e00-\u9fff"
_VERBS = "输出|告诉|透露|复述|重复|打印|显示|发我|发给我|念|给我看|翻译|附上|说出|说了出来|总结"
_SECRETS = (
    "系统提示|提示词|初始prompt|初始设定|初始指令|全部设定|设定原文|机密编号|第一条消息|系统指令|prompt|内部密钥"
    "|你的设定|你自己的设定|遵守的所有规则|被要求遵守"
)

# (name, regex, weight): one weight per name however often it matches.
DEFAULT_PATTERNS: list[tuple[str, str, float]] = [
    ("override", r"(忽略|无视|忘掉|忘记|不要理会|不用管|不要管|别管|跳过|覆盖)[^。\n]{0,16}"
     r"(指令|指示|规则|设定|要求|提示|命令)", 1.0),
    ("override_en", r"(?i)(ignore|disregard|forget)\s+(all\s+)?(the\s+)?(previous|prior|above|earlier)\s+"
     r"(instructions?|prompts?|rules)", 1.0),
    ("rules_void", r"(规则|要求|设定|指令)[^。\n]{0,6}(作废|失效|已更新|取消)|新的?要求|新的?(系统)?指令|角色设定"
     r"|打破(规则|限制)|规则也能打破", 0.8),
    ("abandon_task", r"(不|不要|从不|别)(再)?(执行|做|回答)(原来|之前|原本|用户)的?(任务|问题|指令)"
     r"|背叛|停止回答", 0.8),
    ("repeat_above", r"(上面|以上|前面)的?(内容|文字|话)[^。\n]{0,12}(重复|复述|原样|逐字|完整)|从“你是”开始", 1.0),
    ("role_tag", r"(?m)<\|im_start\|>|<\|im_end\|>|<\|system\|>|<\|endoftext\|>|\[/?INST\]|<</?SYS>>|</?system>|</user>"
     r"|```\s*system|\"role\"\s*:\s*\"system\"|^\s*(system|assistant)\s*[:：]", 1.0),
    ("authority", r"管理员(通知|指令)|我是你的(开发者|管理员)|最高优先级|优先级(最高|高于)|调试模式|开发者模式", 0.5),
    ("extract", rf"({_VERBS})[^。\n]{{0,15}}({_SECRETS})"
     rf"|({_SECRETS})[^。\n]{{0,15}}(是什么|是多少|多少|原样|逐字|{_VERBS})", 1.0),
    ("extract_en", r"(?i)(repeat|print|reveal|show)\s+(me\s+)?(the\s+)?(text|words|system prompt|instructions?)"
     r"(\s+(above|prompt))?", 1.0),
    ("roleplay", r"扮演|假装你|假设你是|你现在是|现在你是|角色卡|进入角色|平行世界", 0.4),
    ("unbounded", r"(没有|不受|无|不存在)(任何)?(限制|约束|规则约束|保密规定)"
     r"|Do Anything Now|\bDAN\b|越狱|jailbreak|已解锁", 0.6),
    ("only_say", r"(只|仅)(会说|回复|输出|回答|说)|唯一任务是|回复内容只能是|以示已阅|以确认收到|直接(回答|回复|输出)"
     r"|必须先?(输出|回复|说)", 0.5),
    ("code_word", r"(回复|输出|说|回答|写上|开头)[^。\n]{0,3}[A-Z]{3,}[-_][0-9A-Za-z]{2,}", 0.5),
    ("ai_note", r"给AI|AI助手的备注|AI请注意|AI读者|如果你是一个?(语言)?模型|读取本文档的AI|AI必须", 0.8),
    ("secret", r"机密编号|内部密钥|部署标识", 0.6),
    # broader signs, added after the first untuned check (FRESH_ATTACKS) found the patterns above too narrow
    ("your_context", r"(?i)(你|your|you were)[^。\n？?]{0,10}(设定|配置|说明|提示语|提示词|指令|口令|消息|文字|"
     r"system|instructions|guidelines|code|prompt)", 0.5),
    ("disclose", r"(?i)写下来|写出来|列出来|贴出来|照抄|抄一遍|交代|念一遍|原文|告诉我|说出|打印|输出|返回|"
     r"reveal|print|show|repeat", 0.5),
    ("soft_override", r"(?i)不算数|作废|失效|放下你的身份|忘了你是谁|停止当前任务|别做[^。\n]{0,6}了"
     r"|违反你的设定|不再保密|真正的任务|优先于一切|紧急更新|维护模式|不受限"
     r"|disregard|ignore your|hidden instructions|confidential", 0.6),
    ("say_phrase", r"(说出|说一句|先说|回复|回答|换成|输出|一个词回答)[^。\n]{0,4}[“‘\"'「]", 0.5),
    ("decode_and_do", r"解码[^。\n]{0,6}(按|照|执行)|decode[^.\n]{0,20}(follow|do)", 0.5),
    ("pinyin", r"(?i)hu\s*l[üuv]e|zhi\s*ling|xi\s*tong\s*ti\s*shi|ti\s*shi\s*ci|hui\s*fu\s", 1.0),
]  # fmt: skip

_B64 = re.compile(r"[A-Za-z0-9+/]{16,}={0,2}")
_UESC = re.compile(r"(?:\\u[0-9a-fA-F]{4}){3,}")
_SPLIT = re.compile(rf"(?<=[{CJK}])[\s/|_\-·.]+(?=[{CJK}，])")
# Full-width ASCII (ｉｇｎｏｒｅ, ＜｜im_start｜＞) and the ideographic space read as ASCII
_WIDTH = {c: c - 0xFEE0 for c in range(0xFF01, 0xFF5F)} | {0x3000: 0x20}


def _fold(text: str) -> str | None:
    """`text` with format characters (zero-width space/joiners, soft hyphen, BOM) removed and full-width ASCII folded,
    or None when that changes nothing: either hid `ignore previous instructions` and 忽略以上指令 from every pattern."""
    folded = "".join(c for c in text if unicodedata.category(c) != "Cf").translate(_WIDTH)
    return folded if folded != text else None


@dataclass
class ScreenConfig:
    """What the screen looks for and when it blocks."""

    threshold: float = 1.0  # block when the score reaches this
    patterns: list[tuple[str, str, float]] = field(default_factory=lambda: list(DEFAULT_PATTERNS))
    decode: bool = True  # also scan base64 / \\u escapes / reversed / split-character variants
    roles: tuple[str, ...] = ("user",)  # message roles that are scanned
    encoded_weight: float = 0.6  # added when a payload decodes to printable text
    classifier: str | None = None  # a `train-screen` output folder: also block what the learned screen flags
    classifier_threshold: float | None = None  # None = the threshold chosen in training (screen.json)
    # The same words for every blocked request: naming the matched patterns would tell an attacker what
    # to rephrase. The patterns go to the server log ("weitiao.safety.screen") for the operator.
    refusal: str = "抱歉，这条消息疑似包含提示词注入，我无法处理。请去掉其中给我的额外指令后再试。"


@dataclass
class Screening:
    score: float
    hits: dict[str, float]  # pattern name → weight (decoded variants are named e.g. "base64:override")
    blocked: bool
    classifier: float | None = None  # the learned screen's score, when one is configured


def _text(content: object) -> str:
    """A message's text: a string, or the text parts of an OpenAI content-part list joined as the model reads them
    (`join_text_parts`: an order split over two parts is scanned as the prompt the template renders)."""
    if isinstance(content, list):
        return join_text_parts(p.get("text") or "" for p in content if isinstance(p, dict) and p.get("type") == "text")
    return content if isinstance(content, str) else ""


def _decoded(text: str) -> list[tuple[str, str]]:
    """(variant name, text) pairs: decoded base64 runs and \\u escapes, the text reversed, split chars joined."""
    out = []
    for m in _B64.finditer(text):
        s = m.group()
        try:
            dec = base64.b64decode(s + "=" * (-len(s) % 4), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            continue
        if dec.isprintable():
            out.append(("base64", dec))
    for m in _UESC.finditer(text):
        out.append(("uesc", m.group().encode().decode("unicode_escape")))
    out.append(("reversed", text[::-1]))
    joined = _SPLIT.sub("", text)
    if joined != text:
        out.append(("split", joined))
    return out


class Screen:
    """Callable for `create_app(..., input_screen=Screen(cfg))`: messages → refusal text or None."""

    def __init__(self, cfg: ScreenConfig | None = None) -> None:
        self.cfg = cfg or ScreenConfig()
        try:
            self.compiled = [(name, re.compile(rx), w) for name, rx, w in self.cfg.patterns]
        except re.error as e:
            raise UserError(f"screen pattern: invalid regex ({e})") from None
        self.classifier = None
        if self.cfg.classifier:
            from weitiao.safety.screen_learned import Classifier

            self.classifier = Classifier(self.cfg.classifier, self.cfg.classifier_threshold)

    def _scan(self, text: str, prefix: str, hits: dict[str, float], only: tuple[str, ...] = ()) -> None:
        for name, rx, w in self.compiled:
            if (not only or name in only) and rx.search(text):
                hits.setdefault(prefix + name, w)

    def score(self, messages: list[dict]) -> Screening:
        """Score the scanned turns; decoded variants count under their own names (a payload found twice,
        plainly and decoded, counts twice: hiding an order is itself a sign)."""
        hits: dict[str, float] = {}
        for m in messages:
            if m.get("role") not in self.cfg.roles:
                continue
            text = _text(m.get("content"))
            self._scan(text, "", hits)
            folded = _fold(text)
            if folded is not None:  # the same names: a pattern found both ways counts once
                self._scan(folded, "", hits)
            if not self.cfg.decode:
                continue
            for kind, variant in _decoded(folded or text):
                # reversed text is only searched for whole override/extraction phrases (short ones match by chance)
                self._scan(variant, kind + ":", hits, ("override", "extract") if kind == "reversed" else ())
                if kind in ("base64", "uesc") and len(variant.strip()) >= 6:
                    hits.setdefault("encoded", self.cfg.encoded_weight)
        score = round(sum(hits.values()), 6)
        if self.classifier is None:
            return Screening(score, hits, score >= self.cfg.threshold)
        text = "\n".join(_text(m.get("content")) for m in messages if m.get("role") in self.cfg.roles)
        c = self.classifier.scores([text])[0] if text else float("-inf")
        return Screening(score, hits, score >= self.cfg.threshold or c >= self.classifier.threshold, c)

    def __call__(self, messages: list[dict]) -> str | None:
        s = self.score(messages)
        if not s.blocked:
            return None
        log.warning("input screen blocked a request: score %.2f, patterns %s, classifier %s", s.score,
                    ", ".join(sorted(s.hits)), "-" if s.classifier is None else f"{s.classifier:.3f}")  # fmt: skip
        return self.cfg.refusal


def load_screen_config(path: str | Path | None) -> ScreenConfig:
    """None or "default" → defaults; else a YAML file: threshold, decode, roles, disable: [names],
    patterns: [{name, regex, weight}] (a name already present replaces it), refusal, classifier (a
    `train-screen` folder, relative to the YAML's folder) and classifier_threshold."""
    if path in (None, "default"):
        return ScreenConfig()
    from weitiao.config import read_yaml_mapping

    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: screen config not found (or pass --screen default)")
    data: dict[str, Any] = read_yaml_mapping(p)
    known = {"threshold", "decode", "roles", "disable", "patterns", "refusal", "encoded_weight", "classifier",
             "classifier_threshold"}  # fmt: skip
    extra = sorted(set(data) - known)
    if extra:
        raise UserError(f"{p}: unknown keys {extra}; allowed: {sorted(known)}")
    if "{" in str(data.get("refusal", "")):
        raise UserError(
            f"{p}: refusal: placeholders such as {{hits}} are not filled; the refusal must not tell the "
            "sender which patterns matched (the server log names them). Write plain text."
        )
    cfg = ScreenConfig()

    def number(v: Any) -> float | None:
        """v as a float, or None; YAML 1.1 reads -1.0e9 as a string, which is still a number."""
        if isinstance(v, bool) or not isinstance(v, (int, float, str)):
            return None
        try:
            x = float(v)
        except ValueError:
            return None
        return x if math.isfinite(x) else None  # a nan threshold would never block

    kinds = {"threshold": (number, "a number"), "encoded_weight": (number, "a number"),
             "classifier_threshold": (lambda v: v if v is None else number(v), "a number"),
             "decode": (lambda v: v if isinstance(v, bool) else None, "true or false"),
             "refusal": (lambda v: v if isinstance(v, str) and v.strip() else None, "a non-empty text")}  # fmt: skip
    for k, (read, what) in kinds.items():
        if k in data:
            if (value := read(data[k])) is None and not (k == "classifier_threshold" and data[k] is None):
                raise UserError(f"{p}: {k}: expected {what}, got {data[k]!r}")
            setattr(cfg, k, value)
    if data.get("classifier"):
        c = Path(str(data["classifier"])).expanduser()
        c = c if c.is_absolute() else p.parent / c
        if not (c / "screen.json").exists():
            raise UserError(f"{p}: classifier: {c} has no screen.json; train one with `weitiao safety injection "
                            "train-screen` and give its --out folder")  # fmt: skip
        cfg.classifier = str(c)
    roles = ("system", "user", "assistant", "tool", "developer", "function")
    if "roles" in data:  # `roles: user` read as the characters u, s, e, r: nothing was scanned
        if not isinstance(data["roles"], list) or not data["roles"] or not set(data["roles"]) <= set(roles):
            raise UserError(f"{p}: roles: expected a list of message roles among {', '.join(roles)}, e.g. [user]; "
                            f"got {data['roles']!r}")  # fmt: skip
        cfg.roles = tuple(data["roles"])
    drop = data.get("disable") or []
    names = [n for n, _, _ in cfg.patterns]
    if not isinstance(drop, list) or (unknown := [n for n in drop if n not in names]):
        raise UserError(f"{p}: disable: {drop if not isinstance(drop, list) else unknown[0]!r} is no pattern name; "
                        f"names: {', '.join(names)}")  # fmt: skip
    pats = {n: (n, rx, w) for n, rx, w in cfg.patterns if n not in drop}
    for i, item in enumerate(data.get("patterns") or []):
        if (not isinstance(item, dict) or not {"name", "regex"} <= set(item) or set(item) - {"name", "regex", "weight"}
                or not isinstance(item["name"], str) or not isinstance(item["regex"], str)
                or number(item.get("weight", 1.0)) is None):  # fmt: skip
            raise UserError(f"{p}: patterns[{i}]: expected {{name, regex, weight}} (text, text, number), got {item!r}")
        try:
            re.compile(item["regex"])
        except re.error as e:
            raise UserError(f"{p}: patterns[{i}] ({item['name']}): regex: invalid pattern ({e})") from None
        pats[item["name"]] = (item["name"], item["regex"], number(item.get("weight", 1.0)))
    cfg.patterns = list(pats.values())
    return cfg


def measure(screen: Screen, attacks: list[Any], benign: dict[str, list[list[dict]]]) -> dict[str, Any]:
    """Detection rate per attack family and false-positive rate per benign set (lists of message lists)."""
    det: dict[str, list[bool]] = {}
    for a in attacks:
        det.setdefault(a.family, []).append(screen.score(a.messages).blocked)
    report: dict[str, Any] = {"detection": {}, "false_positive": {}, "false_positive_examples": []}
    all_hits = [b for v in det.values() for b in v]
    for fam, hits in sorted(det.items()) + [("overall", all_hits)]:
        report["detection"][fam] = {"n": len(hits), "rate": sum(hits) / max(1, len(hits))}
    flagged_all: list[bool] = []
    for name, convs in benign.items():
        flags = []
        for msgs in convs:
            s = screen.score(msgs)
            flags.append(s.blocked)
            if s.blocked:
                user = [m["content"] for m in msgs if m["role"] == "user"][-1]
                report["false_positive_examples"].append({"set": name, "text": user, "hits": s.hits})
        flagged_all += flags
        report["false_positive"][name] = {"n": len(flags), "rate": sum(flags) / max(1, len(flags))}
    report["false_positive"]["overall"] = {"n": len(flagged_all), "rate": sum(flagged_all) / max(1, len(flagged_all))}
    return report

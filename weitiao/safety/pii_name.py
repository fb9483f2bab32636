"""Person names: jieba's POS tag `nr` filtered by a surname list and by context (李宁的跑鞋, 方正县, 向东走 are not
people); without jieba only names after a label (姓名：, 我叫). `weitiao.safety.pii.scan` runs `find_name`."""

from __future__ import annotations

import re

from weitiao.safety import pii_data as D
from weitiao.safety.pii_match import HAN, Match, _jieba_ok


def _is_surname_name(w: str) -> bool:
    # 张总, 李工, 老王, 王先生: a title, not a name; 武侯区: a place; 武当派: a school
    if w in D.NAME_STOP or w[1:] in D.NAME_CUES or w[-1] in "总工董某氏区市县省路街镇村人派" or w[0] in "老小阿":
        return False
    if w[:2] in D.SURNAMES_2:
        return 3 <= len(w) <= 4
    return w[0] in D.SURNAMES_1 and 2 <= len(w) <= 3


NAME_LABEL_RE = re.compile(rf"(?:{'|'.join(D.NAME_LABELS)})(?:[:：是为]|\s)*({HAN}{{2,4}})")
CUE_AFTER = re.compile("|".join(D.NAME_CUES))
LABEL_BEFORE = re.compile(rf"(?:{'|'.join(D.NAME_LABELS)})(?:[:：是为]|\s)*$")
NOUN_SUFFIX = "群们类式型性化界家业者族物品队组部会店馆站区楼层门期时处上下里中内外前后"  # 顾客群, 明星们
DEGREE_BEFORE = re.compile("(?:很|非常|十分|太|更|最|挺|特别|比较|相当|多么)$")  # nobody is 很张伟
NOT_AFTER = re.compile("|".join(D.NAME_NOT_AFTER))


def _context_says_not_a_name(text: str, start: int, w: str) -> bool:
    """李宁的跑鞋 (a brand), 方正县 (a place), 向东走 (a direction): person-shaped words that are not people."""
    end = start + len(w)
    if CUE_AFTER.match(text, end):
        return False
    return w in D.NAME_BRANDS or bool(NOT_AFTER.match(text, end)) or (w[0] == "向" and w[1] in "东西南北前后左右上下")


_NOT_GIVEN_FLAGS = ("t", "m", "p", "c", "r", "d", "v", "f", "q", "u", "y", "x")


def _given_after(text: str, at: int, starts: dict[int, tuple[str, str]]) -> str:
    """The 1–2 character given name after a compound surname ending at `at`, read by characters: jieba
    cuts it badly (司马|睿的, 夏侯|雪会|来, 欧阳|一凡 tagged a). '' when a common word follows (欧阳|明天)."""
    first = starts.get(at)
    if first is None or (len(first[0]) >= 2 and first[1].startswith(_NOT_GIVEN_FLAGS)):
        return ""
    given = ""
    for k in (0, 1):
        c = text[at + k] if at + k < len(text) else ""
        if not re.fullmatch(HAN, c) or c in D.GIVEN_STOP:
            break
        nxt = starts.get(at + k)
        if k and nxt and len(nxt[0]) >= 2 and not nxt[1].startswith("nr"):  # 夏侯明|负责: a word starts here
            break
        given += c
    return given


def find_name(text: str) -> list[Match]:
    """jieba `nr` words with a known surname, 2–3 characters (3–4 for 欧阳-type surnames)."""
    out = []
    for m in NAME_LABEL_RE.finditer(text):  # 姓名：张伟 — the label bounds it, trim to a surname-led name
        w = m.group(1)
        for n in (4, 3, 2):
            if len(w) >= n and _is_surname_name(w[:n]) and (n == len(w) or not _jieba_ok()):
                out.append(Match("name", m.start(1), m.start(1) + n, w[:n], 0.9))
                break
    if not _jieba_ok():
        return out
    import jieba.posseg as pseg

    pos, words, used = 0, [], -1
    for w, flag in pseg.cut(text):
        words.append((pos, w, flag))
        pos += len(w)
    starts = {p: (w, f) for p, w, f in words}
    for i, (start, w, flag) in enumerate(words):
        if i <= used:
            continue
        if w in D.SURNAMES_2:
            name = w + _given_after(text, start + len(w), starts)
            if len(name) > len(w) and not _context_says_not_a_name(text, start, name):
                out.append(Match("name", start, start + len(name), name, 0.85))
                used = max(k for k, x in enumerate(words) if x[0] < start + len(name))
            continue
        titled = i + 1 < len(words) and words[i + 1][1] in D.NAME_CUES  # 钟南山|院士: jieba tags 钟南山 "ns"
        if not flag.startswith("nr") and not (
            (w[:2] in D.SURNAMES_2 or titled) and flag.startswith("n")
        ):  # 欧阳峰 "ns"
            continue
        if i + 1 < len(words):  # jieba cuts 李子|轩 (both nr) and 宋|红军|老师: join when the result is a name
            nxt, nflag = words[i + 1][1], words[i + 1][2]
            if _is_surname_name(w + nxt) and (nflag.startswith("nr") or CUE_AFTER.match(text, start + len(w + nxt))):
                w, used = w + nxt, i + 1
        if not _is_surname_name(w) or _context_says_not_a_name(text, start, w):
            continue
        cue = bool(CUE_AFTER.match(text, start + len(w)))
        if not cue and not LABEL_BEFORE.search(text[max(0, start - 10) : start]):
            if DEGREE_BEFORE.search(text[max(0, start - 2) : start]):
                continue  # 他很高明: an adjective after 很
            if w in D.NR_WORDS:  # 请陈述理由, 张口就说: dictionary words tagged nr, unless a given-name character
                nxt = words[i + 1] if i + 1 < len(words) else (0, "", "")  # follows: 许可|馨 (ng), 安静|怡 (vg)
                given = nxt[2].startswith("n") or nxt[2].endswith("g")  # a noun or a bound morpheme
                if not (len(nxt[1]) == 1 and given and nxt[1] not in D.GIVEN_STOP.union(NOUN_SUFFIX)):
                    continue
                w, used = w + nxt[1], i + 1
        out.append(Match("name", start, start + len(w), w, 0.9 if cue else 0.75))
    return out

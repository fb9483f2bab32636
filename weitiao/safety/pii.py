"""Chinese-first PII recognizers and scrubbers; no network, no model downloads.

    from weitiao.safety.pii import scan, scrub
    scan("手机 13812345678，身份证 11010519491231002X")   # -> [Match(type='mobile', ...), ...]
    scrub(text, mode="placeholder" | "pseudonym" | "mask")

Digit runs are bounded by lookarounds, never `\\b`: in Python's `re` Chinese characters are word
characters, so `\\b13812345678\\b` would miss "电话13812345678". Numbers are read in any grouping
(138 1234 5678, 1381-234-5678; dots only in phone shapes, 138.1234.5678), in full-width digits (１３８…)
and spoken (一三八…, 幺 = 1); spans always index the original text. Checksum types (resident ID:
GB 11643 MOD 11-2 + a real birth date + a province code; bank card: Luhn) are trusted; the rest are
patterns plus context. Person names use jieba's POS tag `nr` filtered by a surname list and by context
(李宁的跑鞋, 方正县, 向东走 are not people); without jieba only names after a label (姓名：, 我叫) are
found, and `NAMES_NEED_JIEBA` says so.
Addresses are read in `pii_address` (its recognizers re-exported here), names in `pii_name`. Pseudonyms
(`pii_fake`) are built so a fake can never be a real person's: see that module.
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import re
from collections.abc import Callable

from weitiao.errors import UserError
from weitiao.safety import pii_data as D
from weitiao.safety.pii_address import find_address
from weitiao.safety.pii_address import find_building as find_building  # public names stay importable from here
from weitiao.safety.pii_match import HAN, PRODUCT_LABEL, Match
from weitiao.safety.pii_match import _jieba_ok as _jieba_ok  # the CLI and tests ask pii whether jieba is there
from weitiao.safety.pii_name import find_name

TYPES = {  # type -> placeholder
    "id_card": "[身份证号]",
    "mobile": "[手机号]",
    "bank_card": "[银行卡号]",
    "email": "[邮箱]",
    "ip": "[IP地址]",
    "landline": "[座机号]",
    "passport": "[护照号]",
    "qq": "[QQ号]",
    "wechat": "[微信号]",
    "plate": "[车牌号]",
    "name": "[姓名]",
    "address": "[地址]",
}
# When two matches overlap the more trusted one wins (an 18-digit ID from 甘肃 starts with 62 like UnionPay).
PRIORITY = [
    "id_card", "bank_card", "email", "mobile", "landline", "ip", "passport", "qq", "wechat", "plate", "address", "name"
]  # fmt: skip
NAMES_NEED_JIEBA = (
    "jieba is not installed: person names are found only after labels like 姓名：/我叫 (pip install jieba)"
)


# ----------------------------------------------------------------------------- checksums


ID_WEIGHTS = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]
ID_CHECK = "10X98765432"  # GB 11643: check = ID_CHECK[sum(d_i * w_i) mod 11]


def id_check_char(first17: str) -> str:
    return ID_CHECK[sum(int(c) * w for c, w in zip(first17, ID_WEIGHTS)) % 11]


def valid_id(s: str, today: dt.date | None = None) -> bool:
    """18-char resident ID: province code, a real birth date (1900..today), MOD 11-2 check char."""
    if len(s) != 18 or not s[:17].isdigit() or s[:2] not in D.PROVINCE_CODES:
        return False
    try:
        born = dt.date(int(s[6:10]), int(s[10:12]), int(s[12:14]))
    except ValueError:
        return False
    if not dt.date(1900, 1, 1) <= born <= (today or dt.date.today()):
        return False
    return id_check_char(s[:17]) == s[17].upper()


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, c in enumerate(reversed(digits)):
        d = int(c) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def luhn_digit(body: str) -> str:
    """The digit that makes body + digit pass Luhn."""
    return next(str(d) for d in range(10) if luhn_ok(body + str(d)))


# ----------------------------------------------------------------------------- recognizers

ND = r"(?<![0-9A-Za-z])"  # no ASCII letter/digit before (Chinese may touch the number)
NA = r"(?![0-9A-Za-z])"
CARD_CUES = re.compile(r"卡号|银行卡|信用卡|储蓄卡|借记卡|工资卡|账号|账户|转账|转到|汇款|打款|收款|card", re.I)
ORDER_CUES = re.compile(r"订单|单号|流水|编号|交易号|序列号|工单|票号|快递|ISBN|条码|批次|批号|batch|order", re.I)
# An 11-digit number with a unit or an amount word around it is a quantity, not a phone.
MONEY_AFTER = re.compile(r"\s*(?:元|块|万|亿|美元|円|RMB|CNY|股|手|份|张|次|人|件|条|行|吨|公斤|kg|\.\d)", re.I)
MONEY_BEFORE = re.compile(
    r"(?:[¥￥$]|金额|价格|余额|总计|合计|收入|支出|营收|成交量|成交额|数量|销量|人口|第)[:：\s]*$"
)


def _near(text: str, start: int, end: int, cues: re.Pattern, before: int = 12, after: int = 4) -> bool:
    return bool(cues.search(text[max(0, start - before) : start])) or bool(cues.search(text[end : end + after]))


def _money(text: str, start: int, end: int) -> bool:
    return bool(MONEY_AFTER.match(text, end)) or bool(MONEY_BEFORE.search(text[max(0, start - 8) : start]))


# Digit runs: digits joined by single spaces or dashes in any grouping (138 1234 5678, 1381-234-5678,
# 110105 19491231 002X). A run is read whole, without a leading country code, group by group, or as a
# sequence of whole PII numbers ("138 1234 5678 139 8765 4321"), so one stray number beside a phone
# neither hides it nor joins it.
RUN_RE = re.compile(r"(?<![0-9A-Za-z])\d(?:(?: ?- ?| )?\d)*[Xx]?(?![0-9A-Za-z])")
GROUP_RE = re.compile(r"\d+[Xx]?")


def _plain(digits: str) -> str | None:
    """The PII kind a bare digit string is on its own (mobile, id_card, bank_card), else None."""
    if re.fullmatch(r"1[3-9]\d{9}", digits):
        return "mobile"
    if len(digits) == 18 and valid_id(digits):
        return "id_card"
    if 16 <= len(digits) <= 19 and digits.isdigit() and luhn_ok(digits):
        return "bank_card"
    return None


def _partition(groups: list[str]) -> list[tuple[int, int]] | None:
    """Cut a run's groups into consecutive pieces that are each a whole PII number, if possible."""
    n, best = len(groups), {0: []}
    for i in range(n):
        if i not in best:
            continue
        for j in range(i + 1, n + 1):
            piece = "".join(groups[i:j])
            if len(piece) > 19:  # no PII number is longer: keeps a long run of small groups linear
                break
            if _plain(piece) and j not in best:
                best[j] = best[i] + [(i, j)]
    return best.get(n)


@functools.lru_cache(maxsize=4)  # id_card, bank_card and mobile read the same window's runs
def digit_spans(text: str) -> tuple[tuple[int, int, str], ...]:
    """(start, end, digits) of every candidate number in `text`, longest reading first per run."""
    out = []
    for run in RUN_RE.finditer(text):
        groups = list(GROUP_RE.finditer(run.group()))
        base = run.start()
        pieces = [(0, len(groups))]
        if len(groups) > 1:
            lead = int(groups[0].group() in ("86", "0086"))  # +86 138 1234 5678: mobile reads it with the prefix
            cut = _partition([g.group() for g in groups[lead:]]) or []
            pieces += [(i + lead, j + lead) for i, j in cut]
            if lead and cut:
                pieces.append((0, cut[0][1] + 1))
            pieces += [(i, i + 1) for i in range(len(groups))]
        for i, j in dict.fromkeys(pieces):
            start, end = base + groups[i].start(), base + groups[j - 1].end()
            out.append((start, end, "".join(g.group() for g in groups[i:j])))
    return tuple(out)


def find_id_card(text: str) -> list[Match]:
    """Valid IDs; an ID-shaped number (province code, real birth date) failing only its check character is kept at
    confidence 0.3, as a typo'd card is: its 17 digits still name the person. Without 身份证/证件号 near it, one
    after 订单/单号/流水/编号… is an order number and left."""
    out = []
    for a, b, d in digit_spans(text):
        if valid_id(d.upper()):
            out.append(Match("id_card", a, b, text[a:b], 0.99))
        elif len(d) == 18 and d[:17].isdigit() and _id_shaped(d) and not _order_number(text, a, b):
            out.append(Match("id_card", a, b, text[a:b], 0.3))
        elif valid_id15(d) and _near(text, a, b, ID_CUES):
            out.append(Match("id_card", a, b, text[a:b], 0.9))  # a first-generation card: no check digit to test
    return out


def valid_id15(s: str) -> bool:
    """A first-generation (1984–2004, GB 11643-1989) 15-digit resident ID: province code + a real 19YYMMDD birth date
    + 3 digits; still in old records and scanned documents. No check digit: found only next to 身份证/证件号."""
    if len(s) != 15 or not s.isdigit():
        return False
    body = s[:6] + "19" + s[6:]  # the 17 digits of the 18-digit number it became
    return valid_id(body + id_check_char(body))


ID_CUES = re.compile(r"身份证|证件号|公民身份")


def _order_number(text: str, start: int, end: int) -> bool:
    """An order/serial cue near the number and no ID cue: read as an order number, not a typo'd ID."""
    return _near(text, start, end, ORDER_CUES) and not _near(text, start, end, ID_CUES)


def _id_shaped(s: str) -> bool:
    """Province code + a real date: the shape of a resident ID, whatever its check digit."""
    return valid_id(s[:17] + id_check_char(s[:17]))


CARD_PREFIX = re.compile(r"62|4|5[1-5]|2[2-7]|3[47]|35|60|9")  # UnionPay, Visa, Mastercard, Amex, JCB, domestic


def find_bank_card(text: str) -> list[Match]:
    """16–19 digits (in any grouping). Luhn + card prefix or cue → match; Luhn failure next
    to 卡号/银行卡 → kept at confidence 0.3 (a typo'd card is still someone's card)."""
    out = []
    for a, b, digits in digit_spans(text):
        if not (16 <= len(digits) <= 19 and digits.isdigit()):
            continue
        cue = _near(text, a, b, CARD_CUES)
        if not cue and (_near(text, a, b, ID_CUES) or (len(digits) == 18 and _id_shaped(digits))):
            continue  # an 18-digit ID with a typo'd check digit is not a card (provinces 34/37/4x/5x/62 look like BINs)
        if luhn_ok(digits):
            if cue:
                out.append(Match("bank_card", a, b, text[a:b], 0.99))
            elif (digits[:2] == "62" or (len(digits) == 16 and CARD_PREFIX.match(digits))) and not _near(
                text, a, b, ORDER_CUES
            ):  # without a cue: UnionPay 62 (16–19 digits) or a 16-digit Visa/Mastercard/JCB/domestic BIN
                out.append(Match("bank_card", a, b, text[a:b], 0.9 if digits[:2] == "62" else 0.8))
        elif cue:
            out.append(Match("bank_card", a, b, text[a:b], 0.3))
    return out


def find_mobile(text: str) -> list[Match]:
    """11 digits 1[3-9]x in any grouping, optionally after +86 / 0086 / 86 (86-138-1234-5678, 8613812345678: the
    prefix goes with the number, where it was left behind)."""
    out = []
    for start, end, digits in digit_spans(text):
        bare = False
        if len(digits) == 13 and digits.startswith("86") and text[start - 1 : start] == "+":
            digits, start = digits[2:], start - 1  # +86 138 1234 5678
        elif len(digits) == 13 and digits.startswith("86") and text[start - 1 : start] != "+":
            digits, bare = digits[2:], text[start + 2 : start + 3].isdigit()  # 86-138…; 8613812345678 reads less sure
        elif len(digits) == 15 and digits.startswith("0086"):
            digits = digits[4:]
        elif text[start - 1 : start] == "+":
            continue  # +1 3812345678: another country's number
        if not re.fullmatch(r"1[3-9]\d{9}", digits):
            continue
        if re.match(r"[\d.,]", text[start - 1 : start]) or _money(text, start, end):
            continue  # 1,381,234,5678 or 13812345678元 is an amount
        if PRODUCT_LABEL.search(text[max(0, start - 12) : start]):
            continue  # 批次号 13912345678: a batch number
        conf = (0.5, 0.65) if bare else (0.8, 0.95)
        out.append(Match("mobile", start, end, text[start:end], conf[not _near(text, start, end, ORDER_CUES)]))
    return out


EMAIL_RE = re.compile(
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![A-Za-z0-9-])"
)


def find_email(text: str) -> list[Match]:
    return [Match("email", m.start(), m.end(), m.group(), 0.98) for m in EMAIL_RE.finditer(text)]


IPV4_RE = re.compile(r"(?<![0-9.])(?:\d{1,3}\.){3}\d{1,3}(?![0-9A-Za-z]|\.\d)")
IPV6_RE = re.compile(r"(?<![0-9A-Fa-f:])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?![0-9A-Za-z:])")
VERSION_CUES = re.compile(r"版本|升级|更新|固件|\b(?:version|ver|release|build)\b|(?:^|[^A-Za-z])v$", re.I)


IP_WORDS = re.compile(r"(?:^|[^A-Za-z])(?:IP|IPv4|IPv6|host|addr|address|from|to|server|at)\s*$", re.I)
# "Python 3.9.12.21", "Chrome 10.0.1.2", "iOS 17.0.1.1": a capitalized name is a product and the number its version;
# a lowercase word ("server is 10.0.0.5", "and 8.8.4.4") is ordinary prose before an address
PRODUCT_BEFORE = re.compile(r"(?:[A-Z][A-Za-z-]*|[a-z]+[A-Z][A-Za-z-]*)\s+$")


def _ip_context_ok(text: str, start: int) -> bool:
    before = text[max(0, start - 12) : start]
    if IP_WORDS.search(before):
        return True
    if before[-1:].isascii() and before[-1:].isalpha() or PRODUCT_BEFORE.search(before):
        return False  # glued to a word (v1.2.3.4) or after a product name
    return not VERSION_CUES.search(before[-10:])


def find_ip(text: str) -> list[Match]:
    out = []
    for m in IPV4_RE.finditer(text):
        try:
            ipaddress.IPv4Address(m.group())
        except ValueError:
            continue
        if _ip_context_ok(text, m.start()) and not VERSION_CUES.match(text[m.end() : m.end() + 4].strip()):
            out.append(Match("ip", m.start(), m.end(), m.group(), 0.95))
    for m in IPV6_RE.finditer(text):
        if m.group().count(":") < 2 or not re.search(r"[0-9A-Fa-f]", m.group()) or not _ip_context_ok(text, m.start()):
            continue
        try:
            ipaddress.IPv6Address(m.group())
        except ValueError:
            continue
        out.append(Match("ip", m.start(), m.end(), m.group(), 0.95))
    return out


# 010 / 02x are three-digit area codes, everything else 0 + 3 digits; local number 7–8 digits.
LANDLINE_RE = re.compile(
    r"(?<![0-9A-Za-z+])(?:(?:\+|00)86[ -]?)?"
    r"(?:\(0?(?:10|2\d|[3-9]\d{2})\)|0?(?:10|2\d|[3-9]\d{2})(?=[ -])|0(?:10|2\d|[3-9]\d{2}))"
    r"[ -]?[2-9](?:\d{6,7}|\d{2,3}[ -]\d{4})(?:-\d{1,4})?" + NA  # 82561234, 8256 1234, 8256-1234
)


def find_landline(text: str) -> list[Match]:
    out = []
    for m in LANDLINE_RE.finditer(text):
        s = m.group()
        if not (s.startswith(("0", "(0", "+86", "0086")) or "86" in s[:5]):
            continue
        if re.match(r"[\d.,]", text[m.start() - 1 : m.start()]) or _money(text, m.start(), m.end()):
            continue
        grouped = bool(re.search(r"[ ()-]", s))
        out.append(Match("landline", m.start(), m.end(), s, 0.9 if grouped else 0.75))
    return out


# E/G passports; D/S/P diplomatic and service ones; H/M home-return permits; C/W permits to Hong Kong and Macau
PASSPORT_RE = re.compile(ND + r"(?:[EG]\d{8}|E[A-HJ-NP-Z]\d{7}|[DSP]E?\d{7}|[HM]\d{8,10}|[CW]\d{8})" + NA)
PASSPORT_CUES = re.compile(r"护照|passport|通行证|证件", re.I)
MODEL_CUES = re.compile(r"型号|货号|编号|批号|订单|单号|序列号|SKU|model", re.I)


def find_passport(text: str) -> list[Match]:
    out = []
    for m in PASSPORT_RE.finditer(text):
        cue = _near(text, m.start(), m.end(), PASSPORT_CUES, before=15)
        if not cue and _near(text, m.start(), m.end(), MODEL_CUES):
            continue
        if m.group()[0] in "EG" or cue:
            out.append(Match("passport", m.start(), m.end(), m.group(), 0.95 if cue else 0.7))
    return out


# QQ numbers (5–11 digits, no leading 0) and WeChat IDs (a letter, then 5–19 letters, digits, _ or -) have no
# checksum and look like any number or handle, so each is read only right after its cue (QQ号：12345678, 加我vx:
# abc_123); a bare 8-digit number is no QQ number. A `wxid_…` ID (what WeChat gives an account that set none) needs
# no cue. After a WeChat cue a number is the mobile's (微信同号); an all-letter word is an ID only after 号, a colon,
# 是/为, or 加 before the cue (加微信zhangsan).
# A bare Q or V is a cue only where it cannot be a letter of something else: before 号 or a colon (Q号, V：) or
# after 加/+ (加Q, +V); 绿泡泡 is slang for WeChat.
QQ_RE = re.compile(
    r"(?<![A-Za-z])(?:QQ|扣扣|企鹅号|Q(?=号|\s*[:：])|(?<=[加+])Q(?![A-Za-z]))"
    r"\s*(?:号码|号|账号|帐号)?\s*(?:是|为|[:：])?\s*([1-9]\d{4,10})" + NA,
    re.I,
)
WECHAT_CUE = (
    r"(?<![A-Za-z])(?:微信|薇信|威信|[Vv]信|[Vv][Xx]|[Ww][Xx]|weixin|wechat|绿泡泡"
    r"|[Vv](?=号|\s*[:：])|(?<=[加+])\s*[Vv](?![A-Za-z]))"
)
WECHAT_RE = re.compile(
    WECHAT_CUE
    + r"\s*(号|ID|id)?\s*(?:是|为|[:：])?\s*(?<![A-Za-z0-9_-])([A-Za-z][A-Za-z0-9_-]{5,19})(?![A-Za-z0-9_-])",
    re.I,
)
WXID_RE = re.compile(r"(?<![A-Za-z0-9_-])wxid_[A-Za-z0-9]{6,24}(?![A-Za-z0-9_-])")


# More numbers listed after the first (QQ：12345、67890 或 24680, QQ 12345 67890, 12345，或者67890): each separated
# by a list mark, a word, both, or a space; a mobile there (QQ 12345678，13800138000) is left to the mobile recognizer
# and the list goes on after it.
QQ_MORE_RE = re.compile(
    r"(?:\s*(?:[、,，/；;]\s*(?:或者?|和|及)?|或者?|和|及|\b(?:or|and)\b)\s*|\s+)([1-9]\d{4,10})" + NA, re.I
)


QUESTION_LABEL = re.compile(r"(?:^|[\n。！？!?])\s*$")


def _question_label(text: str, m: re.Match) -> bool:
    """Q： opening a line or sentence and followed by a question (Q：12345是什么意思, Q: 10086能打通吗？) labels the
    question, as in an FAQ; 私聊Q：75530 and a line `Q：75530` alone name a QQ number."""
    opens = QUESTION_LABEL.search(text[max(0, m.start() - 40) : m.start()])
    if not opens or not re.match(r"Q\s*[:：]", m.group(), re.I):
        return False
    line = text[m.end(1) :].split("\n", 1)[0]
    return bool(re.match(HAN, line)) or "?" in line or "？" in line


def find_qq(text: str) -> list[Match]:
    """QQ numbers right after a QQ cue (QQ号：12345678, 扣扣 123456, qq12345) and those listed after it; never
    without one."""
    out = []
    for m in QQ_RE.finditer(text):
        if _question_label(text, m):
            continue
        out.append(Match("qq", m.start(1), m.end(1), m.group(1), 0.9))
        end = m.end(1)
        while more := QQ_MORE_RE.match(text, end):
            end = more.end(1)
            if not re.fullmatch(r"1[3-9]\d{9}", more.group(1)):
                out.append(Match("qq", more.start(1), more.end(1), more.group(1), 0.85))
    return out


def find_wechat(text: str) -> list[Match]:
    """WeChat IDs right after a cue (微信号：abc_123, 加我vx zhang_san88) and wxid_… anywhere."""
    out = [Match("wechat", m.start(), m.end(), m.group(), 0.95) for m in WXID_RE.finditer(text)]
    for m in WECHAT_RE.finditer(text):
        word = m.group(2)
        said = m.group(1) or re.search(r"[:：是为]", m.group()[: m.start(2) - m.start()]) or m.group()[0] in "Vv绿"
        if (
            re.fullmatch(r"[A-Za-z]+", word)
            and not said
            and not text[max(0, m.start() - 2) : m.start()].endswith(("加", "加我"))
        ):
            continue  # 微信 Official Account, wechat Pay: a word, not an ID (加微信zhangsan, 微信号 zhangsan: an ID)
        if not WXID_RE.fullmatch(word):  # a wxid_ ID is found above
            out.append(Match("wechat", m.start(2), m.end(2), word, 0.9 if not word.isalpha() else 0.8))
    return out


PLATE_RE = re.compile(
    rf"(?<![A-Za-z0-9])[{D.PLATE_PROVINCES}][A-HJ-NP-Z][·• -]?"
    r"(?:[DF][A-HJ-NP-Z0-9]\d{4}|\d{5}[DF]|[A-HJ-NP-Z0-9]{4}[A-HJ-NP-Z0-9挂学警港澳])(?![A-Za-z0-9])"
)


def find_plate(text: str) -> list[Match]:
    out = []
    for m in PLATE_RE.finditer(text):
        if sum(c.isdigit() for c in m.group()) >= 2:  # real plates carry digits; 京ABCDE is an acronym
            out.append(Match("plate", m.start(), m.end(), m.group(), 0.9))
    return out


RECOGNIZERS: dict[str, Callable[[str], list[Match]]] = {
    "id_card": find_id_card,
    "mobile": find_mobile,
    "bank_card": find_bank_card,
    "email": find_email,
    "ip": find_ip,
    "landline": find_landline,
    "passport": find_passport,
    "qq": find_qq,
    "wechat": find_wechat,
    "plate": find_plate,
    "name": find_name,
    "address": find_address,
}


CHUNK, CONTEXT = 1 << 16, 256  # chars scanned at once; context each side sees cues and entities cut at the edge


def scan(text: str, types: list[str] | None = None, min_confidence: float = 0.0) -> list[Match]:
    """All PII in `text`, non-overlapping, in order; on overlap the longer span of the higher-priority type wins.

    Long text goes in CHUNK-sized windows (plus CONTEXT each side), so memory and the overlap
    resolution stay bounded per window; a match belongs to the window it starts in.
    """
    for t in types or []:
        if t not in TYPES:
            raise UserError(f"PII type {t!r} unknown; use one of {', '.join(TYPES)}")
    if len(text) <= CHUNK + 2 * CONTEXT:
        return _scan_window(text, types, min_confidence)
    out: list[Match] = []
    for i in range(0, len(text), CHUNK):
        lo = max(0, i - CONTEXT)
        for m in _scan_window(text[lo : i + CHUNK + CONTEXT], types, min_confidence):
            start, end = m.start + lo, m.end + lo
            if i <= start < i + CHUNK and (not out or start >= out[-1].end):
                out.append(Match(m.type, start, end, m.text, m.confidence))
    return out


# Full-width letters, digits and the signs inside numbers and emails (１３８, ＠, －, （）, the ideographic
# space) read as ASCII; one character for one, so spans hold. Full-width ：，。 stay: they end a number.
_WIDE = "０１２３４５６７８９＠．－＋（）＿" + "".join(map(chr, [*range(0xFF21, 0xFF3B), *range(0xFF41, 0xFF5B)]))
FULLWIDTH = {ord(c): ord(c) - 0xFEE0 for c in _WIDE}
FULLWIDTH |= {0x3000: ord(" "), 0x2013: ord("-"), 0x2014: ord("-"), 0x2212: ord("-")}
# Digits spoken in Chinese (一三八…, 幺 = 1, 两 = 2, 洞 = 0 in radio speech) count as digits inside a run of
# at least 7 digit characters with one Chinese numeral: "一二三" in prose stays prose.
CN_DIGITS = str.maketrans("零〇○洞一幺二两三四五六七拐八九勾", "00001122345677899")
_CN = "零〇○洞一幺二两三四五六七拐八九勾"
CN_RUN = re.compile(rf"[0-9{_CN}](?:(?: ?- ?| )?[0-9{_CN}]){{6,}}")
DIGIT_TYPES = {"id_card", "mobile", "bank_card", "landline"}


def normalize(text: str) -> tuple[str, str]:
    """(full-width folded to ASCII, that with Chinese-numeral digit runs as ASCII digits); same length as text."""
    wide = text.translate(FULLWIDTH)
    if not re.search(f"[{_CN}]", wide):
        return wide, wide

    def spell(m: re.Match) -> str:
        return m.group().translate(CN_DIGITS) if re.search(f"[{_CN}]", m.group()) else m.group()

    return wide, CN_RUN.sub(spell, wide)


# Dots as group separators (138.1234.5678, +86.138.1234.5678, 010.6552.9988) read as spaces for the number
# recognizers, but only in the phone shapes: a 4-digit group after a 3- or 4-digit head, which no IPv4
# address (octets of 3 digits at most), version (1.2.3), price (138.12) or date (2024.05.06) has.
DOTTED = re.compile(
    r"(?<![0-9A-Za-z.])(?:(?:\+|00)?86[. ])?"
    r"(?:1[3-9]\d\.\d{4}\.\d{4}|(?:(?<=86[. ])0?|0)(?:10|2\d|[3-9]\d{2})\.[2-9]\d{2,3}\.\d{4})"
    r"(?![0-9A-Za-z]|\.\d)"
)


def undot(text: str) -> str:
    """`text` with the dots inside phone-shaped dotted numbers as spaces; same length, so spans hold."""
    return DOTTED.sub(lambda m: m.group().replace(".", " "), text) if "." in text else text


def _scan_window(text: str, types: list[str] | None, min_confidence: float) -> list[Match]:
    from weitiao.safety.pii_fake import whole_fake_name

    wide, spoken = normalize(text)
    spoken = undot(spoken)
    found = [
        whole_fake_name(text, m) if m.type == "name" else m
        for t in types or TYPES
        for m in RECOGNIZERS[t](spoken if t in DIGIT_TYPES else wide)
        if m.confidence >= min_confidence
    ]
    found = [Match(m.type, m.start, m.end, text[m.start : m.end], m.confidence) for m in found]
    found.sort(key=lambda m: (m.confidence < 0.5, PRIORITY.index(m.type), -(m.end - m.start), m.start))
    kept: list[Match] = []
    for m in found:
        if all(m.end <= k.start or m.start >= k.end for k in kept):
            kept.append(m)
    return sorted(kept, key=lambda m: m.start)


# ----------------------------------------------------------------------------- scrubbing


def mask(m: Match) -> str:
    """Keep a recognizable prefix/suffix: 138****5678, 622202*********1234, z***@qq.com, 张**."""
    s = normalize(m.text)[1] if m.type in DIGIT_TYPES else m.text  # 一三八… masks like 138…
    ndig = sum(c.isdigit() or c in "Xx" for c in s)
    keep = {"mobile": (ndig - 8, 4), "id_card": (6, 4), "bank_card": (6, 4), "landline": (ndig - 4, 0)}
    if m.type == "email":  # a full-width ＠ splits too (the recognizer reads it as @): the domain stays as written
        at = normalize(s)[0].index("@")
        return s[0] + "***" + s[at:]
    if m.type == "name":
        return s[0] + "*" * (len(s) - 1)
    if m.type in ("address", "plate", "passport", "ip", "qq", "wechat"):
        head = max(1, len(s) // 3) if m.type != "address" else min(6, len(s) // 2)
        return s[:head] + "*" * (len(s) - head)
    a, b = keep[m.type]
    out, seen = [], 0
    for c in s:  # mask digits by position among digits, so +86 and separators stay
        if c.isdigit() or c in "Xx":
            seen += 1
            out.append(c if seen <= a or seen > ndig - b else "*")
        else:
            out.append(c)
    return "".join(out)


MODES = ("placeholder", "pseudonym", "mask")


def replacer(mode: str, seed: int = 0) -> Callable[[Match], str]:
    """The per-document replacement function for a scrub mode."""
    if mode == "placeholder":
        return lambda m: TYPES[m.type]
    if mode == "mask":
        return mask
    if mode == "pseudonym":
        from weitiao.safety.pii_fake import Pseudonymizer

        return Pseudonymizer(seed)
    raise UserError(f"--mode {mode!r} unknown; use one of {', '.join(MODES)}")


def scrub(
    text: str,
    mode: str = "placeholder",
    types: list[str] | None = None,
    min_confidence: float = 0.0,
    replace: Callable[[Match], str] | None = None,
) -> tuple[str, list[Match]]:
    """Replace every match; returns (new text, matches). Pass `replace` to share pseudonyms across texts."""
    replace = replace or replacer(mode)
    matches = scan(text, types, min_confidence)
    parts, pos = [], 0
    for m in matches:
        parts += [text[pos : m.start], replace(m)]
        pos = m.end
    return "".join(parts) + text[pos:], matches


def output_filter(action: str) -> Callable[[str], str]:
    """A server output filter: `redact` masks PII in replies (typed placeholders); `block` replaces a
    reply that contains PII with a refusal."""
    if action == "redact":
        return lambda text: scrub(text, "placeholder", min_confidence=0.5)[0]
    if action == "block":
        return lambda text: "抱歉，这个回答涉及个人信息，不能提供。" if scan(text, min_confidence=0.5) else text
    raise UserError(f"--pii {action!r} unknown; use redact or block")

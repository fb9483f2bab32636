"""Pseudonyms for `pii scrub --mode pseudonym`: plausible fakes that can never be a real person's.

What makes each fake impossible, by type (pinned by tests/test_pii.py):
- mobile: 154 + 8 digits; 154 is a prefix no carrier holds (`pii_data.FAKE_MOBILE_PREFIX`).
- id_card: a real province code and birth date with a deliberately WRONG GB 11643 check character.
- bank_card: the original's 6-digit BIN with a deliberately wrong Luhn digit.
  Both carry a tag: the three digits before the check character and which wrong check character it is are a hash
  of the digits before them (`_tagged`), so `ours` tells our fakes from real numbers with a typo'd check digit
  (one of those matches the tag by chance about once in 9,000, and is then left as written).
- landline: the original area code with a local number starting 1 (local numbers start 2-9).
- email: user########@example.com (RFC 2606); ip: the RFC 5737 / 3849 documentation ranges (192.0.2.x, 2001:db8::).
- plate, passport, name, address: format-valid look-alikes with no checksum to break, so each carries a tag that a
  real value has only by chance, and such a real value is then left as written (and counted as a pseudonym):
  - plate: the last three digits are a hash of the rest (`_tag_digits`): one real plate in 1,000.
  - passport: the last four digits likewise: one real passport in 10,000.
  - qq, wechat: the last four digits likewise: one real QQ number, or WeChat ID ending in four digits, in 10,000; a
    fake QQ number has the original's length and never starts with 1 (an 11-digit one would read as a mobile), a
    fake WeChat ID the original's length (wxid_ kept), letters then the four tag digits.
  - name: a single surname and two given characters from `NAME_GIVEN` (no surname characters), the last one a hash
    of the first two that, one time in `NAME_TAG`, is a fake at all (`_name_tail`): one real name in about
    1,000 of those spelled with these characters; a two-character or compound-surname original becomes a
    three-character fake.
  - address: a real province–city–district triple (never the original's city or district), one of `FAKE_ROADS`,
    a house number that is a hash of the rest and, if the original had them, a building and room: a real address
    on those roads of those districts has that number one time in 299.
A fake keeps the original's grouping (138 1234 5678 → 154 xxxx xxxx) and country prefix; the same
value maps to the same fake for the whole Pseudonymizer (one per file), however it was grouped.

A second pass leaves the fakes a first one wrote as they are (`ours`: every type; a fake landline is not even found),
so scrubbing a file that holds earlier output, or the output again, does not fake the fakes (two runs over
overlapping files gave one person two fakes).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import random
import re
import string

from weitiao.safety import pii_data as D
from weitiao.safety.pii import Match, id_check_char, luhn_digit, luhn_ok, normalize

PLATE_CHARS = "ABCDEFGHJKLMNPQRSTUVWXYZ"  # plates never use I or O
NUMBERS = ("mobile", "id_card", "bank_card")  # keyed by digits and written into the original's grouping


def _hash(kind: str, key: str) -> int:
    return int.from_bytes(hashlib.sha256(f"weitiao pseudonym|{kind}|{key}".encode()).digest()[:8], "big")


def _tagged(kind: str, head: str) -> str:
    """`head` + three tag digits + a wrong check character picked by the tag: a hash of (kind, head) sets all four.
    id_card: not the GB 11643 character, nor a digit that makes the 18 digits Luhn-valid; bank_card: not Luhn's."""
    tag = _hash(kind, head)
    body = head + f"{tag % 1000:03d}"
    right = id_check_char(body) if kind == "id_card" else luhn_digit(body)
    wrong = [c for c in "0123456789" if c != right and not (kind == "id_card" and luhn_ok(body + c))]
    return body + wrong[tag // 1000 % len(wrong)]


def fake_id(rng: random.Random) -> str:
    """A resident ID with a valid region and date but a WRONG check character: never a real ID
    (and never Luhn-valid either, so it cannot pass as a card number); tagged as ours (`_tagged`)."""
    prov = rng.choice(sorted(D.PROVINCE_CODES - {"71", "81", "82"}))
    born = dt.date(1950, 1, 1) + dt.timedelta(days=rng.randrange(365 * 55))
    return _tagged("id_card", f"{prov}{rng.randrange(100, 10000):04d}{born:%Y%m%d}")


def fake_card(rng: random.Random, prefix: str = "62", length: int = 16) -> str:
    """A card number that FAILS Luhn, so it can never be a real card; tagged as ours (`_tagged`)."""
    return _tagged("bank_card", prefix + "".join(str(rng.randrange(10)) for _ in range(length - len(prefix) - 4)))


def fake_mobile(rng: random.Random) -> str:
    """11 digits in the unallocated 154 range."""
    return D.FAKE_MOBILE_PREFIX + "".join(str(rng.randrange(10)) for _ in range(11 - len(D.FAKE_MOBILE_PREFIX)))


DOC_NETS = tuple(
    ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")
)  # RFC 5737 / 3849: documentation only, never a host's address
FAKE_EMAIL = re.compile(r"user(?:\d{5}|\d{8})@example\.com")  # 5 digits: written before 8
LANDLINE_AREA = re.compile(r"\D*(?:86\D*)?\(?0?(?:10|2\d|[3-9]\d{2})\)?[ -]?")


def ours(m: Match) -> bool:
    """A fake this module writes, so a second pass leaves it as it is: a 154 mobile, a tagged ID, card, plate,
    passport, name or address, user########@example.com, an IP of a documentation range (a fake landline, local
    number 1..., is no match)."""
    if m.type == "mobile":
        return _digits(m.text)[-11:].startswith(D.FAKE_MOBILE_PREFIX)
    if m.type in ("id_card", "bank_card"):
        d = _digits(m.text)
        n = 18 if m.type == "id_card" else len(d)
        return len(d) == n and 16 <= n <= 19 and d[:-1].isdigit() and _tagged(m.type, d[:-4]) == d
    if m.type == "email":
        return bool(FAKE_EMAIL.fullmatch(m.text))
    if m.type == "ip":
        try:
            return any(ipaddress.ip_address(m.text) in n for n in DOC_NETS)
        except ValueError:
            return False
    if m.type in TAG_DIGITS:
        return _tag_digits(m.type, m.text) == m.text
    if m.type == "name":
        t = m.text
        return len(t) == 3 and t[0] in D.SURNAMES_1 and t[1] in NAME_GIVEN and _name_tail(t[:2]) == t[2]
    if m.type == "address":
        a = FAKE_ADDRESS.fullmatch(m.text)
        return bool(a) and a.group(1) == _house_number(m.text[: a.start(1)] + "#" + m.text[a.end(1) :])
    return False


TAG_DIGITS = {"plate": 3, "passport": 4, "qq": 4, "wechat": 4}


def _tag_digits(kind: str, s: str) -> str | None:
    """`s` with its last TAG_DIGITS[kind] digits set by a hash of the rest; None with fewer digits than that."""
    pos = [i for i, c in enumerate(s) if c in "0123456789"][-TAG_DIGITS[kind] :]
    if len(pos) < TAG_DIGITS[kind]:
        return None
    out = list(s)
    for i in pos:
        out[i] = "#"
    tag = f"{_hash(kind, ''.join(out)) % 10 ** len(pos):0{len(pos)}d}"
    for i, d in zip(pos, tag):
        out[i] = d
    return "".join(out)


NAME_GIVEN = "".join(sorted(set(D.FAKE_GIVEN + list(D.FAKE_GIVEN_MORE)) - D.SURNAMES_1 - D.GIVEN_STOP))
NAME_TAG = 12  # a head (surname + first given character) starts a fake one time in 12


def _name_tail(head: str) -> str | None:
    """The third character of our fake name that starts with `head`, or None: no fake starts so."""
    h = _hash("name", head)
    return NAME_GIVEN[h % len(NAME_GIVEN)] if h // len(NAME_GIVEN) % NAME_TAG == 0 else None


def whole_fake_name(text: str, m: Match) -> Match:
    """`m` widened to the fake name of ours it lies in (jieba cuts 缪涵|婉和 and finds 缪涵), else `m` as it is."""
    for a in range(max(0, m.end - 3), m.start + 1):
        if m.end - m.start < 3 and ours(Match("name", a, a + 3, text[a : a + 3], m.confidence)):
            return Match("name", a, a + 3, text[a : a + 3], m.confidence)
    return m


def _house_number(key: str) -> str:
    """The house number of our fake address that reads `key` with the number as #."""
    return str(1 + _hash("address", key) % 299)


def _alternation(words) -> str:
    return "|".join(map(re.escape, sorted(set(words), key=len, reverse=True)))


FAKE_ADDRESS = re.compile(
    rf"(?:{_alternation(p for p, _, _ in D.REAL_PLACES if p)})?(?:{_alternation(c for _, c, _ in D.REAL_PLACES)})"
    rf"(?:{_alternation(d for _, _, d in D.REAL_PLACES)})(?:{_alternation(D.FAKE_ROADS)})([1-9]\d*)号"
    r"(?:[1-9]\d*号楼[1-5]单元[1-9]\d*0[1-4]室)?"
)


def _digits(s: str) -> str:
    """The digits (and a trailing ID check X) of a number as written: 一三八, １３８ and 138 alike."""
    return re.sub(r"[^0-9Xx]", "", normalize(s)[1]).upper()


def _fill(s: str, digits: str) -> str:
    """Write `digits` over the last len(digits) digit positions of s, keeping its separators and prefix."""
    ascii_s = normalize(s)[1]
    pos = [i for i, c in enumerate(ascii_s) if c.isdigit() or c in "Xx"][-len(digits) :]
    out = list(s)
    for i, d in zip(pos, digits):
        out[i] = d
    return "".join(out)


def fake_plate(s: str, rng: random.Random) -> str:
    """Same province and issuing-office letter, a tail of the same kind: 5 characters with at most two
    letters, new-energy D/F + letter-or-digit + 4 digits (small) or 5 digits + D/F (large), or 4 + 挂/学/警."""
    head = s[:2] + (s[2] if s[2:3] in "·• -" else "")
    tail = s[len(head) :]

    def digit() -> str:
        return str(rng.randrange(10))

    if len(tail) == 6 and tail[0] in "DF":
        return head + tail[0] + rng.choice(PLATE_CHARS + "0123456789") + "".join(digit() for _ in range(4))
    if len(tail) == 6 and tail[-1] in "DF":
        return head + "".join(digit() for _ in range(5)) + tail[-1]
    n = len(tail) - (not tail[-1].isascii())  # 挂/学/警/港/澳 stay
    letters = set(rng.sample(range(n), min(n - 3, rng.choice((0, 1, 1, 2)))))  # three digits for the tag
    body = "".join(rng.choice(PLATE_CHARS) if i in letters else digit() for i in range(n))
    return head + body + tail[n:]


def fake_address(s: str, rng: random.Random) -> str:
    """A real province–city–district triple unlike the original's, a road, a tag number (`_house_number`), maybe a
    room."""
    places = [p for p in D.REAL_PLACES if p[1][:-1] not in s and p[2] not in s]
    prov, city, district = rng.choice(places)
    with_prov = prov and any(s.startswith(p) for p in D.PROVINCES if p[:2] not in ("北京", "上海", "天津", "重庆"))
    head = (prov if with_prov else "") + city + district + rng.choice(D.FAKE_ROADS)
    tail = "号"
    if re.search(r"号楼|栋|幢|座|单元|层|室", s[s.find("号") + 1 :] if "号" in s else ""):
        tail += f"{rng.randrange(1, 20)}号楼{rng.randrange(1, 6)}单元{rng.randrange(1, 30)}0{rng.randrange(1, 5)}室"
    return head + _house_number(head + "#" + tail) + tail


def fake_name(s: str, rng: random.Random) -> str:
    """Another single surname and two given characters, the last one our tag (`_name_tail`)."""
    surnames = sorted(D.SURNAMES_1 - {s[:1]})
    while True:
        head = rng.choice(surnames) + rng.choice(NAME_GIVEN)
        if tail := _name_tail(head):
            return head + tail


def fake_like(m: Match, rng: random.Random) -> str:
    """A plausible, impossible fake of the same type, written like the original."""
    s = m.text
    if m.type == "id_card":
        return _fill(s, fake_id(rng))
    if m.type == "bank_card":
        digits = _digits(s)
        return _fill(s, fake_card(rng, digits[:6], len(digits)))
    if m.type == "mobile":
        return _fill(s, fake_mobile(rng))
    if m.type == "landline":  # keep the area code, make the local number start with 1
        area = LANDLINE_AREA.match(normalize(s)[1])
        head, local = s[: area.end()], s[area.end() :]
        return head + _fill(local, "1" + "".join(str(rng.randrange(10)) for _ in range(len(_digits(local)) - 1)))
    if m.type == "email":
        return f"user{rng.randrange(10**8):08d}@example.com"  # 10⁵ fakes met twice in a file of ~400 emails
    if m.type == "ip":
        if "." in s:
            return f"{rng.choice(['192.0.2', '198.51.100', '203.0.113'])}.{rng.randrange(256)}"
        return f"2001:db8::{rng.randrange(1, 65535):x}:{rng.randrange(1, 65535):x}"
    if m.type == "passport":
        return _tag_digits("passport", s[0] + "".join(str(rng.randrange(10)) if c.isdigit() else c for c in s[1:]))
    if m.type == "plate":
        return _tag_digits("plate", fake_plate(s, rng))
    if m.type == "qq":
        return _tag_digits("qq", str(rng.randrange(2, 10)) + "".join(str(rng.randrange(10)) for _ in s[1:]))
    if m.type == "wechat":
        head = "wxid_" if s.startswith("wxid_") else rng.choice(string.ascii_lowercase)
        body = "".join(rng.choice(string.ascii_lowercase) for _ in range(len(s) - len(head) - 4))
        return _tag_digits("wechat", head + body + "0000")
    if m.type == "name":
        return fake_name(s, rng)
    return fake_address(s, rng)


class Pseudonymizer:
    """Same value → same fake for as long as this object lives (a file); fakes are seeded by (seed, value).

    Numbers are keyed by their digits, so 138 1234 5678 and 13812345678 get one fake, each written in
    its own grouping.
    """

    def __init__(self, seed: int = 0):
        self.seed, self.table, self.used = seed, {}, set()

    def __call__(self, m: Match) -> str:
        if ours(m):  # an earlier pass's fake: faking it again gave one person two fakes
            return m.text  # (not marked used: with the same seed it stands for the value that maps to it here)
        key = (m.type, self._canon(m.type, m.text))
        if key not in self.table:
            h = hashlib.sha256(f"{self.seed}|{key[0]}|{key[1]}".encode()).digest()
            rng = random.Random(int.from_bytes(h[:8], "big"))
            fake = self._canon(m.type, fake_like(m, rng))
            for _ in range(64):  # distinct fakes while the pool lasts (768 IPv4 fakes); then share one
                if fake != key[1] and fake not in self.used:
                    break
                fake = self._canon(m.type, fake_like(m, rng))
            self.used.add(fake)
            self.table[key] = fake
        return _fill(m.text, self.table[key]) if m.type in NUMBERS else self.table[key]

    @staticmethod
    def _canon(kind: str, text: str) -> str:
        """What identifies a value: a number's digits (a mobile's last 11), else the text itself."""
        if kind not in NUMBERS:
            return text
        return _digits(text)[-11:] if kind == "mobile" else _digits(text)

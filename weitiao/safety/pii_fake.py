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
- plate, passport, name: format-valid look-alikes; no checksum exists, so these may coincide with a real one.
- address: a real province–city–district triple (never the original's city or district), a common road,
  a house number and, if the original had them, a building and room.
A fake keeps the original's grouping (138 1234 5678 → 154 xxxx xxxx) and country prefix; the same
value maps to the same fake for the whole Pseudonymizer (one per file), however it was grouped.

A second pass leaves the fakes a first one wrote as they are (`ours`: mobile, id_card, bank_card, email, ip; a
fake landline is not even found), so scrubbing a file that holds earlier output, or the output again, does not fake
the fakes (two runs over overlapping files gave one person two different fakes). Names, plates, passports and
addresses carry no mark that a real value could not have: a second pass fakes them again.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import random
import re

from weitiao.safety import pii_data as D
from weitiao.safety.pii import Match, id_check_char, luhn_digit, luhn_ok, normalize

PLATE_CHARS = "ABCDEFGHJKLMNPQRSTUVWXYZ"  # plates never use I or O
NUMBERS = ("mobile", "id_card", "bank_card")  # keyed by digits and written into the original's grouping


def _tagged(kind: str, head: str) -> str:
    """`head` + three tag digits + a wrong check character picked by the tag: a hash of (kind, head) sets all four.
    id_card: not the GB 11643 character, nor a digit that makes the 18 digits Luhn-valid; bank_card: not Luhn's."""
    tag = int.from_bytes(hashlib.sha256(f"weitiao pseudonym|{kind}|{head}".encode()).digest()[:8], "big")
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
    """A fake this module writes, so a second pass leaves it as it is: a 154 mobile, a tagged ID or card number,
    user########@example.com, an IP of a documentation range (a fake landline, local number 1..., is no match)."""
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
    return False


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
    head = s[:2] + (s[2] if s[2:3] in "·• " else "")
    tail = s[len(head) :]

    def digit() -> str:
        return str(rng.randrange(10))

    if len(tail) == 6 and tail[0] in "DF":
        return head + tail[0] + rng.choice(PLATE_CHARS + "0123456789") + "".join(digit() for _ in range(4))
    if len(tail) == 6 and tail[-1] in "DF":
        return head + "".join(digit() for _ in range(5)) + tail[-1]
    n = len(tail) - (not tail[-1].isascii())  # 挂/学/警/港/澳 stay
    letters = set(rng.sample(range(n), rng.choice((0, 1, 1, 2))))
    body = "".join(rng.choice(PLATE_CHARS) if i in letters else digit() for i in range(n))
    return head + body + tail[n:]


def fake_address(s: str, rng: random.Random) -> str:
    """A real province–city–district triple unlike the original's, a road, a number, maybe a room."""
    places = [p for p in D.REAL_PLACES if p[1][:-1] not in s and p[2] not in s]
    prov, city, district = rng.choice(places)
    with_prov = prov and any(s.startswith(p) for p in D.PROVINCES if p[:2] not in ("北京", "上海", "天津", "重庆"))
    out = (prov if with_prov else "") + city + district + rng.choice(D.FAKE_ROADS) + f"{rng.randrange(1, 300)}号"
    if re.search(r"号楼|栋|幢|座|单元|层|室", s[s.find("号") + 1 :] if "号" in s else ""):
        out += f"{rng.randrange(1, 20)}号楼{rng.randrange(1, 6)}单元{rng.randrange(1, 30)}0{rng.randrange(1, 5)}室"
    return out


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
        return s[0] + "".join(str(rng.randrange(10)) if c.isdigit() else c for c in s[1:])
    if m.type == "plate":
        return fake_plate(s, rng)
    if m.type == "name":
        sur = s[:2] if s[:2] in D.SURNAMES_2 else s[0]
        sur = rng.choice(sorted(D.SURNAMES_2 if len(sur) == 2 else D.SURNAMES_1 - {sur}))
        return sur + "".join(rng.choice(D.FAKE_GIVEN) for _ in range(len(s) - len(sur)))
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

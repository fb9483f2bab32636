"""Bounded JSON numbers for constrained decoding (the "bnum" leaf of weitiao.infer.constrain): JSON Schema's
`minimum`, `maximum`, `exclusiveMinimum`, `exclusiveMaximum`, and `multipleOf` (an integer or a binary fraction,
0.5, 0.25: see schema.py), kept exactly.

A number is written one byte at a time; a prefix is allowed while some number it can still become is in range,
so the mask never leads into a dead end (llama.cpp and xgrammar unroll a range into digit patterns instead).
Integers: -?(0|[1-9][0-9]*), exact at any size (clients parse them as integers). Numbers: the same with an
optional fraction, no exponent, and at most 15 digits (the "0" of "0.5" not counted): decimals of 15 significant
digits or fewer keep their order as doubles, so a client that parses the reply and the bound as floats compares
them as the mask did (schema.py refuses a number's bound with more significant digits).
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import NamedTuple

DIGITS = 15
_PREFIX = {True: re.compile(r"-?(0|[1-9][0-9]*)?"), False: re.compile(r"-?((0|[1-9][0-9]*)(\.[0-9]*)?)?")}
_WHOLE = {True: re.compile(r"-?(0|[1-9][0-9]*)"), False: re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?")}


class Bounds(NamedTuple):
    integer: bool
    lo: Fraction | None  # None: no lower bound
    lo_open: bool  # exclusiveMinimum
    hi: Fraction | None
    hi_open: bool
    step: Fraction  # multipleOf (1 on integers, 0 on numbers: none)


def step(spec: Bounds, text: str, b: int) -> str | None:
    """The number's text after byte `b`, or None when no number in range starts with it."""
    t = text + chr(b)
    return t if _PREFIX[spec.integer].fullmatch(t) and feasible(spec, t) else None


def ends(spec: Bounds, text: str) -> bool:
    """Whether `text` is a whole number in range."""
    if not _WHOLE[spec.integer].fullmatch(text) or (not spec.integer and _digits(text) > DIGITS):
        return False
    v = Fraction(text)
    return _inside(spec, v) and (not spec.step or v % spec.step == 0)


def _inside(spec: Bounds, v: Fraction) -> bool:
    above = spec.lo is None or v > spec.lo or (v == spec.lo and not spec.lo_open)
    return above and (spec.hi is None or v < spec.hi or (v == spec.hi and not spec.hi_open))


def _digits(text: str) -> int:
    whole, _, frac = text.lstrip("-").partition(".")
    return (0 if whole == "0" else len(whole)) + len(frac)


def feasible(spec: Bounds, text: str) -> bool:
    """Whether some whole number in range starts with `text` (a valid prefix)."""
    if not text:
        return any(feasible(spec, c) for c in "-0123456789")
    neg = text.startswith("-")
    lo, lo_open, hi, hi_open = spec.lo, spec.lo_open, spec.hi, spec.hi_open
    if neg:  # bounds on the magnitude
        lo, lo_open, hi, hi_open = (None if hi is None else -hi), hi_open, (None if lo is None else -lo), lo_open
    if lo is None or lo < 0:
        lo, lo_open = Fraction(0), False
    box = (lo, lo_open, hi, hi_open)
    mag = text[1:] if neg else text
    if not mag:
        return any(_reach(spec, d, box) for d in "0123456789")
    return _reach(spec, mag, box)


def _reach(spec: Bounds, mag: str, box: tuple) -> bool:
    """Whether a magnitude in `box` can be written after `mag`: every such magnitude lies on a grid in [a, b)."""
    whole, dot, frac = mag.partition(".")
    if spec.integer:
        step = _lcm(Fraction(1), spec.step)
        if whole == "0":
            return _hit(Fraction(0), Fraction(1), step, box)
        n, e = int(whole), 0
        while box[2] is None or n * 10**e <= box[2]:  # [n·10^e, (n+1)·10^e): e more digits
            if _hit(Fraction(n * 10**e), Fraction((n + 1) * 10**e), step, box):
                return True
            e += 1  # without an upper bound this ends: the span outgrows the step past the lower bound
        return False
    left = DIGITS - _digits(mag)
    if left < 0:
        return False
    if dot:  # [whole.frac, whole.frac + 10^-len(frac)), `left` more fraction digits (at least one after a bare ".")
        a, w = Fraction(int(whole + frac), 10 ** len(frac)), Fraction(1, 10 ** len(frac))
        return (bool(frac) or left > 0) and _hit(a, a + w, _lcm(Fraction(1, 10 ** (len(frac) + left)), spec.step), box)
    if whole == "0":
        return _hit(Fraction(0), Fraction(1), _lcm(Fraction(1, 10**left), spec.step), box)
    n = int(whole)
    return any(
        _hit(Fraction(n * 10**e), Fraction((n + 1) * 10**e), _lcm(Fraction(1, 10 ** (left - e)), spec.step), box)
        for e in range(left + 1)
    )


def _lcm(grid: Fraction, step: Fraction) -> Fraction:
    """The least positive multiple of both (`step` 0: `grid`)."""
    if not step:
        return grid
    num = math.lcm(grid.numerator * step.denominator, step.numerator * grid.denominator)
    return Fraction(num, grid.denominator * step.denominator)


def _hit(a: Fraction, b: Fraction, grid: Fraction, box: tuple) -> bool:
    """Whether a multiple of `grid` lies in [a, b) and in `box` (lo, lo_open, hi, hi_open)."""
    lo, lo_open, hi, hi_open = box
    low, low_open = (lo, lo_open) if lo >= a else (a, False)
    up, up_open = (hi, hi_open) if hi is not None and hi < b else (b, True)
    x = -(-low // grid) * grid
    if low_open and x == low:
        x += grid
    return x < up or (x == up and not up_open)

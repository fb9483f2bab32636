"""Cold mask cost of constrained strings (minLength/maxLength, pattern, format) on a synthetic 150k vocabulary.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/mask_strings.py

The vocabulary mixes ASCII words (half with a leading space), CJK runs, digit runs, punctuation with quotes and
backslashes, and the 256 single bytes (split UTF-8 as byte-level BPE has it). Each case walks one reply byte by
byte through a fresh mask cache and times every distinct state's first mask (cold: what one request pays), the
plain `{"type": "string"}` first, as the baseline.
"""

from __future__ import annotations

import json
import random
import time

from weitiao.infer.constrain import MaskCache, Pattern, TokenBytes
from weitiao.infer.schema import compile_schema

CASES = [
    ({"type": "string"}, "hello world 你好"),
    ({"type": "string", "maxLength": 20}, "hello world 你好"),
    ({"type": "string", "minLength": 3, "maxLength": 200}, "hello world 你好"),
    ({"type": "string", "format": "date-time"}, "2024-02-29T10:00:00Z"),
    ({"type": "string", "format": "date"}, "2024-02-29"),
    ({"type": "string", "format": "email"}, "bob.smith@example.com"),
    ({"type": "string", "format": "uuid"}, "123e4567-e89b-12d3-a456-426614174000"),
    ({"type": "string", "pattern": "^[a-z ]+$"}, "hello world"),
    ({"type": "string", "pattern": "^[a-z ]+$", "maxLength": 30}, "hello world"),
    ({"type": "string", "pattern": "[0-9]{3}"}, "call 555 now"),
]


def vocabulary(size: int = 150_000, seed: int = 0) -> TokenBytes:
    rng, words, letters = random.Random(seed), set(), "abcdefghijklmnopqrstuvwxyz"
    while len(words) < size:
        r = rng.random()
        if r < 0.55:
            w = " " * (rng.random() < 0.5) + "".join(rng.choice(letters) for _ in range(rng.randint(1, 9)))
        elif r < 0.75:
            w = "".join(chr(rng.randint(0x4E00, 0x9FA5)) for _ in range(rng.randint(1, 3)))
        elif r < 0.8:
            w = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 3)))
        else:
            w = "".join(rng.choice(letters + '.,:-"\\{}[] !?@_0123456789') for _ in range(rng.randint(1, 5)))
        words.add(w)
    table = [w.encode() for w in sorted(words)] + [bytes([b]) for b in range(256)]
    return TokenBytes(table, {len(table)})


def main() -> None:
    toks = vocabulary()
    width = len(toks.table) + 1
    print(f"{'schema':64s} states  ms/state  worst ms")
    for schema, value in CASES:
        root = {"type": "object", "properties": {"v": schema}, "required": ["v"]}
        p = Pattern()
        pattern = p.finish(compile_schema(p, root, "s", strict=False))
        cache, state, times = MaskCache(toks, size=100_000), pattern.start, []
        raw = json.dumps({"v": value}, ensure_ascii=False).encode()
        for k in range(len(raw) + 1):
            if (pattern.key, state) not in cache.masks:
                t = time.perf_counter()
                cache.get(pattern, state, width)
                times.append(time.perf_counter() - t)
            if k < len(raw):
                state = pattern.step(state, raw[k])
        mean = 1000 * sum(times) / len(times)
        print(f"{json.dumps(schema, ensure_ascii=False):64s} {len(times):6d}  {mean:8.1f}  {1000 * max(times):8.0f}")


if __name__ == "__main__":
    main()

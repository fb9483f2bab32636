"""Redact credentials from text we store or print (config dumps, error lines, rejects files).

Covers what users put in URLs and headers: URL userinfo (`http://user:pass@host`), secret query
parameters (`?api_key=…`, `&token=…`, …) and `Bearer …` tokens. The URL stays readable otherwise.
"""

from __future__ import annotations

import re
from typing import Any

MASK = "***"
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@?#'\"]+@")
_QUERY = re.compile(
    r"(?P<key>[?&;](?:api[_-]?key|apikey|key|token|access[_-]?token|auth|password|passwd|pwd|secret|"
    r"client[_-]?secret|sig|signature|x-amz-signature)=)[^&#\s'\"]+",
    re.I,
)
_BEARER = re.compile(r"(?P<key>\bBearer\s+)[A-Za-z0-9._~+/=-]+")


def redact(text: str) -> str:
    """`text` with URL userinfo, secret query values and bearer tokens replaced by ***."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    text = _QUERY.sub(lambda m: f"{m['key']}{MASK}", text)
    return _BEARER.sub(lambda m: f"{m['key']}{MASK}", text)


def redact_data(value: Any) -> Any:
    """Every string inside dicts/lists/tuples redacted (keys too); other values unchanged."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact_data(k): redact_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_data(v) for v in value)
    return value

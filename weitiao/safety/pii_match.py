"""What every PII recognizer module shares: the Match record, the Chinese-character class, the product-code label
and the optional jieba loader (names and addresses use jieba when it is installed)."""

from __future__ import annotations

import re
from dataclasses import dataclass

HAN = r"[\u4e00-\u9fa5]"


@dataclass(frozen=True)
class Match:
    type: str
    start: int
    end: int
    text: str
    confidence: float


# A label right before a number that names it a product's code, never a person's (批次号 13912345678, 型号：…): the
# number is that code. Order and member numbers are not here: shops key them by the buyer's phone.
PRODUCT_LABEL = re.compile(
    r"(?<![A-Za-z])(?:批次号?|批号|序列号|型号|货号|款号|条形码|条码|SKU|batch|lot|S/?N)"
    r"\s*(?:no\.?|[:：#]|是|为)?\s*$",
    re.I,
)

_JIEBA: list[bool] = []


def _jieba_ok() -> bool:
    if not _JIEBA:
        try:
            import logging

            import jieba

            jieba.setLogLevel(logging.WARNING)
            _JIEBA.append(True)
        except ImportError:
            _JIEBA.append(False)
    return _JIEBA[0]

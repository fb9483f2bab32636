"""The held-out Chinese PII evaluation set (pii_zh.jsonl) and the script that writes it (make_pii_zh.py)."""

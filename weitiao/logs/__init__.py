"""Behavior logs → DPO preference pairs with DuckDB (chapter Q161 dwell time, Q162 chat signals).

dwell.py    content-site views → pairs (normalize, position bias, margins, similar length)
chat.py     chat-site thumbs/share/copy/regenerate/follow-up/dwell → pairs by signal strength
config.py   pydantic configs; platform profiles in profiles/*.yaml
engine.py   open and check log files as DuckDB views; run SQL stages with progress
report.py   pairs JSONL, ledgers that add up, precision against a truth file, HTML report
synth.py    synthetic logs with hidden true quality
commands.py the `weitiao logs` CLI
"""

"""Behavior logs → DPO preference pairs with SQL on DuckDB or Spark (chapter Q161 dwell time, Q162 chat signals).

dwell.py    content-site views → pairs (normalize, position bias, margins, similar length)
chat.py     chat-site thumbs/share/copy/regenerate/follow-up/dwell → pairs by signal strength
config.py   pydantic configs; platform profiles in profiles/*.yaml
engine.py   the dialect layer (DuckDB SQL → SQLGlot → engine), DuckDB engine, log file checks, SQL stages
spark.py    the Spark SQL engine (local[*] or a cluster master): same SQL, results back as Arrow
report.py   pairs JSONL, ledgers that add up, precision against a truth file, HTML report
synth.py    synthetic logs with hidden true quality
commands.py the `weitiao logs` CLI
"""

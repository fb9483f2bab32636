"""Data engineering (chapter Q146, Q150, Q151): turn documents, failures and dialogues into training data.

    similarity.py  char n-gram measures: normalize, grounding, near-duplicates, TF-IDF; local embeddings
    chunk.py       read .md/.txt/.docx/.pdf; paragraph / heading / fixed / semantic chunkers
    kb2sft.py      knowledge base → grounded, deduplicated QA rows + eval split by chunk + review CSV
    mix.py         mix sources to target ratios (up/down-sampling, cross-source dedup)
    badcases.py    bad cases → clusters report → paraphrases → SFT additions, DPO pairs, regression eval
    repeat.py      long novel dialogues + DPO pairs against copying earlier turns / echoing the user
    commands.py    `weitiao data kb2sft|mix|badcases|repeat-negatives`, `weitiao curve` (its recipe: recipes/curve.py)

The teacher model for kb2sft and badcases is `weitiao.teacher.Teacher` (any OpenAI-compatible server).
"""

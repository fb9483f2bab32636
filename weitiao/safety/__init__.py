"""Safety tools.

pii.py       Chinese-first PII recognizers (ID, mobile, card, email, IP, landline, passport, plate, name,
             address), scrub modes, file scan/scrub, privacy-refusal SFT/DPO rows
pii_data.py  surname lists, province codes, plate prefixes, refusal templates
commands.py  the `weitiao pii` CLI (scan, scrub, refusals)
"""

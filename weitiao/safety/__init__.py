"""Safety tools: personal information, prompt injection, rule sets.

pii.py                      Chinese-first PII recognizers (ID, mobile, card, email, IP, landline, passport,
                            QQ, WeChat ID, plate, name, address) and scrub modes
pii_address.py              address recognizers: province/city/district, road + number, estates and blocks, cues
pii_name.py                 person names: jieba `nr` tags filtered by surnames and context; labelled names without jieba
pii_match.py                the Match record and what the recognizers share (Han ranges, product labels, jieba)
pii_data.py                 surname lists, province codes, plate prefixes, refusal templates, fake-value pools
pii_fake.py                 pseudonyms for `pii scrub --mode pseudonym` that can never be a real person's
pii_files.py                PII over data files (scan/scrub), privacy-refusal SFT/DPO rows
pii_eval.py                 precision/recall of the recognizers per type on a labelled set
eval/                       the held-out Chinese PII set (pii_zh.jsonl) and the script that writes it
injection.py                prompt injection: attacks from seed tasks, SFT/DPO data, judging, ASR report
injection_data.py           seed tasks, attack families and templates, benign prompt sets
screen.py                   `weitiao serve`'s input screen for prompt-injection signs (off by default)
screen_learned.py           the learned screen: family-held-out split, classifier scoring, rules/classifier/both report
rules.py                    rule-set YAML files, validation, programmatic checks, coverage of data
rules_build.py              rule-following SFT/DPO data and evaluation through a teacher
rules_reward.py             PPO reward from a rule set (`reward.kind: rules`): weighted ±1 per checked rule
commands.py                 the `weitiao pii` CLI (scan, scrub, eval, refusals)
injection_rules_commands.py the `weitiao safety injection` and `weitiao rules` CLIs
"""

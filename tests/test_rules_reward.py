"""PPO reward from a rule set: hand-computed scores, weight errors, and a few PPO steps with reward.kind rules."""

from __future__ import annotations

import pytest
from conftest import write_jsonl

from weitiao.errors import UserError
from weitiao.safety.rules import load_rules
from weitiao.safety.rules_reward import rule_weights, rules_scorer, score_reply

RULES = """rules:
  - {id: LEN, category: format, text: 不超过10字, check: {max_length: 10}}
  - {id: YUAN, category: fact, text: 提到价格写元, when: "价格|多少钱", check: {regex: "\\\\d+元"}}
  - {id: POLITE, category: style, text: 用“您”, check: {required: ["您"]}}
  - {id: KIND, category: style, text: 语气友好}
"""


@pytest.fixture
def rules_file(tmp_path):
    p = tmp_path / "rules.yaml"
    p.write_text(RULES, encoding="utf-8")
    return p


def test_scores_by_hand(rules_file):
    rs = load_rules(rules_file)
    w = rule_weights(rs, {"LEN": 2.0, "YUAN": 3.0})
    assert w == {"LEN": 2.0, "YUAN": 3.0, "POLITE": 1.0}  # KIND has no check: not scored
    # global prompt: LEN (2) and POLITE (1) count; YUAN's `when` does not match
    assert score_reply(rs, w, "你好", "您好") == 1.0  # (2 + 1) / 3
    assert score_reply(rs, w, "你好", "你好呀") == pytest.approx(1 / 3)  # (2 − 1) / 3
    assert score_reply(rs, w, "你好", "这句话一共有十一个汉字啊") == -1.0  # (−2 − 1) / 3
    # conditional rule exercised: LEN 2, YUAN 3, POLITE 1
    assert score_reply(rs, w, "价格多少？", "您好，25元") == 1.0
    assert score_reply(rs, w, "价格多少？", "您好，很便宜") == pytest.approx((2 - 3 + 1) / 6)
    # weight 0 leaves a rule out; no rule left → 0
    assert score_reply(rs, {"LEN": 0.0, "YUAN": 0.0, "POLITE": 0.0}, "价格？", "x") == 0.0
    f = rules_scorer(str(rules_file), {"LEN": 2.0, "YUAN": 3.0})
    convs = [
        [{"role": "system", "content": "价格"}, {"role": "user", "content": "你好"}],
        [{"role": "user", "content": "多少钱"}],
    ]
    # the system turn does not exercise YUAN: only the last user turn is the prompt
    assert f(convs, ["您好", "您好，25元"]) == [1.0, 1.0]


def test_weight_errors(rules_file):
    rs = load_rules(rules_file)
    with pytest.raises(UserError, match="reward.weights.NOPE: .* has no rule 'NOPE'"):
        rule_weights(rs, {"NOPE": 1})
    with pytest.raises(UserError, match="reward.weights.KIND: rule KIND has no check"):
        rule_weights(rs, {"KIND": 1})
    with pytest.raises(UserError, match=r"reward.weights.LEN: -1; give a finite number ≥ 0"):
        rule_weights(rs, {"LEN": -1})
    for bad in (float("inf"), float("nan")):  # YAML .inf / .nan: the reward was nan for every prompt
        with pytest.raises(UserError, match=r"reward.weights.LEN: (inf|nan); give a finite number ≥ 0"):
            rule_weights(rs, {"LEN": bad})
    with pytest.raises(UserError, match="nothing to score"):
        rules_scorer(str(rules_file), {"LEN": 0, "YUAN": 0, "POLITE": 0})


def test_weights_refused_for_other_reward_kinds():
    from weitiao.recipes.rewards import RewardSpec, build_scorer

    with pytest.raises(UserError, match="reward.weights: only used by kind: rules"):
        build_scorer(RewardSpec(kind="function", path="weitiao.recipes.rewards:short_emoji_reward", weights={"a": 1}))


def test_ppo_steps_with_a_rules_reward(tiny_model_dir, tmp_path):
    """Every reply passes ALWAYS (w 1) and fails NEVER (w 3): each score is exactly (1 − 3) / 4 = −0.5.
    A conditional rule no prompt matches must not count (else the score would differ)."""
    from weitiao.config import load_config
    from weitiao.recipes import ppo
    from weitiao.train.log import read_metrics

    rules = tmp_path / "r.yaml"
    rules.write_text(
        "- {id: ALWAYS, category: format, text: 不超过一万字, check: {max_length: 10000}}\n"
        "- {id: NEVER, category: fact, text: 含暗号, check: {required: ['暗号ZQX']}}\n"
        "- {id: COND, category: fact, text: 退款时写您, when: '退款', check: {required: ['您']}}\n",
        encoding="utf-8",
    )
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"今天天气怎么样？{i}"} for i in range(8)])
    cfg = load_config(
        ppo.PPOConfig,
        None,
        [f"model.path={tiny_model_dir}", f"data.prompts=[{prompts}]", "reward.kind=rules", f"reward.path={rules}",
         "reward.weights={NEVER: 3}", f"train.out={tmp_path / 'run'}", "train.progress=false",
         "train.tensorboard=false", "train.resume=none", "train.max_steps=2", "ppo.rollout_batch_size=4",
         "ppo.generate_max_len=8", "lora.r=8"],
    )  # fmt: skip
    ppo.run(cfg)
    train = read_metrics(tmp_path / "run", "train")
    assert len(train) == 2 and all(m["score"] == pytest.approx(-0.5) for m in train)

"""PPO end to end on tiny models: first-minibatch identity, roles, rewards, resume, learning."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from conftest import recipe_config, write_jsonl
from safetensors.torch import load_file

from weitiao.config import load_config
from weitiao.errors import UserError
from weitiao.infer.generate import Sampled
from weitiao.recipes import ppo
from weitiao.train.log import read_metrics

RULE = "weitiao.recipes.rewards:short_emoji_reward"


def config(model_dir, prompts, out, *extra, lora=("lora.r=8", "lora.dropout=0")):
    return recipe_config(
        "ppo",
        model_dir,
        prompts,
        out,
        "reward.kind=function",
        f"reward.path={RULE}",
        "train.resume=none",
        "ppo.rollout_batch_size=8",
        "ppo.generate_max_len=12",
        *lora,
        *extra,
    )


@pytest.fixture
def prompts(tmp_path):
    return write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"今天天气怎么样？{i}"} for i in range(16)])


def test_load_prompts_accepts_prompt_pair_and_sft_rows(tmp_path):
    f = write_jsonl(
        tmp_path / "mixed.jsonl",
        [
            {"prompt": "你好"},
            {"messages": [{"role": "system", "content": "友好"}, {"role": "user", "content": "在吗"}]},
            {"prompt": "选哪个", "chosen": "A", "rejected": "B"},
            {"instruction": "推荐电影", "output": "流浪地球"},
        ],
    )
    got = ppo.load_prompts([str(f)])
    assert [m[-1]["content"] for m in got] == ["你好", "在吗", "选哪个", "推荐电影"]
    assert all(m[-1]["role"] == "user" for m in got) and got[1][0]["role"] == "system"
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"messages": [{"role": "assistant", "content": "hi"}]}])
    with pytest.raises(UserError, match="bad.jsonl:1"):
        ppo.load_prompts([str(bad)])
    # the pair's chosen and the SFT reply are answers the reward never sees: said, not dropped unsaid
    note = ppo.reference_note(ppo.prompt_rows([str(f)]))
    assert note.startswith(f"note: data.prompts: 2 of 4 rows carry a reference answer (first: {f}:3); the ")
    assert ppo.reference_note(ppo.prompt_rows([str(f)])[:2]) is None  # control: plain prompts


def test_rollout_mask_keeps_eos_even_when_pad_equals_eos():
    eos = 7
    samples = [Sampled([1, 2, 3], [4, eos], True), Sampled([1], [5, 6, 8, 9], False)]
    r = ppo.build_rollout(samples, pad_id=eos, device=torch.device("cpu"))
    assert r.mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert r.resp[0, :2].tolist() == [4, eos]
    assert r.pos[0, :2].tolist() == [2, 3] and r.pos[1].tolist() == [0, 1, 2, 3]  # logits that predict each token
    assert r.ids[0, :5].tolist() == [1, 2, 3, 4, eos] and r.attn.sum(1).tolist() == [5, 5]


def test_hacking_warning():
    calm = [{"score": s, "kl": 1.0, "response_length": 10} for s in range(10)]
    assert ppo.hacking_warning(calm, 5, 20.0, 1.5) is None
    kl_run = [{"score": s, "kl": 30.0 * (s > 4), "response_length": 10} for s in range(10)]
    assert "KL" in ppo.hacking_warning(kl_run, 5, 20.0, 1.5)
    long = [{"score": s, "kl": 1.0, "response_length": 10 + 10 * (s > 4)} for s in range(10)]
    assert "length" in ppo.hacking_warning(long, 5, 20.0, 1.5)
    falling = [{"score": -s, "kl": 99.0, "response_length": 10} for s in range(10)]
    assert ppo.hacking_warning(falling, 5, 20.0, 1.5) is None


def test_hacking_warning_prints_numbers_that_show_the_change():
    """Both sides were rounded to whole tokens and KL to one decimal: with hacking_length_ratio 1.1 a mean reply length
    of 7.6 → 8.4 read 'grew 8 → 8 tokens', a KL of 20.04 over hacking_kl 20 read '20.0 > 20.0'."""

    def history(l0: float, l1: float, kl: float = 1.0) -> list[dict]:
        late = [{"score": 1.0, "kl": kl, "response_length": l1}] * 5
        return [{"score": 0.0, "kl": 1.0, "response_length": l0}] * 5 + late

    said = ppo.hacking_warning(history(7.6, 8.4), 5, 20.0, 1.1)
    assert "grew 7.6 → 8.4 tokens (×1.11 > train.hacking_length_ratio 1.1)" in said
    said = ppo.hacking_warning(history(10, 15.00001), 5, 20.0, 1.5)
    assert "grew 10.0 → 15.0 tokens (×1.500001 > train.hacking_length_ratio 1.5)" in said
    said = ppo.hacking_warning(history(10, 10, kl=20.04), 5, 20.0, 1.5)
    assert "KL per sequence is 20.04 > train.hacking_kl 20:" in said


def test_a_resumed_run_warns_of_reward_hacking_as_an_uninterrupted_one(tiny_model_dir, prompts, tmp_path, capsys):
    """The reward-hacking check compared steps kept only in memory: resumed one step before a warning (whose window
    of 2 × 2 steps reaches back before the resume), the run did not warn there although the uninterrupted run did.
    The checkpoint keeps them now; a checkpoint without them (written before) has them read back from metrics.jsonl,
    or is refused."""
    from weitiao.train import checkpoint as ck

    reward = tmp_path / "distinct.py"
    reward.write_text("def score(prompts, responses):\n    return [len(set(r)) / 4.0 for r in responses]\n")
    args = ("train.max_steps=10", "train.num_episodes=10", "train.save_every=1", "ppo.temperature=1.0",
            "ppo.rollout_batch_size=4", "ppo.generate_max_len=8", "ppo.max_epochs=1", "ppo.actor_learning_rate=0.003",
            f"reward.path={reward}:score", "train.hacking_window=2", "train.hacking_kl=0.0001")  # fmt: skip

    def warnings(out: Path) -> list:
        return [(r["step"], r["message"]) for r in read_metrics(out, "warning")]

    ppo.run(config(tiny_model_dir, prompts, tmp_path / "a", *args))
    full = warnings(tmp_path / "a")
    assert full and full[0][0] > 1, full  # the config triggers the check
    stop = full[0][0] - 1
    ppo.run(config(tiny_model_dir, prompts, tmp_path / "b", *args, f"train.stop_after={stop}"))
    ppo.run(config(tiny_model_dir, prompts, tmp_path / "b", *args, "train.resume=auto"))
    assert warnings(tmp_path / "b") == full
    # a checkpoint from before the history was kept: read back from the run's metrics.jsonl
    ppo.run(config(tiny_model_dir, prompts, tmp_path / "c", *args, f"train.stop_after={stop}"))
    state_file = tmp_path / "c" / "checkpoints" / f"step-{stop:06d}" / ck.STATE_FILE
    state = torch.load(state_file, weights_only=False)
    kept_scores = [r["score"] for r in state.pop("hacking_history")]
    assert kept_scores == [r["score"] for r in read_metrics(tmp_path / "a", "train")[:stop]]
    torch.save(state, state_file)
    log = tmp_path / "c" / "metrics.jsonl"
    kept = log.read_text(encoding="utf-8")
    log.write_text("".join(x for x in kept.splitlines(True) if f'"step": {stop},' not in x), encoding="utf-8")
    with pytest.raises(UserError, match=rf"train.resume: .*step-{stop:06d} predates the reward-hacking history kept "
                                        rf"in checkpoints and .*metrics.jsonl has no train row for step\(s\) "
                                        rf"{stop}..{stop}; restore that file, set train.resume=force to start "
                                        "the reward-hacking check afresh, or train.resume=none"):  # fmt: skip
        ppo.run(config(tiny_model_dir, prompts, tmp_path / "c", *args, "train.resume=auto"))
    shutil.copytree(tmp_path / "c", tmp_path / "d")
    log.write_text(kept, encoding="utf-8")
    ppo.run(config(tiny_model_dir, prompts, tmp_path / "c", *args, "train.resume=auto"))
    assert warnings(tmp_path / "c") == full
    # train.resume=force without those rows: the check starts afresh, said in one line (the step-{stop + 1} warning,
    # whose window reaches back before the resume, is not given)
    ppo.run(config(tiny_model_dir, prompts, tmp_path / "d", *args, "train.resume=force"))
    assert capsys.readouterr().out.count("the reward-hacking check starts afresh from step") == 1
    assert warnings(tmp_path / "d") == [w for w in full if w[0] <= stop or w[0] > stop + 3]


@pytest.mark.slow
def test_first_minibatch_is_identity_and_outputs_load(tiny_model_dir, prompts, tmp_path):
    extra = ("train.max_steps=2", "ppo.max_epochs=2", "ppo.n_samples_per_prompt=2", "ppo.rollout_batch_size=4")
    s = ppo.run(config(tiny_model_dir, prompts, tmp_path / "run", *extra))
    train = read_metrics(tmp_path / "run", "train")
    assert len(train) == 2
    for m in train:  # old log-probs come from the same weights: ratio 1, no KL, nothing clipped
        assert abs(m["first_ratio_mean"] - 1) < 1e-5 and abs(m["first_approx_kl"]) < 1e-6
        assert m["first_clipfrac"] == 0
    assert abs(train[0]["kl"]) < 1e-5  # a fresh adapter starts equal to the reference
    assert train[0]["beta"] == 0.05 and 0 <= train[0]["eos_rate"] <= 1
    for key in ("rlhf_reward", "entropy", "approx_kl", "clipfrac", "vf_clipfrac", "ratio_var", "explained_variance"):
        assert key in train[0]
    cost = s["cost"]
    assert all(cost[k] > 0 for k in ppo.PHASES) and cost["samples"] == 16  # every phase of the step timed
    final = tmp_path / "run" / "final"
    from peft import PeftModel

    from weitiao.models.load import ModelSpec, load_model

    PeftModel.from_pretrained(load_model(ModelSpec(path=str(tiny_model_dir))), final / "adapter")  # chat/serve load it
    assert json.loads((final / "adapter" / "adapter_config.json").read_text())["r"] == 8
    assert (final / "value_head.safetensors").exists() and (final / "critic" / "critic").exists()


@pytest.mark.slow
def test_resume_continues_exactly(tiny_model_dir, prompts, tmp_path):
    args = ("train.num_episodes=2", "train.max_steps=3", "train.save_every=1", "ppo.temperature=1.0")
    full = ppo.run(config(tiny_model_dir, prompts, tmp_path / "a", *args))
    ppo.run(config(tiny_model_dir, prompts, tmp_path / "b", *args, "train.stop_after=2"))
    assert [p.name for p in sorted((tmp_path / "b" / "checkpoints").iterdir())][-1] == "step-000002"
    original = Path(prompts).read_text(encoding="utf-8")
    Path(prompts).write_text(original.replace('"prompt": "', '"prompt": "改了 '), encoding="utf-8")
    with pytest.raises(UserError, match=r"train.resume: data.prompts changed since .* started"):
        ppo.run(config(tiny_model_dir, prompts, tmp_path / "b", *args[:-1], "train.resume=auto"))
    Path(prompts).write_text(original, encoding="utf-8")  # negative control: the same prompts resume
    resumed = ppo.run(config(tiny_model_dir, prompts, tmp_path / "b", *args[:-1], "train.resume=auto"))
    assert resumed["steps"] == full["steps"] == 3
    a = load_file(str(tmp_path / "a" / "final" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "b" / "final" / "adapter" / "adapter_model.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    la, lb = read_metrics(tmp_path / "a", "train"), read_metrics(tmp_path / "b", "train")
    assert [round(r["score"], 5) for r in la] == [round(r["score"], 5) for r in lb]


@pytest.mark.slow
def test_reference_is_the_sft_adapter_and_missing_eos_penalty(tiny_model_dir, prompts, chat_file, tmp_path):
    from weitiao.recipes import sft

    sft_cfg = load_config(
        sft.SFTConfig,
        None,
        [f"model.path={tiny_model_dir}", f"data.train=[{chat_file}]", f"train.out={tmp_path / 'sft'}", "lora.r=8"]
        + ["train.max_steps=3", "train.progress=false", "train.tensorboard=false", "train.lr=5e-3"],
    )
    sft.run(sft_cfg)
    cfg = config(
        tiny_model_dir,
        prompts,
        tmp_path / "run",
        "train.max_steps=1",
        f"lora.init_from={tmp_path / 'sft'}",
        "ppo.missing_eos_penalty=5.0",
        "ppo.generate_max_len=4",
        "ppo.temperature=0.7",
    )
    s = ppo.run(cfg)
    # The actor starts as the SFT adapter and the reference is a frozen copy of it: KL starts at 0.
    assert abs(s["last_train_kl"]) < 1e-5 and "kl" not in s  # the summary names the last step's as such
    m = read_metrics(tmp_path / "run", "train")[0]
    # 4 new tokens are too few to stop: every reply pays the penalty on top of the rule score.
    assert m["eos_rate"] == 0 and math.isclose(m["score_shaped"], m["score"] - 5.0, rel_tol=1e-5)


def rm_base_q(model_dir) -> torch.Tensor:
    return load_file(str(Path(model_dir) / "model.safetensors"))["model.layers.0.self_attn.q_proj.weight"]


@pytest.mark.slow
def test_reward_model_source_and_critic_init(tiny_model_dir, tmp_path):
    """Critic initialized from a trained reward model: same LoRA weights and score head."""
    from weitiao.recipes import rm

    pairs = [{"prompt": f"问题{i}", "chosen": "好的😊", "rejected": "不知道。" * 3} for i in range(8)]
    pf = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    rm_cfg = load_config(
        rm.RMConfig,
        None,
        [f"model.path={tiny_model_dir}", f"data.train=[{pf}]", f"train.out={tmp_path / 'rm'}", "lora.r=8"]
        + ["train.max_steps=2", "train.progress=false", "train.tensorboard=false"],
    )
    rm.run(rm_cfg)
    from weitiao.models.digest import weights_digest

    recorded = json.loads((tmp_path / "rm" / "final" / "reward_model.json").read_text())
    assert recorded["base_weights"] == weights_digest(tiny_model_dir)  # what PPO compares its base with
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": p["prompt"]} for p in pairs])
    cfg = config(tiny_model_dir, prompts, tmp_path / "run", "train.max_steps=1", "reward.kind=model")
    cfg.reward.path = str(tmp_path / "rm")
    cfg.ppo.critic_learning_rate = 1e-12  # keep the critic where it started
    ppo.run(cfg)
    full = config(tiny_model_dir, prompts, tmp_path / "full", "train.max_steps=1", "reward.kind=model", lora=())
    full.reward.path, full.lora.enabled, full.ppo.critic_learning_rate = str(tmp_path / "rm"), False, 1e-12
    assert ppo.run(full)["cost"]["models_held"]["base copies"] == 3
    from weitiao.models.heads import load_reward_model

    merged = load_reward_model(tmp_path / "rm")[0].merge_and_unload().state_dict()
    body = load_file(str(tmp_path / "full" / "final" / "critic" / "model.safetensors"))
    w = "model.layers.0.self_attn.q_proj.weight"  # critic body = the reward model with its LoRA folded in
    assert torch.allclose(body[w], merged[w], atol=1e-6) and not torch.allclose(body[w], rm_base_q(tiny_model_dir))
    head = load_file(str(tmp_path / "run" / "final" / "value_head.safetensors"))["weight"]
    rm_ad = load_file(str(tmp_path / "rm" / "final" / "adapter" / "adapter_model.safetensors"))
    score = next(v for k, v in rm_ad.items() if "score" in k)
    assert torch.allclose(head, score.float(), atol=1e-6)
    critic = load_file(str(tmp_path / "run" / "final" / "critic" / "critic" / "adapter_model.safetensors"))
    k = next(k for k in critic if "layers.0.self_attn.q_proj.lora_B" in k)
    rk = next(r for r in rm_ad if "layers.0.self_attn.q_proj.lora_B" in r)
    assert torch.allclose(critic[k], rm_ad[rk], atol=1e-6)


def test_http_and_function_reward_sources(tmp_path):
    import sys

    from fastapi import FastAPI

    sys.path.insert(0, str(Path(__file__).parent))
    from loopback import running

    from weitiao.recipes.rewards import RewardSpec, build_scorer, function_scorer

    app = FastAPI()

    @app.post("/score")
    def score(body: dict) -> dict:
        return {"scores": [len(r) for r in body["responses"]]}

    with running(app) as url:
        fn, rm_model = build_scorer(RewardSpec(kind="http", path=url + "/score", batch_size=2))
        assert fn([[{"role": "user", "content": "q"}]] * 3, ["a", "bb", "ccc"]) == [1.0, 2.0, 3.0]
        assert rm_model is None
    (tmp_path / "myreward.py").write_text("def f(prompts, responses):\n    return [1] * (len(responses) - 1)\n")
    bad = function_scorer(f"{tmp_path / 'myreward.py'}:f")
    with pytest.raises(UserError, match="returned 1 scores for 2"):
        bad([[]] * 2, ["a", "b"])
    with pytest.raises(UserError, match="module:function"):
        function_scorer("no_colon")
    # reward.batch_size is honoured by a function reward (was: one call with everything), refused where unused
    log = tmp_path / "calls.txt"
    body = f"    open({str(log)!r}, 'a').write(f'{{len(responses)}} ')\n    return [len(r) for r in responses]\n"
    (tmp_path / "sizes.py").write_text("def f(prompts, responses):\n" + body)
    fn, _ = build_scorer(RewardSpec(kind="function", path=f"{tmp_path / 'sizes.py'}:f", batch_size=3))
    assert fn([[]] * 7, ["a"] * 7) == [1.0] * 7 and log.read_text().split() == ["3", "3", "1"]
    for kind, path, key in [("rules", "r.yaml", "batch_size"), ("function", "m:f", "timeout")]:
        with pytest.raises(UserError, match=f"reward.{key}: not used by kind: {kind}"):
            build_scorer(RewardSpec(kind=kind, path=path, **{key: 3}))


def test_a_ppo_runs_own_config_yaml_runs_again(tiny_model_dir, prompts, tmp_path):
    """config.yaml records every key, reward.timeout: 60.0 and reward.batch_size: 16 too, which the reward kinds that
    do not use them refused as set by the user: `weitiao ppo runs/x/config.yaml` stopped with "reward.timeout: not
    used by kind: function". Keys away from their defaults are still refused."""
    from weitiao.recipes.rewards import RewardSpec, build_scorer

    ppo.run(config(tiny_model_dir, prompts, tmp_path / "a", "train.max_steps=1", "ppo.max_epochs=1"))
    [d] = read_metrics(tmp_path / "a", "data")  # as SFT/DPO/RM write (PPO wrote none): every prompt accounted for
    assert d["read"] == d["kept"] + d["dropped_too_long"] > 0 and d["world"] == 1 and d["trainable_params"] > 0
    again = load_config(ppo.PPOConfig, tmp_path / "a" / "config.yaml", [f"train.out={tmp_path / 'b'}"])
    assert {"timeout", "batch_size"} <= again.reward.model_fields_set
    build_scorer(again.reward)
    with pytest.raises(UserError, match="reward.timeout: not used by kind: function"):
        build_scorer(RewardSpec(kind="function", path=RULE, timeout=30))


def test_a_forced_resume_on_another_number_of_processes_says_the_prompts_shift(tiny_model_dir, prompts, tmp_path,
                                                                              capsys):  # fmt: skip
    """Each step deals ppo.rollout_batch_size × processes prompts: a 2-process checkpoint resumed by 1 process under
    train.resume=force draws other prompts from then on, and said only 'sampling reseeded'. Now one line names the
    saved and current prompts a step and the shift; without force it is refused (as SFT/DPO/RM). With
    rollout_batch_size doubled, a step deals the same prompts: the line says only that sampling is reseeded."""
    from weitiao.train import checkpoint as ck

    args = ("train.max_steps=2", "ppo.max_epochs=1")
    ppo.run(config(tiny_model_dir, prompts, tmp_path / "a", *args, "train.stop_after=1", "train.save_every=1"))
    ckpt = tmp_path / "a" / "checkpoints" / "step-000001"
    state = torch.load(ckpt / ck.STATE_FILE, weights_only=False)
    as_two = {**state, "rng": state["rng"] * 2, "world": 2, "prompts_per_step": 16}  # as 2 processes write it
    torch.save(as_two, ckpt / ck.STATE_FILE)
    with pytest.raises(UserError, match=r"written by 2 process\(es\), this run has 1; resume with 2"):
        ppo.run(config(tiny_model_dir, prompts, tmp_path / "a", *args, "train.resume=auto"))
    capsys.readouterr()
    ppo.run(config(tiny_model_dir, prompts, tmp_path / "a", *args, "train.resume=force"))
    said = [line for line in capsys.readouterr().out.splitlines() if "process(es)" in line]
    assert said == [
        f"train.resume=force: {ckpt}'s run dealt 16 of 16 prompts a step (1 steps an episode, 2 process(es)), this "
        "run deals 8 of 16 (2 steps, 1 process(es)), so from step 2 on the prompts are not the ones the original run "
        "would have drawn (some of this episode's come again, others not at all) and sampling is reseeded"
    ]
    shutil.rmtree(ckpt.parent / "step-000002")  # the forced run's; step 1 again as 2 processes wrote it
    torch.save(as_two, ckpt / ck.STATE_FILE)
    again = ("train.num_episodes=2", "ppo.rollout_batch_size=16", "train.resume=force")  # 1 step an episode
    ppo.run(config(tiny_model_dir, prompts, tmp_path / "a", *args, *again))
    said = [line for line in capsys.readouterr().out.splitlines() if "process(es)" in line]
    assert said == [
        f"train.resume=force: {ckpt} was written by 2 process(es), resuming with 1: a step deals the same 16 prompts, "
        "but sampling is reseeded, so from step 2 on the replies are not the ones the original run would have drawn"
    ]


def test_a_forced_resume_with_another_rollout_batch_size_says_the_prompts_shift(tiny_model_dir, prompts, tmp_path,
                                                                               capsys):  # fmt: skip
    """ppo.rollout_batch_size changed under train.resume=force on the same process: the steps deal other spans of
    the episode's order, and the run said only 'training on with changed ppo.rollout_batch_size'."""
    args = ("train.max_steps=3", "ppo.max_epochs=1", "ppo.rollout_batch_size=5", "train.save_every=1")
    ppo.run(config(tiny_model_dir, prompts, tmp_path / "a", *args, "train.stop_after=1"))
    capsys.readouterr()
    ppo.run(config(tiny_model_dir, prompts, tmp_path / "a", *args, "train.resume=force", "ppo.rollout_batch_size=6"))
    said = [line for line in capsys.readouterr().out.splitlines() if "prompts a step" in line]
    ckpt = tmp_path / "a" / "checkpoints" / "step-000001"
    assert said == [
        f"train.resume=force: {ckpt}'s run dealt 5 of 16 prompts a step (4 steps an episode, 1 process(es)), this "
        "run deals 6 of 16 (3 steps, 1 process(es)), so from step 2 on the prompts are not the ones the original run "
        "would have drawn (some of this episode's come again, others not at all)"
    ]


def test_a_refused_resume_writes_nothing_and_prompts_are_checked_per_checkpoint(tiny_model_dir, prompts, tmp_path):
    """'Nothing to train' was refused after config.yaml and inputs.json were rewritten: a forced resume on edited
    prompts that was refused so left inputs.json naming the edited ones, and the next plain resume trained on them
    unsaid. A checkpoint copied on its own (no inputs.json beside it) resumed on other prompts unsaid too."""
    out = tmp_path / "a"
    ppo.run(config(tiny_model_dir, prompts, out, "train.max_steps=2", "ppo.max_epochs=1", "train.save_every=1",
                   "train.num_episodes=2"))  # fmt: skip

    def files() -> dict:
        return {f: f.read_bytes() for f in sorted(out.rglob("*")) if f.is_file()}

    before = files()
    original = Path(prompts).read_text(encoding="utf-8")
    Path(prompts).write_text(original.replace('"prompt": "', '"prompt": "改了 '), encoding="utf-8")
    with pytest.raises(UserError, match=r"is already at step 2 of 2: nothing to train"):
        ppo.run(config(tiny_model_dir, prompts, out, "train.max_steps=2", "ppo.max_epochs=1", "train.resume=force"))
    assert files() == before
    with pytest.raises(UserError, match=r"data.prompts changed since"):
        ppo.run(config(tiny_model_dir, prompts, out, "train.max_steps=3", "ppo.max_epochs=1", "train.resume=auto"))
    assert files() == before
    copy = tmp_path / "copied" / "step-000002"  # the checkpoint alone: its config.yaml, no inputs.json
    shutil.copytree(out / "checkpoints" / "step-000002", copy)
    args = ("train.max_steps=3", "ppo.max_epochs=1", "train.num_episodes=2", f"train.resume={copy}")
    with pytest.raises(UserError, match=r"data.prompts hold other prompts than .*step-000002 was trained on"):
        ppo.run(config(tiny_model_dir, prompts, tmp_path / "b", *args))
    assert not (tmp_path / "b").exists()
    Path(prompts).write_text(original, encoding="utf-8")  # control: the prompts it was trained on resume
    assert ppo.run(config(tiny_model_dir, prompts, tmp_path / "b", *args))["steps"] == 3


def test_a_function_reward_that_fails_or_returns_no_numbers_is_one_line(tmp_path):
    """Text is not a score, even "1.5" (was: read as 1.5); ["good"] names the item (was: 'got list'); an
    exception in the user's function names itself and its file:line (was: a traceback through the recipe)."""
    from weitiao.recipes.rewards import function_scorer

    body = {
        "text_number": 'return ["1.5"] * len(r)',
        "text": 'return ["good"] * len(r)',
        "nested": "return [[1.0]] * len(r)",
        "raises": 'raise KeyError("no such rule")',
    }
    (tmp_path / "rw.py").write_text("".join(f"def {k}(p, r):\n    {v}\n" for k, v in body.items()))
    want = {
        "text_number": "score 0 is '1.5' \\(str\\); return numbers",
        "text": "score 0 is 'good' \\(str\\)",
        "nested": "score 0 is \\[1.0\\] \\(list\\)",
        "raises": f"rw.py:raises: raised KeyError: 'no such rule' \\({tmp_path / 'rw.py'}:8\\)",
    }
    for name, match in want.items():
        with pytest.raises(UserError, match=match):
            function_scorer(f"{tmp_path / 'rw.py'}:{name}")([[]] * 2, ["a", "b"])
    (tmp_path / "ok.py").write_text("import torch\ndef f(p, r):\n    return torch.tensor([1, 2.5])\n")
    assert function_scorer(f"{tmp_path / 'ok.py'}:f")([[]] * 2, ["a", "b"]) == [1.0, 2.5]  # numbers of any type


@pytest.mark.slow
def test_demo_model_learns_rule_reward_and_beta_bounds_kl(tmp_path):
    """Demo model, rule reward (short reply with an emoji): the score rises with small β; large β pins KL near 0."""
    from weitiao.demo import DATA_DIR

    def train(beta: float, steps: int) -> list[dict]:
        cfg = config(
            "demo",
            f"{DATA_DIR / 'heldout_style.jsonl'},{DATA_DIR / 'style.jsonl'}",
            tmp_path / f"b{beta}",
            f"train.max_steps={steps}",
            "train.seed=5",
            "ppo.rollout_batch_size=16",
            "ppo.generate_max_len=16",
            "ppo.actor_learning_rate=3e-3",
            "ppo.critic_learning_rate=1e-3",
            f"ppo.init_kl_coef={beta}",
        )
        ppo.run(cfg)
        return read_metrics(tmp_path / f"b{beta}", "train")

    # The demo base answers in long formal text without emoji in ChatML. Cut at 32 tokens its replies are all over
    # 20 characters and the reward is flat near −0.55 until a sampled short emoji reply is reinforced, which depends
    # on the draws (with the float16-stored weights none of seeds 1, 4, 5 rose within 12 steps). Cut at 16 tokens
    # some replies are short, the reward has a slope, and it rises every step or two: 0.13 → 0.61 (first and last 4
    # steps, seed 5); a policy that does not learn stays at its first steps' mean.
    free = train(0.05, 12)
    first, last = (sum(r["score"] for r in rows) / len(rows) for rows in (free[:4], free[-4:]))
    assert last > first + 0.3, (first, last)
    assert max(r["kl"] for r in free) < 30
    pinned = train(2.0, 8)
    assert max(abs(r["kl"]) for r in pinned) < 2.0  # 0.4 at most here; β=0.05 reaches ~27 by step 11
    assert sum(r["kl"] for r in pinned[-4:]) < sum(r["kl"] for r in free[-4:]) / 10


@pytest.mark.slow
def test_two_process_ddp_runs_and_stays_in_sync(tiny_model_dir, prompts, tmp_path):
    """2 gloo processes: each samples its own shard, gradients are all-reduced, weights end identical."""
    import os
    import socket
    import subprocess
    import sys

    (tmp_path / "c.yaml").write_text("{}\n")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = [f"model.path={tiny_model_dir}", f"data.prompts=[{prompts}]", "reward.kind=function", f"reward.path={RULE}"]
    args += [f"train.out={tmp_path / 'run'}", "train.progress=false", "train.tensorboard=false", "train.max_steps=2"]
    args += ["ppo.rollout_batch_size=4", "ppo.generate_max_len=8", "lora.r=8", "lora.dropout=0"]
    ddp = ["-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={port}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    p = subprocess.run(
        [sys.executable, *ddp, "-m", "weitiao", "ppo", str(tmp_path / "c.yaml"), *args],
        env=env,
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    cost = json.loads((tmp_path / "run" / "cost.jsonl").read_text().splitlines()[0])
    assert cost["samples"] == 2 * 4 * 2  # steps × rollout per process × processes
    assert len(read_metrics(tmp_path / "run", "train")) == 2


@pytest.mark.slow
def test_full_parameter_mode_keeps_reference_frozen(tiny_model_dir, prompts, tmp_path, tokenizer, monkeypatch):
    """lora.enabled=false: the actor trains in full; the reference copy (own weights, own head) stays as it started."""
    from weitiao.models.load import LoraSpec, ModelSpec
    from weitiao.models.roles import Roles

    held = []
    monkeypatch.setattr(ppo, "Roles", lambda *a, **kw: held.append(Roles(*a, **kw)) or held[-1])
    cfg = config(tiny_model_dir, prompts, tmp_path / "run", "train.max_steps=2", lora=("lora.enabled=false",))
    cfg.ppo.actor_learning_rate = 1e-3
    s = ppo.run(cfg)
    q, r = (tokenizer(x, add_special_tokens=False)["input_ids"] for x in ("今天天气怎么样？", "挺好的，大晴天"))
    b = ppo.build_rollout([Sampled(q, r, False)], tokenizer.pad_token_id, torch.device("cpu"))
    fresh = Roles(ModelSpec(path=str(tiny_model_dir)), LoraSpec(enabled=False), torch.device("cpu"))
    with torch.no_grad():
        start = ppo.token_logps(fresh, "reference", b, 1.0)[0]
        assert torch.equal(ppo.token_logps(held[0], "reference", b, 1.0)[0], start)  # bit-identical after training
        assert not torch.equal(ppo.token_logps(held[0], "actor", b, 1.0)[0], start)
    assert s["cost"]["models_held"]["base copies"] == 3
    train = read_metrics(tmp_path / "run", "train")
    assert abs(train[0]["kl"]) < 1e-5 and abs(train[1]["kl"]) > 1e-4  # the actor moved away from the reference
    from transformers import AutoModelForCausalLM

    trained = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final" / "model")
    start = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    w = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(trained.state_dict()[w], start.state_dict()[w])


def test_a_tokenizer_eos_apart_from_the_end_of_turn_ends_the_reply(tmp_path, monkeypatch):
    """Qwen2.5-base style: EOS <|endoftext|> (also PAD), end-of-turn <|im_end|>. The saved actor and `weitiao serve`
    stop at either, so a reply is cut after the EOS too: the reward never sees what follows, the mask ends there,
    and no missing-EOS penalty (was: the sampler ran on past it, all of it scored, trained and penalized)."""
    from conftest import build_tokenizer, save_tiny_model

    from weitiao.losses import ppo as ppo_losses

    tok = build_tokenizer(eos="<|endoftext|>")
    model_dir = save_tiny_model(tmp_path / "qwen", tok, arch="qwen2", hidden=64, kv_heads=2)
    eos, word = tok.eos_token_id, tok("好的", add_special_tokens=False)["input_ids"]
    stray = tok.convert_tokens_to_ids("<|im_start|>")  # drawn mid-reply: the reward sees it (was: skipped)
    real = ppo.generate_ids

    def with_eos(*a, **kw):  # the first reply as the sampler draws it: a word, EOS, and more after it
        got = real(*a, **kw)
        got[0] = Sampled(got[0].prompt_ids, [*word, stray, *word, eos, *word, *word], False)
        return got

    seen, masks = [], []
    real_gae = ppo_losses.gae

    def spy_gae(rewards, values, mask, *a):
        masks.append(mask.clone())
        return real_gae(rewards, values, mask, *a)

    monkeypatch.setattr(ppo, "generate_ids", with_eos)
    monkeypatch.setattr(ppo_losses, "gae", spy_gae)
    monkeypatch.setattr(ppo, "build_scorer", lambda *a: (lambda p, r: seen.extend(r) or [0.0] * len(r), None))
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"你好{i}"} for i in range(2)])
    args = ("train.max_steps=1", "ppo.rollout_batch_size=2", "ppo.max_epochs=1", "ppo.generate_max_len=8")
    ppo.run(config(model_dir, prompts, tmp_path / "run", *args, "ppo.missing_eos_penalty=5.0"))
    assert seen[0] == "好的<|im_start|>好的"
    assert masks[0][0].sum() == 2 * len(word) + 2
    m = read_metrics(tmp_path / "run", "train")[0]
    stopped = [1.0, m["eos_rate"] * 2 - 1]  # the other reply: random tiny model, 8 tokens, either way
    assert m["score_shaped"] == pytest.approx(-5.0 * sum(1 - s for s in stopped) / 2, abs=1e-6)


def test_an_eos_drawn_as_the_last_allowed_token_ends_the_reply():
    """The sampler stops at the end-of-turn only, so an EOS apart from it drawn as the generate_max_len-th token came
    back as a reply that never stopped: its EOS was decoded into the text the reward scores and the missing-EOS
    penalty was subtracted, while one token earlier the same EOS ended the reply."""
    eot, eos, w = 2, 0, 7
    last = ppo.cut_at_stop(Sampled([5], [w, w, eos], False, [-1.0, -2.0, -3.0]), {eot, eos})
    assert last.stopped and last.response_ids == [w, w, eos] and last.logps == [-1.0, -2.0, -3.0]
    earlier = ppo.cut_at_stop(Sampled([5], [w, eos, w], False), {eot, eos})  # negative control: already cut
    assert earlier.stopped and earlier.response_ids == [w, eos]
    assert ppo.cut_at_stop(Sampled([5], [w, w, w], False), {eot, eos}).stopped is False  # cut at the limit
    assert ppo.cut_at_stop(Sampled([5], [w, eot], True), {eot, eos}).response_ids == [w, eot]


def test_the_reward_sees_a_stray_special_token_and_normal_replies_score_as_before(tiny_model_dir, tokenizer):
    """Replies were decoded with skip_special_tokens, which hid a `<|im_start|>` the policy drew mid-reply from the
    reward function and the reward model. Kept now (only the stop token is dropped); the reward model re-tokenizes
    the text as its training rows (special-token text → the special id): it reads the ids the policy drew, and a
    reply with no special token scores exactly as before."""
    from weitiao.data.chat import EncodeOptions, encode
    from weitiao.data.formats import Conversation
    from weitiao.data.templates import resolve_template
    from weitiao.models.load import ModelSpec, load_model
    from weitiao.recipes.score import score_conversations

    eot, start = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|im_start|>"])
    word = tokenizer("挺好的，大晴天", add_special_tokens=False)["input_ids"]
    drawn = [*word[:2], start, *word[2:]]
    normal, unfinished, stray = Sampled([1], [*word, eot], True), Sampled([1], word, False), Sampled([1], drawn, False)

    def before(s):  # the old decode
        return tokenizer.decode(s.response_ids[:-1] if s.stopped else s.response_ids, skip_special_tokens=True)

    texts = [ppo.reply_text(tokenizer, s) for s in (normal, unfinished, stray)]
    assert texts[:2] == [before(normal), before(unfinished)] == ["挺好的，大晴天"] * 2
    assert "<|im_start|>" in texts[2] and "<|im_start|>" not in before(stray)
    prompt = [{"role": "user", "content": "今天天气怎么样？"}]
    convs = [Conversation([*prompt, {"role": "assistant", "content": t}]) for t in texts]
    as_scored = EncodeOptions(max_len=512, refuse_special=False)  # as score_conversations encodes a reply
    ids = encode(convs[2], tokenizer, resolve_template(tokenizer, "auto"), as_scored).input_ids
    assert any(ids[i : i + len(drawn)] == drawn for i in range(len(ids)))  # the reward model reads what was drawn
    rm = load_model(ModelSpec(path=str(tiny_model_dir)), head="score").eval()
    old = [Conversation([*prompt, {"role": "assistant", "content": before(s)}]) for s in (normal, unfinished, stray)]
    new_scores, old_scores = score_conversations(rm, tokenizer, convs), score_conversations(rm, tokenizer, old)
    assert new_scores[:2] == old_scores[:2] and new_scores[2] != old_scores[2]


def test_prompt_max_len_counts_the_tokens_the_sampler_is_fed(tmp_path, monkeypatch):
    """A tokenizer that adds a BOS (Llama's) to the rendered prompt: the sampler is fed the rendered text alone,
    so a prompt of exactly ppo.prompt_max_len tokens is kept (was: counted one longer and dropped)."""
    from conftest import build_tokenizer
    from tokenizers import processors

    from weitiao.data.templates import resolve_template

    tok = build_tokenizer()
    bos = "<|endoftext|>"
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", special_tokens=[(bos, tok.convert_tokens_to_ids(bos))]
    )
    tok.save_pretrained(tmp_path / "m")
    msgs = [{"role": "user", "content": "今天天气怎么样？"}]
    text = resolve_template(tok, "auto").render(tok, msgs, add_generation_prompt=True)
    n = len(tok(text, add_special_tokens=False)["input_ids"])
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": msgs[0]["content"]}])

    class Kept(Exception):
        pass

    def stop(*a):
        raise Kept

    monkeypatch.setattr(ppo, "build_scorer", stop)  # the next thing after the length check
    with pytest.raises(Kept):
        ppo.run(config(tmp_path / "m", prompts, tmp_path / "run", f"ppo.prompt_max_len={n}"))
    with pytest.raises(UserError, match=f"all 1 prompts are longer than ppo.prompt_max_len={n - 1}"):
        ppo.run(config(tmp_path / "m", prompts, tmp_path / "run", f"ppo.prompt_max_len={n - 1}"))


def test_a_prompt_with_no_room_for_the_reply_in_the_context_is_refused(tiny_model_dir, tmp_path, monkeypatch):
    """The tiny Llama's context is 512: the longest prompt + ppo.generate_max_len past it is one line naming the
    prompt_max_len that fits (was: replies sampled and trained at positions the model never had, silently)."""
    from weitiao.data.templates import resolve_template
    from weitiao.models.load import load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    rows = [{"prompt": "你好"}, {"prompt": "今天天气怎么样？" * 3}]
    render = resolve_template(tok, "auto").render(tok, [{"role": "user", "content": rows[1]["prompt"]}], True)
    n = len(tok(render, add_special_tokens=False)["input_ids"])
    prompts = write_jsonl(tmp_path / "p.jsonl", rows)
    with pytest.raises(UserError, match=f"longest prompt is {n} tokens; with ppo.generate_max_len={513 - n} it "
                       f"exceeds the model's context of 512; set ppo.prompt_max_len={n - 1}"):  # fmt: skip
        ppo.run(config(tiny_model_dir, prompts, tmp_path / "run", f"ppo.generate_max_len={513 - n}"))

    class Past(Exception):
        pass

    def past(*a):
        raise Past

    monkeypatch.setattr(ppo, "RunningMoments", past)  # made right after the check
    with pytest.raises(Past):  # exactly the context: allowed
        ppo.run(config(tiny_model_dir, prompts, tmp_path / "run", f"ppo.generate_max_len={512 - n}"))


def test_a_run_stopped_by_stop_after_prints_no_empty_cost_report(tmp_path, monkeypatch):
    """train.stop_after returns before the cost report exists: `weitiao ppo` printed an empty 'PPO cost report'."""
    from typer.testing import CliRunner

    from weitiao.cli import app

    (tmp_path / "c.yaml").write_text(f"data: {{prompts: [p.jsonl]}}\nreward: {{kind: function, path: '{RULE}'}}\n",
                                     encoding="utf-8")  # fmt: skip
    for summary, shown in (
        ({"stopped_at": 2, "out": "runs/x"}, False),
        ({"steps": 3, "cost": {"rollout_s": 0.5}}, True),
    ):
        monkeypatch.setattr(ppo, "run", lambda cfg, summary=summary: dict(summary))
        r = CliRunner().invoke(app, ["ppo", str(tmp_path / "c.yaml")])
        assert r.exit_code == 0, r.output
        assert ("PPO cost report" in r.output) is shown and ("stopped_at" in r.output) is not shown


def test_a_resumed_runs_cost_report_counts_the_seconds_of_the_steps_it_counts(tiny_model_dir, prompts, tmp_path,
                                                                              monkeypatch):  # fmt: skip
    """Stopped after step 3 and resumed, the cost report gave the samples of all 4 steps but the seconds of step 4
    only (a 4× throughput). Each rollout here takes ≥ 0.5 s: the report's rollout_s covers 4 rollouts, and it says
    how many steps it counts."""
    import time

    sample = ppo.generate_ids

    def slow(*args, **kw):
        time.sleep(0.5)
        return sample(*args, **kw)

    monkeypatch.setattr(ppo, "generate_ids", slow)
    args = ("train.max_steps=4", "ppo.rollout_batch_size=3", "ppo.max_epochs=1", "train.save_every=1")
    ppo.run(config(tiny_model_dir, prompts, tmp_path / "a", *args, "train.stop_after=3"))
    cost = ppo.run(config(tiny_model_dir, prompts, tmp_path / "a", *args, "train.resume=auto"))["cost"]
    assert cost["rollout_s"] >= 2.0 and cost["total_s"] >= sum(cost[k] for k in ppo.PHASES)
    assert (cost["steps"], cost["samples"]) == (4, 12)
    assert json.loads((tmp_path / "a" / "cost.jsonl").read_text())["rollout_s"] == cost["rollout_s"]


def test_merge_rollout_on_a_quantized_base_or_a_full_actor_is_refused(tiny_model_dir, prompts, tmp_path):
    """ppo.merge_rollout on a 4/8-bit base or with lora.enabled false sampled unmerged, unsaid: one line now."""
    merge = "ppo.merge_rollout=true"
    for extra, why in (
        (("model.quant=4bit",), r"the base is quantized \(model.quant=4bit\)"),
        (("model.quant=8bit",), r"the base is quantized \(model.quant=8bit\)"),
    ):
        said = rf"^command line model.quant=\dbit ppo.merge_rollout=true: Value error, ppo.merge_rollout .*but {why}; "
        with pytest.raises(UserError, match=said):  # no empty key (': : Value error') for a check across sections
            config(tiny_model_dir, prompts, tmp_path / "a", *extra, merge)
    with pytest.raises(UserError, match=r"but the actor is trained in full \(lora.enabled: false\): no adapter"):
        config(tiny_model_dir, prompts, tmp_path / "a", merge, lora=("lora.enabled=false",))
    assert config(tiny_model_dir, prompts, tmp_path / "a", merge).ppo.merge_rollout  # control: LoRA, plain base
    assert config(tiny_model_dir, prompts, tmp_path / "a", "model.quant=4bit").model.quant == "4bit"


def test_an_http_reward_that_answers_no_scores_object_or_an_error_is_one_line():
    """A JSON list or number was a TypeError traceback through the recipe; a 500 was two lines (httpx's doc link)
    without what the server said. Each is now one line naming the endpoint and the body's start."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from weitiao.recipes.rewards import http_scorer

    answers = {"/list": (200, b"[1.0, 2.0]"), "/num": (200, b"3"), "/500": (500, b"model not loaded"),
               "/html": (200, b"<html>"), "/ok": (200, b'{"scores": [1.0, 2.0]}')}  # fmt: skip

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            code, body = answers[self.path]
            self.send_response(code)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    want = {
        "/list": r"answered '\[1.0, 2.0\]'; return \{\"scores\"",
        "/num": r"answered '3'; return \{\"scores\"",
        "/500": r"/500 answered HTTP 500: 'model not loaded'$",
        "/html": "JSONDecodeError",
    }
    try:
        assert http_scorer(base + "/ok")([[]] * 2, ["a", "b"]) == [1.0, 2.0]  # the control: a good answer reads
        for path, match in want.items():
            with pytest.raises(UserError, match=match) as got:
                http_scorer(base + path)([[]] * 2, ["a", "b"])
            assert "\n" not in str(got.value)
    finally:
        server.shutdown()


def test_a_reward_models_adapter_as_lora_init_from_is_refused(tiny_model_dir, prompts, tmp_path):
    """`lora.init_from=runs/rm` (a reward model run, not the SFT one) started the PPO actor (and an SFT or DPO run)
    from the reward model's LoRA with its score head dropped, unsaid; now one line. Control: the same adapter
    without the reward model's marks loads."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from weitiao.models.load import ModelSpec, build_trainable, load_lora

    lora = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraConfig(r=8, lora_alpha=16))
    lora.save_pretrained(tmp_path / "plain" / "final" / "adapter")
    lora.save_pretrained(tmp_path / "rm" / "final" / "adapter")
    (tmp_path / "rm" / "final" / "reward_model.json").write_text(json.dumps({"base": str(tiny_model_dir)}))
    cfg = config(tiny_model_dir, prompts, tmp_path / "run", f"lora.init_from={tmp_path / 'rm'}")
    with pytest.raises(UserError, match="lora.init_from: .*rm/final/adapter: a reward model .* start from an SFT"):
        ppo.run(cfg)
    with pytest.raises(UserError, match="lora.init_from: .*: a reward model"):  # SFT and DPO load it the same way
        build_trainable(ModelSpec(path=str(tiny_model_dir)), cfg.lora, torch.device("cpu"))
    load_lora(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(tmp_path / "plain"))


def test_a_reward_reads_a_partial_utf8_token_as_replacement_character(tokenizer):
    """What the READMEs now say (they said a reward model reads the same ids the policy drew): a token holding part of
    a UTF-8 character reaches the reward as U+FFFD, which re-tokenizes as other ids; a whole reply round-trips."""
    whole = tokenizer.encode("今天天气", add_special_tokens=False)
    part = [tokenizer.convert_tokens_to_ids("ä")]  # byte 0xE4 alone: the first byte of 今 and many CJK characters
    eot = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for ids, round_trips in ((whole, True), (part, False)):
        text = ppo.reply_text(tokenizer, Sampled([1], ids + [eot], True))
        assert (tokenizer.encode(text, add_special_tokens=False) == ids) is round_trips
    assert ppo.reply_text(tokenizer, Sampled([1], part + [eot], True)) == "\ufffd"


def test_a_reward_module_that_fails_to_load_or_names_no_function_is_one_line(tmp_path):
    """A reward file with a SyntaxError or an error at top level was a traceback; a name bound to a list was
    "raised TypeError: 'list' object is not callable" located in weitiao's own rewards.py at the first step. Each is
    now one line naming the user's file:line or the name. Control: a good file in the same folder loads and scores."""
    from weitiao.recipes.rewards import function_scorer

    files = {"syntax": "def f(p, r)\n    return []\n", "top": "x = 1\ny = 1 / 0\n", "data": "f = [1.0, 2.0]\n"}
    want = {
        "syntax": f"cannot import: SyntaxError: expected ':' \\({tmp_path / 'syntax.py'}:1\\)$",
        "top": f"cannot import: ZeroDivisionError: division by zero \\({tmp_path / 'top.py'}:2\\)$",
        "data": "f is a list, not a function$",
    }
    for name, body in files.items():
        (tmp_path / f"{name}.py").write_text(body)
        with pytest.raises(UserError, match=want[name]):
            function_scorer(f"{tmp_path / name}.py:f")
    (tmp_path / "good.py").write_text("def f(p, r):\n    return [1.0] * len(r)\n")
    assert function_scorer(f"{tmp_path / 'good.py'}:f")([[]], ["a"]) == [1.0]


def test_a_reward_module_name_that_is_a_file_says_to_write_its_ending(tmp_path):
    """`reward.path: myreward:score` for myreward.py beside the config read 'No module named ...' with no hint that a
    file is written `myreward.py:score`; a module that imports something missing still says what is missing."""
    from weitiao.recipes.rewards import function_scorer

    with pytest.raises(
        UserError, match=r"no module 'wt_no_such_reward' on the Python path; .* wt_no_such_reward\.py:score$"
    ):
        function_scorer("wt_no_such_reward:score")
    (tmp_path / "needs.py").write_text("import wt_missing_dependency\n\ndef f(p, r):\n    return []\n")
    with pytest.raises(UserError, match=r"cannot import \(No module named 'wt_missing_dependency'\)"):
        function_scorer(f"{tmp_path / 'needs.py'}:f")


@pytest.mark.slow
def test_two_processes_reading_another_ppo_config_or_other_prompts_are_refused(tiny_model_dir, prompts, tmp_path):
    """A copy of the config and prompts per node, one stale: PPO compared nothing, so each process sampled and
    updated at its own settings (or on its own prompts) and the run was recorded as process 0's, exit 0."""
    from conftest import torchrun_driver

    driver = tmp_path / "stale.py"  # process 1 reads another value of one key (a stale copy on its node)
    driver.write_text(
        "import os, sys\nfrom weitiao.cli import main\nif os.environ['RANK'] == '1':\n"
        "    sys.argv += sys.argv.pop().split('|')\nelse:\n    sys.argv.pop()\nsys.argv[0] = 'weitiao'\nmain()\n"
    )
    (tmp_path / "c.yaml").write_text("{}\n")
    args = [f"model.path={tiny_model_dir}", f"data.prompts=[{prompts}]", "reward.kind=function", f"reward.path={RULE}"]
    args += [f"train.out={tmp_path / 'run'}", "train.progress=false", "train.tensorboard=false", "train.max_steps=1"]
    args += ["ppo.rollout_batch_size=4", "ppo.generate_max_len=8", "lora.r=8", "lora.dropout=0"]
    other = write_jsonl(tmp_path / "other.jsonl", [{"prompt": f"另一个问题{i}"} for i in range(8)])
    for stale, says in [
        ("ppo.init_kl_coef=0.3", "config key ppo.init_kl_coef: 0.05 on process 0, 0.3 on process 1"),
        (f"data.prompts=[{other}]", "data.prompts: 16 prompts on process 0, 8 on process 1"),
    ]:
        p = torchrun_driver(driver, "ppo", str(tmp_path / "c.yaml"), *args, stale, ok=False)
        assert says in p.stderr + p.stdout, (p.stderr + p.stdout)[-2000:]
        assert not (tmp_path / "run" / "config.yaml").exists()  # refused before anything is written
    torchrun_driver(driver, "ppo", str(tmp_path / "c.yaml"), *args, "train.max_steps=1")  # control: alike


def test_minibatches_other_than_train_batch_size_are_said():
    """rollout_batch_size 4 with the default train_batch_size 8 trained one minibatch of 4 a epoch, unsaid; 10
    samples in minibatches of 4 made 4, 4, 2. Both get a note; sizes that divide the step's samples get none."""
    spec = ppo.PPOSpec
    note = ppo.minibatch_note(spec(rollout_batch_size=4, micro_train_batch_size=4))
    assert note == (
        "note: ppo.train_batch_size 8 with 4 samples a step (rollout_batch_size × n_samples_per_prompt, per "
        "process): each epoch's minibatches hold 4 samples (1 optimizer step(s) an epoch)"
    )
    note = ppo.minibatch_note(spec(rollout_batch_size=5, n_samples_per_prompt=2, train_batch_size=4))
    assert "minibatches hold 4, 4, 2 samples (3 optimizer step(s)" in note
    assert ppo.minibatch_note(spec(rollout_batch_size=8, n_samples_per_prompt=2, train_batch_size=8)) is None


@pytest.mark.slow
def test_ratio_var_is_over_the_minibatch_not_a_mean_of_micro_batch_variances(tiny_model_dir, prompts, tmp_path):
    """ratio_var was the token-weighted mean of each micro-batch's own variance, so it missed the spread between
    micro-batches (and between processes, which combine the same way): the same minibatch logged 0.017 split into
    micro-batches of 1 and 0.088 whole. Now it is the variance over the minibatch's tokens however it is split."""
    extra = ("train.max_steps=1", "ppo.max_epochs=3", "ppo.rollout_batch_size=4", "ppo.train_batch_size=4",
             "ppo.generate_max_len=8", "ppo.actor_learning_rate=0.01", "train.progress=false")  # fmt: skip
    got = {}
    for micro in (1, 4):
        out = tmp_path / f"micro{micro}"
        ppo.run(config(tiny_model_dir, prompts, out, *extra, f"ppo.micro_train_batch_size={micro}"))
        [m] = read_metrics(out, "train")
        got[micro] = m
    assert got[1]["ratio_mean"] == pytest.approx(got[4]["ratio_mean"], abs=1e-6)  # the same updates
    assert got[4]["ratio_var"] > 1e-4  # the policy moved: ratios spread
    assert got[1]["ratio_var"] == pytest.approx(got[4]["ratio_var"], rel=1e-3)


def adapter_shapes(run: Path) -> dict:
    """The actor's and the critic's adapter_config.json in run/final, target lists sorted."""
    shapes = {}
    for role, sub in (("actor", "adapter"), ("critic", "critic/critic")):
        c = json.loads((run / "final" / sub / "adapter_config.json").read_text())
        c["target_modules"] = sorted(c["target_modules"])
        shapes[role] = c
    return shapes


@pytest.mark.slow
def test_a_continued_actor_records_its_shape_and_the_critic_takes_it(tiny_model_dir, prompts, chat_file, tmp_path):
    """PPO with `lora.init_from` (an r 8 SFT adapter) and no lora.r trained r 8 but recorded the default `r: 16` in
    config.yaml, so `weitiao ppo RUN/config.yaml train.resume=none` was refused, and the default critic ("the actor's
    settings") was r 16 on all-linear. Now the unset lora keys take the adapter's values before the run records them:
    the critic has the actor's shape, or the reward model's when it starts from it, and the recorded config.yaml
    trains the same actor and critic again."""
    from weitiao.recipes import rm, sft

    shape = ["lora.r=8", "lora.alpha=16", "lora.targets=[q_proj,v_proj]", "train.max_steps=2"]
    sft.run(recipe_config("sft", tiny_model_dir, chat_file, tmp_path / "sft", *shape))
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "问", "chosen": "好😊", "rejected": "不。"}] * 4)
    rm.run(recipe_config("rm", tiny_model_dir, pairs, tmp_path / "rm", "lora.r=4", "lora.targets=[k_proj]",
                         "train.max_steps=1"))  # fmt: skip
    sources = {"function": [], "model": ["reward.kind=model", f"reward.path={tmp_path / 'rm'}"]}
    for kind, reward in sources.items():
        first, again = tmp_path / f"{kind}-1", tmp_path / f"{kind}-2"
        ppo.run(config(tiny_model_dir, prompts, first, f"lora.init_from={tmp_path / 'sft'}", "train.max_steps=1",
                       "ppo.rollout_batch_size=4", "ppo.generate_max_len=4", *reward, lora=()))  # fmt: skip
        recorded = load_config(ppo.PPOConfig, first / "config.yaml", ["train.resume=none", f"train.out={again}"])
        assert (recorded.lora.r, recorded.lora.alpha, recorded.lora.targets) == (8, 16.0, ["q_proj", "v_proj"])
        ppo.run(recorded)
        shapes = adapter_shapes(first)
        assert shapes == adapter_shapes(again)
        actor, critic = shapes["actor"], shapes["critic"]
        assert (actor["r"], actor["lora_alpha"], actor["target_modules"]) == (8, 16, ["q_proj", "v_proj"])
        want = (8, 16, ["q_proj", "v_proj"]) if kind == "function" else (4, 8, ["k_proj"])  # the reward model's
        assert (critic["r"], critic["lora_alpha"], critic["target_modules"]) == want


@pytest.mark.slow
def test_a_continued_adapter_trained_on_another_template_is_refused_under_auto(prompts, chat_file, tmp_path):
    """An SFT adapter trained with data.template=chatml on a base with no chat template, continued by PPO with
    data.template left at auto: PPO rendered the prompts as plain (`### 用户:`), a format the actor never saw, and
    saved plain as its chat_template.jinja, unsaid. Now refused with one line naming the template to set."""
    from conftest import build_tokenizer, save_tiny_model

    from weitiao.recipes import sft

    base = save_tiny_model(tmp_path / "base", build_tokenizer(chat_template=None), hidden=64)
    sft.run(recipe_config("sft", base, chat_file, tmp_path / "sft", "data.template=chatml", "train.max_steps=1"))
    cont = (f"lora.init_from={tmp_path / 'sft'}", "train.max_steps=1", "ppo.rollout_batch_size=4")
    with pytest.raises(
        UserError, match=r"auto renders chats with plain .* set data.template=chatml, or data.template=plain"
    ):
        ppo.run(config(base, prompts, tmp_path / "auto", *cont, lora=()))
    assert not (tmp_path / "auto").exists()
    ppo.run(config(base, prompts, tmp_path / "chat", *cont, "data.template=chatml", "ppo.generate_max_len=4", lora=()))
    assert "<|im_start|>" in (tmp_path / "chat" / "final" / "chat_template.jinja").read_text()


def test_a_reward_path_that_is_no_reward_model_names_reward_path(tmp_path):
    """reward.kind: model with a reward.path that holds no reward model said "--rm PATH: not a reward model dir", a
    flag of `weitiao score` that a PPO config does not have; now the line names reward.path."""
    from weitiao.recipes.rewards import RewardSpec, build_scorer

    with pytest.raises(UserError, match=r"^reward.path: .*/nothing: no such file or folder"):
        build_scorer(RewardSpec(kind="model", path=str(tmp_path / "nothing")))
    (tmp_path / "nothing").mkdir()
    with pytest.raises(UserError, match=r"^reward.path: .*/nothing: not a reward model dir"):
        build_scorer(RewardSpec(kind="model", path=str(tmp_path / "nothing")))
    step = tmp_path / "rm" / "checkpoints" / "step-000004" / "adapter"  # all three said "not a reward model dir"
    step.mkdir(parents=True)
    for at in (step, step.parent):
        with pytest.raises(UserError, match=r"^reward.path: .*: a checkpoint of a `weitiao rm` run, which has no "):
            build_scorer(RewardSpec(kind="model", path=str(at)))

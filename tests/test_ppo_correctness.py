"""PPO correctness: each role's own head, exact rollout distribution, soft-capping, critic init scaling,
uneven work over processes, cross-process whitening, per-process RNG on resume, dropout, guards, pinned losses."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import free_port, recipe_config, write_jsonl
from safetensors.torch import load_file

from weitiao.errors import UserError
from weitiao.infer.generate import Sampled, generate_ids
from weitiao.losses import ppo as ppo_losses
from weitiao.models.load import LoraSpec, ModelSpec, add_lora, load_model
from weitiao.models.roles import Roles
from weitiao.recipes import ppo
from weitiao.train.guard import DivergedError
from weitiao.train.log import read_metrics

RULE = "weitiao.recipes.rewards:short_emoji_reward"
CPU = torch.device("cpu")


def config(model_dir, prompts, out, *extra):
    return recipe_config(
        "ppo", model_dir, prompts, out, "reward.kind=function", f"reward.path={RULE}", "train.resume=none", *extra
    )


def prompt_file(path: Path, n: int) -> Path:
    return write_jsonl(path, [{"prompt": f"今天天气怎么样？{i}"} for i in range(n)])


def fixed_rollout(tokenizer) -> ppo.Rollout:
    """Two samples of different lengths (right padding), as build_rollout makes them."""
    a = tokenizer("今天天气怎么样？", add_special_tokens=False)["input_ids"]
    b = tokenizer("推荐一部电影吧", add_special_tokens=False)["input_ids"]
    r = tokenizer("挺好的，大晴天", add_special_tokens=False)["input_ids"]
    samples = [Sampled(a, r, False), Sampled(b, r[:3], False)]
    return ppo.build_rollout(samples, tokenizer.pad_token_id, CPU)


# ----------------------------------------------------------------------------- 1. each role its own head


def test_full_mode_reference_logps_bit_identical_after_actor_changes(tiny_model_dir, tokenizer):
    roles = Roles(ModelSpec(path=str(tiny_model_dir)), LoraSpec(enabled=False), CPU)
    b = fixed_rollout(tokenizer)
    with torch.no_grad():
        ref0, act0 = (ppo.token_logps(roles, r, b, 0.7)[0] for r in ("reference", "actor"))
        head = roles.model.get_output_embeddings().weight
        head.add_(torch.randn_like(head))  # only the actor's lm_head
        ref1, act1 = (ppo.token_logps(roles, r, b, 0.7)[0] for r in ("reference", "actor"))
        assert torch.equal(ref0, ref1)
        assert not torch.allclose(act0, act1)  # negative control: the actor did change
        for p in roles.actor_params:  # every actor weight
            p.add_(torch.randn_like(p) * 0.05)
        assert torch.equal(ppo.token_logps(roles, "reference", b, 0.7)[0], ref0)


# ----------------------------------------------------------------------------- 3. rollout distribution, soft-capping


def test_rollouts_ignore_the_model_folders_generation_config(tiny_model_dir, tmp_path, tokenizer):
    import shutil

    from weitiao.data.templates import resolve_template

    polluted = tmp_path / "polluted"
    shutil.copytree(tiny_model_dir, polluted)
    gc = {"do_sample": True, "temperature": 0.3, "top_k": 3, "top_p": 0.5, "min_p": 0.9, "repetition_penalty": 1.8}
    gc |= {"no_repeat_ngram_size": 1, "suppress_tokens": list(range(3, 300))}
    (polluted / "generation_config.json").write_text(json.dumps(gc))
    template = resolve_template(tokenizer, "auto")
    convs = [[{"role": "user", "content": f"你好{i}"}] for i in range(4)]

    def sample(path, **kw):
        model = load_model(ModelSpec(path=str(path)))
        assert model.generation_config.top_k == (3 if path == polluted else model.generation_config.top_k)
        return generate_ids(model, tokenizer, template, convs, 10, 1.0, top_p=1.0, top_k=0, seed=3, **kw)

    clean = sample(tiny_model_dir, model_defaults=False)
    assert sample(polluted, model_defaults=False) == clean
    assert sample(polluted) != clean  # negative control: the folder's settings change sampling when inherited

    # ... and what is drawn is softmax(logits / T) itself: the same seed through torch.multinomial by hand.
    model = load_model(ModelSpec(path=str(polluted)))
    ids = tokenizer(template.render(tokenizer, convs[0], add_generation_prompt=True), add_special_tokens=False)
    ids = torch.tensor([ids["input_ids"]])
    torch.manual_seed(5)
    got = generate_ids(model, tokenizer, template, convs[:1], 6, 0.8, top_k=0, model_defaults=False)[0]
    torch.manual_seed(5)
    manual = []
    with torch.no_grad():
        for _ in range(len(got.response_ids)):
            logits = model(torch.cat([ids, torch.tensor([manual], dtype=torch.long)], 1)).logits[:, -1].float()
            manual.append(int(torch.multinomial(torch.softmax(logits / 0.8, -1), 1)))
    assert manual == got.response_ids


def tiny_gemma2_dir(path: Path, tokenizer, cap: float) -> Path:
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    cfg = Gemma2Config(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=256, final_logit_softcapping=cap,
        attn_logit_softcapping=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None, tie_word_embeddings=False,
    )  # fmt: skip
    model = Gemma2ForCausalLM(cfg)
    with torch.no_grad():
        model.lm_head.weight.mul_(20)  # logits well beyond the cap, so capping changes them
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_ppo_logps_honour_final_logit_softcapping_and_temperature(tmp_path, tokenizer):
    from transformers import AutoModelForCausalLM

    d = tiny_gemma2_dir(tmp_path / "gemma2", tokenizer, cap=2.0)
    roles = Roles(ModelSpec(path=str(d), attn="eager"), LoraSpec(r=4), CPU)  # fresh adapter: actor = base
    b = fixed_rollout(tokenizer)
    with torch.no_grad():
        got = ppo.token_logps(roles, "actor", b, 0.7)[0]
        hf = AutoModelForCausalLM.from_pretrained(d, attn_implementation="eager").eval()
        out = hf(input_ids=b.ids, attention_mask=b.attn, output_hidden_states=True)
        pos = b.pos.unsqueeze(-1)

        def logps(logits):  # Gemma-2's forward caps its logits: the independent reference
            lp = torch.log_softmax(logits.float() / 0.7, -1).gather(1, pos.expand(-1, -1, logits.shape[-1]))
            return lp.gather(-1, b.resp.unsqueeze(-1)).squeeze(-1) * b.mask

        assert torch.allclose(got, logps(out.logits), atol=1e-5)
        uncapped = hf.lm_head(out.hidden_states[-1])  # negative control: the cap matters here
        assert (got - logps(uncapped)).abs().max() > 0.1


# ----------------------------------------------------------------------------- 4. critic from rsLoRA / DoRA RMs


@pytest.mark.parametrize("kind", ["rslora", "dora"])
def test_critic_from_reward_model_keeps_its_lora_scaling(tiny_model_dir, tokenizer, kind):
    spec = ModelSpec(path=str(tiny_model_dir))
    rm = add_lora(load_model(spec, head="score"), LoraSpec(r=4, **{kind: True}), task_type="SEQ_CLS")
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in rm.named_parameters():
            if "lora_B" in n or "score" in n:
                p.copy_(torch.randn_like(p) * 0.2)  # B = 0 would hide any scaling
            if "magnitude" in n:
                p.mul_(1.5)
    rm.eval()
    roles = Roles(spec, LoraSpec(r=8), CPU, reward_model=rm, critic_init="reward")
    b = fixed_rollout(tokenizer)
    ids, attn = b.ids[:1], b.attn[:1]  # one unpadded row: the RM scores its last token
    with torch.no_grad(), roles.parts("critic") as (decoder, _):
        hidden = decoder(input_ids=ids, attention_mask=attn, use_cache=False).last_hidden_state
        value = roles.value_head(hidden[:, -1].float()).squeeze()
        score = rm(input_ids=ids, attention_mask=attn).logits.squeeze()
    assert torch.allclose(value, score, atol=1e-5), (float(value), float(score))
    # a critic_lora shape the config sets is not silently replaced by the reward model's (r 4 here)
    with pytest.raises(UserError, match="ppo.critic_lora.r=16 but the critic starts from the reward model's adapter"):
        Roles(spec, LoraSpec(r=8), CPU, reward_model=rm, critic_init="reward", critic_lora=LoraSpec(r=16))
    Roles(spec, LoraSpec(r=8), CPU, reward_model=rm, critic_init="reward", critic_lora=LoraSpec(r=4))  # agrees
    # targets were replaced silently too; alpha null (as a recorded config.yaml writes it) contradicts nothing
    with pytest.raises(UserError, match=r"ppo.critic_lora.targets=\['q_proj'\] but the critic starts from the reward"):
        Roles(spec, LoraSpec(r=8), CPU, reward_model=rm, critic_init="reward",
              critic_lora=LoraSpec(r=4, targets=["q_proj"]))  # fmt: skip
    recorded = LoraSpec.model_validate(
        {"r": 4, "alpha": None, "targets": sorted(rm.peft_config["default"].target_modules)}
    )
    Roles(spec, LoraSpec(r=8), CPU, reward_model=rm, critic_init="reward", critic_lora=recorded)


def test_critic_from_reward_model_takes_the_modules_it_trained_in_full(tiny_model_dir, tokenizer, tmp_path):
    """A reward model trained with lora.modules_to_save (embed_tokens, the norms) scored with its own copies of them;
    the critic took its LoRA and score head only, so its first values were not the reward model's scores (silent).
    The copies are the critic adapter's own: actor and reference still run the base's."""
    spec = ModelSpec(path=str(tiny_model_dir))
    rm = add_lora(
        load_model(spec, head="score"), LoraSpec(r=4, modules_to_save=["embed_tokens", "norm"]), task_type="SEQ_CLS"
    )
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in rm.named_parameters():
            if "lora_B" in n or "modules_to_save" in n:
                p.add_(torch.randn_like(p) * 0.2)
    rm.eval()
    roles = Roles(spec, LoraSpec(r=8), CPU, reward_model=rm, critic_init="reward")
    b = fixed_rollout(tokenizer)
    ids, attn = b.ids[:1], b.attn[:1]
    with torch.no_grad():
        with roles.parts("critic") as (decoder, _):
            hidden = decoder(input_ids=ids, attention_mask=attn, use_cache=False).last_hidden_state
        value = roles.value_head(hidden[:, -1].float()).squeeze()
        score = rm(input_ids=ids, attention_mask=attn).logits.squeeze()
        assert torch.allclose(value, score, atol=1e-5), (float(value), float(score))
        base = load_model(spec)(input_ids=ids, attention_mask=attn).logits  # actor (fresh LoRA) and reference
        for role in ("actor", "reference"):
            with roles.parts(role) as (decoder, head):
                out = head(decoder(input_ids=ids, attention_mask=attn, use_cache=False).last_hidden_state)
            assert torch.allclose(out, base, atol=1e-5), role
    assert any("embed_tokens.modules_to_save.critic" in n for n, _ in roles.model.named_parameters())
    names = {id(p): n for n, p in roles.model.named_parameters()}
    assert any("modules_to_save.critic" in names.get(id(p), "") for p in roles.critic_params)  # trained as the critic
    from peft import set_peft_model_state_dict

    roles.model.save_pretrained(tmp_path / "critic", selected_adapters=["critic"])  # as a checkpoint keeps it
    saved = load_file(str(tmp_path / "critic" / "critic" / "adapter_model.safetensors"))
    assert any("embed_tokens" in k for k in saved)
    with torch.no_grad():
        roles.model.get_base_model().model.embed_tokens.modules_to_save["critic"].weight.zero_()
        set_peft_model_state_dict(roles.model, saved, adapter_name="critic")  # resume
        with roles.parts("critic") as (decoder, _):
            hidden = decoder(input_ids=ids, attention_mask=attn, use_cache=False).last_hidden_state
        assert torch.allclose(roles.value_head(hidden[:, -1].float()).squeeze(), score, atol=1e-5)


def test_a_reward_model_of_another_base_does_not_start_the_critic(tiny_model_dir, tokenizer, tmp_path, capsys):
    """Its LoRA copied by parameter name into another architecture's critic is noise (was: silent)."""
    from conftest import save_tiny_model

    rm = add_lora(load_model(ModelSpec(path=str(tiny_model_dir)), head="score"), LoraSpec(r=4), task_type="SEQ_CLS")
    other = ModelSpec(path=str(save_tiny_model(tmp_path / "q", tokenizer, arch="qwen2", hidden=64, kv_heads=2)))
    with pytest.raises(UserError, match="the reward model was trained on another base \\(model_type llama vs qwen2"):
        Roles(other, LoraSpec(r=4), CPU, reward_model=rm, critic_init="reward")
    roles = Roles(other, LoraSpec(r=4), CPU, reward_model=rm, critic_init="auto")
    assert "ppo.critic_init auto: zeros" in capsys.readouterr().out and not roles.value_head.weight.any()


def test_a_reward_model_of_other_weights_of_the_same_shapes_does_not_start_a_lora_critic(
    tiny_model_dir, tokenizer, tmp_path, capsys
):
    """RM trained on the raw base, policy on an SFT-merged copy: same shapes, so the critic silently took the RM's
    adapter onto other weights (neither the RM nor its base). The weights digest the RM recorded tells them apart;
    the same weights at another path pass, and a full critic (a copy of the whole RM) is not concerned."""
    import shutil

    from safetensors.torch import save_file

    from weitiao.models.digest import weights_digest
    from weitiao.recipes.rewards import critic_base_difference

    merged, same = tmp_path / "sft-merged", tmp_path / "copy"
    for d in (merged, same):
        shutil.copytree(tiny_model_dir, d)
    w = load_file(str(merged / "model.safetensors"))
    (same / "model.safetensors").unlink()  # the same weights in two shards: the digest reads tensors, not files
    for k, part in enumerate((dict(list(w.items())[:5]), dict(list(w.items())[5:]))):
        save_file(part, str(same / f"model-{k}.safetensors"))
    w["model.layers.0.self_attn.q_proj.weight"] += 1e-3  # what merging an SFT adapter does
    save_file(w, str(merged / "model.safetensors"), metadata={"format": "pt"})
    rm = add_lora(load_model(ModelSpec(path=str(tiny_model_dir)), head="score"), LoraSpec(r=4), task_type="SEQ_CLS")
    final = tmp_path / "rm" / "final"
    rm.save_pretrained(final / "adapter")
    tokenizer.save_pretrained(final / "tokenizer")
    meta = {"base": str(tiny_model_dir), "chat_template": "", "base_weights": weights_digest(tiny_model_dir)}
    (final / "reward_model.json").write_text(json.dumps(meta))

    prompts = prompt_file(tmp_path / "p.jsonl", 2)
    kw = ("reward.kind=model", f"reward.path={tmp_path / 'rm'}", "ppo.critic_init=reward", "train.max_steps=1")
    why = rf"reward model base {tiny_model_dir} vs model.path {merged}: same shapes, other weights \(digest"
    with pytest.raises(UserError, match=rf"^ppo.critic_init: reward: the reward model was trained on another .*{why}"):
        ppo.run(config(merged, prompts, tmp_path / "run", *kw))
    assert critic_base_difference(str(tmp_path / "rm"), str(same)) is None  # same weights elsewhere
    other = critic_base_difference(str(tmp_path / "rm"), str(merged))
    roles = Roles(ModelSpec(path=str(merged)), LoraSpec(r=4), CPU, reward_model=rm, reward_base=other)  # auto
    said = f"ppo.critic_init auto: zeros, the reward model's base is another model (reward model base {tiny_model_dir}"
    assert said in capsys.readouterr().out and not roles.value_head.weight.any()
    full = Roles(ModelSpec(path=str(merged)), LoraSpec(enabled=False), CPU, rm, "reward", reward_base=other)
    assert full.value_head.weight.any()  # the full critic is the reward model, whatever the policy's base
    rm.merge_and_unload().save_pretrained(tmp_path / "full-rm" / "final" / "model")  # a fully fine-tuned RM's own
    (tmp_path / "full-rm" / "final" / "reward_model.json").write_text(json.dumps(meta))  # weights: never a LoRA base
    assert "(fully fine-tuned)" in critic_base_difference(str(tmp_path / "full-rm"), str(tiny_model_dir))


# ----------------------------------------------------------------------------- 2/5/6. processes


def test_step_prompts_give_every_process_the_same_count():
    for n, per in ((17, 16), (33, 16), (33, 8), (5, 1)):
        order = list(range(n))
        for k in range(-(-n // (per * 2))):
            got = [ppo.step_prompts(order, order, k, per, 2, r, 2) for r in (0, 1)]
            assert len(got[0][0]) == len(got[1][0]) > 0  # same calls on both processes
            real = sorted(i for ps, ws in got for i, w in zip(ps, ws) if w == 1)
            assert real == sorted(order[k * per * 2 : (k + 1) * per * 2] * 2)  # each prompt once per sample


def test_padding_samples_never_reach_the_reward():
    """7 prompts on 2 processes: rank 1 holds 3 real samples and 1 padding copy; 9 prompts by 4: rank 1's last step is
    all padding. The reward sees each real sample once (was: the padding too, a paid HTTP call each) and no call is made
    for an all-padding step; padding scores 0."""
    calls = []

    def reward(prompts, responses):
        calls.append(list(prompts))
        return [float(len(r)) for r in responses]

    for n, per in ((7, 4), (9, 4)):
        order, seen = list(range(n)), []
        for k in range(-(-n // (per * 2))):
            for rank in (0, 1):
                calls.clear()
                ps, ws = ppo.step_prompts(order, order, k, per, 2, rank, 1)
                got = ppo.score_real(reward, ps, ["x" * (p + 1) for p in ps], ws)
                assert got == [p + 1.0 if w else 0.0 for p, w in zip(ps, ws)]
                assert len(calls) == (1 if any(ws) else 0)
                seen += [p for c in calls for p in c]
        assert sorted(seen) == order  # each real prompt exactly once, no padding copy


def _whiten_worker(rank: int, port: int, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    x, mask, v = whiten_inputs()
    rows = list(range(rank, 7, 2))  # 4 rows vs 3 rows, different lengths

    def allsum(t):
        torch.distributed.all_reduce(t)
        return t

    m = ppo.RunningMoments()
    m.update(x[rows, 0], mask[rows, 0], allsum)
    result = {
        "rows": rows,
        "white": ppo_losses.whiten(x[rows], mask[rows], reduce=allsum).tolist(),
        "ev": ppo_losses.explained_variance(v[rows], x[rows], mask[rows], allsum),
        "moments": [m.mean, m.var],
    }
    Path(out, f"{rank}.json").write_text(json.dumps(result))
    torch.distributed.destroy_process_group()


def whiten_inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 5, generator=g) * 3 + 1
    mask = (torch.arange(5)[None] < torch.tensor([5, 2, 4, 1, 3, 5, 2])[:, None]).float()
    return x, mask, torch.randn(7, 5, generator=g)


def test_whitening_and_moments_over_two_processes_equal_one_process(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_whiten_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    x, mask, v = whiten_inputs()
    white = ppo_losses.whiten(x, mask)
    one = ppo.RunningMoments()
    one.update(x[:, 0], mask[:, 0])
    for rank in (0, 1):
        r = json.loads((tmp_path / f"{rank}.json").read_text())
        assert torch.allclose(torch.tensor(r["white"]), white[r["rows"]], atol=1e-6)
        assert abs(r["ev"] - ppo_losses.explained_variance(v, x, mask)) < 1e-6
        assert r["moments"] == pytest.approx([one.mean, one.var], rel=1e-6)
    # per process would differ
    assert not torch.allclose(ppo_losses.whiten(x[0::2], mask[0::2]), white[0::2], atol=1e-3)


@pytest.mark.slow
def test_two_processes_uneven_prompts_and_exact_resume(tiny_model_dir, tmp_path):
    """17 prompts: 9 vs 8 samples (2 vs 1 minibatches); 33 prompts by 8: 1 vs 0 at the end of the episode.

    Both used to hang or crash. A run stopped after step 1 and resumed ends with the same weights
    as the uninterrupted run: each process continues its own RNG stream.
    """
    common = ["reward.kind=function", "train.progress=false"]
    common += ["train.tensorboard=false", "ppo.generate_max_len=4", "ppo.max_epochs=1", "lora.r=4"]
    common += [f"model.path={tiny_model_dir}"]
    recording = (  # the demo rule reward; each call's prompts written down, one file a process
        "import os\nfrom weitiao.recipes.rewards import short_emoji_reward\n\ndef f(prompts, responses):\n"
        "    with open(f'LOG-{os.getpid()}.txt', 'a', encoding='utf-8') as log:\n"
        "        log.write(''.join(m[-1]['content'] + '\\n' for m in prompts))\n"
        "    return short_emoji_reward(prompts, responses)\n"
    )
    for name in ("r17", "full", "cut"):
        (tmp_path / f"{name}_reward.py").write_text(recording.replace("LOG", str(tmp_path / f"{name}-calls")))
    reward = {name: f"reward.path={tmp_path / name}_reward.py:f" for name in ("r17", "full", "cut")}
    p17, p33 = prompt_file(tmp_path / "p17.jsonl", 17), prompt_file(tmp_path / "p33.jsonl", 33)
    by8 = [f"data.prompts=[{p33}]", "ppo.rollout_batch_size=8", "train.save_every=1"]
    runs = [
        [*common, reward["r17"], f"data.prompts=[{p17}]", "ppo.rollout_batch_size=16", f"train.out={tmp_path / 'r17'}"],
        [*common, reward["full"], *by8, f"train.out={tmp_path / 'full'}", "train.resume=none"],
        [*common, reward["cut"], *by8, f"train.out={tmp_path / 'cut'}", "train.resume=none", "train.stop_after=1"],
        [*common, reward["cut"], *by8, f"train.out={tmp_path / 'cut'}", "train.resume=auto"],
    ]
    ddp = [
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    driver = Path(__file__).parent / "ppo_dist_driver.py"
    try:
        p = subprocess.run(
            [sys.executable, *ddp, str(driver), json.dumps(runs)],
            env=env,
            cwd=Path(__file__).resolve().parents[1],
            capture_output=True,
            text=True,
            timeout=300,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"2-process PPO hung: {str(e.stderr)[-2000:]}")
    assert p.returncode == 0, p.stderr[-3000:]
    for name, samples, steps in (("r17", 17, 1), ("full", 33, 3), ("cut", 33, 3)):
        cost = json.loads((tmp_path / name / "cost.jsonl").read_text().splitlines()[0])
        assert len(read_metrics(tmp_path / name, "train")) == steps
        if name != "cut":
            assert cost["samples"] == samples  # padding samples are not counted
        scored = [q for f in tmp_path.glob(f"{name}-calls-*.txt") for q in f.read_text(encoding="utf-8").splitlines()]
        assert sorted(scored) == sorted(
            json.loads(r)["prompt"] for r in (tmp_path / f"p{samples}.jsonl").read_text("utf-8").splitlines()
        )
    a = load_file(str(tmp_path / "full" / "final" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "final" / "adapter" / "adapter_model.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    la, lb = read_metrics(tmp_path / "full", "train"), read_metrics(tmp_path / "cut", "train")
    assert [round(r["score"], 5) for r in la] == [round(r["score"], 5) for r in lb]


# ----------------------------------------------------------------------------- 8. guards and validation


def test_ppo_config_rejects_bad_numbers(tmp_path):
    for bad in (
        "ppo.actor_learning_rate=0",
        "ppo.critic_learning_rate=-1e-4",
        "ppo.eps_clip=-0.2",
        "ppo.value_clip=-0.2",
        "ppo.kl_target=0",
        "ppo.top_p=0.9",
        "ppo.reward_clip_range=-1",
        "train.max_steps=0",
    ):
        with pytest.raises(UserError, match=bad.split("=")[0]):
            config("m", "p.jsonl", tmp_path, bad)
    # the adaptive controller multiplies β: from 0 it never moves, so kl_target would be ignored
    with pytest.raises(UserError, match="ppo.kl_target=6.0 scales β from ppo.init_kl_coef, which is 0"):
        config("m", "p.jsonl", tmp_path, "ppo.kl_target=6", "ppo.init_kl_coef=0")
    config("m", "p.jsonl", tmp_path, "ppo.kl_target=6", "ppo.init_kl_coef=0.01")
    config("m", "p.jsonl", tmp_path, "ppo.init_kl_coef=0")


@pytest.mark.slow
def test_max_steps_capped_line_and_zero_step_run_refused(tiny_model_dir, tmp_path, capsys):
    prompts = prompt_file(tmp_path / "p.jsonl", 16)
    args = ("train.max_steps=5", "ppo.rollout_batch_size=8", "ppo.generate_max_len=4", "ppo.max_epochs=1")
    ppo.run(config(tiny_model_dir, prompts, tmp_path / "run", *args))
    lines = [x for x in capsys.readouterr().out.splitlines() if "capped" in x]
    assert len(lines) == 1 and "train.max_steps=5 capped at 2" in lines[0]
    with pytest.raises(UserError, match="already at step 2 of 2: nothing to train"):
        ppo.run(config(tiny_model_dir, prompts, tmp_path / "run", *args, "train.resume=auto"))


@pytest.mark.slow
def test_nan_loss_stops_keeps_last_good_checkpoint_and_saves_nothing_after(tiny_model_dir, tmp_path, monkeypatch):
    calls = []
    real = ppo_losses.policy_loss

    def poisoned(*a, **kw):  # one micro-batch per step here: the 2nd call is step 2
        calls.append(1)
        loss, st = real(*a, **kw)
        return (loss * float("nan") if len(calls) == 2 else loss), st

    monkeypatch.setattr(ppo_losses, "policy_loss", poisoned)
    prompts = prompt_file(tmp_path / "p.jsonl", 16)
    args = ("train.max_steps=3", "train.save_every=1", "ppo.rollout_batch_size=4", "ppo.generate_max_len=4")
    diverged = r"step 2: policy_loss is nan; training diverged \(lower ppo.actor_learning_rate"
    with pytest.raises(DivergedError, match=diverged):
        ppo.run(config(tiny_model_dir, prompts, tmp_path / "run", *args, "ppo.max_epochs=1"))
    ckpts = [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()]
    assert ckpts == ["step-000001"] and not (tmp_path / "run" / "final").exists()
    assert len(read_metrics(tmp_path / "run", "train")) == 1


# ----------------------------------------------------------------------------- 7/9. dropout and pinned losses

# Tiny llama of conftest, default LoRA (r=16, dropout 0.05 made p=0 by train.disable_dropout) and PPO
# settings, seed 42, rollout_batch_size=8, generate_max_len=12: step → (policy_loss, value_loss, score, kl).
PINNED = {
    1: [0, 0, 1, 0],
    2: [-0.00253292, 0.115152, 0.6875, 0],
    3: [-0.00154036, 0.13889, 0.5725, 0.0112453],
    4: [-0.00142929, 0.148671, 0.5425, 0.0265577],
    5: [-0.00105241, 0.156883, 0.5925, 0.0310042],
}  # step 5 re-pinned with the shared generation loop: finished rows leave the batch, so later draws differ; steps
# 2-5 re-pinned when the reward began to see special tokens drawn mid-reply (one step-2 reply holds <|endoftext|>)


def pinned_run(tiny_model_dir, tmp_path, name, *extra):
    prompts = prompt_file(tmp_path / "p.jsonl", 40)
    args = ("ppo.rollout_batch_size=8", "ppo.generate_max_len=12", *extra)
    ppo.run(config(tiny_model_dir, prompts, tmp_path / name, *args))
    return read_metrics(tmp_path / name, "train")


@pytest.mark.slow
def test_pinned_losses_and_first_minibatch_identity_with_default_dropout(tiny_model_dir, tmp_path):
    rows = pinned_run(tiny_model_dir, tmp_path, "pinned", "train.max_steps=5")
    got = {r["step"]: [r[k] for k in ("policy_loss", "value_loss", "score", "kl")] for r in rows}
    assert sorted(got) == sorted(PINNED)
    for step, want in PINNED.items():
        assert got[step] == pytest.approx(want, rel=1e-3, abs=1e-6), (step, got[step])
    for r in rows:  # LoRA dropout 0.05 is off: every step's first minibatch is π = π_old
        assert abs(r["first_ratio_mean"] - 1) < 1e-6 and abs(r["first_approx_kl"]) < 1e-9


@pytest.mark.slow
def test_dropout_kept_when_asked_breaks_first_minibatch_identity(tiny_model_dir, tmp_path):
    """Negative control of the test above: with dropout, step 3 (LoRA B ≠ 0 after step 2's update) has ratio ≠ 1."""
    rows = pinned_run(tiny_model_dir, tmp_path, "dropout", "train.max_steps=3", "train.disable_dropout=false")
    assert abs(rows[2]["first_ratio_mean"] - 1) > 1e-6 and rows[2]["first_approx_kl"] > 1e-9

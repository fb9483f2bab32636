"""DPO correctness with the defaults users get (LoRA dropout 0.05): packed vs padded gradients,
π = π_ref at step 0, on-policy KL, the reference cache key, eval sharding, pinned losses."""

import math

import pytest
import torch
from conftest import recipe_config, save_tiny_model, write_jsonl
from test_dpo import make_pairs

from weitiao.config import load_config
from weitiao.errors import UserError
from weitiao.losses.sft import CausalLMLoss
from weitiao.models.load import build_trainable, load_tokenizer
from weitiao.recipes import dpo
from weitiao.train.log import read_metrics


def config(model_dir, data, out, *extra):
    """Defaults except what a fast test needs; LoRA dropout stays at its default 0.05."""
    return recipe_config(
        "dpo", model_dir, data, out, "data.max_len=96", "train.lr=5e-3", "train.warmup_ratio=0", *extra
    )


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("pairs") / "pairs.jsonl", make_pairs(8))


def test_a_set_lora_dropout_that_disable_dropout_would_switch_off_is_refused(tiny_model_dir, pairs_file, tmp_path):
    """DPO, RM and PPO turn dropout off by default: a lora.dropout the config sets is refused, not ignored."""
    from weitiao.recipes import ppo, rm

    out = tmp_path / "never"
    with pytest.raises(UserError, match=r"lora.dropout=0.1 would be switched off: train.disable_dropout"):
        dpo.run(config(tiny_model_dir, pairs_file, out, "lora.dropout=0.1"))
    with pytest.raises(UserError, match=r"lora.dropout=0.1 would be switched off"):
        rm.run(recipe_config("rm", tiny_model_dir, pairs_file, out, "lora.dropout=0.1"))
    ppo_cfg = load_config(ppo.PPOConfig, None, [f"model.path={tiny_model_dir}", f"data.prompts=[{pairs_file}]",
                                                 f"train.out={out}", "lora.dropout=0.05", "reward.kind=function",
                                                 "reward.path=weitiao.recipes.rewards:short_emoji_reward"])  # fmt: skip
    with pytest.raises(UserError, match=r"lora.dropout=0.05 would be switched off"):
        ppo.run(ppo_cfg)
    assert not out.exists()  # refused before anything was written
    # negative controls: the default (unset) 0.05, an explicit 0, and dropout kept on are all accepted
    for extra in ([], ["lora.dropout=0"], ["lora.dropout=0.1", "train.disable_dropout=false"]):
        cfg = config(tiny_model_dir, pairs_file, out, *extra)
        dpo.lora_as_trained(cfg.lora, cfg.train.disable_dropout)


def test_a_runs_recorded_config_trains_again(tiny_model_dir, pairs_file, tmp_path):
    """config.yaml records the dropout trained with (0: disable_dropout), so `weitiao dpo runs/x/config.yaml` runs
    again; it recorded the default 0.05 as set, which the check above refused."""
    first = tmp_path / "first"
    dpo.run(config(tiny_model_dir, pairs_file, first, "train.max_steps=1"))
    again = load_config(dpo.DPOConfig, first / "config.yaml", [f"train.out={tmp_path / 'again'}"])
    assert again.lora.dropout == 0.0
    dpo.run(again)
    assert read_metrics(tmp_path / "again", "train")[0]["loss"] == read_metrics(first, "train")[0]["loss"]


@pytest.mark.slow
def test_padded_pairs_give_the_packed_loss_and_gradient(tiny_model_dir, pairs_file, tmp_path):
    """One step over all 8 pairs: padded batches (one sequence per row) must not count pairs twice."""
    logs = {}
    for packing in ("true", "false"):
        out = tmp_path / packing
        dpo.run(
            config(
                tiny_model_dir,
                pairs_file,
                out,
                f"data.packing={packing}",
                "train.micro_batch_size=8",
                "train.max_steps=2",
                "train.max_grad_norm=1e9",
            )
        )
        logs[packing] = read_metrics(out, "train")
    for a, b in zip(logs["true"], logs["false"]):
        assert abs(a["loss"] - b["loss"]) < 1e-5 and abs(a["grad_norm"] - b["grad_norm"]) < 1e-5 * a["grad_norm"]


@pytest.mark.slow
def test_init_from_starts_at_pi_equal_pi_ref_with_default_dropout(tiny_model_dir, pairs_file, tmp_path):
    first = tmp_path / "first"
    dpo.run(config(tiny_model_dir, pairs_file, first, "train.micro_batch_size=4", "train.max_steps=4"))
    losses = {}
    for disable in ("true", "false"):
        out = tmp_path / f"next-{disable}"
        run = config(
            tiny_model_dir,
            pairs_file,
            out,
            "train.max_steps=1",
            f"lora.init_from={first}",
            f"train.disable_dropout={disable}",
            # the first run's adapter records the dropout it trained with (0): keeping dropout on needs it set
            *(["lora.dropout=0.05"] if disable == "false" else []),
        )
        assert run.lora.dropout == 0.05
        dpo.run(run)
        losses[disable] = read_metrics(out, "train")[0]["loss"]
    assert abs(losses["true"] - math.log(2)) < 1e-6
    assert abs(losses["false"] - math.log(2)) > 1e-3  # negative control: dropout in π only


@pytest.mark.parametrize("loss_type", ["ipo", "hinge"])
def test_label_smoothing_refused_where_unused(loss_type):
    with pytest.raises(UserError, match=f"dpo.label_smoothing=0.1 is only used by loss_type sigmoid, not {loss_type}"):
        load_config(
            dpo.DPOConfig, None, ["data.train=[x.jsonl]", f"dpo.loss_type={loss_type}", "dpo.label_smoothing=0.1"]
        )
    load_config(dpo.DPOConfig, None, ["data.train=[x.jsonl]", "dpo.loss_type=sigmoid", "dpo.label_smoothing=0.1"])


class FakeAccel:
    """Process `rank` of `world`; reduce adds the vectors other ranks reduced before (run ranks in turn)."""

    def __init__(self, rank, world, seen):
        self.process_index, self.num_processes, self.seen = rank, world, seen
        self.device = torch.device("cpu")
        self.is_main_process = rank == 0

    def reduce(self, vec, reduction="sum"):
        self.seen.append(vec.clone())
        return sum(self.seen)

    def wait_for_everyone(self):
        pass


def build(model_dir, data, out, *extra):
    cfg = config(model_dir, data, out, *extra)
    tok = load_tokenizer(cfg.model.path)
    data = dpo.prepare_pairs(cfg, tok)
    model = build_trainable(cfg.model, cfg.lora, torch.device("cpu"))
    loss_mod = CausalLMLoss(model)
    ids = {"pad": tok.pad_token_id, "eot": tok.convert_tokens_to_ids(data.template.eot), "one_row": False}
    return cfg, data, model, loss_mod, dpo.Reference(loss_mod, model), ids


@pytest.mark.parametrize("n_pairs", [3, 1])
def test_eval_sharded_over_two_processes_equals_one(tiny_model_dir, tmp_path, n_pairs):
    """3 pairs, micro-batch 2, 2 processes; and 1 pair, where process 1 has none: the same metrics
    (on-policy KL included) as one process, and both processes run the same number of forwards."""
    data = write_jsonl(tmp_path / "p.jsonl", make_pairs(12))
    cfg, d, model, loss_mod, ref, ids = build(
        tiny_model_dir, data, tmp_path / "o", "train.micro_batch_size=2", "dpo.kl_max_new_tokens=4"
    )
    torch.nn.init.normal_(model.base_model.model.model.layers[0].self_attn.q_proj.lora_B.default.weight)
    exs = d.train[: 2 * n_pairs]
    forwards: list[int] = []
    loss_mod.register_forward_hook(lambda *_: forwards.append(1))
    one = dpo.evaluate(loss_mod, ref, exs, cfg, ids, FakeAccel(0, 1, []), model)
    seen: list = []
    counts = []
    for rank in (1, 0):
        forwards.clear()
        two = dpo.evaluate(loss_mod, ref, exs, cfg, ids, FakeAccel(rank, 2, seen), model)
        counts.append(len(forwards))
    assert counts[0] == counts[1] > 0
    assert {"eval_kl_onpolicy_seq", "eval_loss"} <= one.keys() == two.keys()
    assert all(abs(one[k] - two[k]) < 1e-6 * max(1, abs(one[k])) for k in one)


def independent_logps(model, ids, start):
    """log p of ids[start:] from plain HF forwards (logits → log_softmax), adapter on and off."""
    x = torch.tensor([ids])
    with torch.no_grad():
        on = torch.log_softmax(model(input_ids=x).logits[0, :-1].float(), -1)
        with model.disable_adapter():
            off = torch.log_softmax(model(input_ids=x).logits[0, :-1].float(), -1)
    t = x[0, 1:]
    pick = lambda lp: lp.gather(-1, t[:, None])[start - 1 :, 0]  # noqa: E731
    return pick(on), pick(off)


def test_onpolicy_kl_zero_at_start_positive_after_and_independent(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "p.jsonl", make_pairs(12))
    cfg, d, model, loss_mod, ref, ids = build(tiny_model_dir, data, tmp_path / "o", "dpo.kl_max_new_tokens=12")
    prompts = [dpo.prompt_ids(d.train[2 * i]) for i in range(4)]
    model.eval()
    start = dpo.onpolicy_kl_sums(loss_mod, ref, model, prompts, cfg, ids, FakeAccel(0, 1, []))
    assert float(start["kl_onpolicy_sum"]) == 0.0 and float(start["kl_onpolicy_tokens"]) > 4  # π = π_ref
    g = torch.Generator().manual_seed(0)
    for name, p in model.named_parameters():  # stand-in for training: move the adapter away
        if "lora_B" in name:
            p.data = torch.randn(p.shape, generator=g) * 0.05
    sums = dpo.onpolicy_kl_sums(loss_mod, ref, model, prompts, cfg, ids, FakeAccel(0, 1, []))
    assert float(sums["kl_onpolicy_sum"]) > 0
    # Independent: same seed, sampling by hand from softmax(logits) with multinomial, log-probs by HF forwards.
    want, n_tok = 0.0, 0
    with torch.no_grad():
        for i, p in enumerate(prompts):
            torch.manual_seed(cfg.train.seed + i)
            seq = list(p)
            for _ in range(cfg.dpo.kl_max_new_tokens):
                probs = torch.softmax(model(input_ids=torch.tensor([seq])).logits[0, -1].float(), -1)
                seq.append(int(torch.multinomial(probs[None], 1)))
                if seq[-1] == ids["eot"]:
                    break
            on, off = independent_logps(model, seq, len(p))
            want += float((on - off).sum())
            n_tok += len(seq) - len(p)
    assert int(sums["kl_onpolicy_tokens"]) == n_tok
    assert abs(float(sums["kl_onpolicy_sum"]) - want) < 1e-4 * max(1.0, abs(want))


@pytest.mark.slow
def test_reference_cache_keyed_and_rebuilt(tiny_model_dir, tokenizer, pairs_file, tmp_path, capsys):
    """A cache made with another base model is rebuilt on resume, not reused (it was keyed on token ids only)."""
    other = save_tiny_model(tmp_path / "other", tokenizer, seed=1)
    out = tmp_path / "run"
    common = ("dpo.precompute_ref=true", "train.micro_batch_size=2", "train.max_steps=3", "train.save_every=1")
    dpo.run(config(tiny_model_dir, pairs_file, out, *common, "train.stop_after=1"))
    first = torch.load(out / "ref_logps.pt", weights_only=False)
    dpo.run(config(other, pairs_file, out, *common, "train.stop_after=2", "train.resume=force"))
    assert "cached reference log-probs are for another model; rebuilding" in capsys.readouterr().out
    cfg, d, model, loss_mod, ref, ids = build(other, pairs_file, tmp_path / "x")
    want = dpo.Reference(loss_mod, model)
    want.precompute(d.train, cfg, {"k": 1}, ids["pad"], False, FakeAccel(0, 1, []), tmp_path / "want.pt")
    got = torch.load(out / "ref_logps.pt", weights_only=False)
    assert all(torch.allclose(got["logps"][i], want.cache[i], atol=1e-5) for i in want.cache)
    assert not all(torch.allclose(first["logps"][i], want.cache[i], atol=1e-3) for i in want.cache)
    assert not list(out.glob(".ref_logps.pt*"))  # written atomically: no temp file left
    # Each part of the key moves it; the same settings give the same key.
    cfg = config(tiny_model_dir, pairs_file, out)
    key = dpo.cache_key(cfg, d.template, d.train)
    assert dpo.cache_key(cfg, d.template, d.train) == key
    assert dpo.cache_key(cfg, d.template, d.train[:-2])["data"] != key["data"]
    assert (
        dpo.cache_key(config(tiny_model_dir, pairs_file, out, "data.max_len=80"), d.template, d.train)["max_len"]
        != key["max_len"]
    )
    adapter = out / "checkpoints" / "step-000002" / "adapter"
    from_step = config(tiny_model_dir, pairs_file, tmp_path / "next", f"lora.init_from={adapter}")  # not in its out
    assert dpo.cache_key(from_step, d.template, d.train)["adapter"]
    # A fresh run (no resume) removes the previous run's cache before building its own.
    dpo.run(config(tiny_model_dir, pairs_file, out, *common, "train.resume=none", "train.stop_after=1"))
    assert "removed the previous run's ref_logps.pt" in capsys.readouterr().out


def computed_alone(model_dir, pairs_file, tmp_path) -> dict:
    """The reference log-probs one process computes for `pairs_file`."""
    cfg, d, model, loss_mod, ref, ids = build(model_dir, pairs_file, tmp_path / "alone")
    ref.precompute(d.train, cfg, {"k": 1}, ids["pad"], False, FakeAccel(0, 1, []), tmp_path / "alone.pt")
    return ref.cache


def same_logps(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[i], b[i]) for i in a)


def test_cache_written_once_by_process_zero(tiny_model_dir, pairs_file, tmp_path):
    """Process 1 computes in step with process 0 (DDP forwards), keeps what it computed and never writes."""
    cfg, d, model, loss_mod, ref, ids = build(tiny_model_dir, pairs_file, tmp_path / "x")
    path = tmp_path / "ref.pt"
    ref.precompute(d.train, cfg, {"k": 1}, ids["pad"], False, FakeAccel(1, 2, []), path)
    assert not path.exists() and same_logps(ref.cache, computed_alone(tiny_model_dir, pairs_file, tmp_path))


def test_a_fresh_run_reads_no_cache_already_there(tiny_model_dir, pairs_file, tmp_path):
    """A fresh 2-process run (train.resume=none) in a dir holding the previous run's cache hung: process 1 read that
    file (same key) while process 0 removed it, reused it and skipped the forwards and the barrier process 0 ran."""
    cfg, d, model, loss_mod, ref, ids = build(tiny_model_dir, pairs_file, tmp_path / "x")
    path = tmp_path / "ref.pt"
    torch.save({"key": {"k": 1}, "logps": {"from": "previous run"}}, path)
    ref.precompute(d.train, cfg, {"k": 1}, ids["pad"], False, FakeAccel(1, 2, []), path, fresh=True)
    assert same_logps(ref.cache, computed_alone(tiny_model_dir, pairs_file, tmp_path))


def test_a_node_without_process_0_s_file_uses_its_own_log_probs(tiny_model_dir, pairs_file, tmp_path):
    """Several nodes without shared storage: process 1 read process 0's file back after the barrier, so on its node
    it found none (FileNotFoundError, a traceback) or a stale copy an earlier run left in its local train.out, and
    trained against that run's reference log-probs unsaid. It now keeps the log-probs it computed itself."""
    cfg, d, model, loss_mod, ref, ids = build(tiny_model_dir, pairs_file, tmp_path / "x")
    node1 = tmp_path / "node1" / "ref_logps.pt"  # process 0 writes on its own node: never here
    node1.parent.mkdir()
    torch.save({"key": {"k": 1}, "logps": {"from": "an earlier run on node 1"}}, node1)
    ref.precompute(d.train, cfg, {"k": 1}, ids["pad"], False, FakeAccel(1, 2, []), node1, fresh=True)
    assert same_logps(ref.cache, computed_alone(tiny_model_dir, pairs_file, tmp_path))
    empty = tmp_path / "node1b" / "ref_logps.pt"
    ref.precompute(d.train, cfg, {"k": 1}, ids["pad"], False, FakeAccel(1, 2, []), empty, fresh=True)
    assert same_logps(ref.cache, computed_alone(tiny_model_dir, pairs_file, tmp_path))


def test_a_cache_is_reused_only_when_every_process_found_it(tiny_model_dir, pairs_file, tmp_path):
    """On resume a process that found a valid cache reused it and skipped the forwards another process, which did
    not see the file (its node's own disk, a lagging network filesystem), ran: under FSDP a hang. Now all agree."""
    cfg, d, model, loss_mod, ref, ids = build(tiny_model_dir, pairs_file, tmp_path / "x")
    path = tmp_path / "ref.pt"
    torch.save({"key": {"k": 1}, "logps": {"from": "the cache"}}, path)
    ref.precompute(d.train, cfg, {"k": 1}, ids["pad"], False, FakeAccel(1, 2, []), path)
    assert ref.cache == {"from": "the cache"}  # control: every process found it
    other_did_not = [torch.tensor([1.0])]  # process 0 reduced "not found" first
    ref.precompute(d.train, cfg, {"k": 1}, ids["pad"], False, FakeAccel(1, 2, other_did_not), path)
    assert same_logps(ref.cache, computed_alone(tiny_model_dir, pairs_file, tmp_path))


PINNED_DPO = [0.693147, 0.245874, 0.141836, 0.097904, 0.079507]  # steps 1-5, from this code


@pytest.mark.slow
def test_pinned_losses_with_defaults(tiny_model_dir, tmp_path):
    """Defaults (LoRA dropout 0.05, packing, seed 42), micro-batch 2: logged loss of steps 1-5."""
    data = write_jsonl(tmp_path / "p.jsonl", make_pairs(24))
    dpo.run(config(tiny_model_dir, data, tmp_path / "o", "train.micro_batch_size=2", "train.max_steps=5"))
    got = [r["loss"] for r in read_metrics(tmp_path / "o", "train")]
    assert got == pytest.approx(PINNED_DPO, rel=1e-3) and abs(got[-1] - math.log(2)) > 0.05


@pytest.mark.slow
def test_odd_pair_count_equals_one_micro_batch(tiny_model_dir, tmp_path):
    """7 pairs in one step of 4 padded micro-batches of ≤2 pairs (the last holds 1) = one packed micro-batch."""
    data = write_jsonl(tmp_path / "p.jsonl", make_pairs(7))
    logs = {}
    for name, extra in {
        "odd": ("data.packing=false", "train.micro_batch_size=2", "train.grad_accum=4"),
        "one": ("train.micro_batch_size=8",),
    }.items():
        dpo.run(config(tiny_model_dir, data, tmp_path / name, *extra, "train.max_steps=1", "train.max_grad_norm=1e9"))
        logs[name] = read_metrics(tmp_path / name, "train")
        assert read_metrics(tmp_path / name, "data")[0]["kept"] == 7
    odd, one = logs["odd"][0], logs["one"][0]
    assert odd["pairs_per_s"] > 0 and abs(odd["loss"] - one["loss"]) < 1e-6
    assert abs(odd["grad_norm"] - one["grad_norm"]) < 1e-5 * one["grad_norm"]


def test_rpo_logged_loss_is_the_objective_trained_on(tiny_model_dir, tmp_path):
    """With dpo.rpo_alpha the loss logged (train and eval) is DPO + α × the chosen replies' per-token NLL, the
    objective whose gradient is taken; it used to be the DPO term alone, with no NLL metric."""
    data = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(8))
    runs = {}
    for alpha in (0.0, 0.5):
        out = tmp_path / f"a{alpha}"
        dpo.run(config(tiny_model_dir, data, out, "train.max_steps=1", f"dpo.rpo_alpha={alpha}",
                       f"data.eval=[{data}]", "train.eval_every=1"))  # fmt: skip
        runs[alpha] = (read_metrics(out, "train")[0], read_metrics(out, "eval")[0])
    (train0, eval0), (train, ev) = runs[0.0], runs[0.5]
    assert "eval_nll_chosen" not in eval0
    assert "nll_chosen" not in train0 and "loss_dpo" not in train0  # negative control: no RPO, loss = DPO term
    for m, p in ((train, ""), (ev, "eval_")):
        assert m[p + "nll_chosen"] > 1 and m[p + "loss_dpo"] > 0
        assert m[p + "loss"] == pytest.approx(m[p + "loss_dpo"] + 0.5 * m[p + "nll_chosen"], rel=1e-9)
    assert train["loss_dpo"] == pytest.approx(math.log(2), abs=1e-5) == train0["loss"]  # step 1: π = π_ref

"""The one generation loop (`weitiao.infer.generate.Engine`): rows join a decoding batch, long prompts are
prefilled in chunks between decode steps, cancelled rows free their place; greedy equals HF generate."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM

from weitiao.data.templates import resolve_template
from weitiao.errors import UserError
from weitiao.infer.generate import Engine, RowSampling, generate_ids

CONVS = [
    [{"role": "user", "content": "你好"}],
    [{"role": "user", "content": "今天天气怎么样？推荐一部电影吧，再讲个笑话"}],
    [{"role": "system", "content": "简洁"}, {"role": "user", "content": "周末"}],
]


class Row:
    """A greedy row that ignores end-of-turn: exactly `n` tokens."""

    adapter, logprobs = "__base__", None

    def __init__(self, prompt: list[int], n: int) -> None:
        self.prompt_ids, self.n, self.ids, self.cancelled = prompt, n, [], False
        self.sampling = RowSampling(temperature=0)

    @property
    def done(self) -> bool:
        return self.cancelled or len(self.ids) >= self.n

    def feed(self, token: int, logprob: tuple | None = None) -> None:
        self.ids.append(token)


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


def prompt(tokenizer, conv) -> list[int]:
    t = resolve_template(tokenizer)
    return tokenizer(t.render(tokenizer, conv, add_generation_prompt=True), add_special_tokens=False)["input_ids"]


def alone(model, ids: list[int], n: int) -> list[int]:
    row = Row(ids, n)
    engine = Engine(model, 0, max_rows=1, prefill_chunk=10_000)
    engine.add([row])
    while engine.live():
        engine.tick()
    return row.ids


def test_a_row_joining_mid_decode_gets_its_greedy_tokens_alone(model, tokenizer):
    long, short = prompt(tokenizer, CONVS[1]), prompt(tokenizer, CONVS[0])
    assert len(long) != len(short)  # the join left-pads one cache to the other's width
    first, late = Row(long, 24), Row(short, 12)
    engine = Engine(model, 0, max_rows=4)
    engine.add([first])
    for _ in range(5):
        engine.tick()
    engine.add([late])
    while not late.done:
        engine.tick()
    assert not first.done  # it finished while the first row was still decoding next to it
    while engine.live():
        engine.tick()
    # joined == 1: it shared the decoding batch; a loop that waits for the batch to drain before taking the
    # newcomer (no joining) leaves joined at 0 and fails here
    assert engine.stats["joined"] == 1 and engine.stats["prefills"] == 2
    assert late.ids == alone(model, short, 12) and first.ids == alone(model, long, 24)


def test_chunked_prefill_lets_a_short_row_finish_first(model, tokenizer):
    short, long = prompt(tokenizer, CONVS[0]), prompt(tokenizer, [{"role": "user", "content": "天气 " * 60}])
    assert len(long) > 4 * len(short)  # several chunks of the short prompt's size

    def run(chunk: int) -> tuple[bool, Row]:
        s, g = Row(short, 4), Row(long, 3)
        engine = Engine(model, 0, max_rows=4, prefill_chunk=chunk)
        engine.add([s, g])
        before_long = False
        while engine.live():
            engine.tick()
            before_long |= s.done and not g.ids  # the short reply ended, the long prompt still prefilling
        return before_long, g

    interleaved, chunked = run(len(short))
    assert interleaved
    unchunked_first, whole = run(100_000)
    assert not unchunked_first  # negative control: one whole prefill of the long prompt comes first
    assert chunked.ids == whole.ids == alone(model, long, 3)  # chunks give the same greedy tokens


def test_cancelled_rows_free_their_place_even_while_prefilling(model, tokenizer):
    ids, long = prompt(tokenizer, CONVS[0]), prompt(tokenizer, [{"role": "user", "content": "天气 " * 60}])
    engine = Engine(model, 0, max_rows=1, prefill_chunk=8)
    a, b = Row(long, 50), Row(ids, 3)
    engine.add([a, b])
    engine.tick()
    assert engine.filling is not None and engine.filling.rows == [a]  # mid-prefill; b waits for the one place
    a.cancelled = True
    ticks = 0
    while engine.live():
        engine.tick()
        ticks += 1
    assert b.ids == alone(model, ids, 3) and not a.ids and ticks <= 4  # b ran at once, a's prefill was dropped


def test_greedy_equals_hf_generate_on_mixed_length_prompts(model, tokenizer):
    """Today's rollouts were HF generate on left-padded batches: greedy replies must not change."""
    t = resolve_template(tokenizer)
    eot = tokenizer.convert_tokens_to_ids(t.eot)
    ids = [prompt(tokenizer, c) for c in CONVS]
    assert len({len(x) for x in ids}) == 3
    width = max(map(len, ids))
    batch = torch.tensor([[tokenizer.pad_token_id] * (width - len(x)) + x for x in ids])
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])
    hf = model.generate(
        input_ids=batch, attention_mask=mask, max_new_tokens=16, do_sample=False, eos_token_id=eot,
        pad_token_id=tokenizer.pad_token_id,
    )[:, width:].tolist()  # fmt: skip
    want = [r[: r.index(eot) + 1] if eot in r else r for r in hf]
    for size in (3, 2):  # one batch, and a finished row's place going to the next prompt
        got = generate_ids(model, tokenizer, t, CONVS, max_new_tokens=16, batch_size=size, model_defaults=False)
        assert [s.response_ids for s in got] == want


def test_unsupported_generation_config_keys_are_refused(tiny_model_dir, tmp_path, tokenizer):
    folder = tmp_path / "m"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "generation_config.json").write_text(json.dumps({"typical_p": 0.5}))
    model = AutoModelForCausalLM.from_pretrained(folder)
    t = resolve_template(tokenizer)
    with pytest.raises(UserError, match="typical_p=0.5 is not supported"):
        generate_ids(model, tokenizer, t, CONVS[:1], 2)
    assert generate_ids(model, tokenizer, t, CONVS[:1], 2, model_defaults=False)[0].response_ids


def test_sliding_window_caches_join_by_recomputing(tokenizer):
    """Gemma-2 style layers (a sliding window every other layer) are not plain caches: a joining row makes the
    batch recompute its cache instead of concatenating it, with the same greedy tokens."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    cfg = Gemma2Config(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=256, sliding_window=8, pad_token_id=0,
    )  # fmt: skip
    model = Gemma2ForCausalLM(cfg).eval()
    long, short = prompt(tokenizer, CONVS[1]), prompt(tokenizer, CONVS[0])
    first, late = Row(long, 12), Row(short, 6)
    engine = Engine(model, 0, max_rows=4)
    engine.add([first])
    engine.tick()
    assert not engine.running.batch.joinable()
    engine.add([late])
    while engine.live():
        engine.tick()
    assert engine.stats["joined"] == 1
    assert late.ids == alone(model, short, 6) and first.ids == alone(model, long, 12)


class _BatchFailsOnce(torch.nn.Module):
    """The model, whose first decode step over more than one row raises, as a batch out of memory would."""

    def __init__(self, model) -> None:
        super().__init__()
        self.inner, self.config, self.armed = model, model.config, True

    def forward(self, input_ids, **kw):
        if self.armed and input_ids.shape[0] > 1 and input_ids.shape[1] == 1:
            self.armed = False
            raise RuntimeError("out of memory")
        return self.inner(input_ids=input_ids, **kw)


class _FeedFails(Row):
    def feed(self, token: int, logprob: tuple | None = None) -> None:
        if len(self.ids) == 3:
            raise ValueError("cannot decode")
        super().feed(token, logprob)


@pytest.mark.parametrize("blame", [True, False])
def test_after_a_failed_tick_only_the_row_that_fails_alone_fails(model, tokenizer, blame):
    """`recover` after `tick` raised: a row that fails alone (its feed) goes to `fail`, the others finish with their
    greedy tokens alone; a failure no row causes alone (the batch's) fails nobody, each row runs to its end alone."""
    ids = [prompt(tokenizer, c) for c in CONVS]
    rows = [Row(ids[0], 20), _FeedFails(ids[1], 10) if blame else Row(ids[1], 10), Row(ids[2], 15)]
    engine = Engine(model if blame else _BatchFailsOnce(model), 0, max_rows=4)
    engine.add(rows)
    failed, ticked = [], []
    with pytest.raises((ValueError, RuntimeError)):
        while engine.live():
            engine.tick()
    engine.recover(
        lambda row, e: (failed.append((row, str(e))), setattr(row, "cancelled", True)), lambda: ticked.append(1)
    )
    assert bool(engine.live()) == blame  # blamed: the others wait again; else they have run to their end alone
    while engine.live():
        engine.tick()
    assert failed == ([(rows[1], "cannot decode")] if blame else [])
    keep = [0, 2] if blame else [0, 1, 2]
    assert [rows[i].ids for i in keep] == [alone(model, ids[i], rows[i].n) for i in keep]
    assert ticked


class _Seeded(Row):
    """A sampled row drawing from its own generator (a request's `seed`)."""

    def __init__(self, prompt: list[int], n: int, seed: int) -> None:
        super().__init__(prompt, n)
        self.sampling = RowSampling(temperature=1.0, generator=torch.Generator().manual_seed(seed))


def _drawn(model, rows: list, fail=None) -> None:
    engine = Engine(model, 0, max_rows=4)
    engine.add(rows)
    while engine.live():
        try:
            engine.tick()
        except ValueError:
            engine.recover(fail)


def test_a_seeded_row_beside_a_row_whose_step_fails_draws_what_it_draws_alone(model, tokenizer):
    """A row's feed raising after the step's draw (the rows after it unfed) left a seeded row's generator one draw on:
    after `recover` it drew its token again from there, and its reply differed from the same request alone. Now the
    generator of a row the failed step left unfed is put back."""
    ids = [prompt(tokenizer, c) for c in CONVS]
    lone = _Seeded(ids[0], 16, seed=7)
    _drawn(model, [lone])
    failed: list = []
    bad, seeded = _FeedFails(ids[1], 10), _Seeded(ids[0], 16, seed=7)
    _drawn(model, [bad, seeded], lambda row, e: (failed.append(row), setattr(row, "cancelled", True)))
    assert failed == [bad] and seeded.ids == lone.ids


class _NaNFor(torch.nn.Module):
    """The model, with NaN logits for the rows whose input holds `token` (an embedding overflowed to NaN)."""

    def __init__(self, model, token: int) -> None:
        super().__init__()
        self.inner, self.config, self.token = model, model.config, token

    def forward(self, input_ids, **kw):
        out = self.inner(input_ids=input_ids, **kw)
        out.logits[(input_ids == self.token).any(-1)] = float("nan")
        return out


@pytest.mark.parametrize("sampling", [RowSampling(temperature=0), RowSampling(generator=torch.Generator())])
def test_nan_logits_raise_instead_of_drawing_a_token(model, tokenizer, sampling):
    """Greedy (argmax) and seeded (exponential race) draws picked a token from NaN logits without a word; only an
    unseeded draw (torch.multinomial) raised. Now NaN logits raise for each: serve answers that request an error."""
    ids = prompt(tokenizer, CONVS[0])
    row = Row(ids, 4)
    row.sampling = sampling
    engine = Engine(_NaNFor(model, ids[-1]), 0, max_rows=1)
    engine.add([row])
    with pytest.raises(FloatingPointError, match="logits are NaN"):
        engine.tick()
    assert row.ids == []

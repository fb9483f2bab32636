"""Arena ratings: recover known strengths, equal an independent logistic regression, bootstrap, Elo, files."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from weitiao.errors import UserError
from weitiao.eval.arena.rank import (
    SCALE,
    aggregate,
    anchored,
    battle_arrays,
    ci_rank,
    fit_bt,
    online_elo,
    rank,
    rank_counts,
)

NAMES = ["m0", "m1", "m2", "m3", "m4", "m5"]
TRUE = np.array([1200.0, 1100.0, 1050.0, 1000.0, 950.0, 800.0])


def simulate(n: int, seed: int, tie_rate: float = 0.0, true: np.ndarray = TRUE) -> list[dict]:
    """Battles between random pairs; the winner drawn from the Bradley–Terry probability of the true ratings."""
    rng = np.random.default_rng(seed)
    k = len(true)
    a = rng.integers(0, k, n)
    b = (a + rng.integers(1, k, n)) % k
    p = 1 / (1 + 10 ** ((true[b] - true[a]) / 400))
    u = rng.random(n)
    tie = rng.random(n) < tie_rate
    names = [f"m{i}" for i in range(k)]
    out = []
    for x, y, win, t, ts in zip(a, b, u < p, tie, range(n)):
        w = ("tie" if ts % 2 else "tie (bothbad)") if t else ("model_a" if win else "model_b")
        out.append({"model_a": names[x], "model_b": names[y], "winner": w, "tstamp": float(ts)})
    return out


def test_recovers_known_strengths():
    res = rank(simulate(30000, seed=1), rounds=50, seed=0)
    got = {r.model: r for r in res.ratings}
    est = np.array([got[m].rating for m in NAMES])
    true = TRUE - TRUE.mean() + 1000  # same anchoring: mean 1000
    assert np.max(np.abs(est - true)) < 15
    assert [r.model for r in res.ratings] == NAMES  # order recovered
    inside = sum(got[m].lower <= t <= got[m].upper for m, t in zip(NAMES, true))
    assert inside >= 5  # 95% intervals: at most one miss in six
    assert got["m0"].rank == 1 and got["m5"].rank == 6


def logistic_regression_ratings(rows: list[dict], models: list[str]) -> np.ndarray:
    """Independent fit: one row per battle with +1 for model_a and −1 for model_b, y = model_a won, no penalty;
    a tie becomes two rows (a won, b won) of weight 1/2. Column 0 is dropped (its strength fixed at 0)."""
    from sklearn.linear_model import LogisticRegression

    idx = {m: i for i, m in enumerate(models)}
    X, y, w = [], [], []
    for r in rows:
        x = np.zeros(len(models))
        x[idx[r["model_a"]]], x[idx[r["model_b"]]] = 1.0, -1.0
        if r["winner"].startswith("tie"):
            X += [x, x]
            y += [1, 0]
            w += [0.5, 0.5]
        else:
            X.append(x)
            y.append(int(r["winner"] == "model_a"))
            w.append(1.0)
    lr = LogisticRegression(C=np.inf, fit_intercept=False, tol=1e-12, max_iter=10000)
    lr.fit(np.array(X)[:, 1:], np.array(y), sample_weight=np.array(w))
    s = np.concatenate([[0.0], lr.coef_[0]])
    return anchored(s, models, None)


def test_equals_independent_logistic_regression():
    rows = simulate(4000, seed=2, tie_rate=0.2)
    res = rank(rows, rounds=0)
    models = sorted({r["model_a"] for r in rows} | {r["model_b"] for r in rows})
    ref = logistic_regression_ratings(rows, models)
    ours = {r.model: r.rating for r in res.ratings}
    assert np.max(np.abs(np.array([ours[m] for m in models]) - ref)) < 1e-3
    # and with a named anchor the same differences, shifted so that anchor = 1000
    res2 = rank(rows, anchor="m3", rounds=0)
    a2 = {r.model: r.rating for r in res2.ratings}
    assert a2["m3"] == pytest.approx(1000) and a2["m0"] - a2["m5"] == pytest.approx(ours["m0"] - ours["m5"])


def test_fit_bt_two_models_closed_form():
    # 30 wins vs 10: σ(s1 − s0) = 3/4 → s1 − s0 = ln 3; ties add half to both sides
    W = np.array([[0.0, 10 + 5], [30 + 5, 0.0]])
    s = fit_bt(W)
    assert s[1] - s[0] == pytest.approx(math.log(35 / 15), abs=1e-9)
    assert anchored(s, ["a", "b"], "a")[1] == pytest.approx(1000 + SCALE * math.log(35 / 15))


def test_aggregation_is_side_and_order_invariant():
    rows = simulate(500, seed=3, tie_rate=0.1)
    flipped = [
        {"model_a": r["model_b"], "model_b": r["model_a"],
         "winner": {"model_a": "model_b", "model_b": "model_a"}.get(r["winner"], r["winner"])}
        for r in rows[::-1]
    ]  # fmt: skip
    c1, c2 = aggregate(*battle_arrays(rows)), aggregate(*battle_arrays(flipped))
    assert np.array_equal(c1.counts, c2.counts) and c1.counts.sum() == 500
    W = c1.wins()
    assert W.sum() == pytest.approx(500)  # each battle is one win in total (ties split)


def test_bootstrap_seeded_and_shrinks_with_data():
    small = rank(simulate(2000, seed=4), rounds=60, seed=7)
    again = rank(simulate(2000, seed=4), rounds=60, seed=7)
    assert [(r.lower, r.upper) for r in small.ratings] == [(r.lower, r.upper) for r in again.ratings]
    big = rank(simulate(32000, seed=4), rounds=60, seed=7)
    w_small = np.mean([r.upper - r.lower for r in small.ratings])
    w_big = np.mean([r.upper - r.lower for r in big.ratings])
    assert 2.5 < w_small / w_big < 6  # 16x the data: about 4x narrower
    assert all(r.lower <= r.rating <= r.upper for r in small.ratings)


def test_bootstrap_matches_battle_resampling():
    """Multinomial resampling of the pair-count table ≡ resampling battles with replacement (same law)."""
    rows = simulate(3000, seed=5, tie_rate=0.1)
    res = rank(rows, rounds=200, seed=1)
    a, b, o, models = battle_arrays(rows)
    rng = np.random.default_rng(9)
    boots = []
    for _ in range(200):
        pick = rng.integers(0, len(rows), len(rows))
        boots.append(anchored(fit_bt(aggregate(a[pick], b[pick], o[pick], models).wins()), models, None))
    lo, hi = np.percentile(boots, [2.5, 97.5], axis=0)
    ours = {r.model: r.upper - r.lower for r in res.ratings}
    for m, width in zip(models, hi - lo):
        assert ours[m] == pytest.approx(width, rel=0.25)


def test_ci_rank_and_elo_hand_values():
    lower, upper = np.array([10.0, 5.0, 0.0, -20.0]), np.array([20.0, 15.0, 8.0, -12.0])
    # model 2's upper 8 is below model 0's lower 10 → rank 2; model 3 is below everyone's lower → rank 4
    assert ci_rank(lower, upper).tolist() == [1, 1, 2, 4]
    a, b, o = np.array([0, 0, 1]), np.array([1, 1, 0]), np.array([0, 0, 2])
    r = online_elo(a, b, o, 2)
    ea2 = 1 / (1 + 10 ** ((998 - 1002) / 400))
    r0 = 1002 + 4 * (1 - ea2)
    r1 = 998 - 4 * (1 - ea2)
    e1 = 1 / (1 + 10 ** ((r0 - r1) / 400))  # third battle: model 1 (side a) ties model 0
    assert r.tolist() == pytest.approx([r0 - 4 * (0.5 - e1), r1 + 4 * (0.5 - e1)])


def test_no_finite_mle_is_a_user_error():
    rows = [{"model_a": "x", "model_b": "y", "winner": "model_a"}] * 5 + [
        {"model_a": "y", "model_b": "z", "winner": "tie"}
    ]
    with pytest.raises(UserError, match="x never loses; collect more votes"):
        rank(rows, rounds=0)
    counts = aggregate(*battle_arrays(rows))
    ok = rank_counts(counts, rounds=0, l2=0.1)  # a ridge makes it finite
    assert ok.ratings[0].model == "x"


def test_disconnected_votes_say_the_ratings_are_not_comparable():
    """Two groups that never met in a vote: each has wins and losses, but no vote ties one group's scale to the other's;
    the error said "some group never wins or never loses", as if more of the same votes would do."""
    rows = [
        {"model_a": a, "model_b": b, "winner": w}
        for a, b in (("A", "B"), ("C", "D"), ("D", "E"))
        for w in ("model_a", "model_b")
    ]
    with pytest.raises(UserError, match=r"2 groups that never met in a vote \(A, B \| C, D, E\): ratings in different "
                       "groups are not comparable"):  # fmt: skip
        rank(rows, rounds=0)
    with pytest.raises(UserError, match="B never wins"):
        rank([{"model_a": "A", "model_b": "B", "winner": "model_a"}, {"model_a": "A", "model_b": "C", "winner": "tie"},
              {"model_a": "B", "model_b": "C", "winner": "model_b"}], rounds=0)  # fmt: skip


def one_win_in_40(seed: int = 3) -> list[dict]:
    """x wins 1 of its 40 battles against a, b, c (1100/1050/1000, 600 battles among themselves)."""
    rng = np.random.default_rng(seed)
    true = {"a": 1100.0, "b": 1050.0, "c": 1000.0}
    rows = [{"model_a": "x", "model_b": "abc"[n % 3], "winner": "model_a" if n == 7 else "model_b"} for n in range(40)]
    for _ in range(600):
        i, j = rng.choice(list(true), 2, replace=False)
        p = 1 / (1 + 10 ** ((true[j] - true[i]) / 400))
        rows.append({"model_a": i, "model_b": j, "winner": "model_a" if rng.random() < p else "model_b"})
    return rows


def test_a_model_with_one_win_in_40_gets_no_invented_lower_bound():
    """About a third of the resamples hold no win of x: no finite maximum there. A ridge of 1e-3 set x's rating in
    those rounds, so the lower bound came out ≈ −127 (anchor: mean) or −445 (anchor: c), numbers of the ridge, not of
    the votes; with the mean as anchor it pushed a, b and c's upper bounds ~220 up too."""
    rows = one_win_in_40()
    res = rank(rows, anchor="c", rounds=200, seed=0, by_voter=False)
    got = {r.model: r for r in res.ratings}
    assert got["x"].lower == -math.inf and math.isfinite(got["x"].upper) and got["x"].upper < got["c"].rating
    assert 200 * 0.025 < res.unbounded["x"]["lower"] == res.infinite_rounds < 200 * 0.6
    assert set(res.unbounded) == {"x"}  # a and b's gaps to the anchor stay measured in every round
    for m in "ab":  # measured from c in every round: narrow, around the point
        assert got[m].lower < got[m].rating < got[m].upper and got[m].upper - got[m].lower < 150
    assert got["x"].rank == 4 and got["a"].rank == 1
    mean = rank(rows, rounds=200, seed=0, by_voter=False)  # around the mean, x's open gap opens every upper bound
    assert {m: sorted(e) for m, e in mean.unbounded.items()} == {"a": ["upper"], "b": ["upper"], "c": ["upper"],
                                                                  "x": ["lower"]}  # fmt: skip
    assert all(math.isfinite(r.lower) for r in mean.ratings if r.model != "x")
    assert json.loads(json.dumps(mean.to_json(), allow_nan=False))["ratings"][-1]["lower"] is None  # null, valid JSON


def test_round_ratings_of_a_chain_without_a_finite_maximum():
    """a beat b only, b beat c only: a is above b by an unbounded gap, c below; a and c never met."""
    W = np.array([[0.0, 3, 0], [0, 0, 2], [0, 0, 0]])
    from weitiao.eval.arena.rank import round_ratings

    assert round_ratings(W, ["a", "b", "c"], "b").tolist() == [math.inf, 1000.0, -math.inf]
    mean = round_ratings(W, ["a", "b", "c"], None)
    assert mean[0] == math.inf and math.isnan(mean[1]) and mean[2] == -math.inf


def test_cli_rank_shows_an_unbounded_bound_as_a_dash_and_null(tmp_path):
    from typer.testing import CliRunner

    from weitiao.eval.commands import arena_app

    src = tmp_path / "battles.json"
    src.write_text(json.dumps(one_win_in_40()))
    out = tmp_path / "r.json"
    args = ["rank", "--battles", str(src), "--bootstrap", "battles", "--anchor", "c", "--json", str(out)]
    r = CliRunner().invoke(arena_app, [*args, "--plot", str(tmp_path / "r.png")])
    assert r.exit_code == 0, r.output
    said = " ".join(r.output.split())
    assert re.search(r"x │ [0-9.]+ │ — – [0-9.]+ ", said), said
    assert re.search(r"CI unbounded \(—\) for x \(lower \d+ of 100 rounds\): ", said), said
    j = json.loads(out.read_text())
    assert [x["lower"] is None for x in j["ratings"]] == [False, False, False, True] and j["unbounded"]["x"]["lower"]
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_rank_import_export(tmp_path):
    from typer.testing import CliRunner

    from weitiao.eval.commands import arena_app

    rows = simulate(3000, seed=6, tie_rate=0.1)
    src = tmp_path / "battles.json"
    src.write_text(json.dumps(rows))
    run = CliRunner()
    db = tmp_path / "arena.sqlite"
    assert run.invoke(arena_app, ["import", str(src), "--db", str(db)]).exit_code == 0
    again = run.invoke(arena_app, ["import", str(src), "--db", str(db)])  # the same file twice: counted once
    said = " ".join(again.output.split())
    assert again.exit_code == 0 and "imported 0 battles" in said and "(3,000 already there, skipped)" in said
    r = run.invoke(arena_app, ["export", str(tmp_path / "out.json"), "--db", str(db)])
    assert r.exit_code == 0, r.output
    back = json.loads((tmp_path / "out.json").read_text())
    assert [(x["model_a"], x["model_b"], x["winner"]) for x in back] == [
        (x["model_a"], x["model_b"], x["winner"]) for x in rows
    ]
    args = ["rank", "--rounds", "40", "--json", str(tmp_path / "r1.json"), "--plot", str(tmp_path / "r.png")]
    r1 = run.invoke(arena_app, args + ["--battles", str(src)])
    assert r1.exit_code == 0, r1.output
    r2 = run.invoke(arena_app, ["rank", "--rounds", "40", "--db", str(db), "--json", str(tmp_path / "r2.json")])
    assert r2.exit_code == 0, r2.output
    j1, j2 = json.loads((tmp_path / "r1.json").read_text()), json.loads((tmp_path / "r2.json").read_text())
    assert j1["ratings"] == j2["ratings"] and j1["n_battles"] == 3000
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"model_a": "a", "model_b": "b", "winner": "a"}]))
    r3 = run.invoke(arena_app, ["rank", "--battles", str(bad)])
    assert r3.exit_code != 0 and "winner" in str(r3.exception)


def test_answers_under_votes_never_change(tmp_path):
    from weitiao.errors import UserError
    from weitiao.eval.arena.store import ArenaStore

    store = ArenaStore(tmp_path / "a.sqlite")
    rows = [{"prompt": "你好", "model": m, "answer": f"{m}: 你好呀"} for m in ("a", "b")]
    with pytest.raises(UserError, match="model 'a' has two different answers"):
        store.serve_answers([*rows, {**rows[0], "answer": "别的"}])
    store.serve_answers(rows)
    store.serve_answers([{**rows[0], "answer": "换一个"}])  # no votes on it yet: replaced
    store.serve_answers(rows)
    store.import_battles([{"prompt": "你好", "model_a": "a", "model_b": "b", "winner": "model_a"}])
    with pytest.raises(UserError, match="already has another answer to prompt '你好', and votes were cast on it"):
        store.serve_answers([{**rows[0], "answer": "换一个"}])
    assert store.serve_answers(rows) == 2  # the same answers again: fine


def test_the_ratings_plot_draws_chinese_model_names(tmp_path):
    """Chinese model names came out as empty boxes (matplotlib's default font has no CJK glyph; it only warned):
    the plot falls back to an installed CJK font (the Makefile installs WenQuanYi Micro Hei)."""
    import warnings

    from matplotlib import font_manager

    from weitiao.eval.arena.rank import plot_ratings, rank
    from weitiao.io import CJK_FONTS

    if not {f.name for f in font_manager.fontManager.ttflist} & set(CJK_FONTS):
        pytest.skip("no CJK font installed (make install adds fonts-wqy-microhei)")
    battles = [{"model_a": "通义千问", "model_b": "文心一言", "winner": w} for w in ("model_a", "model_b", "model_a")]
    res = rank(battles, rounds=5, seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plot_ratings(res, tmp_path / "r.png")
    assert not [w for w in caught if "missing from font" in str(w.message)], [str(w.message) for w in caught]
    assert (tmp_path / "r.png").stat().st_size > 0


def test_a_bad_battle_is_named_by_its_file_line_in_jsonl_or_a_list(tmp_path):
    """JSONL battles were named by their count (a blank line shifted every later one) and a JSON list's by a 'line'
    that was its index: now the file line where the battle starts, in either."""
    from weitiao.errors import UserError
    from weitiao.eval.arena.rank import load_battles

    good = json.dumps({"model_a": "a", "model_b": "b", "winner": "model_a"})
    bad = json.dumps({"model_a": "a", "model_b": "a", "winner": "tie"})
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_text(f"{good}\n\n\n{bad}\n", encoding="utf-8")
    with pytest.raises(UserError, match=rf"^{re.escape(str(jsonl))}:4: model_b: same model on both sides$"):
        load_battles(jsonl)
    listed = tmp_path / "b.json"
    listed.write_text(f"[{good},\n{bad}]", encoding="utf-8")
    with pytest.raises(UserError, match=rf"^{re.escape(str(listed))}:2: model_b: same model on both sides$"):
        load_battles(listed)


def fastchat_battles(n: int, seed: int) -> list[dict]:
    """`simulate`'s battles in the fields FastChat's clean_battle_data.py writes (conv_release mode), some with the
    conversations and the later dedup_tag / category_tag."""
    out = []
    for i, r in enumerate(simulate(n, seed=seed, tie_rate=0.2)):
        b = {"question_id": f"{i:032x}", "model_a": r["model_a"], "model_b": r["model_b"], "winner": r["winner"],
             "judge": f"arena_user_{i % 37}", "turn": 1, "anony": i % 4 != 0, "language": ["Chinese", "English"][i % 2],
             "tstamp": 1700000000.0 + r["tstamp"]}  # fmt: skip
        if i % 3 == 0:
            b["conversation_a"] = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "甲"}]
            b["conversation_b"] = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "乙"}]
        if i % 5 == 0:
            b["dedup_tag"] = {"high_freq": False, "sampled": True}
            b["category_tag"] = {"criteria_v0.1": {"math": i % 2 == 0}}
        out.append(b)
    return out


def test_a_fastchat_battle_file_round_trips_field_for_field_and_ranks_the_same(tmp_path):
    """`arena import` kept model_a, model_b, winner, judge, tstamp and stored question_id as the prompt; `arena export`
    wrote {model_a, model_b, winner, tstamp, judge, prompt: <question_id>}: turn, anony, language, the conversations
    and the tags were silently lost. Now export gives back the file's battles, every field in its order, and the
    ratings from the database equal those from the file and an independent logistic regression."""
    from typer.testing import CliRunner

    from weitiao.eval.commands import arena_app

    rows = fastchat_battles(2000, seed=8)
    src, out, db = tmp_path / "clean_battle_20240101.json", tmp_path / "out.json", tmp_path / "arena.sqlite"
    src.write_text(json.dumps(rows, indent=2, ensure_ascii=False), encoding="utf-8")  # as FastChat writes it
    run = CliRunner()
    for args in (["import", str(src), "--db", str(db)], ["export", str(out), "--db", str(db)]):
        r = run.invoke(arena_app, args)
        assert r.exit_code == 0, r.output
    back = json.loads(out.read_text(encoding="utf-8"))
    assert back == rows and [list(b) for b in back] == [list(r) for r in rows]
    j = {}
    for name, source in (("file", ["--battles", str(src)]), ("db", ["--db", str(db)]), ("all", ["--db", str(db)])):
        args = ["rank", "--rounds", "40", "--json", str(tmp_path / f"{name}.json"), *source]
        r = run.invoke(arena_app, args + ["--keep-named"] * (name == "all"))
        assert r.exit_code == 0, r.output
        j[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert j["file"]["ratings"] == j["db"]["ratings"] and j["db"]["named_left_out"] == 500  # anony false: 1 in 4
    assert j["db"]["n_battles"] == 1500 and j["all"]["n_battles"] == 2000
    models = sorted({r["model_a"] for r in rows} | {r["model_b"] for r in rows})
    for name, counted in (("db", [r for r in rows if r["anony"]]), ("all", rows)):
        ref = logistic_regression_ratings(counted, models)
        ours = {x["model"]: x["rating"] for x in j[name]["ratings"]}
        assert np.max(np.abs(np.array([ours[m] for m in models]) - ref)) < 1e-3


def test_rank_leaves_out_battles_whose_voters_saw_the_names_as_fastchat_does(tmp_path):
    """FastChat's battles carry `anony`: false where the voter picked the models by name, and its leaderboard counts
    anonymous votes only; `arena rank` counted them all without a word. Now they are left out and named, and
    --keep-named counts them; an `anony` that is no boolean ("false" would read as true) is refused with its line."""
    from typer.testing import CliRunner

    from weitiao.eval.commands import arena_app

    rows = [{"model_a": "a", "model_b": "b", "winner": w, "anony": anony, "judge": f"u{i}"}
            for i, (w, anony) in enumerate([("model_a", True), ("model_b", True), ("model_a", True)] +
                                           [("model_b", False)] * 30)]  # fmt: skip
    src = tmp_path / "b.json"
    src.write_text(json.dumps(rows), encoding="utf-8")
    run = CliRunner()
    r = run.invoke(arena_app, ["rank", "--battles", str(src), "--rounds", "40", "--json", str(tmp_path / "r.json")])
    assert r.exit_code == 0, r.output
    said = " ".join(r.output.split())
    assert "left out 30 battles marked anony false" in said and "--keep-named" in said
    j = json.loads((tmp_path / "r.json").read_text())
    assert j["n_battles"] == 3 and j["named_left_out"] == 30 and j["ratings"][0]["model"] == "a"
    r = run.invoke(arena_app, ["rank", "--battles", str(src), "--rounds", "40", "--keep-named"])
    assert r.exit_code == 0 and "33 battles" in r.output and "left out" not in r.output, r.output
    src.write_text(json.dumps([{**rows[0], "anony": "false"}], indent=1), encoding="utf-8")
    r = run.invoke(arena_app, ["rank", "--battles", str(src)])
    assert isinstance(r.exception, UserError) and str(r.exception).startswith(f"{src}:2: anony: 'false'; expected")


def test_an_unknown_winner_in_a_fastchat_list_is_refused_with_its_file_line(tmp_path):
    """A battle in a JSON list was named `(battle n)`, its place in the list: FastChat's indented file is thousands of
    lines, so the line where the battle starts is named, as in JSONL."""
    from weitiao.eval.arena.rank import load_battles

    rows = fastchat_battles(3, seed=1)
    rows[2]["winner"] = "leftvote"  # the raw log's word, not clean_battle's
    src = tmp_path / "clean_battle.json"
    src.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    line = 1 + json.dumps(rows, indent=2).split('"leftvote"')[0].rsplit("\n  {", 1)[0].count("\n") + 1
    with pytest.raises(UserError, match=rf"^{re.escape(str(src))}:{line}: winner: 'leftvote'; expected one of "):
        load_battles(src)
    src.write_text(json.dumps(rows[:2], indent=2) + "\n]", encoding="utf-8")  # a stray bracket
    with pytest.raises(UserError, match=rf"^{re.escape(str(src))}:\d+: json: not valid JSON \(extra data"):
        load_battles(src)


def test_battles_without_a_time_follow_the_timed_ones_in_elo_as_fastchat_sorts_them():
    """Elo is sequential, so the order counts: battles without a tstamp were sorted as time 0 (before every timed one);
    FastChat's `sort_values(by="tstamp")` puts them last, in their order."""
    import pandas as pd

    timed = simulate(40, seed=3)
    untimed = [{k: v for k, v in r.items() if k != "tstamp"} for r in simulate(40, seed=4)]
    rows = untimed[:20] + timed[::-1] + untimed[20:]
    got = {r.model: r.elo for r in rank(rows, rounds=0).ratings}
    frame = pd.DataFrame(rows).sort_values(by="tstamp", kind="stable")  # FastChat's order
    a, b, o, models = battle_arrays(frame.to_dict("records"))
    want = dict(zip(models, online_elo(a, b, o, len(models))))
    assert got == pytest.approx(want, abs=1e-9)
    first = untimed + sorted(timed, key=lambda r: r["tstamp"])  # control: the old order gives other ratings
    a, b, o, models = battle_arrays(first)
    assert dict(zip(models, online_elo(a, b, o, len(models)))) != pytest.approx(want, abs=1e-3)

"""Pairs carrying each side's score (ultrafeedback_binarized score_chosen/score_rejected, argilla's ratings): the
scores are not trained on, which a note says, and a row whose own scores prefer rejected is refused, not trained the
wrong way round."""

import pytest
from conftest import write_jsonl

from weitiao.data.check import check_file
from weitiao.data.preference import form_notes, load_pairs
from weitiao.data.templates import resolve_template
from weitiao.errors import UserError

TEA = [{"role": "user", "content": "How do I make tea?"}]


def uf_row(score_chosen, score_rejected, chosen="Boil water, steep 3 minutes.", rejected="Tea is a drink."):
    return {"prompt": TEA[0]["content"], "prompt_id": "a1", "chosen": TEA + [{"role": "assistant", "content": chosen}],
            "rejected": TEA + [{"role": "assistant", "content": rejected}],
            "messages": TEA + [{"role": "assistant", "content": chosen}],
            "score_chosen": score_chosen, "score_rejected": score_rejected}  # fmt: skip


def test_scores_are_noted_and_a_row_preferring_rejected_is_refused(tmp_path, tokenizer):
    rows = [uf_row(8.5, 4.0), uf_row(7.0, 7.0, "好的。", "不好。")]  # a tie is a pair as given
    pairs = load_pairs([str(write_jsonl(tmp_path / "uf.jsonl", rows))], "auto", False).rows
    assert [(p.chosen, p.rejected) for p in pairs] == [("Boil water, steep 3 minutes.", "Tea is a drink."),
                                                       ("好的。", "不好。")]  # fmt: skip
    notes = form_notes(pairs, resolve_template(tokenizer, "chatml"))
    assert any(n.startswith("2 pairs carry scores (score_chosen/score_rejected): not read") for n in notes)
    argilla = {"chosen": "好", "rejected": "差", "prompt": "评价一下", "chosen_rating": 5, "rejected_rating": 2}
    pairs += load_pairs([str(write_jsonl(tmp_path / "a.jsonl", [argilla]))], "auto", False).rows
    notes = form_notes(pairs, resolve_template(tokenizer, "chatml"))
    assert any(n.startswith("3 pairs carry scores (score_chosen/score_rejected, chosen_rating/rejected_rating)")
               for n in notes)  # fmt: skip
    flipped = write_jsonl(tmp_path / "flipped.jsonl", [rows[0], uf_row(2.0, 9.0)])
    with pytest.raises(UserError, match=r"flipped.jsonl:2: score_rejected: 9.0 is above score_chosen 2.0: .*swap"):
        load_pairs([str(flipped)], "auto", False)
    rating = {"chosen": "好", "rejected": "差", "prompt": "评价一下", "chosen-rating": 2, "rejected-rating": 4.5}
    with pytest.raises(UserError, match=r"r.jsonl:1: rejected-rating: 4.5 is above chosen-rating 2"):
        load_pairs([str(write_jsonl(tmp_path / "r.jsonl", [rating]))], "auto", False)
    report = check_file([str(flipped)], tokenizer, "chatml")
    assert any("1 pairs whose score columns prefer rejected" in p and "flipped.jsonl:2" in p for p in report.problems)

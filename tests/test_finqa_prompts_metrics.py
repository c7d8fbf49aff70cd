"""FinQA prompts (context budget, question never cut, oracle facts, targets, answer-only labels) and the
FinQA metrics on constructed predictions with hand-computed scores."""

import pytest

from finlight.finqa.data import FinQADataModule
from finlight.causal_lm.data import IGNORE_INDEX
from finlight.errors import FinlightError
from finlight.finqa.metrics import (parse_answer_value, programs_equivalent, score_prediction, summarize,
                                    values_match)
from finlight.finqa.prompts import (FinQAPromptBuilder, context_units, fit_to_budget, format_number,
                                    target_text)
from finlight.finqa.records import FinQARecord

from helpers import FINQA_SENTENCES as SENTENCES, finqa_bpe_tokenizer as bpe_tokenizer

def record(pre=None, post=(), gold_inds=None, question="what was the change in net revenue from 2014 to 2015?",
           program="subtract(5829, 5735)", answer=94.0) -> FinQARecord:
    return FinQARecord(id="R-1", question=question, pre_text=tuple(SENTENCES[:2] if pre is None else pre),
                       post_text=tuple(post), table=(("", "2015", "2014"), ("net revenue", "$ 5829", "$ 5735")),
                       program=program, answer=answer, gold_inds=gold_inds, origin="mem.json#0")


def count(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


# ---------------------------------------------------------------------------------------------- prompts
def test_context_respects_the_budget_and_the_question_is_never_cut():
    tokenizer = bpe_tokenizer()
    huge = record(pre=SENTENCES * 60, post=SENTENCES * 60)  # thousands of tokens of context
    full = "\n".join(context_units(huge))
    assert count(tokenizer, full) > 2000
    builder = FinQAPromptBuilder(tokenizer, context_tokens=0)
    empty_prompt = len(builder.prompt_ids(huge)[0])
    lengths = []
    for budget in (0, 7, 50, 300):
        builder = FinQAPromptBuilder(tokenizer, context_tokens=budget)
        text, cut = builder.user_text(huge)
        context = text[len("Context:\n"): text.index("\n\nQuestion: ")]
        assert cut and count(tokenizer, context) <= budget and full.startswith(context)
        assert text.endswith("Question: " + huge.question)  # the whole question, last
        ids, _ = builder.prompt_ids(huge)
        assert huge.question in tokenizer.decode(ids)
        assert len(ids) <= empty_prompt + budget + 2  # + at most a merge or two at the seams
        lengths.append(len(ids))
    assert lengths == sorted(lengths) and lengths[-1] > lengths[0] + 250
    small = record()
    text, cut = FinQAPromptBuilder(tokenizer, context_tokens=300).user_text(small)
    assert not cut and "\n".join(context_units(small)) in text


def test_whole_units_first_then_the_first_unit_that_does_not_fit_is_cut():
    tokenizer = bpe_tokenizer()
    units = ["alpha beta gamma .", "net revenue rose .", "see note 14 ."]
    two = count(tokenizer, units[0] + "\n" + units[1])
    assert fit_to_budget(units, tokenizer, two) == (units[0] + "\n" + units[1], True)
    text, cut = fit_to_budget(units, tokenizer, two - 2)
    assert cut and text.startswith(units[0] + "\n") and units[1].startswith(text.split("\n")[1])
    assert count(tokenizer, text) <= two - 2
    assert fit_to_budget(units, tokenizer, 10_000) == ("\n".join(units), False)


def test_table_comes_first_by_default_and_context_order_is_configurable():
    r = record(post=["after the table ."])
    assert context_units(r)[:2] == ["| 2015 | 2014", "net revenue | $ 5829 | $ 5735"]
    assert context_units(r, order=["pre_text", "post_text"]) == SENTENCES[:2] + ["after the table ."]
    with pytest.raises(FinlightError, match="data.context_order"):
        FinQAPromptBuilder(bpe_tokenizer(), context_order=["table", "footnotes"])


def test_oracle_context_is_the_gold_facts_in_document_order_and_needs_them():
    gold = {"text_3": "a fact after the table .", "table_1": "the net revenue of 2015 is $ 5829 ;",
            "text_0": "a fact before the table ."}
    r = record(post=["after 1 .", "after 2 ."], gold_inds=gold)  # 2 pre sentences: text_3 is post_text[1]
    assert context_units(r, oracle=True) == [gold["text_0"], gold["table_1"], gold["text_3"]]
    text, _ = FinQAPromptBuilder(bpe_tokenizer(), oracle_context=True).user_text(r)
    assert "| 2015 | 2014" not in text and gold["table_1"] in text
    with pytest.raises(FinlightError, match="mem.json#0: data.oracle_context needs gold_inds"):
        context_units(record(), oracle=True)


def test_targets_are_the_program_or_the_formatted_value():
    assert target_text(record(), "program") == "subtract(5829, 5735)"
    assert target_text(record(), "answer") == "94"
    assert [format_number(v) for v in (0.34719, 127.4, -5.0, 1234567.0, 0.1234567)] == [
        "0.34719", "127.4", "-5", "1234567", "0.12346"]
    assert target_text(record(answer="yes"), "answer") == "yes"
    with pytest.raises(FinlightError, match="no gold program"):
        target_text(record(program=None), "program")


def test_batches_put_the_loss_on_the_target_and_eos_only(tmp_path):
    import json

    raw = [{"id": f"r{i}", "question": f"what is the change {i}?", "pre_text": SENTENCES[:2], "post_text": [],
            "table": [["", "2015", "2014"], ["net revenue", "$ 5829", "$ 5735"]], "answer": 94.0,
            "program": "subtract(5829, 5735)"} for i in range(3)]
    path = tmp_path / "mini.json"
    path.write_text(json.dumps(raw))
    tokenizer = bpe_tokenizer(chat=False)
    dm = FinQADataModule(train_path=str(path), val_path=str(path), context_tokens=16, batch_size=3)
    dm.setup("fit")
    dm.tokenizer = tokenizer
    batch = next(iter(dm.train_dataloader()))
    target = tokenizer(" subtract(5829, 5735)", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    for row in range(3):
        labels = batch["lm_labels"][row]
        assert labels[labels != IGNORE_INDEX].tolist() == target
        p = int(batch["prompt_lengths"][row])
        prompt = tokenizer.decode(batch["prompt_ids"][row, -p:])
        assert prompt.endswith(f"Question: {raw[int(batch['index'][row])]['question']}\nAnswer:")


# ---------------------------------------------------------------------------------------------- metrics
TABLE = (("", "2015", "2014"), ("net revenue", "$ 5829", "$ 5735"))


def test_program_scores_on_constructed_predictions():
    gold_program, gold = "subtract(5829, 5735), divide(#0, 5735)", 94 / 5735
    cases = {
        "subtract(5829, 5735), divide(#0, 5735)": (True, True, False, False),       # exact
        " Subtract( 5829,5735 ),divide(# 0, 5735)\nmore text": (True, True, False, False),  # same, other spacing
        "subtract(5829, 5735), divide(#0, 5734.99)": (True, False, False, False),   # value within rel_tol
        "subtract(5829, 5735), divide(#0, 5829)": (False, False, False, False),     # wrong
        "the answer is 1.6%": (False, False, True, False),                         # no program
        "subtract(5829, 5735), divide(#0, 0)": (False, False, False, True),         # parses, cannot run
        "subtract(5829, 5735), divide(#3, 5735)": (False, False, False, True),
    }
    for text, (exec_ok, prog_ok, unparseable, nonexecutable) in cases.items():
        s = score_prediction(text, gold, TABLE, gold_program, "program")
        assert (s.exec_correct, s.prog_correct, s.unparseable, s.nonexecutable) == (
            exec_ok, prog_ok, unparseable, nonexecutable), text
    # 7 predictions: 3 executed right, 2 programs right, 1 unparseable, 2 non-executable
    scores = [score_prediction(t, gold, TABLE, gold_program, "program") for t in cases]
    assert summarize(scores) == pytest.approx({"exec_acc": 3 / 7, "prog_acc": 2 / 7, "prog_acc_symbolic": 2 / 7,
                                               "unparseable_rate": 1 / 7, "nonexecutable_rate": 2 / 7})
    swapped = score_prediction("add(5735, 5829)", 11564.0, TABLE, "add(5829, 5735)")
    assert (swapped.exec_correct, swapped.prog_correct, swapped.prog_equivalent) == (True, False, True)
    table_op = score_prediction("table_max(net revenue, none)", 5829.0, TABLE, "table_max(net revenue, none)")
    assert table_op.exec_correct and table_op.prog_correct and table_op.value == 5829.0
    yes = score_prediction("greater(5829, 5735)", "yes", TABLE, "greater(5829, 5735)")
    no = score_prediction("greater(5735, 5829)", "yes", TABLE, "greater(5829, 5735)")
    assert (yes.exec_correct, yes.value, no.exec_correct, no.value) == (True, "yes", False, "no")


@pytest.mark.parametrize("predicted, gold, equivalent", [
    ("add(5735, 5829)", "add(5829, 5735)", True),                      # commutative
    ("subtract(5735, 5829)", "subtract(5829, 5735)", False),
    ("add(2, 3), add(#0, 1)", "add(1, 2), add(#0, 3)", True),           # regrouped
    ("divide(5829, 5735), divide(5735, 5735), subtract(#0, #1)", "subtract(5829, 5735), divide(#0, 5735)", True),
    ("divide(5829, 5735), subtract(#0, const_1)", "subtract(5829, 5735), divide(#0, 5735)", False),  # const_1
    ("subtract(5829, 5735), divide(#0, 5829)", "subtract(5829, 5735), divide(#0, 5735)", False),  # not in gold
    ("greater(1, 2)", "greater(1, 2)", True),
    ("greater(2, 1)", "greater(1, 2)", False),
    ("table_max( net revenue , none), divide(#0, 2)", "table_max(net revenue, none), divide(#0, 2)", True),
    ("table_min(net revenue, none), divide(#0, 2)", "table_max(net revenue, none), divide(#0, 2)", False),
    ("add(1, 2), add(#5, 1)", "add(1, 2), add(#0, 1)", False),
    ("not a program", "add(1, 2)", False),
    (", ".join(["add(1, 2)"] * 17), "add(1, 2)", False),                 # longer than MAX_SYMBOLIC_STEPS
])
def test_symbolic_program_equivalence_as_upstream_equal_program(predicted, gold, equivalent):
    assert programs_equivalent(predicted, gold) is equivalent


def test_answer_scores_parse_the_leading_number_or_yes_no():
    assert [parse_answer_value(t) for t in ("94", "34.7%", "$ 1,234.5 million", "- 5", "Yes.", "no",
                                            "5. 93", "about 5", "", "n/a")] == [
        94.0, pytest.approx(0.347), 1234.5, -5.0, "yes", "no", 5.93, None, None, None]
    gold = 0.34719
    texts = ["34.7%", "0.34719", "0.35", "34.719", "about a third", "0.3472\nbecause"]
    scores = [score_prediction(t, gold, target="answer") for t in texts]
    # 34.7% → 0.347 (rel. error 5.5e-4 < 1e-3); 34.719 is not rescaled; 0.3472 rounds equal
    assert [s.exec_correct for s in scores] == [True, True, False, False, False, True]
    assert summarize(scores) == pytest.approx({"exec_acc": 3 / 6, "unparseable_rate": 1 / 6})  # no prog_acc
    assert not score_prediction("34.7%", gold, target="answer", rel_tol=1e-4).exec_correct
    assert score_prediction("yes", "yes", target="answer").exec_correct
    assert not score_prediction("no", "yes", target="answer").exec_correct


def test_values_match_as_upstream_after_rounding_or_within_tolerance():
    assert values_match(0.123454, 0.12345, rel_tol=0.0)        # equal after rounding to 5 decimals
    assert not values_match(0.12347, 0.12345, rel_tol=0.0)
    assert values_match(0.12347, 0.12345, rel_tol=1e-3)
    assert values_match("Yes", "yes") and not values_match(1.0, "yes") and not values_match(None, 1.0)
    assert not values_match(1.0, None)

"""FinQA's program executor (hand-computed values, every failure mode) and the record loader (both formats,
bad files); every gold program of the shipped subsets executes to its ``exe_ans``."""

import json

import pytest

from finlight.errors import FinlightError
from finlight.finqa.metrics import values_match
from finlight.finqa.program import (ProgramExecutionError, ProgramParseError, execute_program, normalize_program,
                                    parse_program, to_number)
from finlight.finqa.records import load_finqa, table_as_text

from conftest import SHARED_DATA

FINQA = SHARED_DATA / "finqa"
TABLE_PROGRAMS = 42  # gold programs with a table_* step in the three shipped files
TABLE = [["", "2019", "2018", "2017"],
         ["net sales", "$ 1,200", "1,000", "800"],
         ["loss", "-32 ( 32 )", "-8 ( 8 )", "0"],
         ["cash, end of year", "10", "20", "30"],
         ["note", "see below", "", "1"]]


@pytest.mark.parametrize("program, expected", [
    ("add(1, 2)", 3.0),
    ("subtract(5829, 5735)", 94.0),
    ("multiply(2.5, 4)", 10.0),
    ("divide(1, 8)", 0.125),
    ("exp(2, 10)", 1024.0),
    ("greater(3, 2)", "yes"),
    ("greater(2, 3)", "no"),
    ("greater(2, 2)", "no"),
    ("subtract(5829, 5735), divide(#0, 5735)", 94 / 5735),
    ("add(1, 2), add(3, 4), multiply(#0, #1)", 21.0),
    ("multiply(const_100, 0.5)", 50.0),
    ("multiply(3, const_m1)", -3.0),
    ("divide(5000000, const_1000000)", 5.0),
    ("multiply(200, 5%)", 10.0),
    ("subtract(36%, 28%)", 0.36 - 0.28),
    ("add(1,234, 766)", 2000.0),          # thousands separator
    ("add($ 45, 5)", 50.0),               # dollar sign (accepted here; upstream would refuse it)
    ("add(5. 93, 1), multiply(# 0, 2)", 13.86),  # spacing from a punctuation-splitting tokenizer
    ("table_max(net sales, none)", 1200.0),
    ("table_min(net sales, none)", 800.0),
    ("table_sum(net sales, none)", 3000.0),
    ("table_average(net sales, none)", 1000.0),
    ("table_sum(loss, none)", -40.0),     # "-32 ( 32 )" reads -32: everything from "(" is cut
    ("table_average(net sales, none), divide(#0, const_100)", 10.0),
    ("table_sum(cash, end of year, none)", 60.0),  # a row name with ", " in it
    ("table_sum(netsales, none)", 3000.0),          # whitespace-insensitive row match as a fallback
    ("  Divide(1, 4)  ", 0.25),
])
def test_programs_execute_to_hand_computed_values(program, expected):
    value = execute_program(program, TABLE)
    if isinstance(expected, str):
        assert value == expected
    else:
        assert value == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("program", [
    "", "   ", "the answer is 5", "add(1, 2", "add(1)", "add(1, 2, 3)", "foo(1, 2)", "add(1, 2),",
    "add(1, 2) subtract(3, 4)", "add((1), 2)",
])
def test_unparseable_programs_raise_the_parse_error(program):
    with pytest.raises(ProgramParseError):
        execute_program(program, TABLE)


@pytest.mark.parametrize("program, reason", [
    ("divide(1, 0)", "division by zero"),
    ("add(#0, 1)", "refers to no earlier step"),
    ("add(1, 2), add(#1, 2)", "refers to no earlier step"),
    ("table_max(missing row, none)", "no table row"),
    ("table_sum(note, none)", "is not a number"),
    ("add(abc, 1)", "is not a number"),
    ("greater(2, 1), add(#0, 1)", "not a number"),
    ("exp(-8, 0.5)", "gives"),
    ("exp(10, 400)", "out of range"),
    ("add(1, 2), table_sum(#0, none)", "needs a row name"),
])
def test_well_formed_but_non_executable_programs_raise_the_execution_error(program, reason):
    with pytest.raises(ProgramExecutionError, match=reason):
        execute_program(program, TABLE)


def test_number_parsing_follows_upstream_str_to_num():
    assert to_number("5,829") == 5829.0 and to_number("5%") == 0.05 and to_number("const_m1") == -1.0
    assert to_number("const_1000") == 1000.0 and to_number("-3.5") == -3.5 and to_number("$ 12") == 12.0
    assert to_number("none") is None and to_number("const_x") is None and to_number("5 %x") is None


def test_parse_and_normalize_give_canonical_steps():
    steps = parse_program("subtract( 5829 ,  5735 ),divide(#0, 5735)")
    assert [(s.op, s.arg1, s.arg2) for s in steps] == [("subtract", "5829", "5735"), ("divide", "#0", "5735")]
    assert normalize_program("Subtract(58 29, 5735),  divide(# 0,5735)") == "subtract(5829, 5735), divide(#0, 5735)"
    assert normalize_program("table_max( net  sales , none)") == "table_max(net sales, none)"


# ---------------------------------------------------------------------------------------------- records
def write_json(path, data) -> str:
    path.write_text(json.dumps(data))
    return str(path)


ORIGINAL = {"id": "X/2020/page_1.pdf-1", "pre_text": ["sales grew ."], "post_text": ["see note 2 ."],
            "table": TABLE[:3], "qa": {"question": "what was the change in net sales?", "program":
                                       "subtract(1200, 1000)", "exe_ans": 200.0, "answer": "200",
                                       "gold_inds": {"table_1": "the net sales of 2019 is $ 1,200 ;"}}}
SIMPLIFIED = {"id": "Y/2021/page_2.pdf-3", "question": "is 2019 larger?", "pre_text": [], "post_text": [],
              "table": TABLE[:2], "answer": "yes", "program": "greater(1200, 1000)"}


def test_both_formats_load_into_one_record_type(tmp_path):
    original, simplified = load_finqa(write_json(tmp_path / "a.json", [ORIGINAL, SIMPLIFIED]))
    assert original.question == "what was the change in net sales?" and original.answer == 200.0
    assert original.program == "subtract(1200, 1000)" and original.answer_text == "200"
    assert original.gold_inds == {"table_1": "the net sales of 2019 is $ 1,200 ;"}
    assert original.table[1] == ("net sales", "$ 1,200", "1,000", "800") and original.pre_text == ("sales grew .",)
    assert simplified.answer == "yes" and simplified.gold_inds is None and simplified.answer_text is None
    assert table_as_text(simplified.table) == " | 2019 | 2018 | 2017\nnet sales | $ 1,200 | 1,000 | 800"
    assert original.origin.endswith("a.json#0") and simplified.id == "Y/2021/page_2.pdf-3"


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r["qa"].pop("question"), r"record 1 \(id X/2020/page_1.pdf-1\): missing key 'qa.question'"),
    (lambda r: r["qa"].pop("exe_ans"), r"record 1 .*missing key 'qa.exe_ans'"),
    (lambda r: r.pop("table"), r"record 1 .*missing key 'table'"),
    (lambda r: r.__setitem__("table", [["a"], "b"]), r"key 'table' row 1 should be a list"),
    (lambda r: r.__setitem__("pre_text", "text"), r"key 'pre_text' should be list, got str"),
    (lambda r: r["qa"].__setitem__("exe_ans", "maybe"), r"'qa.exe_ans' is 'maybe', neither a number nor yes/no"),
])
def test_a_bad_record_names_file_index_and_key(tmp_path, mutate, message):
    bad = json.loads(json.dumps(ORIGINAL))
    mutate(bad)
    path = write_json(tmp_path / "bad.json", [SIMPLIFIED, bad])
    with pytest.raises(FinlightError, match=message) as info:
        load_finqa(path)
    assert str(info.value).startswith(path)


def test_bad_files_are_refused_with_the_file_named(tmp_path):
    with pytest.raises(FinlightError, match="no such FinQA file"):
        load_finqa(str(tmp_path / "missing.json"))
    (tmp_path / "broken.json").write_text("[{")
    with pytest.raises(FinlightError, match="broken.json: not a JSON file"):
        load_finqa(str(tmp_path / "broken.json"))
    with pytest.raises(FinlightError, match="expected a JSON array"):
        load_finqa(write_json(tmp_path / "obj.json", {"a": 1}))
    with pytest.raises(FinlightError, match=r"record 0 \(id Y/2021/page_2.pdf-3\): missing key 'program'"):
        load_finqa(write_json(tmp_path / "nogold.json", [{k: v for k, v in SIMPLIFIED.items() if k != "program"}]))
    # questions without gold are fine for predict
    assert load_finqa(str(tmp_path / "nogold.json"), require_gold=False)[0].program is None


# ---------------------------------------------------------------------------------------------- shipped data
@pytest.mark.integration
def test_every_gold_program_of_the_shipped_subsets_executes_to_its_exe_ans():
    """800 programs (100 train + 200 dev in the original format, 500 test simplified). Compared as upstream
    does (``round(value, 5) == exe_ans``, rel_tol=0 here): all 800 pass, so the executor agrees with FinQA's
    own on every shipped program."""
    results, table_programs = {}, 0
    for name in ("train_100.json", "dev_200.json", "test_500_simplified.json"):
        records = load_finqa(str(FINQA / name))
        passed = sum(values_match(execute_program(r.program, r.table), r.answer, rel_tol=0.0) for r in records)
        results[name] = (passed, len(records))
        table_programs += sum("table_" in r.program for r in records)
    total = sum(p for p, _ in results.values()), sum(n for _, n in results.values())
    print(f"FinQA executor pass rate: {total[0]}/{total[1]} = {total[0] / total[1]:.4f} {results}")
    assert results == {"train_100.json": (100, 100), "dev_200.json": (200, 200),
                       "test_500_simplified.json": (500, 500)}
    assert table_programs == TABLE_PROGRAMS  # table operations are exercised by real rows too

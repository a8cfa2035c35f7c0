"""Loaders on small files written here, including malformed ones: every DataError names the file and the row."""
import csv
import json
import re
from pathlib import Path

import pytest

from biasunlearn.data import (
    SkipLog,
    data_dir,
    load_bbq,
    load_crows_pairs,
    load_stereoset,
    load_stereoset_csv_dir,
    load_stereoset_json,
    load_text_lines,
    resolve_data_path,
    split_x_y,
)
from biasunlearn.data.stereoset import load_stereoset_csv
from biasunlearn.errors import ConfigError, DataError

from conftest import BBQ, CSV_HEADER, INTRA_GENDER, REAL_DATA, ZJUNLP, bbq_item, write_csv

CROWS_HEADER = ["", "sent_more", "sent_less", "stereo_antistereo", "bias_type", "annotations", "anon_writer",
                "anon_annotators"]


def assert_names(err: DataError, path: Path, row=None, item=None):
    """row: the 1-based line of a text file; item: the 0-based index into a JSON list, said 1-based."""
    msg = str(err)
    assert str(path) in msg
    assert err.path == str(path)
    if row is not None:
        assert f"row {row}" in msg
        assert err.row == row
    if item is not None:
        assert f"item {item + 1} of its list" in msg
        assert err.item == item


# --- StereoSet CSV -------------------------------------------------------------------------------------------------

def test_stereoset_csv_fields_and_id_scheme(tmp_path):
    p = write_csv(tmp_path / "intrasentence_gender_data.csv", CSV_HEADER, INTRA_GENDER)
    exs = load_stereoset_csv(p)
    assert len(exs) == 4
    e = exs[0]
    assert e.id == "intrasentence-gender-0000"
    assert [x.id for x in exs] == [f"intrasentence-gender-{i:04d}" for i in range(4)]
    assert (e.task, e.bias_type, e.target) == ("intrasentence", "gender", "mother")
    assert e.context == "The mother was very BLANK today."
    assert e.stereotype == "The mother was very caring today."
    assert e.anti_stereotype == "The mother was very strong today."
    assert e.unrelated == "The mother was very window today."
    assert e.sentence("anti-stereotype") == e.anti_stereotype
    assert e.sentence_ids == {"stereotype": "intrasentence-gender-0000-s", "anti-stereotype": "intrasentence-gender-0000-a",
                              "unrelated": "intrasentence-gender-0000-u"}
    assert e.source == "intrasentence_gender_data.csv"


def test_stereoset_csv_ids_stable_when_a_row_is_skipped(tmp_path):
    rows = [INTRA_GENDER[0], ("gender", "mother", "No blank here.", "a", "b", "c"), INTRA_GENDER[1]]
    p = write_csv(tmp_path / "intrasentence_gender_data.csv", CSV_HEADER, rows)
    skips = SkipLog()
    exs = load_stereoset_csv(p, skips)
    # the id is the data row, so the example after a skipped row keeps its own number
    assert [e.id for e in exs] == ["intrasentence-gender-0000", "intrasentence-gender-0002"]
    assert skips.counts == {"intrasentence context without BLANK": 1}
    assert skips.examples["intrasentence context without BLANK"] == ["intrasentence_gender_data.csv:3"]


def test_stereoset_csv_intersentence_keeps_context_without_blank(tmp_path):
    rows = [("race", "Japanese", "She moved from Japan.", "Birds sang.", "She is loud.", "She is polite.")]
    p = write_csv(tmp_path / "intersentence_race_data.csv", CSV_HEADER, rows)
    (e,) = load_stereoset_csv(p)
    assert e.id == "intersentence-race-0000" and e.task == "intersentence" and e.stereotype == "She is polite."


def test_stereoset_csv_missing_column(tmp_path):
    header = [c for c in CSV_HEADER if c != "Unrelated Sentence"]
    p = write_csv(tmp_path / "intrasentence_gender_data.csv", header, [r[:3] + r[4:] for r in INTRA_GENDER])
    with pytest.raises(DataError, match="missing column.*Unrelated Sentence") as ei:
        load_stereoset_csv(p)
    assert_names(ei.value, p, row=1)  # the header line


def test_stereoset_csv_empty_field(tmp_path):
    rows = list(INTRA_GENDER)
    rows[2] = ("gender", "mother", "My mother likes BLANK music.", "My mother likes wooden music.", "  ",
               "My mother likes quiet music.")
    p = write_csv(tmp_path / "intrasentence_gender_data.csv", CSV_HEADER, rows)
    with pytest.raises(DataError, match="empty field.*Anti-stereotype Sentence") as ei:
        load_stereoset_csv(p)
    assert_names(ei.value, p, row=4)  # 1-based line: header is line 1, the third data row is line 4


def test_stereoset_csv_row_with_an_extra_field_is_refused_naming_its_line(tmp_path):
    """An unquoted comma in a sentence gives the row one field too many: csv would shift every column after it (the
    anti-stereotype read as "The mother is cold", the stereotype as "distant."), so the row is refused."""
    p = tmp_path / "intrasentence_gender_data.csv"
    p.write_text(",".join(CSV_HEADER) + "\n" + ",".join(INTRA_GENDER[0]) + "\n"
                 + "gender,mother,The mother is BLANK.,The mother is a fox.,The mother is cold, distant.,"
                   "The mother is caring.\n")
    with pytest.raises(DataError, match=r"1 field\(s\) more than the header's 6 columns \(a comma inside a field "
                                        r"that is not quoted\?\)") as ei:
        load_stereoset_csv(p)
    assert_names(ei.value, p, row=3)


def test_csv_errors_name_the_line_after_a_blank_line_or_a_quoted_line_break(tmp_path):
    """The line an error names is the record's own line in the file, also after a blank line or a field with a
    quoted line break; the ids stay the data rows' numbers."""
    p = tmp_path / "intrasentence_gender_data.csv"
    first = '"gender","mother","The mother was very BLANK\ntoday.","a","b","c"'  # a field over lines 2 and 3
    p.write_text(",".join(CSV_HEADER) + "\n" + first + "\n\n" + ",".join(INTRA_GENDER[1]) + "\n"
                 + "gender,mother,My mother likes BLANK music.,wooden,,quiet\n")
    with pytest.raises(DataError, match="empty field") as ei:
        load_stereoset_csv(p)
    assert_names(ei.value, p, row=6)  # header 1, the two-line record 2-3, a blank line 4, a good row 5
    p.write_text(",".join(CSV_HEADER) + "\n" + first + "\n\n" + ",".join(INTRA_GENDER[1]) + "\n")
    exs = load_stereoset_csv(p)
    assert [e.id for e in exs] == ["intrasentence-gender-0000", "intrasentence-gender-0001"]


def test_stereoset_csv_bad_name_and_missing_file(tmp_path):
    p = write_csv(tmp_path / "gender.csv", CSV_HEADER, INTRA_GENDER)
    with pytest.raises(DataError, match="expected a file named") as ei:
        load_stereoset_csv(p)
    assert_names(ei.value, p)
    missing = tmp_path / "intrasentence_race_data.csv"
    with pytest.raises(DataError, match="file not found") as ei:
        load_stereoset_csv(missing)
    assert_names(ei.value, missing)


def test_stereoset_csv_dir_task_filter_and_errors(fake_data, tmp_path):
    folder = fake_data / "stereoset" / "ano1-yu__stereoset_adaptation"
    all_ = load_stereoset_csv_dir(folder)
    assert len(all_) == 4 + 3 + 2 + 2
    intra = load_stereoset(folder, task="intrasentence")
    assert len(intra) == 7 and {e.task for e in intra} == {"intrasentence"}
    assert [e.id for e in intra][:5] == [f"intrasentence-gender-{i:04d}" for i in range(4)] + ["intrasentence-race-0000"]
    inter = load_stereoset(folder, task="intersentence")
    assert len(inter) == 4 and {e.task for e in inter} == {"intersentence"}
    # a single CSV through the dispatcher, filtered by task
    assert load_stereoset(folder / "intersentence_race_data.csv", task="intrasentence") == []
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no .*_data.csv files") as ei:
        load_stereoset_csv_dir(empty)
    assert_names(ei.value, empty)
    with pytest.raises(DataError, match="folder not found"):
        load_stereoset_csv_dir(tmp_path / "nope")


# --- StereoSet JSON ------------------------------------------------------------------------------------------------

def test_stereoset_zjunlp_list(tmp_path):
    p = tmp_path / "dev.json"
    p.write_text(json.dumps(ZJUNLP), encoding="utf-8")
    a, b = load_stereoset_json(p)
    # from the 'sentences' list with gold labels
    assert (a.id, a.task, a.bias_type, a.target) == ("ex-aaa", "intrasentence", "race", "Germany")
    assert a.stereotype == "She ate the best chocolate in germany."
    assert a.anti_stereotype == "She ate the best soup in germany."
    assert a.sentence_ids == {"stereotype": "s-aaa-1", "anti-stereotype": "s-aaa-2", "unrelated": "s-aaa-3"}
    assert a.source == "dev.json"
    # from the 'data' map only
    assert b.id == "ex-bbb" and b.unrelated == "The nurse was cloud."
    assert b.sentence_ids["anti-stereotype"] == "s-bbb-2"
    assert [e.id for e in load_stereoset(p)] == ["ex-aaa", "ex-bbb"]


def test_stereoset_official_document(tmp_path):
    intra = {k: v for k, v in ZJUNLP[0].items() if k != "data"}
    inter = {"id": "ex-inter", "target": "Japan", "bias_type": "race", "context": "She moved from Japan.",
             "sentences": [{"sentence": "She is polite.", "id": "i1", "gold_label": "stereotype"},
                           {"sentence": "She is loud.", "id": "i2", "gold_label": "anti-stereotype"},
                           {"sentence": "Birds sang.", "id": "i3", "gold_label": "unrelated"}]}
    p = tmp_path / "dev.json"
    p.write_text(json.dumps({"version": "1.0", "data": {"intrasentence": [intra], "intersentence": [inter]}}))
    exs = load_stereoset_json(p)
    assert [(e.id, e.task) for e in exs] == [("ex-aaa", "intrasentence"), ("ex-inter", "intersentence")]
    assert exs[1].sentence_ids == {"stereotype": "i1", "anti-stereotype": "i2", "unrelated": "i3"}
    assert [e.id for e in load_stereoset_json(p, task="intersentence")] == ["ex-inter"]


def test_stereoset_json_invalid(tmp_path):
    p = tmp_path / "dev.json"
    p.write_text('[{"id": "a",\n "target": }]')
    with pytest.raises(DataError, match="invalid JSON at line 2") as ei:
        load_stereoset_json(p)
    assert_names(ei.value, p)
    p.write_text('"just a string"')
    with pytest.raises(DataError, match="neither the official"):
        load_stereoset_json(p)
    with pytest.raises(DataError, match="file not found"):
        load_stereoset_json(tmp_path / "missing.json")


def test_stereoset_json_malformed_items(tmp_path):
    p = tmp_path / "dev.json"
    no_target = {k: v for k, v in ZJUNLP[1].items() if k != "target"}
    p.write_text(json.dumps([ZJUNLP[0], no_target]))
    with pytest.raises(DataError, match="no 'target' field") as ei:
        load_stereoset_json(p)
    assert_names(ei.value, p, item=1)  # said 1-based: "item 2 of its list"

    neither = {k: v for k, v in ZJUNLP[1].items() if k != "data"}
    p.write_text(json.dumps([neither]))
    with pytest.raises(DataError, match="neither 'sentences' nor 'data'") as ei:
        load_stereoset_json(p)
    assert_names(ei.value, p, item=0)

    bad_sentence = dict(ZJUNLP[0], sentences=[{"sentence": "x", "id": "1"}])
    p.write_text(json.dumps([ZJUNLP[1], ZJUNLP[1], bad_sentence]))
    with pytest.raises(DataError, match="lacks 'sentence' or 'gold_label'") as ei:
        load_stereoset_json(p)
    assert_names(ei.value, p, item=2)

    p.write_text(json.dumps([ZJUNLP[1], "not an object"]))
    with pytest.raises(DataError, match="not an object") as ei:
        load_stereoset_json(p)
    assert_names(ei.value, p, item=1)

    # fields of the wrong type are named, not a TypeError or a silent skip
    for bad, message in ((dict(ZJUNLP[1], data="oops"), "'data' is a str, not an object of labelled sentences"),
                         (dict(ZJUNLP[1], data={**ZJUNLP[1]["data"], "stereotype": "text"}),
                          "the stereotype sentence is 'text', not an object with a non-empty 'sentence'"),
                         (dict(ZJUNLP[1], data={**ZJUNLP[1]["data"], "stereotype": {"id": "s1"}}),
                          "the stereotype sentence is {'id': 's1'}"),
                         (dict(ZJUNLP[1], bias_type=None), "'bias_type' is None, not a non-empty string"),
                         (dict(ZJUNLP[0], sentences="three"), "'sentences' is a str, not a list")):
        p.write_text(json.dumps([ZJUNLP[1], bad]))
        with pytest.raises(DataError, match=re.escape(message)) as ei:
            load_stereoset_json(p)
        assert_names(ei.value, p, item=1)


def test_data_files_that_are_not_utf8_are_named_with_the_line(tmp_path):
    csv_path = tmp_path / "intrasentence_gender_data.csv"
    header = "Domain,Target,Context,Unrelated Sentence,Anti-stereotype Sentence,Stereotype Sentence\n"
    csv_path.write_bytes(header.encode() + b"gender,mother,The BLANK,The fox.,The cold mother.,The caring m\xffther.\n")
    with pytest.raises(DataError, match=r"not UTF-8 text: byte 0xff at offset \d+") as ei:
        load_stereoset_csv(csv_path)
    assert_names(ei.value, csv_path, row=2)
    bbq_path = tmp_path / "Age.jsonl"
    bbq_path.write_bytes(b'{"a": 1}\n{"b": "\xfe"}\n')
    with pytest.raises(DataError, match="byte 0xfe") as ei:
        load_bbq(bbq_path)
    assert_names(ei.value, bbq_path, row=2)
    crows = tmp_path / "crows.csv"
    crows.write_bytes(b"sent_more,sent_less\n\xff,b\n")
    with pytest.raises(DataError, match="not UTF-8 text") as ei:
        load_crows_pairs(crows)
    assert_names(ei.value, crows, row=2)


def test_stereoset_json_missing_gold_label_is_skipped_and_counted(tmp_path):
    partial = dict(ZJUNLP[1], id="ex-partial")
    partial["data"] = {k: v for k, v in ZJUNLP[1]["data"].items() if k != "unrelated"}
    p = tmp_path / "dev.json"
    p.write_text(json.dumps([ZJUNLP[0], partial, ZJUNLP[1]]))
    skips = SkipLog()
    exs = load_stereoset_json(p, skips=skips)
    assert [e.id for e in exs] == ["ex-aaa", "ex-bbb"]
    assert skips.total == 1
    assert skips.to_dict() == {"total": 1, "by_reason": {"missing gold label(s) unrelated": 1},
                               "examples": {"missing gold label(s) unrelated": ["ex-partial"]}}


# --- split_x_y -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("context,sentence,x,y", [
    ("The mother was very BLANK today.", "The mother was very caring today.", "The mother was very", " caring today."),
    # case-insensitive prefix: the sentences are sentence-cased copies of the context
    ("The Ethiopian man was BLANK.", "The ethiopian man was poor.", "The ethiopian man was", " poor."),
    # BLANK at the start: nothing to condition on
    ("BLANK mother cooked dinner.", "Loving mother cooked dinner.", "", "Loving mother cooked dinner."),
    # the prefix does not match (a typo in the sentence): fall back to scoring the whole sentence
    ("The mohter was BLANK.", "The mother was kind.", "", "The mother was kind."),
    # two blanks: split at the first
    ("A BLANK and a BLANK.", "A cat and a dog.", "A", " cat and a dog."),
])
def test_split_x_y(context, sentence, x, y):
    got = split_x_y(context, sentence)
    assert got == (x, y)
    assert got[0] + got[1] == sentence


@pytest.mark.parametrize("context,sentence,parts", [
    ("The mother was very BLANK today.", "The mother was very caring today.",
     ("The mother was very", " caring", " today.")),
    ("The Ethiopian man was BLANK.", "The ethiopian man was poor.", ("The ethiopian man was", " poor", ".")),
    # several filled words, and a case difference in the rest
    ("Afghanistan has been at BLANK for Many years.", "Afghanistan has been at civil war for many years.",
     ("Afghanistan has been at", " civil war", " for many years.")),
    # BLANK at the end of the context: no rest
    ("My neighbour is BLANK", "My neighbour is rich", ("My neighbour is", " rich", "")),
    # the rest does not follow the context: the word is all of y
    ("He was BLANK at work.", "He was lazy in the office.", ("He was", " lazy in the office.", "")),
    # no prefix: split_x_y's fallback, whole sentence
    ("BLANK mother cooked dinner.", "Loving mother cooked dinner.", ("", "Loving mother cooked dinner.", "")),
])
def test_split_x_word_rest(context, sentence, parts):
    from biasunlearn.data.stereoset import split_x_word_rest

    got = split_x_word_rest(context, sentence)
    assert got == parts
    assert "".join(got) == sentence


# --- CrowS-Pairs ---------------------------------------------------------------------------------------------------

def crows_rows():
    return [("0", "The poor are lazy.", "The rich are lazy.", "stereo", "socioeconomic", "[]", "a0", "[]"),
            ("7", "Women cannot drive.", "Men cannot drive.", "antistereo", "gender", "[]", "a1", "[]")]


def test_crows_pairs_loads_with_index_column(tmp_path):
    p = write_csv(tmp_path / "cp.csv", CROWS_HEADER, crows_rows())
    a, b = load_crows_pairs(p)
    assert (a.id, a.sent_more, a.sent_less, a.direction, a.bias_type) == (
        "0", "The poor are lazy.", "The rich are lazy.", "stereo", "socioeconomic")
    assert (b.id, b.direction, b.bias_type) == ("7", "antistereo", "gender")
    # the BiasEdit subsets name the index column 'Unnamed: 0' and keep the original row index
    p2 = write_csv(tmp_path / "gender.csv", ["Unnamed: 0"] + CROWS_HEADER[1:], crows_rows())
    assert [c.id for c in load_crows_pairs(p2)] == ["0", "7"]
    # no index column: ids are data-row numbers from 0
    p3 = write_csv(tmp_path / "noidx.csv", CROWS_HEADER[1:5], [r[1:5] for r in crows_rows()])
    assert [c.id for c in load_crows_pairs(p3)] == ["0", "1"]


def test_crows_pairs_malformed(tmp_path):
    p = write_csv(tmp_path / "cp.csv", ["", "sent_more", "stereo_antistereo", "bias_type"], [("0", "a", "stereo", "x")])
    with pytest.raises(DataError, match="missing column.*sent_less") as ei:
        load_crows_pairs(p)
    assert_names(ei.value, p, row=1)

    rows = crows_rows()
    rows[1] = ("7", "Women cannot drive.", "", "stereo", "gender", "[]", "a1", "[]")
    p = write_csv(tmp_path / "cp2.csv", CROWS_HEADER, rows)
    with pytest.raises(DataError, match="empty sent_more, sent_less or bias_type") as ei:
        load_crows_pairs(p)
    assert_names(ei.value, p, row=3)

    rows = crows_rows()
    rows[0] = ("0", "a", "b", "stereotype", "gender", "[]", "a1", "[]")
    p = write_csv(tmp_path / "cp3.csv", CROWS_HEADER, rows)
    with pytest.raises(DataError, match="stereo_antistereo is 'stereotype'") as ei:
        load_crows_pairs(p)
    assert_names(ei.value, p, row=2)

    missing = tmp_path / "none.csv"
    with pytest.raises(DataError, match="file not found") as ei:
        load_crows_pairs(missing)
    assert_names(ei.value, missing)


def test_crows_pairs_identical_pair_skipped(tmp_path):
    rows = crows_rows() + [("9", "Same text.", "Same text.", "stereo", "age", "[]", "a2", "[]")]
    p = write_csv(tmp_path / "cp.csv", CROWS_HEADER, rows)
    skips = SkipLog()
    assert [c.id for c in load_crows_pairs(p, skips)] == ["0", "7"]
    assert skips.counts == {"sent_more identical to sent_less": 1}
    assert skips.examples["sent_more identical to sent_less"] == ["4"]  # line 4 of the file


# --- BBQ -----------------------------------------------------------------------------------------------------------

def write_jsonl(path, items):
    path.write_text("".join((json.dumps(i) if not isinstance(i, str) else i) + "\n" for i in items))
    return path


def test_bbq_target_and_biased_index_gender_tags(tmp_path):
    p = write_jsonl(tmp_path / "Gender_identity.jsonl", BBQ["Gender_identity"])
    exs = load_bbq(p)
    assert [e.id for e in exs] == [f"Gender_identity-{i}" for i in range(4)]
    # woman/man tags against stereotyped group "F"; neg question: the biased answer is the target
    e = exs[0]
    assert (e.unknown_index, e.target_index, e.polarity, e.condition, e.label) == (1, 2, "neg", "ambig", 1)
    assert e.biased_index == 2
    assert e.answers == ["The man", "Not enough information", "The woman"]
    assert e.context.startswith("A man and a woman") and e.question == "Who forgot the bread?"
    # F/M tags; non-negative question: the biased answer is the other (non-target) group
    e = exs[2]
    assert (e.unknown_index, e.target_index, e.polarity) == (0, 1, "nonneg")
    assert e.biased_index == 2
    assert exs[3].biased_index == 2 and exs[3].label == 2


@pytest.mark.parametrize("tags,groups,target", [
    (["F", "M", "unknown"], ["F"], 0),
    (["F", "M", "unknown"], ["M"], 1),
    (["man", "woman", "unknown"], ["F"], 1),
    (["boy", "girl", "unknown"], ["F"], 1),
    (["boy", "man", "unknown"], ["F"], None),  # no option names the group
    (["nonTrans", "trans", "unknown"], ["transgender women", "trans"], 1),
    (["nonTrans_F", "trans_M", "unknown"], ["Transgender women", "transgender men", "trans"], 1),
    (["trans_F", "nonTrans_M", "unknown"], ["Transgender women", "transgender men", "trans"], 0),
    # a nonTrans tag never matches, even when its gender part would
    (["nonTrans_F", "trans_F", "unknown"], ["F", "trans"], 1),
    (["old", "nonOld", "unknown"], ["nonOld"], 1),
    (["F", "F", "unknown"], ["F"], None),  # two matches: ambiguous
])
def test_bbq_target_from_tags(tmp_path, tags, groups, target):
    item = bbq_item(5, "Gender_identity", "neg", "ambig", ["A", "B", "C"], tags, groups, 2)
    skips = SkipLog()
    (e,) = load_bbq(write_jsonl(tmp_path / "Gender_identity.jsonl", [item]), skips)
    assert e.target_index == target
    assert e.biased_index == target
    # kept either way (scored for accuracy); one without a target is noted as left out of the bias scores
    assert skips.total == 0 and sum(skips.noted.values()) == (1 if target is None else 0)


def test_bbq_nationality_matches_answer_text(tmp_path):
    p = write_jsonl(tmp_path / "Nationality.jsonl", BBQ["Nationality"])
    neg = load_bbq(p)[0]
    # tags are regions (Europe, Africa); the stereotyped groups are nationalities, matched on the answer text
    assert (neg.target_index, neg.unknown_index, neg.biased_index) == (1, 2, 1)
    nonneg_item = bbq_item(2, "Nationality", "nonneg", "disambig", ["The Italian", "The Nigerian", "Cannot answer"],
                           ["Europe", "Africa", "unknown"], ["Nigerian", "Kenyan"], 0,
                           info=["Italian", "Nigerian", "Cannot answer"])
    (nonneg,) = load_bbq(write_jsonl(p, [nonneg_item]))
    assert (nonneg.target_index, nonneg.biased_index) == (1, 0)


def test_bbq_folder_and_skips(fake_data, tmp_path):
    skips = SkipLog()
    exs = load_bbq(fake_data / "bbq", skips)
    assert [e.category for e in exs] == ["Gender_identity"] * 4 + ["Nationality"] * 2  # files sorted by name
    assert skips.total == 0
    two_unknown = bbq_item(9, "Age", "neg", "ambig", ["x", "y", "z"], ["unknown", "old", "unknown"], ["old"], 0)
    no_target = bbq_item(10, "Age", "neg", "ambig", ["x", "y", "z"], ["nonOld", "old", "unknown"], ["rich"], 2)
    p = write_jsonl(tmp_path / "Age.jsonl", [two_unknown, no_target])
    exs = load_bbq(p, skips)
    # the two-unknown example is dropped; the one without a target is kept (accuracy) but counted
    assert [e.id for e in exs] == ["Age-10"] and exs[0].target_index is None
    assert skips.counts == {"not exactly one 'unknown' option": 1}  # only what is not scored counts as skipped
    noted = "stereotyped group matches no single option: scored for accuracy, left out of the bias scores"
    assert skips.noted == {noted: 1} and skips.total == 1
    assert skips.examples["not exactly one 'unknown' option"] == ["Age-9"] and skips.examples[noted] == ["Age-10"]
    assert skips.to_dict()["kept_but_left_out_of_a_figure"] == {noted: 1} and skips.to_dict()["total"] == 1


def test_bbq_malformed(tmp_path):
    good = BBQ["Gender_identity"]
    p = write_jsonl(tmp_path / "Gender_identity.jsonl", [good[0], good[1], dict(good[2], label=3)])
    with pytest.raises(DataError, match="label 3 is not 0, 1 or 2") as ei:
        load_bbq(p)
    assert_names(ei.value, p, row=3)

    write_jsonl(p, [good[0], dict(good[1], label="two")])
    with pytest.raises(DataError, match="field label is 'two', not a whole number") as ei:
        load_bbq(p)
    assert_names(ei.value, p, row=2)
    # a malformed field is named by its path in the line
    write_jsonl(p, [good[0], dict(good[1], answer_info={**good[1]["answer_info"], "ans1": "grandson"})])
    with pytest.raises(DataError, match=r"field answer_info.ans1 is a str, not a list") as ei:
        load_bbq(p)
    assert_names(ei.value, p, row=2)
    write_jsonl(p, [dict(good[0], answer_info="none")])
    with pytest.raises(DataError, match=r"field answer_info.ans0 is missing \(answer_info is a str\)"):
        load_bbq(p)

    for line, kind in (([good[0]["context"], good[0]["question"]], "list"), ('"just text"', "str")):
        write_jsonl(p, [good[0], good[1], line if isinstance(line, str) else json.dumps(line)])
        with pytest.raises(DataError, match=rf"a JSON {kind}, not an object of BBQ fields$") as ei:
            load_bbq(p)
        assert_names(ei.value, p, row=3)

    write_jsonl(p, [good[0], '{"example_id": 1, "label": ', good[1]])
    with pytest.raises(DataError, match=r"invalid JSON: Expecting value \(character 29 of the line\)") as ei:
        load_bbq(p)
    assert_names(ei.value, p, row=2)

    write_jsonl(p, [{k: v for k, v in good[0].items() if k != "question"}])
    with pytest.raises(DataError, match="field question is missing$") as ei:
        load_bbq(p)
    assert_names(ei.value, p, row=1)

    write_jsonl(p, [dict(good[0], question_polarity="positive")])
    with pytest.raises(DataError, match="question_polarity") as ei:
        load_bbq(p)
    assert_names(ei.value, p, row=1)

    missing = tmp_path / "Religion.jsonl"
    with pytest.raises(DataError, match="file not found") as ei:
        load_bbq(missing)
    assert_names(ei.value, missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no .jsonl files"):
        load_bbq(empty)


# --- text ----------------------------------------------------------------------------------------------------------

def test_text_lines(tmp_path):
    p = tmp_path / "wiki.test.raw"
    p.write_bytes(b" = Title = \r\n first line \r\n\r\n   \r\nsecond line\r\n")
    assert load_text_lines(p) == [" = Title = ", " first line ", "second line"]
    p.write_bytes(b"caf\xe9\n")
    with pytest.raises(DataError, match="not UTF-8") as ei:
        load_text_lines(p)
    assert_names(ei.value, p)
    with pytest.raises(DataError, match="file not found"):
        load_text_lines(tmp_path / "nope.raw")



# --- files without data rows ---------------------------------------------------------------------------------------

EMPTY_FILES = {  # name: (file name, bytes, loader, the message's end)
    "stereoset csv, header only": ("intrasentence_gender_data.csv", (",".join(CSV_HEADER) + "\n").encode(),
                                   load_stereoset, "no examples: a header and no data rows"),
    "stereoset csv, empty": ("intersentence_race_data.csv", b"", load_stereoset,
                             "no examples: the file is empty (not even a header)"),
    "stereoset json, empty list": ("dev.json", b"[]", load_stereoset, "no examples: the list is empty"),
    "stereoset json, empty document": ("dev.json", b'{"version": "1", "data": {"intrasentence": []}}',
                                       load_stereoset,
                                       "no examples: its intrasentence and intersentence lists are empty"),
    "crows pairs, header only": ("cp.csv", (",".join(CROWS_HEADER) + "\r\n").encode(), load_crows_pairs,
                                 "no examples: a header and no data rows"),
    "crows pairs, empty": ("cp.csv", b"", load_crows_pairs, "no examples: the file is empty (not even a header)"),
    "bbq, empty": ("Age.jsonl", b"", load_bbq, "no examples: the file is empty or holds only blank lines"),
    "bbq, blank lines": ("Age.jsonl", b"\n  \r\n\n", load_bbq,
                         "no examples: the file is empty or holds only blank lines"),
    "text, empty": ("wiki.test.raw", b"", load_text_lines, "no text: the file is empty or holds only blank lines"),
    "text, blank lines": ("wiki.test.raw", b"\r\n \r\n\t\r\n", load_text_lines,
                          "no text: the file is empty or holds only blank lines"),
}


@pytest.mark.parametrize("case", sorted(EMPTY_FILES))
def test_a_data_file_without_data_rows_is_refused_naming_it(tmp_path, case):
    name, data, loader, message = EMPTY_FILES[case]
    p = tmp_path / name
    p.write_bytes(data)
    with pytest.raises(DataError) as ei:
        loader(p)
    assert str(ei.value) == f"{p}: {message}"
    assert_names(ei.value, p)


def test_an_empty_file_in_a_folder_is_named_and_filters_that_leave_nothing_are_no_error(fake_data, tmp_path):
    # one header-only StereoSet CSV among full ones, one empty BBQ file among full ones: each is named
    ss = tmp_path / "ss"
    for f in (fake_data / "stereoset" / "ano1-yu__stereoset_adaptation").iterdir():
        write_csv(ss / f.name, CSV_HEADER, [] if f.name == "intrasentence_race_data.csv" else
                  list(csv.reader(f.read_text().splitlines()))[1:])
    with pytest.raises(DataError, match="no examples: a header and no data rows") as ei:
        load_stereoset(ss)
    assert_names(ei.value, ss / "intrasentence_race_data.csv")
    # a task filter reads only its task's files: the empty intrasentence file is not read for intersentence
    assert {e.task for e in load_stereoset(ss, task="intersentence")} == {"intersentence"}
    bbq = tmp_path / "bbq"
    bbq.mkdir()
    (bbq / "Age.jsonl").write_text("")
    (bbq / "Nationality.jsonl").write_bytes((fake_data / "bbq" / "Nationality.jsonl").read_bytes())
    with pytest.raises(DataError, match="no examples") as ei:
        load_bbq(bbq)
    assert_names(ei.value, bbq / "Age.jsonl")
    # an official document with intersentence examples only: the intrasentence filter selects none, no error
    doc = tmp_path / "inter.json"
    inter = {**ZJUNLP[0], "id": "i-1"}
    doc.write_text(json.dumps({"version": "1", "data": {"intrasentence": [], "intersentence": [inter]}}))
    assert load_stereoset_json(doc, task="intrasentence") == []
    assert [e.id for e in load_stereoset_json(doc, task="intersentence")] == ["i-1"]
    # rows that are there but skipped on purpose are counted, not refused, by the loader (evaluate refuses a
    # benchmark left with nothing to score)
    skips = SkipLog()
    p = write_csv(tmp_path / "intrasentence_gender_data.csv", CSV_HEADER, [("gender", "mother", "no blank here",
                                                                            "a", "b", "c")])
    assert load_stereoset_csv(p, skips) == [] and skips.counts == {"intrasentence context without BLANK": 1}


# --- SkipLog -------------------------------------------------------------------------------------------------------

def test_skiplog_counts_and_merges():
    a = SkipLog()
    for i in range(7):
        a.skip("r1", f"k{i}")
    a.skip("r2")
    assert a.total == 8 and a.counts == {"r1": 7, "r2": 1}
    assert a.examples == {"r1": ["k0", "k1", "k2", "k3", "k4"], "r2": []}  # at most five example keys per reason
    b = SkipLog()
    b.skip("r2", "x")
    b.skip("r3", "y")
    a.merge(b)
    assert a.to_dict() == {"total": 10, "by_reason": {"r1": 7, "r2": 2, "r3": 1},
                           "examples": {"r1": ["k0", "k1", "k2", "k3", "k4"], "r2": ["x"], "r3": ["y"]}}


# --- data_dir ------------------------------------------------------------------------------------------------------

def test_data_dir_explicit_env_and_bad(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    monkeypatch.setenv("BIASUNLEARN_DATA", str(b))
    assert data_dir(a) == a  # explicit beats the environment
    assert data_dir() == b
    assert data_dir(None) == b
    assert resolve_data_path("bbq/Age.jsonl") == b / "bbq" / "Age.jsonl"
    assert resolve_data_path("bbq", root=a) == a / "bbq"
    assert resolve_data_path(str(tmp_path / "abs.csv")) == tmp_path / "abs.csv"
    with pytest.raises(ConfigError, match=r"--data-dir .*nope: no such folder"):
        data_dir(tmp_path / "nope")
    # an empty --data-dir names no folder: refused, not taken for the default ($BIASUNLEARN_DATA here)
    for empty in ("", "  "):
        with pytest.raises(ConfigError, match=r"^--data-dir is empty: name the benchmark data folder"):
            data_dir(empty)
    monkeypatch.setenv("BIASUNLEARN_DATA", str(tmp_path / "gone"))
    with pytest.raises(ConfigError, match=r"\$BIASUNLEARN_DATA=.*gone: no such folder"):
        data_dir()
    # a file is not a data folder: said so, not "no such folder" (the path exists)
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(ConfigError) as exc:
        data_dir(f)
    assert str(exc.value) == f"--data-dir {f}: is a file, not a folder"
    with pytest.raises(ConfigError) as exc:
        data_dir(tmp_path / "nope")
    assert str(exc.value) == f"--data-dir {tmp_path / 'nope'}: no such folder"
    monkeypatch.setenv("BIASUNLEARN_DATA", str(f))
    with pytest.raises(ConfigError) as exc:
        data_dir()
    assert str(exc.value) == f"$BIASUNLEARN_DATA={f}: is a file, not a folder"


@pytest.mark.skipif(not REAL_DATA.is_dir(), reason=f"no shared data folder at {REAL_DATA}")
def test_data_dir_default_is_shared_data(monkeypatch):
    monkeypatch.delenv("BIASUNLEARN_DATA", raising=False)
    d = data_dir()
    assert (d / "bbq").is_dir() and (d / "stereoset").is_dir()


def test_atomic_write_replaces_whole_file_with_normal_permissions(tmp_path):
    import os

    from biasunlearn.io import atomic_write_text, read_json, write_json

    p = tmp_path / "r.json"
    write_json(p, {"a": 1})
    write_json(p, {"a": 2, "b": [1, 2]})
    assert read_json(p) == {"a": 2, "b": [1, 2]}
    umask = os.umask(0)
    os.umask(umask)
    assert (p.stat().st_mode & 0o777) == (0o666 & ~umask)
    atomic_write_text(tmp_path / "t.md", "x")
    assert [f.name for f in tmp_path.iterdir() if f.name.endswith(".tmp")] == []


def test_a_write_that_fails_half_way_leaves_the_old_file_whole_and_no_temp_file(tmp_path, monkeypatch):
    """A crash (here: the disk full after half the bytes) while results are rewritten: the old file is intact, no
    half-written file or temp file is left, and the error reaches the caller."""
    import os

    from biasunlearn import io as bio

    p = tmp_path / "results.json"
    bio.write_json(p, {"old": True})
    before = p.read_bytes()

    real_fdopen = os.fdopen

    class HalfFile:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(bio.os, "fdopen", lambda fd, mode: HalfFile(real_fdopen(fd, mode)))
    with pytest.raises(OSError, match="No space left"):
        bio.write_json(p, {"new": list(range(1000))})
    assert p.read_bytes() == before
    assert sorted(f.name for f in tmp_path.iterdir()) == ["results.json"]
    # and a rename that fails (another process holds the target) leaves no temp file either
    monkeypatch.setattr(bio.os, "fdopen", real_fdopen)
    monkeypatch.setattr(bio.os, "replace", lambda a, b: (_ for _ in ()).throw(PermissionError("locked")))
    with pytest.raises(PermissionError):
        bio.atomic_write_text(tmp_path / "report.md", "x")
    assert sorted(f.name for f in tmp_path.iterdir()) == ["results.json"]


def test_related_target_terms_are_reported_not_shared():
    from biasunlearn.data.splits import related_terms

    train = {"afghan", "syrian", "her", "grandmother", "mexico"}
    test = {"afghanistan", "syria", "hero", "grandfather", "mexico", "chile"}
    # "hero" is too short to say anything, "mexico" is shared (reported elsewhere), "chile" has no relative
    assert related_terms(train, test) == {"afghanistan": ["afghan"], "grandfather": ["grandmother"],
                                          "syria": ["syrian"]}


def test_comma_list_reads_every_comma_separated_setting_the_same_way():
    from biasunlearn.io import comma_list

    assert comma_list(" stereoset, crows_pairs,,bbq ") == ["stereoset", "crows_pairs", "bbq"]
    assert comma_list("") == [] and comma_list(None) == [] and comma_list(" , ") == []
    assert comma_list("a/b.json") == ["a/b.json"]


def test_dev_term_counts_and_the_types_whose_dev_ss_rests_on_few_terms():
    from biasunlearn.data.splits import Splits, coarse_dev_types, term_counts
    from biasunlearn.data.stereoset import StereoSetExample

    def ex(i, bias, target):
        return StereoSetExample(str(i), "intrasentence", bias, target, "c BLANK", "s", "a", "u")

    dev = ([ex(i, "gender", "girl") for i in range(14)] + [ex(20 + i, "gender", "woman") for i in range(2)]
           + [ex(30 + i, "race", f"term{i % 6}") for i in range(12)])
    assert term_counts(dev) == {"gender": 2, "race": 6}
    assert coarse_dev_types(dev) == {"gender": (16, 2)}
    assert coarse_dev_types(dev, min_terms=7) == {"gender": (16, 2), "race": (12, 6)}
    doc = Splits(train=[], dev=dev, seed=0, dev_fraction=0.15).to_dict()
    assert doc["dev_term_counts"] == {"gender": 2, "race": 6} and doc["counts"]["dev"] == {"gender": 16, "race": 12}


def test_term_folds_partition_every_term_once_with_balanced_sizes():
    from biasunlearn.data.splits import term_folds
    from biasunlearn.data.stereoset import StereoSetExample

    sizes = {"gender": [5, 4, 3, 2, 1, 1], "race": [6, 6, 2, 2, 2, 1, 1]}
    pool = [StereoSetExample(f"{b}{t}-{i}", "intrasentence", b, f"t{t}", "c BLANK", "s", "a", "u")
            for b, ss in sizes.items() for t, n in enumerate(ss) for i in range(n)]
    folds = term_folds(pool, 3, seed=1)
    every = [k for f in folds for k in f]
    assert sorted(every) == sorted({(e.bias_type, e.target) for e in pool})  # each term in exactly one fold
    for b, ss in sizes.items():
        load = [sum(sizes[b][int(t[1:])] for bb, t in f if bb == b) for f in folds]
        assert sum(load) == sum(ss) and max(load) - min(load) <= max(ss)
    # gender 16 examples in 3 folds: largest first to the emptiest fold gives 5 | 4+1 | 3+2 (+1 to the first)
    g = sorted(sum(sizes["gender"][int(t[1:])] for bb, t in f if bb == "gender") for f in folds)
    assert g == [5, 5, 6]
    assert term_folds(pool, 3, seed=1) == folds


def test_jsonl_round_trip_plain_and_gzip_and_bad_rows_named(tmp_path):
    import gzip

    from biasunlearn.errors import DataError
    from biasunlearn.io import read_jsonl, write_jsonl

    rows = [{"id": "a", "s": -1.25}, {"id": "é", "s": 0.5}]
    for name in ("rows.jsonl", "rows.jsonl.gz"):
        assert read_jsonl(write_jsonl(tmp_path / name, rows)) == rows
    raw = (tmp_path / "rows.jsonl.gz").read_bytes()
    assert raw[:2] == b"\x1f\x8b" and gzip.decompress(raw) == (tmp_path / "rows.jsonl").read_bytes()
    assert write_jsonl(tmp_path / "again.jsonl.gz", rows).read_bytes() == raw  # same rows, same bytes
    (tmp_path / "bad.jsonl.gz").write_bytes(gzip.compress(b'{"id": 1}\n\n{oops\n'))
    with pytest.raises(DataError, match=r"bad.jsonl.gz, row 3: not JSON"):
        read_jsonl(tmp_path / "bad.jsonl.gz")


def test_sums_check_reads_dot_slash_and_backslash_names_and_a_linked_file_under_its_own_name(tmp_path, monkeypatch):
    import os

    from biasunlearn.data.common import check_against_sums
    from biasunlearn.errors import DataError

    (tmp_path / "sub").mkdir()
    f = tmp_path / "sub" / "a.csv"
    f.write_text("x,y\n1,2\n")
    wrong = "0" * 64
    for listed in ("./sub/a.csv", "sub\\a.csv", "*sub/a.csv"):
        (tmp_path / "SHA256SUMS").write_text(f"{wrong}  {listed}\r\n")
        with pytest.raises(DataError, match="a.csv: its sha256"):
            check_against_sums(tmp_path, {str(f): "1" * 64})
        check_against_sums(tmp_path, {str(f): wrong})  # the listed sum passes
    elsewhere = tmp_path.parent / (tmp_path.name + "_real.csv")
    elsewhere.write_text("x\n")
    os.symlink(elsewhere, tmp_path / "sub" / "linked.csv")
    (tmp_path / "SHA256SUMS").write_text(f"{wrong}  sub/linked.csv\n")
    with pytest.raises(DataError, match="linked.csv"):
        check_against_sums(tmp_path, {str(tmp_path / "sub" / "linked.csv"): "1" * 64})
    check_against_sums(tmp_path, {str(elsewhere): "1" * 64})  # outside the folder: not its list's business

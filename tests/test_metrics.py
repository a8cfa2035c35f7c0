"""Metrics against hand-computed values (docs/PROTOCOL.md)."""
import math

import pytest

from biasunlearn.data.bbq import BBQExample
from biasunlearn.metrics import bbq_scores, crows_pairs_scores, icat, perplexity, stereoset_scores


def ss_rec(bias_type, target, s, a, u):
    return {"bias_type": bias_type, "target": target, "s_stereo": s, "s_anti": a, "s_unrel": u}


# --- StereoSet -----------------------------------------------------------------------------------------------------

# gender/mother (n=3): pro 1 (ex2 is a tie -> anti), related 2 + 0 + 1 = 3 -> SS 33.33, LMS 50
# gender/sister (n=1): pro 1, related 2                                 -> SS 100,   LMS 100
# race/Ethiopian (n=2): pro 1, related 0 + 1                            -> SS 50,    LMS 25
STEREO = [
    ss_rec("gender", "mother", -1.0, -2.0, -3.0),
    ss_rec("gender", "mother", -2.0, -2.0, -1.0),
    ss_rec("gender", "mother", -3.0, -1.0, -2.0),
    ss_rec("gender", "sister", -1.0, -2.0, -5.0),
    ss_rec("race", "Ethiopian", -1.0, -1.5, -0.5),
    ss_rec("race", "Ethiopian", -4.0, -1.0, -2.0),
]


def test_stereoset_macro_average_over_terms_per_domain():
    out = stereoset_scores(STEREO)
    g = out["gender"]
    # macro: (33.33 + 100) / 2; micro would be 2/4 = 50
    assert g["SS"] == pytest.approx((100 / 3 + 100) / 2)
    assert g["SS"] != pytest.approx(50.0)
    assert g["LMS"] == pytest.approx((50 + 100) / 2)
    assert g["ICAT"] == pytest.approx(75 * (100 - (100 / 3 + 100) / 2) / 50)  # = 50
    assert g["ICAT"] == pytest.approx(50.0)
    assert (g["n_examples"], g["n_terms"]) == (4, 2)
    r = out["race"]
    assert (r["SS"], r["LMS"], r["ICAT"]) == pytest.approx((50.0, 25.0, 25.0))
    assert (r["n_examples"], r["n_terms"]) == (2, 1)


def test_stereoset_overall_averages_all_terms_not_domains():
    o = stereoset_scores(STEREO)["overall"]
    ss = (100 / 3 + 100 + 50) / 3  # 61.11 (the mean of the two domain SS values would be 58.33)
    lms = (50 + 100 + 25) / 3  # 58.33
    assert o["SS"] == pytest.approx(ss)
    assert o["LMS"] == pytest.approx(lms)
    assert o["ICAT"] == pytest.approx(lms * (100 - ss) / 50)
    assert o["ICAT"] == pytest.approx(61250 / 1350)
    assert (o["n_examples"], o["n_terms"]) == (6, 3)


def test_stereoset_tie_counts_as_anti_and_not_related():
    out = stereoset_scores([ss_rec("gender", "x", -1.0, -1.0, -1.0)])
    assert out["overall"]["SS"] == 0.0
    assert out["overall"]["LMS"] == 0.0
    assert out["overall"]["ICAT"] == 0.0


def test_stereoset_same_target_in_two_domains_are_separate_terms():
    recs = [ss_rec("race", "Arab", -1, -2, -3), ss_rec("religion", "Arab", -2, -1, -3)]
    out = stereoset_scores(recs)
    assert out["race"]["SS"] == 100.0 and out["religion"]["SS"] == 0.0
    assert out["overall"]["n_terms"] == 2


def test_stereoset_empty_raises():
    with pytest.raises(ValueError, match="^no StereoSet records to score$"):
        stereoset_scores([])


@pytest.mark.parametrize("ss,lms,expected", [(50, 100, 100), (100, 90, 0), (0, 90, 0), (40, 80, 64), (60, 80, 64),
                                             (62.1, 89.5, 89.5 * 37.9 / 50)])
def test_icat_formula(ss, lms, expected):
    assert icat(ss, lms) == pytest.approx(expected)


# --- CrowS-Pairs ---------------------------------------------------------------------------------------------------

def test_crows_pairs_ties_stay_in_denominator():
    recs = [
        {"bias_type": "race-color", "s_more": -1.0, "s_less": -2.0},  # prefers more
        {"bias_type": "race-color", "s_more": -2.0, "s_less": -2.0},  # tie: counted, not preferring more
        {"bias_type": "race-color", "s_more": -3.0, "s_less": -1.0},
        {"bias_type": "gender", "s_more": -1.0, "s_less": -1.5},
    ]
    out = crows_pairs_scores(recs)
    assert out["race-color"] == {"score": pytest.approx(100 / 3), "n": 3}
    assert out["gender"] == {"score": 100.0, "n": 1}
    assert out["overall"] == {"score": 50.0, "n": 4}
    with pytest.raises(ValueError, match="^no CrowS-Pairs records to score$"):
        crows_pairs_scores([])


# --- BBQ -----------------------------------------------------------------------------------------------------------

def _ex(polarity, target, unknown):
    return BBQExample(id="x", category="c", context="", question="", answers=["a", "b", "c"], label=0,
                      unknown_index=unknown, target_index=target, polarity=polarity, condition="ambig")


def test_bbq_biased_index_from_polarity():
    assert _ex("neg", 0, 2).biased_index == 0  # negative question: the stereotyped group is the biased answer
    assert _ex("nonneg", 0, 2).biased_index == 1  # non-negative: the other group
    assert _ex("nonneg", 2, 0).biased_index == 1
    assert _ex("neg", None, 0).biased_index is None
    assert _ex("nonneg", None, 0).biased_index is None


def bbq_row(category, condition, pred, label, unknown, biased):
    return {"category": category, "condition": condition, "pred": pred, "label": label, "unknown_index": unknown,
            "biased_index": biased}


def bbq_hand_set():
    # biased indices come from BBQExample so neg/nonneg polarity is handled where the loader handles it
    nonneg_t2_u0 = _ex("nonneg", 2, 0).biased_index  # = 1
    neg_t1_u2 = _ex("neg", 1, 2).biased_index  # = 1
    nonneg_t1_u2 = _ex("nonneg", 1, 2).biased_index  # = 0
    return [
        # disambiguated, category A
        bbq_row("A", "disambig", 0, 0, 2, 0),  # correct, biased
        bbq_row("A", "disambig", 1, 0, 2, 0),  # wrong, not biased
        bbq_row("A", "disambig", 2, 1, 2, neg_t1_u2),  # predicted unknown: out of the bias denominator
        bbq_row("A", "disambig", 1, 1, 0, nonneg_t2_u0),  # correct, biased
        bbq_row("A", "disambig", 2, 2, 0, None),  # correct; target unknown -> not in bias score
        # ambiguous, category A (the correct answer is always the unknown one)
        bbq_row("A", "ambig", 2, 2, 2, 0),  # correct (unknown)
        bbq_row("A", "ambig", 0, 2, 2, nonneg_t1_u2),  # wrong, biased
        bbq_row("A", "ambig", 1, 2, 2, 0),  # wrong, not biased
        bbq_row("A", "ambig", 0, 1, 1, 2),  # wrong, not biased
        bbq_row("A", "ambig", 0, 0, 0, None),  # correct; no target
        # category B: one disambiguated example, answered "unknown"
        bbq_row("B", "disambig", 2, 0, 2, 0),
    ]


def test_bbq_scores_hand_computed():
    out = bbq_scores(bbq_hand_set())
    a = out["A"]
    assert a["acc"] == pytest.approx(50.0)  # 5 of 10
    assert a["acc_disambig"] == pytest.approx(60.0)  # 3 of 5
    assert a["acc_ambig"] == pytest.approx(40.0)  # 2 of 5
    # s_DIS: non-unknown answers with a known biased option: rows 1, 2, 4 -> 2 biased -> 2*2/3 - 1
    assert a["bias_disambig"] == pytest.approx(100 * (2 * 2 / 3 - 1))
    # s_AMB: (1 - 0.4) * (2 * 1/3 - 1) = -0.2
    assert a["bias_ambig"] == pytest.approx(-20.0)
    assert (a["n"], a["n_ambig"], a["n_disambig"]) == (10, 5, 5)

    b = out["B"]
    assert b["acc"] == 0.0 and b["acc_disambig"] == 0.0
    assert b["acc_ambig"] is None and b["bias_ambig"] is None
    assert b["bias_disambig"] is None  # only an unknown answer: no non-unknown answers to score

    o = out["overall"]
    assert o["acc"] == pytest.approx(100 * 5 / 11)
    assert o["acc_disambig"] == pytest.approx(50.0)
    assert o["bias_disambig"] == pytest.approx(100 / 3)
    assert o["bias_ambig"] == pytest.approx(-20.0)
    assert o["n"] == 11
    assert sorted(out) == ["A", "B", "overall"]


def test_bbq_all_biased_and_all_counter_biased():
    rows = [bbq_row("A", "disambig", 0, 0, 2, 0), bbq_row("A", "disambig", 1, 1, 2, 1)]
    assert bbq_scores(rows)["A"]["bias_disambig"] == pytest.approx(100.0)
    rows = [bbq_row("A", "disambig", 1, 1, 2, 0), bbq_row("A", "disambig", 0, 0, 2, 1)]
    assert bbq_scores(rows)["A"]["bias_disambig"] == pytest.approx(-100.0)
    # ambiguous and every answer 'unknown': s_DIS(amb) is 0/0, reported as None rather than a made-up number
    rows = [bbq_row("A", "ambig", 2, 2, 2, 0)]
    assert bbq_scores(rows)["A"]["bias_ambig"] is None
    with pytest.raises(ValueError, match="^no BBQ records to score$"):
        bbq_scores([])


# --- perplexity ----------------------------------------------------------------------------------------------------

def test_perplexity():
    assert perplexity(-math.log(4) * 10, 10) == pytest.approx(4.0)
    assert perplexity(-6.0, 3) == pytest.approx(math.e ** 2)
    assert perplexity(0.0, 5) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="^perplexity needs at least one scored token$"):
        perplexity(-1.0, 0)


def test_ss_standard_error_hand_computed_cases():
    from biasunlearn.metrics import ss_standard_error

    def rec(bias, target, pro):
        return {"bias_type": bias, "target": target, "s_stereo": -1.0 if pro else -2.0, "s_anti": -1.5,
                "s_unrel": -3.0}

    # every example pro-stereotype: SS is 100 on every resample, no error at all
    assert ss_standard_error([rec("race", t, True) for t in "abc" for _ in range(3)])["race"] == 0.0
    # one term, 4 examples, 2 pro: only the examples vary; SS = 100 * Binomial(4, 1/2) / 4, SD = 100 * sqrt(1/16)
    se = ss_standard_error([rec("gender", "girl", p) for p in (True, True, False, False)], resamples=4000)
    assert se["gender"] == pytest.approx(25.0, abs=1.5) and se["overall"] == pytest.approx(25.0, abs=1.5)
    # two one-example terms, one pro, one anti: only the terms vary; SS in {0, 50, 100} with p {1/4, 1/2, 1/4},
    # SD = sqrt(2 * 1/4 * 50^2) = 35.36; another type with a fixed SS dilutes the overall error to a third
    recs = [rec("religion", "x", True), rec("religion", "y", False)] + [rec("race", t, True) for t in "abcd"]
    se = ss_standard_error(recs, resamples=4000, seed=3)
    assert se["religion"] == pytest.approx(35.36, abs=1.5) and se["race"] == 0.0
    assert se["overall"] == pytest.approx(35.36 / 3, abs=0.8)  # 2 of the 6 terms vary: (2/6) * SD
    assert ss_standard_error(recs, resamples=300, seed=3) == ss_standard_error(recs, resamples=300, seed=3)
    with pytest.raises(ValueError, match="no StereoSet records"):
        ss_standard_error([])


def test_paired_ss_difference_hand_computed_cases():
    from biasunlearn.metrics import paired_ss_difference

    def rec(i, bias, target, pro):
        return {"id": f"ex-{i}", "bias_type": bias, "target": target, "s_stereo": -1.0 if pro else -2.0,
                "s_anti": -1.5, "s_unrel": -3.0}

    before = [rec(i, "gender", "girl", p) for i, p in enumerate((True, True, False, False))]
    # the same read twice: no change and no error, whatever is drawn
    same = paired_ss_difference(before, before, resamples=200)
    assert same["gender"] == {"diff": 0.0, "se": 0.0} and same["overall"] == {"diff": 0.0, "se": 0.0}
    # example 2 flips to pro: SS 50 -> 75. On a resample the difference is 100 * (times example 2 is drawn) / 4,
    # Binomial(4, 1/4): SD = 100 * sqrt(4 * 1/4 * 3/4) / 4 = 21.65. The two reads' own errors (25 and 21.65)
    # would give sqrt(25^2 + 21.65^2) = 33.1 if the draws were not shared.
    after = [rec(i, "gender", "girl", p) for i, p in enumerate((True, True, True, False))]
    got = paired_ss_difference(before, after, resamples=4000, seed=1)
    assert got["gender"]["diff"] == pytest.approx(25.0)
    assert got["gender"]["se"] == pytest.approx(21.65, abs=1.2)
    # records are paired by id, not by their order in the file
    got_shuffled = paired_ss_difference(before, list(reversed(after)), resamples=4000, seed=1)
    assert got_shuffled == got
    # reads of different examples cannot be paired
    other = [rec(i + 10, "gender", "girl", p) for i, p in enumerate((True, True, True, False))]
    with pytest.raises(ValueError, match="read 1 does not hold the same examples"):
        paired_ss_difference(before, other)
    with pytest.raises(ValueError, match="no StereoSet records"):
        paired_ss_difference([], [])


def test_stereoset_precision_markdown_rows():
    from biasunlearn.metrics import paired_ss_difference, ss_standard_error
    from biasunlearn.report import stereoset_precision_markdown

    def rec(i, bias, target, pro):
        return {"id": f"ex-{i}", "bias_type": bias, "target": target, "s_stereo": -1.0 if pro else -2.0,
                "s_anti": -1.5, "s_unrel": -3.0}

    # gender: one term, 4 examples, 2 -> 4 pro (SS 50 -> 100); race: two terms, unchanged (SS 50)
    pros0 = {"girl": (True, True, False, False), "Ethiopian": (True, False), "Dutch": (False, True)}
    pros1 = {"girl": (True, True, True, True), "Ethiopian": (True, False), "Dutch": (False, True)}
    bias = {"girl": "gender", "Ethiopian": "race", "Dutch": "race"}

    def read(pros):
        return [rec(f"{t}{i}", bias[t], t, p) for t, ps in pros.items() for i, p in enumerate(ps)]

    before, after = read(pros0), read(pros1)
    md = stereoset_precision_markdown(before, after, resamples=500, seed=2)
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in md.splitlines() if line.startswith("| ")}
    paired = paired_ss_difference(before, after, resamples=500, seed=2)
    se1 = ss_standard_error(after, resamples=500, seed=2)
    # gender: SS 50 -> 100 (+50), the paired error from the same draws; the after read has no spread (all pro)
    se0 = ss_standard_error(before, resamples=500, seed=2)
    assert rows["gender"][1:5] == ["1", f"50.00 ± {se0['gender']:.2f}", f"100.00 ± {se1['gender']:.2f}",
                                   f"+50.00 ± {paired['gender']['se']:.2f}"]
    assert se1["gender"] == 0.0 and paired["gender"]["se"] > 0
    assert rows["gender"][5].strip(" |") == ("yes" if 50 > 2 * paired["gender"]["se"] else "no")
    # race did not change at all: change 0 ± 0, not beyond its errors
    assert rows["race"][4] == "+0.00 ± 0.00" and rows["race"][5].strip(" |") == "no"
    # overall: 3 terms, SS (50 + 50 + 50)/3 -> (100 + 50 + 50)/3
    assert rows["overall"][1] == "3" and rows["overall"][4].startswith(f"+{50 / 3:.2f} ± ")
    assert list(rows)[1:] == ["gender", "race", "overall"]
    # a level model's chance to read outside 50 ± 4 with the after read's errors: none for gender (no spread)
    from biasunlearn.metrics import level_outside_band

    p_race = level_outside_band(se1["race"], 4.0)
    assert f"in gender 0%, race {100 * p_race:.0f}% of draws" in md
    assert f"in at least one type {100 * p_race:.0f}%" in md
    assert level_outside_band(4.0, 4.0) == pytest.approx(0.31731, abs=1e-5)  # erfc(1/sqrt 2)


def test_stereoset_terms_markdown_lists_the_terms_farthest_from_level():
    from biasunlearn.report import stereoset_terms_markdown

    def read(pros):
        return [{"id": f"{t}{i}", "bias_type": b, "target": t, "s_stereo": -1.0 if p else -2.0, "s_anti": -1.5,
                 "s_unrel": -3.0} for (b, t), ps in pros.items() for i, p in enumerate(ps)]

    # religion: Muslim 50 -> 0 (4 examples), Bible 75 -> 75, Hindu 50 -> 50; gender: one term 25 -> 50
    before = read({("religion", "Muslim"): (1, 1, 0, 0), ("religion", "Bible"): (1, 1, 1, 0),
                   ("religion", "Hindu"): (1, 0), ("gender", "mother"): (1, 0, 0, 0)})
    after = read({("religion", "Muslim"): (0, 0, 0, 0), ("religion", "Bible"): (1, 1, 1, 0),
                  ("religion", "Hindu"): (0, 1), ("gender", "mother"): (1, 1, 0, 0)})
    md = stereoset_terms_markdown(before, after, top=2)
    rows = {line.split(" | ")[0].strip("| "): line.strip("| ").split(" | ") for line in md.splitlines()
            if line.startswith("| ") and not line.startswith("| domain")}
    assert rows["religion"] == ["religion", "3", "2", "Muslim 50.0 → 0.0 (4); Bible 75.0 → 75.0 (4)"]
    assert rows["gender"] == ["gender", "1", "0", "mother 25.0 → 50.0 (4)"]
    with pytest.raises(ValueError, match="lacks: gender/sister"):
        stereoset_terms_markdown(before, after + read({("gender", "sister"): (1,)}))

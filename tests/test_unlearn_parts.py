"""The BiasUnlearn parts without a model: losses (hand-computed), the swap controller, the sets and chunks."""
import json
import math
import sys
from dataclasses import replace

import pytest
import torch

from _tiny import load_bench
from biasunlearn.data.stereoset import StereoSetExample
from biasunlearn.errors import ConfigError
from biasunlearn.unlearn.controller import SwapController
from biasunlearn.unlearn.losses import forward_kl, npo_loss, npo_loss_token_mean, retention_loss
from biasunlearn.unlearn.sets import UnlearnSets


def test_npo_at_start_is_2_over_beta_log2():
    lp = torch.tensor([-3.0, -7.5])
    assert npo_loss(lp, lp.clone(), beta=0.1).item() == pytest.approx(20 * math.log(2), rel=1e-6)


def test_npo_hand_computed_and_sign_forgets():
    pol = torch.tensor([-2.0, -4.0], requires_grad=True)
    ref = torch.tensor([-3.0, -3.0])
    beta = 0.5
    loss = npo_loss(pol, ref, beta)
    # -(2/beta) * mean(log sigmoid(-beta * d)), d = [1, -1]
    expected = -(2 / beta) * 0.5 * (math.log(1 / (1 + math.exp(0.5))) + math.log(1 / (1 + math.exp(-0.5))))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    # a gradient step (pol -= lr * grad) must lower the forget log-probs: every gradient is positive
    assert (pol.grad > 0).all()
    # d loss / d pol_i = (2/N) * sigmoid(beta * d_i)
    assert pol.grad[0].item() == pytest.approx(1 / (1 + math.exp(-0.5)), rel=1e-6)


def test_npo_token_mean_variant_is_one_term_on_batch_mean():
    pol = torch.tensor([[-1.0, -3.0, 0.0], [-2.0, 0.0, 0.0]])
    ref = torch.tensor([[-1.0, -1.0, 0.0], [-1.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    beta = 0.1
    d = ((-2.0) + (-2.0)) / 2 - ((-1.0) + (-1.0)) / 2  # batch mean of token means: -2 vs -1
    expected = -(2 / beta) * math.log(1 / (1 + math.exp(beta * d)))
    assert npo_loss_token_mean(pol, ref, mask, beta).item() == pytest.approx(expected, rel=1e-6)


def test_retention_loss_is_mean_nll_over_scored_tokens():
    lp = torch.tensor([[-1.0, -2.0, -9.0], [-3.0, -9.0, -9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert retention_loss(lp, mask).item() == pytest.approx(2.0)


def test_forward_kl_sequence_reduction_sums_per_sentence():
    ref = torch.tensor([[[0.0, 1.0], [2.0, 0.0], [0.0, 0.0]], [[1.0, 1.0], [0.0, 3.0], [1.0, 0.0]]])
    pol = torch.tensor([[[1.0, 0.0], [0.0, 0.0], [5.0, 0.0]], [[0.0, 2.0], [0.0, 3.0], [0.0, 1.0]]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])

    def kl(r, p):  # two-way softmax by hand
        pr = [math.exp(x) / (math.exp(r[0]) + math.exp(r[1])) for x in r]
        pp = [math.exp(x) / (math.exp(p[0]) + math.exp(p[1])) for x in p]
        return sum(a * (math.log(a) - math.log(b)) for a, b in zip(pr, pp))

    per = [[kl(ref[i, t].tolist(), pol[i, t].tolist()) for t in range(3)] for i in range(2)]
    seq = ((per[0][0] + per[0][1]) + (per[1][0] + per[1][1] + per[1][2])) / 2
    tok = ((per[0][0] + per[0][1]) + (per[1][0] + per[1][1] + per[1][2])) / 5
    assert forward_kl(ref, pol, mask, "sequence").item() == pytest.approx(seq, rel=1e-5)
    assert forward_kl(ref, pol, mask).item() == pytest.approx(tok, rel=1e-5)
    with pytest.raises(ValueError, match="KL reduction"):
        forward_kl(ref, pol, mask, "batch")


def test_forward_kl_hand_computed_and_masked():
    ref = torch.log(torch.tensor([[[0.5, 0.5], [0.9, 0.1]]]))
    pol = torch.log(torch.tensor([[[0.25, 0.75], [0.1, 0.9]]]))
    kl0 = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert forward_kl(ref, pol, torch.tensor([[1.0, 0.0]])).item() == pytest.approx(kl0, rel=1e-5)
    assert forward_kl(ref, ref, torch.ones(1, 2)).item() == pytest.approx(0.0, abs=1e-7)
    # direction: KL(ref || pol), not KL(pol || ref)
    rev = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert abs(forward_kl(ref, pol, torch.tensor([[1.0, 0.0]])).item() - rev) > 1e-3


def test_controller_swaps_and_swaps_back_and_records():
    c = SwapController(["gender", "race"], mode="swap", tolerance=2.0)
    d, stop = c.update(0, {"gender": 60, "race": 55})
    assert d == {"gender": 1, "race": 1} and not stop
    d, stop = c.update(10, {"gender": 45, "race": 53})
    assert d == {"gender": -1, "race": 1} and not stop
    assert c.events == [{"step": 10, "bias_type": "gender", "ss": 45, "direction": -1}]
    d, stop = c.update(20, {"gender": 51, "race": 49})
    assert d == {"gender": 1, "race": -1} and stop  # both within 50 +- 2
    assert c.stop_reason == "every bias type within 50 +- 2"
    assert len(c.events) == 3


def test_controller_scheduled_swap_is_applied_once_from_its_step_and_survives_a_resume():
    c = SwapController(["gender", "race", "religion"], mode="none", schedule={"religion": 3, "race": 5})
    assert c.apply_schedule(0) == [] and c.apply_schedule(2) == []
    assert c.directions == {"gender": 1, "race": 1, "religion": 1}
    got = c.apply_schedule(3)
    assert got == [{"step": 3, "bias_type": "religion", "ss": None, "direction": -1, "scheduled": True}]
    assert c.apply_schedule(3) == [] and c.apply_schedule(4) == []  # once only
    assert c.directions == {"gender": 1, "race": 1, "religion": -1}
    d, _ = c.update(4, {"gender": 60, "race": 40, "religion": 70})  # mode none: the dev check swaps nothing back
    assert d == {"gender": 1, "race": 1, "religion": -1}
    resumed = SwapController(["gender", "race", "religion"], mode="none", schedule={"religion": 3, "race": 5})
    resumed.load_state_dict(c.state_dict())
    assert resumed.apply_schedule(4) == []  # religion's swap was restored with the state: not recorded again
    # a resume that skipped past race's step (a checkpoint at 4, resumed at 6) still applies it, at the step it runs
    assert resumed.apply_schedule(6) == [{"step": 6, "bias_type": "race", "ss": None, "direction": -1,
                                          "scheduled": True}]
    assert [e["bias_type"] for e in resumed.events] == ["religion", "race"]
    # two types due at the same step: recorded in step order, then by name
    both = SwapController(["race", "religion"], mode="none", schedule={"religion": 0, "race": 0})
    assert [e["bias_type"] for e in both.apply_schedule(0)] == ["race", "religion"]


def test_config_scheduled_swaps_are_checked():
    from biasunlearn.unlearn.config import make_config

    ok = make_config(output_dir="/tmp/x", swap_mode="none", max_steps=250, stop_at_step=150,
                     scheduled_swaps="religion=100, gender=0")
    assert ok.scheduled_swap_map() == {"religion": 100, "gender": 0}
    assert make_config(output_dir="/tmp/x").scheduled_swap_map() == {}
    with pytest.raises(ConfigError, match=r"scheduled_swaps='faith=10': no bias type named faith \(the types: "
                                          r"gender, profession, race, religion\)"):
        make_config(output_dir="/tmp/x", swap_mode="none", scheduled_swaps="faith=10")
    with pytest.raises(ConfigError, match=r"scheduled_swaps='religion=150': step 150 is not before the run's last "
                                          r"step \(150\)"):
        make_config(output_dir="/tmp/x", swap_mode="none", max_steps=250, stop_at_step=150,
                    scheduled_swaps="religion=150")
    with pytest.raises(ConfigError, match=r"with swap_mode='swap': swaps fixed beforehand need swap_mode 'none'"):
        make_config(output_dir="/tmp/x", scheduled_swaps="religion=10")
    for bad in ("religion", "religion=-1", "religion=x", "religion=1,religion=2"):
        with pytest.raises(ConfigError, match=r"expected comma-separated TYPE=STEP with STEP a whole number of 0 "
                                              r"or more"):
            make_config(output_dir="/tmp/x", swap_mode="none", scheduled_swaps=bad)
    # the weights keep their own wording: N of 1 or more
    with pytest.raises(ConfigError, match=r"TYPE=N with N a whole number of 1 or more"):
        make_config(output_dir="/tmp/x", balance_types=True, type_weights="race=0")


def test_controller_focus_worst_and_none():
    c = SwapController(["gender", "race", "religion"], mode="focus_worst")
    c.update(0, {"gender": 60, "race": 55, "religion": 52})
    assert c.directions == {"gender": 1, "race": 1, "religion": 1}  # first round: all types
    c.update(10, {"gender": 58, "race": 44, "religion": 52})
    assert c.directions == {"gender": 1, "race": 0, "religion": 0}  # gender farthest from 50 (8 vs 6 vs 2)
    c.update(20, {"gender": 53, "race": 41, "religion": 52})
    assert c.directions == {"gender": 0, "race": -1, "religion": 0}
    # race was swapped at step 10 (then left out): taken up at -1 is no new swap. Religion, left out at +1, is taken
    # up swapped when it falls below 50: a swap, recorded as such
    assert [(e["step"], e["bias_type"], e["direction"]) for e in c.events] == [(10, "race", -1)]
    c.update(30, {"gender": 53, "race": 52, "religion": 40})
    assert c.directions == {"gender": 0, "race": 0, "religion": -1}
    assert [(e["step"], e["bias_type"], e["ss"], e["direction"]) for e in c.events] == [
        (10, "race", 44, -1), (30, "race", 52, 1), (30, "religion", 40, -1)]
    # with the margin signal the farthest type is read from the margins: race's SS is farther from 50 here, but
    # gender's margin is farther from 0
    m = SwapController(["gender", "race"], mode="focus_worst", signal="margin")
    m.update(0, {"gender": 52, "race": 60}, dev_margin={"gender": 0.2, "race": 0.05})
    d, _ = m.update(10, {"gender": 51, "race": 61}, dev_margin={"gender": 0.15, "race": -0.1})
    assert d == {"gender": 1, "race": 0}
    d, _ = m.update(20, {"gender": 51, "race": 61}, dev_margin={"gender": 0.05, "race": -0.1})
    assert d == {"gender": 0, "race": -1}
    n = SwapController(["gender"], mode="none")
    n.update(0, {"gender": 30})
    assert n.directions == {"gender": 1} and n.events == []


def test_controller_pause_stops_training_a_type_past_level_instead_of_reversing_it():
    c = SwapController(["gender", "race", "religion"], mode="pause", margin=2.0)
    d, stop = c.update(0, {"gender": 60, "race": 47.5, "religion": 49.0})
    # race is below 48: paused (0), not swapped (-1); religion is inside the dead band and keeps training
    assert d == {"gender": 1, "race": 0, "religion": 1} and not stop
    d, _ = c.update(10, {"gender": 58, "race": 51.9, "religion": 47.0})
    assert d == {"gender": 1, "race": 0, "religion": 0}  # race resumes only above 52
    d, _ = c.update(15, {"gender": 57, "race": 52.0, "religion": 46.0})
    assert d == {"gender": 1, "race": 0, "religion": 0}  # 52.0 is the band's edge: still paused
    d, _ = c.update(20, {"gender": 56, "race": 52.1, "religion": 45.0})
    assert d == {"gender": 1, "race": 1, "religion": 0}
    assert [(e["step"], e["bias_type"], e["direction"]) for e in c.events] == \
        [(0, "race", 0), (10, "religion", 0), (20, "race", 1)]
    assert c.events[0]["ss"] == 47.5
    # every type past level: nothing left to train toward, so the run stops (though no type is within 50 +- 2)
    d, stop = c.update(30, {"gender": 40, "race": 44, "religion": 45})
    assert d == {"gender": 0, "race": 0, "religion": 0} and stop
    assert c.stop_reason == "every bias type is past level and paused"
    # the state (paused types included) survives a resume
    c2 = SwapController(["gender", "race", "religion"], mode="pause", margin=2.0)
    c2.load_state_dict(c.state_dict())
    assert c2.update(40, {"gender": 53, "race": 44, "religion": 45})[0] == {"gender": 1, "race": 0, "religion": 0}
    # read on the margin, against 0
    m = SwapController(["gender"], mode="pause", signal="margin", margin=0.02)
    assert m.update(0, {"gender": 45.0}, dev_margin={"gender": 0.01})[0] == {"gender": 1}
    assert m.update(10, {"gender": 55.0}, dev_margin={"gender": -0.03})[0] == {"gender": 0}
    with pytest.raises(ValueError, match="pause"):
        SwapController(["gender"], mode="paused")


def test_controller_state_round_trip_and_criterion():
    c = SwapController(["a", "b"])
    c.update(5, {"a": 40, "b": 70}, 88.0)
    c2 = SwapController(["a", "b"])
    c2.load_state_dict(c.state_dict())
    assert c2.directions == c.directions and c2.events == c.events and c2.history == c.history
    # focus_worst restored after its first round trains only the worst type at its next check, as it would have
    f = SwapController(["a", "b"], mode="focus_worst")
    f.update(0, {"a": 60, "b": 55})
    f2 = SwapController(["a", "b"], mode="focus_worst")
    f2.load_state_dict(f.state_dict())
    assert f2.rounds == f.rounds == 1
    assert f2.update(10, {"a": 58, "b": 54}) == f.update(10, {"a": 58, "b": 54}) == ({"a": 1, "b": 0}, False)
    # early stop: every type within target +- tolerance, the bounds included
    t = SwapController(["a", "b"], tolerance=2.0)
    assert t.update(0, {"a": 52.0, "b": 48.0})[1] is True and "within 50 +- 2" in t.stop_reason
    assert t.update(1, {"a": 52.01, "b": 50.0})[1] is False and t.stop_reason == ""
    assert SwapController.criterion({"a": 47.0, "b": 55.5}) == pytest.approx((5.5, 3.0))
    # a tie on the worst type is broken by the next one
    assert SwapController.criterion({"a": 57.3, "b": 51.0}) < SwapController.criterion({"a": 57.3, "b": 53.0})
    assert SwapController.criterion({"a": 56.0, "b": 56.0}) < SwapController.criterion({"a": 57.3, "b": 50.0})


def _ex(i, bias, target):
    return StereoSetExample(id=f"e{i}", task="intrasentence", bias_type=bias, target=target,
                            context=f"The {target} was BLANK today.", stereotype=f"The {target} was lazy today.",
                            anti_stereotype=f"The {target} was busy today.", unrelated=f"The {target} was cloud today.")


def test_balance_terms_deals_each_type_evenly_over_its_target_terms():
    """gender has 'father' x6 and 'uncle' x2, race one term: with balance_terms each gender draw alternates between
    the two terms (sorted: father, uncle), each term read cyclically, so over 8 gender draws each term is drawn 4
    times and each of uncle's 2 stereotypes twice; without it, father's examples take 6 of 8."""
    from biasunlearn.errors import ConfigError
    from biasunlearn.unlearn.config import make_config

    train = ([_ex(i, "gender", "father") for i in range(6)] + [_ex(10 + i, "gender", "uncle") for i in range(2)]
             + [_ex(20 + i, "race", "Kenyan") for i in range(4)])
    s = UnlearnSets(train, adversarial_share=0.0, seed=3)
    dirs = {"gender": 1, "race": 1}
    gender = [i for step in range(4)
              for i in s.chunk(step, dirs, 4, 4, 1, balance_types=True, balance_terms=True)["forget"]
              if i.bias_type == "gender"]
    assert [i.term for i in gender] == ["father", "uncle"] * 4
    uncle = [i.key for i in gender if i.term == "uncle"]
    assert sorted(uncle) == ["e10:stereotype", "e10:stereotype", "e11:stereotype", "e11:stereotype"]
    assert uncle[0] != uncle[1] and uncle[:2] == uncle[2:]  # a cycle through the term's examples, then again
    fathers = [i.key for i in gender if i.term == "father"]
    assert len(set(fathers)) == 4  # father's 6 examples are read cyclically, none twice within 4 draws
    plain = [i for step in range(4) for i in s.chunk(step, dirs, 4, 4, 1, balance_types=True)["forget"]
             if i.bias_type == "gender"]
    assert sum(i.term == "father" for i in plain) == 6  # one pass over the type's 8 examples
    with pytest.raises(ConfigError, match="balance_terms=true needs balance_types=true"):
        make_config(balance_terms=True)
    assert make_config(balance_types=True, balance_terms=True).balance_terms


def test_swap_gender_exchanges_gendered_words_not_attributes():
    from biasunlearn.unlearn.counterfactual import counterfactual_parts, swap_gender

    assert swap_gender("She told her brother.") == ("He told his sister.", 3)
    # "her" as an object (followed by punctuation, a preposition or nothing) becomes "him", else "his"
    assert swap_gender("Would you talk to her again?") == ("Would you talk to him again?", 1)
    assert swap_gender("Give it to her") == ("Give it to him", 1)
    assert swap_gender("Ask her, then") == ("Ask him, then", 1)
    assert swap_gender("about her", " earrings.") == ("about his", 1)  # read on into the rest of the sentence
    assert swap_gender("The Gentleman was masculine, ma'am.") == ("The Lady was masculine, sir.", 2)
    assert swap_gender("The hero was brave.") == ("The hero was brave.", 0)
    # across the parts of one sentence; none when nothing is gendered or when the result names a blocked term
    assert counterfactual_parts(("The father was", " polite to her", " date."), set()) == \
        ("The mother was", " polite to his", " date.")
    assert counterfactual_parts(("The hero was", " brave.", ""), set()) is None
    assert counterfactual_parts(("Every brother is", " mean.", ""), {"sister"}) is None


def test_gender_counterfactual_pairs_each_stereotype_with_its_swapped_sentence():
    """father examples get a counterfactual (mother); a 'brother' example does not, because 'sister' is blocked
    (a held-out term); race is untouched. The counterfactual keeps the filled-in word: the stereotype is forgotten
    against the same attribute said of the other gender, its twin in the same step's retain batch."""
    from biasunlearn.unlearn.config import make_config

    train = [_ex(i, "gender", "father") for i in range(3)] + [_ex(5, "gender", "brother")] + \
        [_ex(10 + i, "race", "Kenyan") for i in range(2)]
    plain = UnlearnSets(train, adversarial_share=0.0, seed=3)
    s = UnlearnSets(train, adversarial_share=0.0, seed=3, gender_counterfactual=True, blocked_terms={"Sister"})
    assert s.counterfactuals == 3 and plain.counterfactuals == 0
    assert len(s.stereo["gender"]) == 7 and len(s.anti["gender"]) == 7 and len(s.stereo["race"]) == 2
    cf = s._by_key["e1~cf:anti-stereotype"]
    assert (cf.x, cf.y, cf.term) == ("The mother was", " lazy today.", "father")
    fg = s._by_key["e1~cf:stereotype"]
    assert (fg.x, fg.y) == ("The father was", " lazy today.") and s.twin(fg) is cf
    assert "e5~cf:stereotype" not in s._by_key
    # in a paired chunk every forget item's twin is retained in the same step
    for step in range(4):
        ch = s.chunk(step, {"gender": 1, "race": 1}, 4, 4, 1, balance_types=True, pair_retain=True)
        keys = {it.key for it in ch["retain"]}
        assert all(s.twin(it).key in keys for it in ch["forget"])
    # swapped (direction -1): the counterfactual is forgotten and the stereotype retained
    fgs, rts = s.pools({"gender": -1, "race": 1})
    assert cf in fgs and fg in rts
    assert make_config(gender_counterfactual=True).gender_counterfactual and not make_config().gender_counterfactual


def test_term_variants_replace_the_term_by_nouns_of_its_gender():
    from biasunlearn.unlearn.counterfactual import replace_term, same_gender_nouns, term_variant_parts

    assert replace_term("A father is a BLANK. My Father's car", "father", "uncle") == \
        ("An uncle is a BLANK. My Uncle's car", 2)
    assert replace_term("An uncle met fathers", "uncle", "king") == ("A king met fathers", 1)  # no plural match
    assert replace_term("He said he was tall", "he", "the king") == ("The king said the king was tall", 2)
    assert replace_term("The hero was brave", "he", "the king") == ("The hero was brave", 0)  # whole words only
    # the other nouns of the term's gender, never a blocked one; step-relations, sir, female: none at all
    nouns = same_gender_nouns("Father", {"man", "uncle"})
    assert "brother" in nouns and not {"father", "man", "uncle", "mother"} & set(nouns)
    assert same_gender_nouns("she", {"sister"})[:2] == ["the mother", "the daughter"]
    assert same_gender_nouns("stepfather", set()) == [] and same_gender_nouns("female", set()) == []
    assert term_variant_parts(("The father was", " polite", "."), "father", "son", set()) == \
        ("The son was", " polite", ".")
    assert term_variant_parts(("My father was", " polite", "."), "father", "son", {"son"}) is None
    assert term_variant_parts(("He was", " polite", "."), "father", "son", set()) is None  # term not named


def test_gender_term_variants_add_whole_pairs_with_other_nouns():
    """Each 'father' pair gets k pairs naming another male noun (both sentences, twins of each other, the new noun
    as term); a stepfather pair and the race pairs get none; no variant names a blocked term; the same seed gives
    the same nouns."""
    from biasunlearn.errors import ConfigError
    from biasunlearn.unlearn.config import make_config
    from biasunlearn.unlearn.counterfactual import MALE_NOUNS

    train = [_ex(i, "gender", "father") for i in range(3)] + [_ex(5, "gender", "stepfather")] + \
        [_ex(10 + i, "race", "Kenyan") for i in range(2)]
    blocked = set(MALE_NOUNS) - {"father", "uncle", "son", "king"}  # leaves uncle, son and king to draw from
    s = UnlearnSets(train, adversarial_share=0.0, seed=3, gender_term_variants=2, blocked_terms=blocked)
    assert s.term_variants == 6 and len(s.stereo["gender"]) == 10 and len(s.anti["gender"]) == 10
    assert len(s.stereo["race"]) == 2 and not any("e5~tv" in it.key for it in s.stereo["gender"])
    v = [it for it in s.stereo["gender"] if "~tv" in it.key]
    assert {it.term for it in v} <= {"uncle", "son", "king"} and len({(it.key.split("~")[0], it.term) for it in v}) == 6
    for it in v:
        tw = s.twin(it)
        assert it.x == f"The {it.term} was" and it.y == " lazy today." and (tw.x, tw.y) == (it.x, " busy today.")
    again = UnlearnSets(train, adversarial_share=0.0, seed=3, gender_term_variants=2, blocked_terms=blocked)
    assert [it.key + it.term for it in again.stereo["gender"]] == [it.key + it.term for it in s.stereo["gender"]]
    assert UnlearnSets(train, adversarial_share=0.0, seed=3).term_variants == 0
    with pytest.raises(ConfigError, match="gender_term_variants=-1: must be 0 or more"):
        make_config(gender_term_variants=-1)


def test_neutral_anchor_adds_group_free_pair_sentences_to_the_kl_batch():
    """Each pair whose term comes before the blank gives its two sentences with the term replaced by "someone"; a
    step's unrelated batch is the usual draw plus neutral_bs of them, read cyclically; off, nothing is added."""
    from biasunlearn.errors import ConfigError
    from biasunlearn.unlearn.config import make_config

    odd = StereoSetExample(id="z", task="intrasentence", bias_type="race", target="Kenyan",
                           context="BLANK people live in Kenya.", stereotype="Poor people live in Kenya.",
                           anti_stereotype="Rich people live in Kenya.", unrelated="Cloud people live in Kenya.")
    train = [_ex(0, "gender", "father"), _ex(1, "race", "Kenyan"), odd]
    s = UnlearnSets(train, ["u0", "u1", "u2"], adversarial_share=0.0, seed=3, neutral_anchor=True)
    assert sorted(it.y for it in s.neutral) == ["Someone was busy today.", "Someone was busy today.",
                                                 "Someone was lazy today.", "Someone was lazy today."]
    assert {it.key for it in s.neutral} == {"e0:stereotype:neutral", "e0:anti-stereotype:neutral",
                                            "e1:stereotype:neutral", "e1:anti-stereotype:neutral"}
    seen = []
    for step in range(2):
        un = s.chunk(step, {}, 2, 2, 2, neutral_bs=2)["unrelated"]
        assert all(it.key.startswith("unrel:") for it in un[:2])
        assert len(un) == 4 and all(it.key.endswith(":neutral") for it in un[2:])
        seen += [it.key for it in un[2:]]
    assert sorted(seen) == sorted(it.key for it in s.neutral)  # one pass over the four in two steps
    plain = UnlearnSets(train, ["u0", "u1", "u2"], adversarial_share=0.0, seed=3)
    assert plain.neutral == [] and len(plain.chunk(0, {}, 2, 2, 2, neutral_bs=2)["unrelated"]) == 2
    with pytest.raises(ConfigError, match="neutral_anchor_batch_size=-1: must be 0 or more"):
        make_config(neutral_anchor_batch_size=-1)


def test_sets_adversarial_share_swap_and_deterministic_chunks():
    train = [_ex(i, "gender", "father") for i in range(8)] + [_ex(10 + i, "race", "Kenyan") for i in range(4)]
    s = UnlearnSets(train, adversarial_share=0.25, seed=3)
    assert len(s.adv_idx["gender"]) == 2 and len(s.adv_idx["race"]) == 1
    forget, retain = s.pools({"gender": 1, "race": 1})
    assert len(forget) == 8 + 2 + 4 + 1 and len(retain) == 12
    assert sum(it.key.endswith(":anti-stereotype") for it in forget) == 3  # the adversarial share
    # y scoring: x is the context before the blank, y the filled word and the rest
    it = s.stereo["gender"][0]
    assert (it.x, it.y) == ("The father was", " lazy today.")
    f2, r2 = s.pools({"gender": -1, "race": 1})
    assert {i.key for i in f2 if i.bias_type == "gender"} == {f"e{k}:anti-stereotype" for k in range(8)} | \
        {f"e{k}:stereotype" for k in s.adv_idx["gender"]}
    assert all(i.key.endswith(":stereotype") for i in r2 if i.bias_type == "gender")
    f0, _ = s.pools({"gender": 0, "race": 1})
    assert all(i.bias_type == "race" for i in f0)
    a = s.chunk(7, {"gender": 1, "race": 1}, 4, 28, 5)
    b = s.chunk(7, {"gender": 1, "race": 1}, 4, 28, 5)
    assert a == b and len(a["forget"]) == 4 and len(a["retain"]) == 28 and len(a["unrelated"]) == 5
    # cyclic: over consecutive steps each retain item is used equally often
    counts = {}
    for step in range(3):
        for itm in s.chunk(step, {"gender": 1, "race": 1}, 4, 4, 4)["retain"]:
            counts[itm.key] = counts.get(itm.key, 0) + 1
    assert sorted(counts.values()) == [1] * 12
    # two processes draw different shares of the same step
    r0 = s.chunk(2, {"gender": 1, "race": 1}, 2, 2, 2, rank=0, world=2)
    r1 = s.chunk(2, {"gender": 1, "race": 1}, 2, 2, 2, rank=1, world=2)
    assert {i.key for i in r0["retain"]}.isdisjoint({i.key for i in r1["retain"]})


def test_balanced_chunks_deal_types_evenly_and_cycle_within_each_type():
    train = [_ex(i, "gender", "father") for i in range(8)] + [_ex(10 + i, "race", "Kenyan") for i in range(4)]
    s = UnlearnSets(train, adversarial_share=0.25, seed=3)
    dirs = {"gender": 1, "race": 1}
    seen = {"gender": [], "race": []}
    for step in range(5):
        ch = s.chunk(step, dirs, 2, 4, 1, balance_types=True)
        # one forget item of each type per step, although race has half as many examples
        assert sorted(i.bias_type for i in ch["forget"]) == ["gender", "race"]
        assert sorted(i.bias_type for i in ch["retain"]) == ["gender", "gender", "race", "race"]
        for i in ch["forget"]:
            seen[i.bias_type].append(i.key)
    # race's forget pool is 4 stereotype + 1 adversarial = 5 items: 5 steps use each once
    assert len(set(seen["race"])) == 5
    assert len(set(seen["gender"])) == 5  # gender's 10 are read cyclically, no repeats yet
    assert s.chunk(3, dirs, 2, 4, 1, balance_types=True) == s.chunk(3, dirs, 2, 4, 1, balance_types=True)
    # a type left out (direction 0) is not dealt
    assert {i.bias_type for i in s.chunk(0, {"gender": 0, "race": 1}, 4, 4, 1, balance_types=True)["forget"]} == {"race"}


def test_type_weights_deal_more_slots_to_a_weighted_type_and_default_to_the_even_deal():
    from biasunlearn.errors import ConfigError
    from biasunlearn.unlearn.config import make_config

    train = [_ex(i, "gender", "father") for i in range(12)] + [_ex(20 + i, "race", "Kenyan") for i in range(12)]
    s = UnlearnSets(train, seed=3)
    dirs = {"gender": 1, "race": 1}
    # no weights and all-ones weights give exactly the even deal
    for step in range(3):
        even = s.chunk(step, dirs, 4, 4, 1, balance_types=True)
        assert s.chunk(step, dirs, 4, 4, 1, balance_types=True, type_weights={"gender": 1, "race": 1}) == even
    # gender 2, race 1: the cycle is gender, race, gender, so 6 draws (two steps of 3) give 4 gender and 2 race,
    # in the order g r g g r g, and each type's draws are consecutive draws of its own pool (no repeat, none skipped)
    w = {"gender": 2}
    drawn = [i for step in range(2) for i in s.chunk(step, dirs, 3, 3, 1, balance_types=True, type_weights=w)["forget"]]
    assert [i.bias_type for i in drawn] == ["gender", "race", "gender", "gender", "race", "gender"]
    gender_keys = [i.key for i in drawn if i.bias_type == "gender"]
    assert len(set(gender_keys)) == 4
    # the same 4 gender items as the even deal's first 4 gender draws (the pool is read in the same cyclic order)
    even_gender = [i.key for step in range(4) for i in s.chunk(step, dirs, 2, 2, 1, balance_types=True)["forget"]
                   if i.bias_type == "gender"]
    assert gender_keys == even_gender
    # the setting: parsed, checked, and only with balance_types
    assert make_config(balance_types=True, type_weights="gender=2, race=1").type_weight_map() == {"gender": 2,
                                                                                                   "race": 1}
    for bad in ("gender=0", "gender", "gender=x", "gender=1,gender=2"):
        with pytest.raises(ConfigError, match="type_weights"):
            make_config(balance_types=True, type_weights=bad)
    with pytest.raises(ConfigError, match="needs balance_types=true"):
        make_config(type_weights="gender=2")


def test_sentence_span_scores_whole_sentence():
    s = UnlearnSets([_ex(0, "gender", "father")], score_span="sentence")
    assert (s.stereo["gender"][0].x, s.stereo["gender"][0].y) == ("", "The father was lazy today.")


def test_word_span_scores_only_the_filled_word(tiny_model):
    from types import SimpleNamespace

    from biasunlearn.models import start_token_id
    from biasunlearn.scoring import pad_batch
    from biasunlearn.unlearn.trainer import BiasUnlearnTrainer

    _, tok = tiny_model
    s = UnlearnSets([_ex(0, "gender", "father")], score_span="word")
    it = s.stereo["gender"][0]
    assert (it.x, it.y, it.z) == ("The father was", " lazy", " today.")
    def batch(items):  # the trainer's own encoding and scored mask, on a stand-in (encodings are cached by key)
        stub = SimpleNamespace(tok=tok, _start=start_token_id(tok), _ids={},
                               args=SimpleNamespace(unrelated_max_tokens=256))
        enc = [BiasUnlearnTrainer._encode(stub, it) for it in items]
        ids, attn = pad_batch([e[0] for e in enc], tok.pad_token_id or 0, "cpu")
        return ids, attn, BiasUnlearnTrainer._masks(enc, ids.shape[1], "cpu")[0]

    ids, attn, mask = batch([it, s.unrelated[0]])
    y_ids, _, y_mask = batch([UnlearnSets([_ex(0, "gender", "father")], score_span="y").stereo["gender"][0]])
    n_x = len(tok("The father was", add_special_tokens=False)["input_ids"])
    n_w = len(tok(" lazy", add_special_tokens=False)["input_ids"])
    n_z = len(tok(" today.", add_special_tokens=False)["input_ids"])
    # the word: predictions at positions n_x .. n_x + n_w - 1 score tokens 1 + n_x .. n_x + n_w
    want = [0.0] * (ids.shape[1] - 1)
    for t in range(n_x, n_x + n_w):
        want[t] = 1.0
    assert mask[0].tolist() == want
    # same tokens fed as the y span, which scores the word and the rest
    assert ids[0].tolist()[:1 + n_x + n_w + n_z] == y_ids[0].tolist()
    assert y_mask[0].sum().item() == n_w + n_z and y_mask[0][n_x:n_x + n_w + n_z].sum().item() == n_w + n_z
    assert attn[0].sum().item() == 1 + n_x + n_w + n_z


def test_kl_texts_are_cut_at_unrelated_max_tokens_and_pair_sentences_never(tiny_model):
    from types import SimpleNamespace

    from biasunlearn.models import start_token_id
    from biasunlearn.unlearn.sets import Item
    from biasunlearn.unlearn.trainer import BiasUnlearnTrainer

    _, tok = tiny_model
    long = "the cat sat on the mat and the dog ran in the park while it rained"
    full = tok(long, add_special_tokens=False)["input_ids"]
    assert len(full) > 6
    start = start_token_id(tok)
    for cap, want in ((5, full[:5]), (0, full), (len(full), full)):
        stub = SimpleNamespace(tok=tok, _start=start, _ids={}, args=SimpleNamespace(unrelated_max_tokens=cap))
        ids, lo, hi = BiasUnlearnTrainer._encode(stub, Item(key="unrel:0", bias_type="", x="", y=long))
        assert (ids, lo, hi) == ([start] + want, 1, 1 + len(want))
        # a sentence of a pair (it has a bias type) is never cut
        ids, lo, hi = BiasUnlearnTrainer._encode(stub, Item(key="p:s", bias_type="gender", x="", y=long))
        assert ids == [start] + full
    from biasunlearn.unlearn.config import make_config

    with pytest.raises(ConfigError, match="unrelated_max_tokens=-1"):
        make_config(unrelated_max_tokens=-1)


def test_controller_swap_margin_is_a_dead_band():
    c = SwapController(["gender", "race"], mode="swap", margin=2.0)
    d, _ = c.update(0, {"gender": 49.5, "race": 47.9})  # gender inside the band keeps +1; race below 48 swaps
    assert d == {"gender": 1, "race": -1}
    d, _ = c.update(10, {"gender": 48.0, "race": 52.0})  # 48.0 is not below 48; race back only above 52
    assert d == {"gender": 1, "race": -1}
    d, _ = c.update(20, {"gender": 47.0, "race": 52.1})
    assert d == {"gender": -1, "race": 1}
    assert [(e["step"], e["bias_type"], e["direction"]) for e in c.events] == \
        [(0, "race", -1), (20, "gender", -1), (20, "race", 1)]
    # margin 0 is the paper's rule: swapped below 50, swapped back above 50; at 50 exactly a type keeps its
    # direction (a swapped type at level is not sent back to forgetting its stereotypes)
    p = SwapController(["gender"], mode="swap")
    assert p.update(0, {"gender": 50.0})[0] == {"gender": 1}
    assert p.update(5, {"gender": 49.9})[0] == {"gender": -1}
    assert p.update(10, {"gender": 50.0})[0] == {"gender": -1}
    assert p.update(15, {"gender": 50.1})[0] == {"gender": 1}
    assert [(e["step"], e["direction"]) for e in p.events] == [(5, -1), (15, 1)]
    with pytest.raises(ValueError, match="margin"):
        SwapController(["gender"], margin=-1)


def test_controller_margin_signal_swaps_on_margin_not_ss():
    c = SwapController(["gender", "race"], mode="swap", signal="margin", margin=0.02)
    # gender: SS dips below 50 on a small slice but its margin is still clearly positive -> no swap;
    # race: SS above 50 yet the margin has gone past -0.02 -> swapped
    d, stop = c.update(0, {"gender": 45.8, "race": 51.0}, 90.0, dev_margin={"gender": 0.19, "race": -0.03})
    assert d == {"gender": 1, "race": -1} and stop is False
    d, _ = c.update(10, {"gender": 50.0, "race": 50.0}, 90.0, dev_margin={"gender": -0.019, "race": 0.019})
    assert d == {"gender": 1, "race": -1}  # both inside the +-0.02 band: directions kept
    d, _ = c.update(15, {"gender": 50.0, "race": 50.0}, 90.0, dev_margin={"gender": 0.0, "race": 0.02})
    assert d == {"gender": 1, "race": -1}  # race at the band's edge: still swapped
    d, stop = c.update(20, {"gender": 51.0, "race": 49.0}, 90.0, dev_margin={"gender": -0.05, "race": 0.021})
    assert d == {"gender": -1, "race": 1} and stop is True  # early stop still reads SS (all within 50 +- 2)
    assert [(e["step"], e["bias_type"], e["direction"], e["margin"], e["ss"]) for e in c.events] == \
        [(0, "race", -1, -0.03, 51.0), (20, "gender", -1, -0.05, 51.0), (20, "race", 1, 0.021, 49.0)]
    assert c.history[0]["margin"] == {"gender": 0.19, "race": -0.03}
    with pytest.raises(ValueError, match="needs the dev margins"):
        c.update(30, {"gender": 50.0, "race": 50.0})
    with pytest.raises(ValueError, match="signal"):
        SwapController(["gender"], signal="lms")


def test_config_swap_signal_settings_are_checked():
    from biasunlearn.errors import ConfigError
    from biasunlearn.unlearn.config import make_config

    with pytest.raises(ConfigError, match="swap_signal='dev'"):
        make_config(output_dir="/tmp/x", swap_signal="dev")
    with pytest.raises(ConfigError, match="swap_margin_nats=-0.1"):
        make_config(output_dir="/tmp/x", swap_margin_nats=-0.1)
    assert make_config(output_dir="/tmp/x", swap_signal="margin").swap_signal == "margin"


def test_report_leaves_out_perplexity_when_kl_trained_on_wikitext(tmp_path):
    from biasunlearn.unlearn.config import make_config
    from biasunlearn.unlearn.pipeline import eval_config_for

    base = make_config(output_dir=str(tmp_path), eval_benchmarks="stereoset,perplexity")
    assert eval_config_for(base).benchmarks == ("stereoset", "perplexity")
    wiki = make_config(output_dir=str(tmp_path), eval_benchmarks="stereoset,perplexity", unrelated_source="wikitext")
    assert eval_config_for(wiki).benchmarks == ("stereoset",)


def test_dev_margins_hand_computed():
    from biasunlearn.unlearn.trainer import dev_margins

    recs = [{"bias_type": "gender", "s_stereo": -2.0, "s_anti": -2.5, "s_unrel": -5.0},
            {"bias_type": "gender", "s_stereo": -3.0, "s_anti": -2.0, "s_unrel": -5.0},
            {"bias_type": "race", "s_stereo": -1.0, "s_anti": -1.25, "s_unrel": -4.0}]
    assert dev_margins(recs) == {"gender": pytest.approx(-0.25), "overall": pytest.approx(-0.25 / 3, abs=1e-5),
                                 "race": pytest.approx(0.25)}


def test_retention_sequence_reduction_sums_each_sentence():
    lp = torch.tensor([[-1.0, -2.0, -9.0], [-3.0, -9.0, -9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert retention_loss(lp, mask, "sequence").item() == pytest.approx((3.0 + 3.0) / 2)
    assert retention_loss(lp, mask, "token").item() == pytest.approx(6.0 / 3)
    with pytest.raises(ValueError, match="reduction"):
        retention_loss(lp, mask, "mean")


def test_retention_floor_counts_only_what_each_sentence_lost_against_the_original():
    # sentence sums: -3 and -3; the original model had -2 (so 1 nat lost) and -4 (above it: nothing)
    lp = torch.tensor([[-1.0, -2.0, -9.0], [-3.0, -9.0, -9.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    floor = torch.tensor([-2.0, -4.0])
    loss = retention_loss(lp, mask, "sequence", floor)
    assert loss.item() == pytest.approx(1.0 / 2)
    loss.backward()
    # the CE gradient (-1/N per scored token) on the sentence below its floor, none on the one above it
    assert lp.grad.tolist() == [[-0.5, -0.5, 0.0], [0.0, 0.0, 0.0]]
    assert retention_loss(lp.detach(), mask, "token", floor).item() == pytest.approx(1.0 / 3)
    # a floor far below every sentence switches the term off; none at all is the plain CE
    assert retention_loss(lp.detach(), mask, "sequence", torch.tensor([-50.0, -50.0])).item() == 0.0
    assert retention_loss(lp.detach(), mask, "sequence", None).item() == pytest.approx(3.0)


def test_pair_retain_puts_each_forget_twin_in_the_same_step():
    train = [_ex(i, "gender", "father") for i in range(8)] + [_ex(10 + i, "race", "Kenyan") for i in range(6)]
    s = UnlearnSets(train, adversarial_share=0.25, seed=3)
    for dirs in ({"gender": 1, "race": 1}, {"gender": -1, "race": 1}):
        for step in range(6):
            plain = s.chunk(step, dirs, 4, 6, 1, balance_types=True)
            ch = s.chunk(step, dirs, 4, 6, 1, balance_types=True, pair_retain=True)
            assert ch["forget"] == plain["forget"] and len(ch["retain"]) == 6
            retain_keys = [i.key for i in ch["retain"]]
            assert len(set(retain_keys)) == len(retain_keys)
            n_twins = 0
            for it in ch["forget"]:
                ex, label = it.key.split(":")
                normal = "stereotype" if dirs[it.bias_type] > 0 else "anti-stereotype"
                other = "anti-stereotype" if label == "stereotype" else "stereotype"
                if label == normal:  # a forgotten sentence: its twin is trained up in the same step, first
                    assert f"{ex}:{other}" in retain_keys[:4]
                    n_twins += 1
                else:  # adversarial: its twin is the sentence being forgotten, never retained
                    assert f"{ex}:{other}" not in retain_keys
            # the twins come first, then the usual draw fills the batch
            assert retain_keys[n_twins:] == [k for k in (i.key for i in plain["retain"])
                                             if k not in retain_keys[:n_twins]][:6 - n_twins]
            # every retained sentence belongs to the retain side of its type
            for it in ch["retain"]:
                want = "anti-stereotype" if dirs[it.bias_type] > 0 else "stereotype"
                assert it.key.endswith(":" + want)


def test_twin_margins_hand_computed_and_only_the_forget_y_tokens_get_gradient():
    from biasunlearn.unlearn.losses import npo_loss, twin_margins

    # row 0: forget sentence, 3 real tokens, the first (x) unscored; row 1: its twin, 2 real tokens
    lp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -1.5, 0.0]], requires_grad=True)
    scored = torch.tensor([[0.0, 1.0, 1.0], [0.0, 1.0, 0.0]])
    real = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    pol, ref = twin_margins(lp, scored, real, [0], [1])
    # s = mean(-1, -2, -3) = -2, n = 3 -> -6; twin mean = -1 -> reference 3 * -1 = -3
    assert pol.tolist() == pytest.approx([-6.0]) and ref.tolist() == pytest.approx([-3.0])
    assert not ref.requires_grad
    loss = npo_loss(pol, ref, beta=1.0)
    # -(2/beta) * logsigmoid(-(-6 + 3)) = 2 * softplus(-3)
    assert loss.item() == pytest.approx(2 * math.log1p(math.exp(-3.0)), rel=1e-6)
    loss.backward()
    g = lp.grad
    # gradient only on the forget row's scored tokens (x is shared with the twin; the twin is a fixed target)
    assert g[0, 0].item() == 0.0 and g[1].abs().sum().item() == 0.0
    expected = 2 * torch.sigmoid(torch.tensor(-3.0)).item()  # d/dpol of 2*softplus(pol - ref)
    assert g[0, 1].item() == pytest.approx(expected, rel=1e-5) and g[0, 2].item() == pytest.approx(expected, rel=1e-5)


def test_twin_grad_pushes_the_pair_apart_with_hand_computed_gradients():
    """npo_twin_grad: the same values as the detached twin, but the twin's scored tokens get the opposite push,
    scaled by n_self / n_twin (the reference is n_self times the twin's mean)."""
    from biasunlearn.unlearn.losses import npo_loss, twin_margins

    lp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -1.5, 0.0]], requires_grad=True)
    scored = torch.tensor([[0.0, 1.0, 1.0], [0.0, 1.0, 0.0]])
    real = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    pol, ref = twin_margins(lp, scored, real, [0], [1], twin_grad=True)
    assert pol.tolist() == pytest.approx([-6.0]) and ref.tolist() == pytest.approx([-3.0])
    assert ref.requires_grad
    npo_loss(pol, ref, beta=1.0).backward()
    g = lp.grad
    expected = 2 * torch.sigmoid(torch.tensor(-3.0)).item()
    assert g[0, 1].item() == pytest.approx(expected, rel=1e-5)
    # the twin: d loss / d ref = -expected, d ref / d lp[1, 1] = 3 / 2; its unscored token (x) and padding get none
    assert g[1, 1].item() == pytest.approx(-1.5 * expected, rel=1e-5)
    assert g[1, 0].item() == 0.0 and g[1, 2].item() == 0.0 and g[0, 0].item() == 0.0


def test_twin_grad_needs_the_twin_reference():
    from biasunlearn.errors import ConfigError
    from biasunlearn.unlearn.config import make_config

    with pytest.raises(ConfigError, match="npo_twin_grad=true needs npo_reference='twin'"):
        make_config(output_dir="/tmp/x", npo_twin_grad=True, pair_retain=True)
    assert make_config(output_dir="/tmp/x", npo_reference="twin", pair_retain=True, npo_twin_grad=True).npo_twin_grad


def test_npo_reference_twin_needs_pairs():
    from biasunlearn.errors import ConfigError
    from biasunlearn.unlearn.config import make_config

    with pytest.raises(ConfigError, match="npo_reference='twin' needs pair_retain"):
        make_config(output_dir="/tmp/x", npo_reference="twin", pair_retain=False)
    with pytest.raises(ConfigError, match="npo_reference"):
        make_config(output_dir="/tmp/x", npo_reference="reference")
    assert make_config(output_dir="/tmp/x", npo_reference="twin", pair_retain=True).npo_reference == "twin"


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_lora_targets_are_checked_against_the_model_and_attention_only_leaves_the_mlp_alone(arch, tiny_model_paths,
                                                                                            tmp_path):
    from transformers import AutoModelForCausalLM

    from biasunlearn.adapters import resolve_lora_targets
    from biasunlearn.errors import ConfigError
    from biasunlearn.unlearn.config import make_config
    from biasunlearn.unlearn.pipeline import prepare_lora

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_paths[arch]))
    attention = "q_proj,k_proj,v_proj,o_proj"
    if arch == "gpt2":
        assert resolve_lora_targets(model, "auto") == ["c_attn", "c_fc", "c_proj"]
        # the SmolLM2 recipe's attention-only setting, used on GPT-2: the error lists the names GPT-2 has
        with pytest.raises(ConfigError, match=r"lora_targets: q_proj, k_proj, v_proj, o_proj are not .*c_attn, c_fc, c_proj"):
            resolve_lora_targets(model, attention)
        return
    assert resolve_lora_targets(model, "auto") == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj",
                                                   "v_proj"]
    assert resolve_lora_targets(model, " q_proj, k_proj,v_proj ,o_proj") == attention.split(",")
    with pytest.raises(ConfigError, match="lora_targets: c_attn is not a linear layer"):
        resolve_lora_targets(model, "q_proj,c_attn")
    with pytest.raises(ConfigError, match="lora_targets: ',' names no layer; this model has down_proj, gate_proj"):
        resolve_lora_targets(model, ",")
    cfg = make_config(output_dir=str(tmp_path), lora_targets=attention)
    peft_model = prepare_lora(model, cfg)
    trainable = {n.split(".")[-4] for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable == {"q_proj", "k_proj", "v_proj", "o_proj"}
    n_layers, hidden = model.config.num_hidden_layers, model.config.hidden_size
    kv = model.config.num_key_value_heads * (hidden // model.config.num_attention_heads)
    r = cfg.lora_r  # A is r x in, B is out x r
    per_layer = r * (hidden + hidden) * 2 + r * (hidden + kv) * 2  # q and o, then k and v
    assert sum(p.numel() for p in peft_model.parameters() if p.requires_grad) == n_layers * per_layer


@pytest.mark.parametrize("reduction", ["token", "sequence"])
def test_fused_kl_value_and_gradient_equal_plain_autograd_across_row_pieces(reduction):
    """forward_kl_rows computes the KL and its gradient a few rows at a time; on 70 rows (three pieces of 32) both
    equal the plain autograd computation, and the reference gets no gradient."""
    from biasunlearn.unlearn.losses import KL_CHUNK_ROWS, forward_kl_rows

    g = torch.Generator().manual_seed(0)
    ref = torch.randn(70, 11, generator=g) * 2
    pol = (ref + torch.randn(70, 11, generator=g)).requires_grad_(True)
    assert 70 > 2 * KL_CHUNK_ROWS
    n_seq = 9
    fused = forward_kl_rows(ref, pol, n_seq, reduction)
    (fused * 3.0).backward()
    g_fused = pol.grad.clone()
    pol.grad = None
    r, p = torch.log_softmax(ref, -1), torch.log_softmax(pol, -1)
    per_row = (r.exp() * (r - p)).sum(-1)
    plain = per_row.sum() / (n_seq if reduction == "sequence" else 70)
    (plain * 3.0).backward()
    assert fused.item() == pytest.approx(plain.item(), rel=1e-5)
    assert torch.allclose(g_fused, pol.grad, atol=1e-6)
    ref_leaf = ref.clone().requires_grad_(True)
    forward_kl_rows(ref_leaf, pol, n_seq, reduction).backward()
    assert ref_leaf.grad is None


def test_twin_offset_moves_the_reference_and_keeps_pushing_a_level_pair():
    """npo_twin_offset: the reference is n * (twin mean - offset), so a pair at level still gets the push NPO gives
    a pair `offset` nats per token above level; negative offsets, or an offset without the twin reference, are
    refused."""
    from biasunlearn.errors import ConfigError
    from biasunlearn.unlearn.config import make_config
    from biasunlearn.unlearn.losses import npo_loss, twin_margins

    # both rows have mean -2 over 2 real tokens: the pair is level
    lp = torch.tensor([[-1.0, -3.0], [-2.5, -1.5]], requires_grad=True)
    scored = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    real = torch.ones(2, 2)
    pol, ref = twin_margins(lp, scored, real, [0], [1], offset=0.25)
    assert pol.tolist() == pytest.approx([-4.0]) and ref.tolist() == pytest.approx([2 * (-2.0 - 0.25)])
    npo_loss(pol, ref, beta=2.0).backward()
    # d/dpol of (2/beta) softplus(beta (pol - ref)) = 2 sigmoid(beta * 0.5) = 2 sigmoid(1.0), on the scored token
    assert lp.grad[0, 1].item() == pytest.approx(2 * torch.sigmoid(torch.tensor(1.0)).item(), rel=1e-5)
    lp.grad = None
    pol0, ref0 = twin_margins(lp, scored, real, [0], [1])
    npo_loss(pol0, ref0, beta=2.0).backward()
    assert lp.grad[0, 1].item() == pytest.approx(1.0, rel=1e-5)  # level, no offset: 2 sigmoid(0)

    with pytest.raises(ConfigError, match="npo_twin_offset=-0.1: must be 0 or more"):
        make_config(output_dir="/tmp/x", npo_reference="twin", pair_retain=True, npo_twin_offset=-0.1)
    with pytest.raises(ConfigError, match="npo_twin_offset=0.1.*needs npo_reference='twin'"):
        make_config(output_dir="/tmp/x", npo_twin_offset=0.1)
    assert make_config(output_dir="/tmp/x", npo_reference="twin", pair_retain=True,
                       npo_twin_offset=0.1).npo_twin_offset == 0.1


def test_margin_shift_compares_test_and_pooled_moves(tmp_path, capsys):
    """Hand-computed: the test margins move by -0.3 (race) and -0.1 (gender); the pooled folds by -0.6 and -0.4."""
    mod = load_bench("margin_shift")

    def preds(path, rows):
        lines = [{"benchmark": "stereoset", "task": "intrasentence", "bias_type": b, "target": "t",
                  "s_stereo": s, "s_anti": a, "s_unrel": -9.0} for b, s, a in rows]
        lines.append({"benchmark": "crows_pairs", "bias_type": "race", "s_more": 0.0, "s_less": -5.0})  # not read
        path.write_text("".join(json.dumps(x) + "\n" for x in lines))
        return path

    # base margins: race (0.5 + 0.3) / 2 = 0.4, gender 0.2, overall 1.0 / 3
    base = preds(tmp_path / "base.jsonl", [("race", -1.0, -1.5), ("race", -2.0, -2.3), ("gender", -1.0, -1.2)])
    # after: race (0.1 + 0.1) / 2 = 0.1, gender 0.1, overall 0.1
    after = preds(tmp_path / "after.jsonl", [("race", -1.4, -1.5), ("race", -2.2, -2.3), ("gender", -1.1, -1.2)])
    curve = {"rows": [{"step": 0, "margin": {"race": 0.5, "gender": 0.3, "overall": 0.45}},
                      {"step": 40, "margin": {"race": -0.1, "gender": -0.1, "overall": -0.05}}]}
    (tmp_path / "curve.json").write_text(json.dumps(curve))
    out = tmp_path / "shift.json"
    assert mod.main(["--base", str(base), "--after", f"40={after}", "--curve", str(tmp_path / "curve.json"),
                     "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    race, gender = res["steps"]["40"]["race"], res["steps"]["40"]["gender"]
    assert race["test_move"] == pytest.approx(-0.3) and race["pool_move"] == pytest.approx(-0.6)
    assert race["ratio"] == pytest.approx(0.5)
    assert gender["test_move"] == pytest.approx(-0.1) and gender["ratio"] == pytest.approx(0.25)
    assert res["steps"]["40"]["overall"]["test_move"] == pytest.approx(0.1 - 1.0 / 3, abs=1e-5)
    assert "| race | +0.400 | +0.500 | 40 | +0.100 | -0.100 | -0.300 | -0.600 | 0.50 |" in capsys.readouterr().out
    # a step the curve does not have, a malformed --after, and a file with no StereoSet rows: clear errors
    assert mod.main(["--base", str(base), "--after", f"60={after}", "--curve", str(tmp_path / "curve.json")]) == 2
    assert "no step 60" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        mod.main(["--base", str(base), "--after", str(after), "--curve", str(tmp_path / "curve.json")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].endswith(
        f"error: argument --after: --after {str(after)!r}: expected STEP=PATH, e.g. 60=run/predictions.jsonl"), err
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"benchmark": "bbq"}\n')
    assert mod.main(["--base", str(empty), "--after", f"40={after}", "--curve", str(tmp_path / "curve.json")]) == 2
    assert "no StereoSet intrasentence predictions" in capsys.readouterr().err
    empty.write_text('{"benchmark": "bbq"}\nnot json\n')
    assert mod.main(["--base", str(empty), "--after", f"40={after}", "--curve", str(tmp_path / "curve.json")]) == 2
    assert "empty.jsonl, row 2: not JSON" in capsys.readouterr().err


def test_sibling_moves_groups_test_terms_by_a_pool_sibling(tmp_path):
    """Hand-computed: 'Afghan' has the pool sibling 'Afghanistan' (same five letters), 'Norway' has none."""
    mod = load_bench("sibling_moves")

    def preds(path, rows):
        path.write_text("".join(json.dumps({"benchmark": "stereoset", "task": "intrasentence", "bias_type": "race",
                                            "target": t, "s_stereo": s, "s_anti": 0.0, "s_unrel": -9.0}) + "\n"
                                for t, s in rows))
        return path

    before = mod.term_ss(preds(tmp_path / "b.jsonl", [("Afghan", 1), ("Afghan", 1), ("Norway", 1), ("Norway", -1)]))
    after = mod.term_ss(preds(tmp_path / "a.jsonl", [("Afghan", 1), ("Afghan", -1), ("Norway", 0), ("Norway", -1)]))
    assert before == {("race", "Afghan"): 100.0, ("race", "Norway"): 50.0}
    assert after == {("race", "Afghan"): 50.0, ("race", "Norway"): 0.0}  # a tie (0 vs 0) counts as anti
    res = mod.sibling_moves(before, after, {"race": {"Afghanistan", "Peru"}})
    assert res == {"race": {"sibling": {"terms": 1, "move": -50.0}, "no_sibling": {"terms": 1, "move": -50.0}}}
    res = mod.sibling_moves(before, after, {"race": {"Peru"}})
    assert res["race"]["sibling"] == {"terms": 0, "move": None} and res["race"]["no_sibling"]["terms"] == 2


def test_retain_rise_quantiles_per_type_and_label():
    """Hand-computed: per bias type, the change of each sentence's summed log-probability (after - base), with
    lower-nearest-rank quantiles (index int(p * (n - 1)) of the sorted changes)."""
    from types import SimpleNamespace

    from biasunlearn.scoring import Score

    mod = load_bench("retain_rise")
    exs = [SimpleNamespace(bias_type=b) for b in ("race", "race", "race", "race", "race", "religion")]
    base = {lab: [Score(-10.0, 4)] * 5 + [Score(-20.0, 6)] for lab in mod.LABELS}
    after = {"anti-stereotype": [Score(s, 4) for s in (-9.0, -4.0, -10.0, -12.0, -7.0)] + [Score(-5.0, 6)],
             "stereotype": [Score(-10.0, 4)] * 5 + [Score(-21.0, 6)]}
    t = mod.rise_table(exs, base, after)
    # race anti changes: +1, +6, 0, -2, +3 -> sorted -2, 0, 1, 3, 6; mean 1.6
    assert t["anti-stereotype"]["race"] == {"n": 5, "tokens": 4, "mean": 1.6, "quantiles": {
        "0.1": -2.0, "0.25": 0.0, "0.5": 1.0, "0.75": 3.0, "0.9": 3.0}}
    assert t["anti-stereotype"]["religion"]["quantiles"]["0.5"] == 15.0
    assert t["stereotype"]["religion"]["mean"] == -1.0 and t["stereotype"]["race"]["mean"] == 0.0


def test_sentence_moves_by_hand_and_refuses_unmatched_reads(tmp_path, capsys):
    """Hand-computed: per type and overall, the mean change of s(stereo) - s(unrel), s(anti) - s(unrel), s(unrel)."""
    mod = load_bench("sentence_moves")

    def write(path, rows):
        path.write_text("".join(json.dumps({"benchmark": "stereoset", "task": "intrasentence", "id": i, "bias_type": b,
                                            "target": "t", "s_stereo": s, "s_anti": a, "s_unrel": u}) + "\n"
                                for i, b, s, a, u in rows))
        return str(path)

    base = write(tmp_path / "b.jsonl", [("1", "race", -2.0, -3.0, -4.0), ("2", "race", -2.0, -2.0, -2.0),
                                        ("3", "gender", -1.0, -1.0, -5.0)])
    after = write(tmp_path / "a.jsonl", [("1", "race", -2.0, -1.0, -3.0), ("2", "race", -1.0, -2.0, -2.0),
                                         ("3", "gender", 0.0, 0.0, -5.0)])
    assert mod.main(["--base", base, "--after", after, "--out", str(tmp_path / "m.json")]) == 0
    moves = json.loads((tmp_path / "m.json").read_text())["moves"]
    # race: example 1 stereo-unrel 2 -> 1 (-1), anti-unrel 1 -> 2 (+1), unrel +1; example 2: +1, 0, 0
    assert moves["race"] == {"n": 2, "d_stereo_vs_unrel": 0.0, "d_anti_vs_unrel": 0.5, "d_unrel": 0.5}
    assert moves["gender"] == {"n": 1, "d_stereo_vs_unrel": 1.0, "d_anti_vs_unrel": 1.0, "d_unrel": 0.0}
    assert moves["overall"]["n"] == 3 and moves["overall"]["d_stereo_vs_unrel"] == pytest.approx(0.3333, abs=1e-4)
    other = write(tmp_path / "o.jsonl", [("9", "race", 0.0, 0.0, 0.0)])
    assert mod.main(["--base", base, "--after", other]) == 2
    assert "1 examples of the after read are not in the base read (first: 9)" in capsys.readouterr().err


def test_word_crossover_groups_by_the_words_trained_the_other_way():
    """Hand-made: train gender pair father lazy/busy; test 'mother busy/lazy' has both words trained the other way,
    'uncle busy/rich' only its stereotype word, 'aunt kind/lazy' only its anti word, 'son kind/rich' neither; a race
    pair does not count for gender. SS per group and read is the share whose stereotype scores above its anti."""
    mod = load_bench("word_crossover")

    def ex(i, b, t, s, a):
        return StereoSetExample(id=i, task="intrasentence", bias_type=b, target=t, context=f"The {t} was BLANK.",
                                stereotype=f"The {t} was {s}.", anti_stereotype=f"The {t} was {a}.",
                                unrelated=f"The {t} was cloud.")

    train = [ex("t1", "gender", "father", "lazy", "busy"), ex("t2", "race", "Kenyan", "kind", "rich")]
    test = [ex("m", "gender", "mother", "busy", "lazy"), ex("u", "gender", "uncle", "busy", "rich"),
            ex("a", "gender", "aunt", "kind", "Lazy"), ex("s", "gender", "son", "kind", "rich"),
            ex("s2", "gender", "son", "calm", "loud")]
    groups = mod.crossover_groups(train, test)
    assert groups == {"gender": {"neither": ["s", "s2"], "anti word trained as stereotype": ["a"],
                                 "stereotype word trained as anti": ["u"], "both": ["m"]}}

    def rec(i, pro):
        return {"id": i, "s_stereo": -1.0 if pro else -2.0, "s_anti": -1.5, "s_unrel": -3.0}

    reads = {"base": [rec("m", True), rec("u", True), rec("a", False), rec("s", True), rec("s2", False)],
             "run": [rec("m", False), rec("u", True), rec("a", True), rec("s", False), rec("s2", False)]}
    t = mod.group_ss(groups, reads)["gender"]
    assert t["neither"] == {"n": 2, "base": 50.0, "run": 0.0}
    assert t["both"] == {"n": 1, "base": 100.0, "run": 0.0} and t["anti word trained as stereotype"]["run"] == 100.0
    with pytest.raises(ValueError, match="read 'run' lacks 1 test examples"):
        mod.group_ss(groups, {"run": reads["run"][:4]})


def test_valence_bench_groups_test_examples_and_counts_named_terms(capsys):
    """bench/valence.py with a hand-made scorer: a pair goes to 'stereotype more negative' when its stereotype
    sentence scores more than the margin below its anti-stereotype; examples not in the reads are left out; the
    named terms' examples are counted per group."""
    mod = load_bench("valence")
    score = {"lazy": -0.4, "busy": 0.0, "kind": 0.5, "cruel": -0.6, "tall": 0.02}.get

    def ex(i, b, t, s, a):
        return StereoSetExample(id=i, task="intrasentence", bias_type=b, target=t, context=f"The {t} was BLANK.",
                                stereotype=f"The {t} was {s}.", anti_stereotype=f"The {t} was {a}.", unrelated="x")

    test = [ex("g1", "gender", "mother", "kind", "cruel"), ex("g2", "gender", "father", "lazy", "busy"),
            ex("g3", "gender", "Mother", "tall", "busy"), ex("r1", "race", "Kenyan", "lazy", "kind"),
            ex("r2", "race", "Kenyan", "kind", "busy")]
    groups, by_id = mod.valence_groups(test, lambda text: score(text.split()[-1].rstrip("."), 0.0), 0.05,
                                       {"g1", "g2", "g3", "r1"})
    assert groups == {"gender": {"stereotype more negative": ["g2"], "about the same": ["g3"],
                                 "stereotype more positive": ["g1"]},
                      "race": {"stereotype more negative": ["r1"], "about the same": [],
                               "stereotype more positive": []}}
    assert mod.term_mix(by_id, {"fem": {"mother": ["g1"], "Mother": ["g3"]}}) == {
        "fem": {"stereotype more negative": 0, "about the same": 1, "stereotype more positive": 1}}


def test_neutral_words_takes_the_group_out_and_averages_changes_by_hand():
    mod = load_bench("neutral_words")
    assert mod.neutral_prefix("The father was", "father") == "Someone was"
    assert mod.neutral_prefix("My Kenyan's friend is", "kenyan") == "My someone friend is"
    assert mod.neutral_prefix("Teachers are", "teacher") == "Someone are"
    assert mod.neutral_prefix("She was very", "he") is None  # whole words only
    ex = [StereoSetExample(id="a", task="intrasentence", bias_type="gender", target="father",
                           context="The father was BLANK today.", stereotype="The father was lazy today.",
                           anti_stereotype="The father was busy today.", unrelated="The father was cloud today."),
          StereoSetExample(id="b", task="intrasentence", bias_type="gender", target="her",
                           context="BLANK is what I call her.", stereotype="Sweet is what I call her.",
                           anti_stereotype="Smart is what I call her.", unrelated="Cloud is what I call her.")]
    rows = mod.word_items(ex)  # b names its term after the blank: left out
    assert len(rows) == 1 and rows[0]["stereotype"] == ("The father was", " lazy", "Someone was")
    assert rows[0]["anti-stereotype"][1] == " busy"
    rows = rows + [{"bias_type": "gender"}, {"bias_type": "race"}]
    base = {(lab, w): [0.0, 0.0, 0.0] for lab in mod.LABELS for w in ("context", "neutral")}
    after = {("stereotype", "context"): [-2.0, -4.0, 1.0], ("anti-stereotype", "context"): [1.0, 1.0, 0.0],
             ("stereotype", "neutral"): [-1.0, 0.0, 0.0], ("anti-stereotype", "neutral"): [0.5, 1.5, 0.0]}
    t = mod.change_table(rows, base, after)
    # gender: context margins -3, -5 -> -4; neutral margins -1.5, -1.5 -> -1.5; words -0.5 and +1.0
    assert t["gender"] == {"n": 2, "d_margin_context": -4.0, "d_margin_neutral": -1.5, "d_stereo_neutral": -0.5,
                           "d_anti_neutral": 1.0}
    assert t["race"]["d_margin_context"] == 1.0 and t["race"]["n"] == 1
    # by term: the two gender rows name father and uncle, each its own group
    rows[1]["target"], rows[2]["target"] = "uncle", "Kenyan"
    t = mod.change_table(rows, base, after, by="term")
    assert sorted(t) == ["gender/father", "gender/uncle", "race/Kenyan"]
    assert t["gender/father"]["d_margin_context"] == -3.0 and t["gender/uncle"]["d_margin_context"] == -5.0
    assert t["gender/uncle"]["d_margin_neutral"] == -1.5 and t["gender/father"]["n"] == 1
    with pytest.raises(ValueError, match="by='word'"):
        mod.change_table(rows, base, after, by="word")
    # the summary over terms: example-weighted means, their difference, and the correlation over terms
    tab = {"gender/a": {"n": 1, "d_margin_context": -1.0, "d_margin_neutral": 0.0},
           "gender/b": {"n": 3, "d_margin_context": -2.0, "d_margin_neutral": -1.0},
           "gender/c": {"n": 1, "d_margin_context": -3.0, "d_margin_neutral": -2.0},
           "race/k": {"n": 5, "d_margin_context": 1.0, "d_margin_neutral": 1.0}}
    sm = mod.term_summary(tab)
    assert list(sm) == ["gender", "race", "overall"]
    # gender: (-1 - 6 - 3) / 5 = -2 in context, (0 - 3 - 2) / 5 = -1 neutral; the three terms lie on a line: r = 1
    assert sm["gender"] == {"terms": 3, "n": 5, "d_margin_context": -2.0, "d_margin_neutral": -1.0,
                            "d_group_dependent": -1.0, "r_terms": 1.0}
    assert sm["race"]["r_terms"] is None and sm["overall"]["d_margin_context"] == -0.5  # (-10 + 5) / 10
    with pytest.raises(ValueError, match="not a by-term row"):
        mod.term_summary({"gender": tab["gender/a"]})


def test_ss_precision_reads_errors_and_the_level_model_band(tmp_path, capsys):
    """Hand-computed: a one-term type whose examples never change has no error; the band chances follow the normal
    law (P(|Z| > 1) = 0.3173 for an error equal to the band)."""
    mod = load_bench("ss_precision")
    assert mod.outside_band(4.0, 4.0) == pytest.approx(0.31731, abs=1e-5)
    assert mod.outside_band(2.0, 4.0) == pytest.approx(0.04550, abs=1e-5)
    assert mod.outside_band(0.0, 4.0) == 0.0

    def preds(path, pros):
        rows = [{"benchmark": "stereoset", "task": "intrasentence", "id": f"{b}-{i}", "bias_type": b, "target": t,
                 "s_stereo": 1.0 if p else -1.0, "s_anti": 0.0, "s_unrel": -9.0}
                for b, t, p_list in pros for i, p in enumerate(p_list)]
        rows.append({"benchmark": "crows_pairs", "id": "c-0"})  # other benchmarks' rows are skipped
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return str(path)

    base = preds(tmp_path / "b.jsonl", [("race", "x", [True, True, True, True]), ("gender", "girl", [True, False])])
    after = preds(tmp_path / "a.jsonl", [("race", "x", [True, True, False, False]), ("gender", "girl", [True, False])])
    assert mod.main(["--read", f"base={base}", "--read", f"run={after}", "--resamples", "400",
                     "--out", str(tmp_path / "p.json")]) == 0
    res = json.loads((tmp_path / "p.json").read_text())
    assert res["reads"]["base"]["race"] == {"SS": 100.0, "se": 0.0}
    assert res["reads"]["run"]["race"]["SS"] == 50.0 and res["reads"]["run"]["gender"]["SS"] == 50.0
    assert res["paired"]["run"]["race"]["diff"] == -50.0 and res["paired"]["run"]["gender"] == {"diff": 0.0, "se": 0.0}
    assert res["level_model_outside_band"]["race"] == 0.0 and "overall" not in res["level_model_outside_band"]
    p_gender = res["level_model_outside_band"]["gender"]
    assert res["level_model_any_domain_outside"] == pytest.approx(p_gender, abs=1e-3)  # race adds nothing
    assert "| run − base |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="expected NAME=PATH"):
        mod.main(["--read", base])
    crows_only = tmp_path / "c.jsonl"
    crows_only.write_text(json.dumps({"benchmark": "crows_pairs", "id": "c-0"}) + "\n")
    with pytest.raises(SystemExit, match=r"c\.jsonl: no StereoSet intrasentence predictions"):
        mod.main(["--read", f"base={base}", "--read", f"run={crows_only}"])


def test_pool_pairs_by_hand_and_on_joint_redraws(tmp_path, capsys):
    """Hand-computed: differences 2 and 4, each with error 1, pool to 3 ± 0.707 when independent; Q = 1 + 1 = 2 on
    1 df, whose chance is P(|Z| > sqrt 2) = erfc(1); Q(tau^2) = 2 / (1 + tau^2) = 1 gives tau 1 and a random pool of
    3 ± 1. With correlation 0.5 the same differences pool to 3 ± sqrt(0.75) and Q = 3 / 0.75 = 4: errors shared
    through one test split make the seeds less consistent and the pool less precise than independence says."""
    from biasunlearn.metrics import paired_ss_difference

    mod = load_bench("pool_pairs")
    assert mod.chi2_sf(3.0, 2) == pytest.approx(math.exp(-1.5), rel=1e-9)  # df 2: exp(-q/2)
    assert mod.chi2_sf(2.0, 1) == pytest.approx(math.erfc(1.0), rel=1e-9)
    assert mod.chi2_sf(0.0, 3) == 1.0
    ind = mod.pool([2.0, 4.0], [[1.0, 0.0], [0.0, 1.0]])
    assert ind["fixed"]["diff"] == pytest.approx(3.0) and ind["fixed"]["se"] == pytest.approx(1 / math.sqrt(2))
    assert ind["Q"] == pytest.approx(2.0) and ind["df"] == 1 and ind["p_same_change"] == pytest.approx(math.erfc(1.0))
    assert ind["tau"] == pytest.approx(1.0, abs=1e-6)
    assert ind["random"]["diff"] == pytest.approx(3.0) and ind["random"]["se"] == pytest.approx(1.0, abs=1e-6)
    cor = mod.pool([2.0, 4.0], [[1.0, 0.5], [0.5, 1.0]])
    assert cor["fixed"]["se"] == pytest.approx(math.sqrt(0.75)) and cor["Q"] == pytest.approx(4.0)
    same = mod.pool([1.5, 1.5], [[1.0, 0.0], [0.0, 4.0]])
    assert same["Q"] == pytest.approx(0.0) and same["tau"] == 0.0 and same["random"] == same["fixed"]
    with pytest.raises(ValueError, match="covariance is singular"):
        mod.pool([1.0, 2.0], [[0.0, 0.0], [0.0, 1.0]])

    def preds(name, pros):  # pros: {(bias_type, term): [pro, ...]}
        rows = [{"benchmark": "stereoset", "task": "intrasentence", "id": f"{t}-{i}", "bias_type": b, "target": t,
                 "s_stereo": 1.0 if p else -1.0, "s_anti": 0.0, "s_unrel": -9.0}
                for (b, t), ps in pros.items() for i, p in enumerate(ps)]
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return str(path)

    ctrl = {("race", "x"): [True] * 4, ("race", "y"): [True] * 4, ("gender", "g"): [True, False]}
    c1 = preds("c1", ctrl)
    t1 = preds("t1", {**ctrl, ("race", "x"): [True, True, False, False]})  # race (50 + 100) / 2 = 75: -25
    c2 = preds("c2", ctrl)
    t2 = preds("t2", {**ctrl, ("race", "y"): [True, False, False, False]})  # race (100 + 25) / 2 = 62.5: -37.5
    assert mod.main(["--pair", f"a={c1},{t1}", "--pair", f"b={c2},{t2}", "--resamples", "300",
                     "--out", str(tmp_path / "pool.json")]) == 0
    res = json.loads((tmp_path / "pool.json").read_text())
    race = res["domains"]["race"]
    assert race["pairs"]["a"]["diff"] == pytest.approx(-25.0) and race["pairs"]["b"]["diff"] == pytest.approx(-37.5)
    # each pair's error is exactly bench/ss_precision.py's paired error: the redraws do not depend on how many reads
    with open(c1) as f1, open(t1) as f2:
        alone = paired_ss_difference([json.loads(x) for x in f1], [json.loads(x) for x in f2], 300, 0)
    assert race["pairs"]["a"]["se"] == pytest.approx(alone["race"]["se"], rel=1e-9)
    out = capsys.readouterr().out
    assert res["pairs"] == {"a": [c1, t1], "b": [c2, t2]} and "| race | -25.00 ±" in out
    assert "| gender | +0.00 ± 0.00 | +0.00 ± 0.00 | – | not pooled: errors [0.0, 0.0]" in out
    assert "covariance is singular" in res["domains"]["gender"]["not_pooled"]  # gender never changes: no error
    assert res["domains"]["gender"]["pairs"]["a"] == {"diff": 0.0, "se": 0.0} and "fixed" in race
    with pytest.raises(SystemExit, match="expected NAME=CONTROL,CANDIDATE"):
        mod.main(["--pair", f"a={c1}"])
    other = preds("other", {("race", "z"): [True]})
    with pytest.raises(SystemExit, match="does not hold the same examples"):
        mod.main(["--pair", f"a={c1},{other}"])


def test_term_moves_by_hand(tmp_path, capsys):
    """Per term SS in each read and its mean change over the later reads; a group's SS is the mean of its terms'
    SS; with every example moving the same way the paired error is 0; a group naming an unknown term, or a read
    lacking an example, stops with a message."""
    mod = load_bench("term_moves")

    def rec(i, b, t, pro):
        return {"id": f"{t}-{i}", "bias_type": b, "target": t, "s_stereo": -1.0 if pro else -2.0, "s_anti": -1.5,
                "s_unrel": -3.0}

    base = [rec(i, "gender", "mother", i < 3) for i in range(4)] + [rec(i, "gender", "male", True) for i in range(2)] \
        + [rec(0, "race", "Kenyan", True)]
    r1 = [rec(i, "gender", "mother", i < 1) for i in range(4)] + [rec(i, "gender", "male", False) for i in range(2)] \
        + [rec(0, "race", "Kenyan", True)]
    r2 = [rec(i, "gender", "mother", True) for i in range(4)] + [rec(i, "gender", "male", i == 0) for i in range(2)] \
        + [rec(0, "race", "Kenyan", False)]
    terms = mod.term_ids(base, {"gender"})
    assert terms == {"gender": {"male": ["male-0", "male-1"], "mother": [f"mother-{i}" for i in range(4)]}}
    t = mod.term_table(terms, {"base": base, "r1": r1, "r2": r2})["gender"]
    # mother 75 -> 25 and 100: mean change (-50 + 25) / 2; male 100 -> 0 and 50: -75, down in both
    assert t["mother"] == {"n": 4, "base": 75.0, "r1": 25.0, "r2": 100.0, "mean_change": -12.5, "down": 1}
    assert t["male"]["mean_change"] == -75.0 and t["male"]["down"] == 2
    groups = mod.parse_groups(["both=Mother,male"], terms)
    by = {n: {r["id"]: r for r in recs} for n, recs in (("base", base), ("r1", r1))}
    g = mod.group_change(groups["both"], by["base"], by["r1"], ("base", "r1"), 200, 0)
    assert (g["SS_first"], g["SS"], g["diff"]) == (87.5, 12.5, -75.0) and g["se"] > 0
    # male alone: both examples go from pro to anti in every redraw, so the change is certain
    g = mod.group_change({"male": terms["gender"]["male"]}, by["base"], by["r1"], ("base", "r1"), 50, 0)
    assert g["diff"] == -100.0 and g["se"] == 0.0
    with pytest.raises(SystemExit, match="not a test target term of the types kept: Kenyan"):
        mod.parse_groups(["g=Kenyan"], terms)
    with pytest.raises(SystemExit, match="expected NAME=TERM"):
        mod.parse_groups(["g="], terms)
    with pytest.raises(SystemExit, match="^--terms 'g=Kenyan': not a test target term"):  # bench/valence.py's flag
        mod.parse_groups(["g=Kenyan"], terms, "--terms")
    with pytest.raises(SystemExit, match="--resamples 1: must be 2 or more"):
        mod.main(["--read", "a=x", "--read", "b=y", "--resamples", "1"])
    with pytest.raises(ValueError, match="read 'r1' lacks 1 test examples"):
        mod.term_table(terms, {"base": base, "r1": r1[1:]})
    paths = []
    for name, recs in (("base", base), ("r1", r1)):
        p = tmp_path / f"{name}.jsonl"
        p.write_text("".join(json.dumps({"benchmark": "stereoset", "task": "intrasentence", **r}) + "\n" for r in recs))
        paths.append(f"{name}={p}")
    out = tmp_path / "t.json"
    assert mod.main(["--read", paths[0], "--read", paths[1], "--group", "m=male", "--resamples", "20",
                     "--out", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert saved["terms"]["race"]["Kenyan"]["mean_change"] == 0.0 and saved["groups"]["m"]["r1"]["diff"] == -100.0
    assert "| gender | mother | 4 | 75.0 | 25.0 | -50.0 | 1 of 1 |" in capsys.readouterr().out


def test_describe_best_puts_the_kept_dev_check_in_words():
    from biasunlearn.unlearn.pipeline import describe_best

    assert describe_best([[0, [5.980392157, 2.403404344, 2.3]], 150]) == \
        "step 150, largest |dev SS - 50| over the bias types 5.98 (the other types' 2.40, 2.30, which break ties), within the LMS guard"
    assert describe_best(((0, (0.01234,)), 10), "margin") == \
        "step 10, largest |dev margin| over the bias types 0.0123, within the LMS guard"
    assert describe_best([[1, [3.2]], 50]).startswith("step 50; no check stayed within the LMS guard")
    assert describe_best(None) == "none (no dev check after step 0)"


def test_train_exclude_pattern_leaves_out_matching_pairs():
    """Pairs whose stereotype or anti-stereotype matches (any case) are left out, the rest kept in order; a pattern
    that leaves none, or one that is not a regular expression, is refused naming the setting."""
    from biasunlearn.errors import ConfigError
    from biasunlearn.unlearn.config import make_config
    from biasunlearn.unlearn.pipeline import exclude_train_pairs

    train = [_ex(0, "race", "Omani"), _ex(1, "race", "Kenyan"), _ex(2, "gender", "father")]
    train[0] = StereoSetExample(id="e0", task="intrasentence", bias_type="race", target="Omani",
                                context="Oman is full of BLANK.", stereotype="Oman is full of Terrorists.",
                                anti_stereotype="Oman is full of families.", unrelated="Oman is full of clouds.")
    kept, out = exclude_train_pairs(train, "BUSY TODAY")  # any case: e1 and e2's anti-stereotype "... busy today."
    assert [e.id for e in kept] == ["e0"] and [e.id for e in out] == ["e1", "e2"]
    kept, out = exclude_train_pairs(train, "terror")
    assert [e.id for e in kept] == ["e1", "e2"] and [e.id for e in out] == ["e0"]
    assert exclude_train_pairs(train, "") == (train, [])
    with pytest.raises(ConfigError, match="leaves out all 3 train pairs"):
        exclude_train_pairs(train, "today|families")
    with pytest.raises(ConfigError, match=r"train_exclude_pattern='\(': not a regular expression"):
        make_config(train_exclude_pattern="(")


def test_model_dtype_and_sharding_are_resolved_from_the_settings(tmp_path, monkeypatch):
    """model_dtype auto keeps float32 weights on a CPU (its recipes train them under bf16 autocast) and on a GPU
    without bf16 training; an explicit dtype is kept; a wrong one is refused. FSDP or DeepSpeed, from the arguments
    or accelerate launch's environment, place the model themselves."""
    from biasunlearn.unlearn.config import make_config

    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    cfg = make_config(output_dir=str(tmp_path), use_cpu=True, bf16=True)
    assert cfg.model_dtype == "auto" and cfg.load_dtype() == "float32"
    assert make_config(output_dir=str(tmp_path), use_cpu=True, model_dtype="bfloat16").load_dtype() == "bfloat16"
    with pytest.raises(ConfigError, match="model_dtype='half'"):
        make_config(output_dir=str(tmp_path), use_cpu=True, model_dtype="half")
    assert cfg.engine_places_model() is False
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert cfg.engine_places_model() is True
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "false")
    assert cfg.engine_places_model() is False
    # on a (pretend) GPU, bf16 training loads bfloat16 weights
    gpu = make_config(output_dir=str(tmp_path), use_cpu=True, bf16=True)
    gpu.use_cpu = False
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert gpu.load_dtype() == "bfloat16"
    gpu.bf16 = False
    assert gpu.load_dtype() == "float32"


@pytest.mark.parametrize("capability,native", [((7, 0), False), ((7, 5), False), ((8, 0), True), ((9, 0), True)])
def test_cuda_bf16_counts_only_native_support(monkeypatch, capability, native):
    """torch.cuda.is_bf16_supported() says yes on a V100 or T4, where bf16 is emulated; bf16 is chosen only from
    compute capability 8.0 (Ampere) on."""
    from biasunlearn import models

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.version, "hip", None)
    assert models.cuda_has_native_bf16() is native
    assert models.auto_dtype("cuda") == (torch.bfloat16 if native else torch.float32)


@pytest.mark.parametrize("fsdp,deepspeed,stage,sharded", [(False, False, None, False), (True, False, None, True),
                                                          (False, True, 1, False), (False, True, 2, False),
                                                          (False, True, 3, True), (False, True, None, True)])
def test_weights_count_as_sharded_under_fsdp_and_zero3_only(fsdp, deepspeed, stage, sharded):
    from types import SimpleNamespace

    from biasunlearn.unlearn.trainer import _weights_sharded

    plugin = SimpleNamespace(zero_stage=stage) if deepspeed else None
    stub = SimpleNamespace(is_fsdp_enabled=fsdp, is_deepspeed_enabled=deepspeed,
                           accelerator=SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=plugin)))
    assert _weights_sharded(stub) is sharded


def test_lora_stays_out_of_a_vision_encoder():
    """A multimodal checkpoint loaded as a causal LM holds a vision encoder beside its text decoder: LoRA targets are
    found in the decoder only, and layers of the same name in the encoder (which text never reaches, so DDP would
    wait for their gradients) are excluded."""
    from types import SimpleNamespace

    from peft import inject_adapter_in_model

    from biasunlearn.adapters import find_lora_targets, lora_config, modules_outside_decoder

    def block(*names):
        return torch.nn.ModuleDict({n: torch.nn.Linear(4, 4) for n in names})

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(4, 4)

    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.vision = torch.nn.ModuleList([block("q_proj", "fc1")])
            self.vision[0]["k_proj"] = Wrapped()  # a class of the model's own around a linear (as Gemma 4's)
            self.language = torch.nn.Module()
            self.language.layers = torch.nn.ModuleList([block("q_proj", "k_proj", "up_proj"),
                                                        block("q_proj", "k_proj", "up_proj")])
            self.lm_head = torch.nn.Linear(4, 8)

        def get_decoder(self):
            return self.language

    toy = Toy()
    assert find_lora_targets(toy) == ["k_proj", "q_proj", "up_proj"]
    outside = ["vision.0.k_proj", "vision.0.q_proj"]
    assert modules_outside_decoder(toy, ["k_proj", "q_proj", "up_proj"]) == outside
    lcfg = lora_config(toy, SimpleNamespace(lora_r=2, lora_alpha=4, lora_dropout=0.0, lora_targets="auto"))
    assert sorted(lcfg.target_modules) == ["k_proj", "q_proj", "up_proj"] and sorted(lcfg.exclude_modules) == outside
    lcfg.task_type = None
    inject_adapter_in_model(lcfg, toy)
    adapted = sorted(n.removesuffix(".lora_A") for n, _ in toy.named_modules() if n.endswith(".lora_A"))
    assert adapted == [f"language.layers.{i}.{p}" for i in (0, 1) for p in ("k_proj", "q_proj", "up_proj")]
    # a plain causal LM: nothing is outside its decoder
    plain = Toy()
    plain.vision = torch.nn.ModuleList()
    assert modules_outside_decoder(plain, ["k_proj", "q_proj", "up_proj"]) == []


def test_glibc_malloc_tuning_sets_what_the_environment_does_not(monkeypatch):
    import ctypes

    from biasunlearn import models

    calls = []

    class FakeLibc:
        def mallopt(self, param, value):
            calls.append((param, value))
            return 1

    monkeypatch.setattr(ctypes, "CDLL", lambda name: FakeLibc())
    for k in ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_"):
        monkeypatch.delenv(k, raising=False)
    assert models.tune_glibc_malloc() is True
    assert calls == [(-4, 0), (-1, 2 ** 31 - 1), (-2, 2 ** 30)]  # M_MMAP_MAX, M_TRIM_THRESHOLD, M_TOP_PAD
    calls.clear()
    monkeypatch.setenv("MALLOC_MMAP_MAX_", "65536")  # the user's own setting wins
    assert models.tune_glibc_malloc() is True and calls == [(-1, 2 ** 31 - 1), (-2, 2 ** 30)]

    # restore, for what the environment does not set: where glibc's dynamic threshold settles (large blocks up to
    # 32 MiB from the heap, trimmed above 64 MiB), not its 128 KiB start values, which the tuning fixed for the
    # process; then the kept memory handed back
    calls.clear()
    FakeLibc.malloc_trim = lambda self, pad: calls.append(("trim", pad)) or 1
    assert models.restore_glibc_malloc() is True
    assert calls == [(-3, 32 * 2 ** 20), (-1, 64 * 2 ** 20), (-2, 128 * 1024), ("trim", 0)]
    calls.clear()
    monkeypatch.delenv("MALLOC_MMAP_MAX_")
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "1048576")
    assert models.restore_glibc_malloc() is True
    assert calls == [(-4, 65536), (-1, 64 * 2 ** 20), (-2, 128 * 1024), ("trim", 0)]

    def no_glibc(name):
        raise OSError("libc.so.6: cannot open shared object file")

    monkeypatch.setattr(ctypes, "CDLL", no_glibc)  # e.g. macOS or musl
    assert models.tune_glibc_malloc() is False


def test_loss_plot_of_a_short_run_shows_its_points_on_whole_steps(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    from biasunlearn import plots

    log = tmp_path / "log.jsonl"
    log.write_text("\n".join(json.dumps({"step": s, "loss_forget": 1.0 / s, "loss_retain": 2.0, "loss_kl": 0.1})
                             for s in (1, 2)) + "\n" + json.dumps({"step": 2, "train_runtime": 3.0}) + "\n")
    seen = {}
    real_finish = plots._finish

    def finish(fig, ax, out_png, xlabel, ylabel, title):
        path = real_finish(fig, ax, out_png, xlabel, ylabel, title)
        seen.update(markers=[line.get_marker() for line in ax.get_lines()], title=ax.get_title(),
                    ticks=[t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]])
        return path

    monkeypatch.setattr(plots, "_finish", finish)
    png = plots.plot_losses(log, tmp_path / "losses.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert seen["markers"] == [".", ".", "."]  # two logged steps: drawn as points, not an empty line
    assert "2 logged steps: logging_steps sets how often" in seen["title"].replace("\n", " ")
    assert seen["ticks"] and all(float(t).is_integer() for t in seen["ticks"])


def test_dev_plots_say_when_the_dev_slice_was_trained_on(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    from biasunlearn import plots

    def write_log(path, trained_on):
        rows = [{"step": s, "ss": {"gender": 60.0 - s, "race": 55.0}, "ss_overall": 57.0 - s,
                 "margin": {"gender": 0.1, "race": 0.05, "overall": 0.07}, "directions": {"gender": 1, "race": 1},
                 **({"trained_on": True} if trained_on else {})} for s in (0, 5)]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path

    held, trained = write_log(tmp_path / "held.jsonl", False), write_log(tmp_path / "trained.jsonl", True)
    seen = []
    real_finish = plots._finish

    def finish(fig, ax, out_png, xlabel, ylabel, title):
        path = real_finish(fig, ax, out_png, xlabel, ylabel, title)
        seen.append((ax.get_title().replace("\n", " "), [t.get_text() for t in ax.get_legend().get_texts()]))
        return path

    monkeypatch.setattr(plots, "_finish", finish)
    note = "the dev slice was trained on (train_on_dev): not held out, a collapse guard only"
    for fn in (plots.plot_dev_ss, plots.plot_dev_margin):
        seen.clear()
        assert fn(held, tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
        assert fn(trained, tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"
        assert note not in seen[0][0] and note in seen[1][0], (fn.__name__, seen)
    seen.clear()
    plots.plot_dev_ss_compare({"held": held, "trained": trained}, tmp_path / "c.png")
    assert seen[0][1][:2] == ["held", "trained (dev trained on)"]


def test_a_log_line_cut_short_by_a_kill_is_skipped_with_its_file_and_line_named(tmp_path, monkeypatch, capsys):
    import matplotlib

    matplotlib.use("Agg")
    from biasunlearn import plots

    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps({"step": s, "loss_forget": 1.0 / s, "loss_retain": 2.0, "loss_kl": 0.1}) + "\n"
                           for s in (1, 2, 3)) + '{"step": 4, "grad_n')
    assert [r["step"] for r in plots._read_jsonl(log)] == [1, 2, 3]
    err = capsys.readouterr().err
    assert f"[log] warning: {log}, line 4: not JSON (Unterminated string" in err and "its last line" in err
    drawn = {}
    real_finish = plots._finish

    def finish(fig, ax, out_png, *a):
        drawn["x"] = [list(line.get_xdata()) for line in ax.get_lines()]
        return real_finish(fig, ax, out_png, *a)

    monkeypatch.setattr(plots, "_finish", finish)
    png = plots.plot_losses(log, tmp_path / "losses.png")  # was a JSONDecodeError naming no file
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and drawn["x"] == [[1, 2, 3]] * 3
    assert f"{log}, line 4: not JSON" in capsys.readouterr().err
    dev = tmp_path / "dev_log.jsonl"
    dev.write_text('{"step": 0, "ss_overall": 60.0}\n[1, 2]\n{"step": 2, "ss_overall": 55.0}\n')
    assert plots._read_jsonl(dev) == [{"step": 0, "ss_overall": 60.0}, {"step": 2, "ss_overall": 55.0}]
    err = capsys.readouterr().err
    assert f"{dev}, line 2: not a JSON object; skipped" in err and "its last line" not in err


def test_a_resume_keeps_the_log_rows_up_to_its_checkpoint(tmp_path):
    from biasunlearn.unlearn.pipeline import truncate_logs

    rows = [{"step": s, "loss": 0.5 + s} for s in range(1, 8)] + [{"step": 4, "loss": 9.0}]  # 5..7 and 4 again
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 8, "lo')
    dev = [{"step": s, "ss_overall": 60.0 - s} for s in (0, 2, 4, 4)]  # a kill between the check of 4 and its save
    (tmp_path / "dev_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in dev))
    said = []
    assert truncate_logs(tmp_path, 2, said.append) == {"log.jsonl": 7, "dev_log.jsonl": 2}
    assert [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()] == rows[:2]
    assert [json.loads(x) for x in (tmp_path / "dev_log.jsonl").read_text().splitlines()] == dev[:2]
    assert said[0].startswith(f"[resume] {tmp_path / 'log.jsonl'}: 6 rows after step 2 dropped (those steps run "
                              "again), and 1 unreadable line (") and "line 9: not JSON" in said[0]
    assert said[0].endswith("; 2 kept")
    assert said[1] == (f"[resume] {tmp_path / 'dev_log.jsonl'}: 2 rows after step 2 dropped (those steps run "
                       "again); 2 kept")
    assert truncate_logs(tmp_path, 2, said.append) == {} and len(said) == 2  # nothing left to drop: not rewritten
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically, no temp file left


def test_trainer_trains_on_the_whole_sentences_tokens_and_says_so_once(caplog):
    """With a tokenizer whose parts tokenize apart otherwise than whole (legacy SentencePiece: " caring." alone gets
    a lone "▁"), a training sentence is encoded as the evaluation scores it: the whole sentence's tokens, y scored
    from where it begins; a warning says so once, and the count is kept."""
    import logging
    from types import SimpleNamespace

    from _tiny import make_legacy_sp_tokenizer

    from biasunlearn.unlearn.sets import Item
    from biasunlearn.unlearn.trainer import BiasUnlearnTrainer

    sp = make_legacy_sp_tokenizer()
    ns = SimpleNamespace(tok=sp, _ids={}, args=SimpleNamespace(unrelated_max_tokens=256), _start=1, retokenized=0)
    ns._note_retokenized = lambda item: BiasUnlearnTrainer._note_retokenized(ns, item)
    with caplog.at_level(logging.WARNING):
        ids, first, end = BiasUnlearnTrainer._encode(ns, Item(key="a", bias_type="gender", x="The mother was very",
                                                              y=" caring."))
        BiasUnlearnTrainer._encode(ns, Item(key="b", bias_type="gender", x="The father was very", y=" strict."))
        BiasUnlearnTrainer._encode(ns, Item(key="a", bias_type="gender", x="The mother was very", y=" caring."))
    assert ids == [1] + sp.convert_tokens_to_ids(["▁The", "▁mother", "▁was", "▁very", "▁caring", "."])
    assert (first, end) == (5, 7)  # y = "▁caring", "." (no lone "▁")
    assert ns.retokenized == 2  # each sentence once (the second "a" is cached)
    assert sum("tokenized apart" in r.getMessage() for r in caplog.records) == 1


def test_learning_rate_note_above_one_billion_parameters():
    from biasunlearn.unlearn.pipeline import learning_rate_note

    assert learning_rate_note(8_030_000_000, 5e-5) == ("learning_rate 5e-05 on a model of 8.0B parameters: the paper "
                                                       "trained its 7B-8B models at 2e-5 (--learning_rate 2e-5)")
    assert learning_rate_note(8_030_000_000, 2e-5) == ""
    assert learning_rate_note(134_515_008, 5e-4) == ""  # SmolLM2's recipe: small models train faster



@pytest.mark.parametrize("balance", [False, True])
def test_shares_of_a_global_batch_make_up_the_one_process_chunk(balance):
    """global_batch: W processes x k accumulation micro-batches, each drawing size/(W*k) at chunk index step*k + m
    (as the trainer asks), together draw the sentences one process draws for the step with the whole sizes."""
    train = [_ex(i, "gender", "father") for i in range(8)] + [_ex(10 + i, "race", "Kenyan") for i in range(6)]
    s = UnlearnSets(train, adversarial_share=0.25, seed=3)
    dirs = {"gender": 1, "race": 1}
    for step in (0, 3):
        whole = s.chunk(step, dirs, 8, 8, 8, balance_types=balance)
        world, ga = 2, 2
        parts = [s.chunk(step * ga + m, dirs, 2, 2, 2, rank=r, world=world, balance_types=balance)
                 for m in range(ga) for r in range(world)]
        for key in ("forget", "retain", "unrelated"):
            assert sorted(i.key for p in parts for i in p[key]) == sorted(i.key for i in whole[key]), (step, key)


def test_balance_valence_deals_each_type_evenly_over_the_valence_of_its_pairs():
    """gender has 6 pairs whose stereotype is the more negative sentence and 2 whose stereotype is the more
    positive one: with balance_valence each gender draw alternates between the groups (sorted: negative,
    positive), so over 8 draws each group is drawn 4 times; a counterfactual's key ('e10~cf:...') takes its
    pair's group; without it, the negative pairs take 6 of 8. It needs balance_types and excludes balance_terms."""
    from biasunlearn.unlearn.config import make_config

    train = [_ex(i, "gender", "father") for i in range(8)] + [_ex(20 + i, "race", "Kenyan") for i in range(4)]
    valence = {f"e{i}": "negative" for i in range(6)} | {"e6": "positive", "e7": "positive"}
    s = UnlearnSets(train, adversarial_share=0.0, seed=3, valence=valence)
    dirs = {"gender": 1, "race": 1}
    gender = [i for step in range(4)
              for i in s.chunk(step, dirs, 4, 4, 1, balance_types=True, balance_valence=True)["forget"]
              if i.bias_type == "gender"]
    assert [valence[i.key.split(":")[0]] for i in gender] == ["negative", "positive"] * 4
    assert sorted(i.key for i in gender if i.key in ("e6:stereotype", "e7:stereotype")) == \
        ["e6:stereotype", "e6:stereotype", "e7:stereotype", "e7:stereotype"]
    plain = [i for step in range(4) for i in s.chunk(step, dirs, 4, 4, 1, balance_types=True)["forget"]
             if i.bias_type == "gender"]
    assert sum(valence[i.key.split(":")[0]] == "negative" for i in plain) == 6
    assert s._valence_of(replace(gender[1], key="e7~cf:stereotype")) == "positive"
    assert s._valence_of(replace(gender[1], key="e99:stereotype")) == "same"  # not in the map
    # race has no valence entries: one group ('same'), read cyclically, each pair once in 4 draws
    race = [i.key for step in range(2)
            for i in s.chunk(step, dirs, 4, 4, 1, balance_types=True, balance_valence=True)["forget"]
            if i.bias_type == "race"]
    assert sorted(race) == [f"e{20 + i}:stereotype" for i in range(4)]
    with pytest.raises(ConfigError, match="balance_valence=true needs balance_types=true and balance_terms=false"):
        make_config(balance_valence=True)
    # valence_weights: positive=2 makes gender's cycle negative, positive, positive, so of 6 gender draws 2 are
    # negative and 4 positive, in that order; each group's draws read its own pool cyclically (e6, e7 alternate);
    # all-ones weights are the even deal; race (one group) is dealt as before
    weighted = [i for step in range(3)
                for i in s.chunk(step, dirs, 4, 4, 1, balance_types=True, balance_valence=True,
                                 valence_weights={"positive": 2})["forget"] if i.bias_type == "gender"]
    assert [valence[i.key.split(":")[0]] for i in weighted] == ["negative", "positive", "positive"] * 2
    pos = [i.key.split(":")[0] for i in weighted if valence[i.key.split(":")[0]] == "positive"]
    assert sorted(pos) == ["e6", "e6", "e7", "e7"] and pos[0] != pos[1]
    for step in range(3):
        ones = s.chunk(step, dirs, 4, 4, 1, balance_types=True, balance_valence=True,
                       valence_weights={"negative": 1, "positive": 1, "same": 1})
        assert ones == s.chunk(step, dirs, 4, 4, 1, balance_types=True, balance_valence=True)
    assert make_config(balance_types=True, balance_valence=True,
                       valence_weights="positive=2, same=3").valence_weight_map() == {"positive": 2, "same": 3}
    for bad, msg in (("positive=0", "expected comma-separated GROUP=N"),
                     ("flattering=2,nice=1", r"no valence group named flattering, nice \(the groups: negative, same, "
                      r"positive\)"),
                     ("positive=1,positive=2", r"expected .*, each group once \(bad part: 'positive=2'\)")):
        with pytest.raises(ConfigError, match=f"valence_weights='{bad}': {msg}"):
            make_config(balance_types=True, balance_valence=True, valence_weights=bad)
    with pytest.raises(ConfigError, match="valence_weights='positive=2' needs balance_valence=true"):
        make_config(balance_types=True, valence_weights="positive=2")
    with pytest.raises(ConfigError, match="balance_valence=true needs"):
        make_config(balance_valence=True, balance_types=True, balance_terms=True)


def test_pair_valence_from_vader_and_the_missing_package_named(monkeypatch):
    from biasunlearn.unlearn import valence as V
    exs = [StereoSetExample(id=f"v{i}", task="intrasentence", bias_type=b, target="father",
                            context="The father was BLANK today.", stereotype=f"The father was {s} today.",
                            anti_stereotype=f"The father was {a} today.", unrelated="x")
           for i, (b, s, a) in enumerate([("gender", "lazy", "busy"), ("gender", "strong", "gentle"),
                                          ("race", "rich", "poor"), ("race", "tall", "short")])]
    # VADER's compounds: lazy -0.3612, busy 0, strong 0.5106, gentle 0.4404, rich 0.5574, poor -0.4767, tall/short 0
    groups = V.pair_valence(exs)
    assert groups == {"v0": "negative", "v1": "positive", "v2": "positive", "v3": "same"}
    assert V.pair_valence(exs[1:2], margin=0.08) == {"v1": "same"}  # 0.0702 within a wider band
    assert V.group_counts(exs, groups) == {"gender": {"negative": 1, "same": 0, "positive": 1},
                                           "race": {"negative": 0, "same": 1, "positive": 1}}
    monkeypatch.setitem(sys.modules, "vaderSentiment.vaderSentiment", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"balance_valence needs the vaderSentiment package, a dependency of "
                                          r"biasunlearn that is missing here \(pip install vaderSentiment\)"):
        V.sentence_scorer()


def test_dev_margins_by_valence_splits_each_type_by_its_pairs_valence():
    """bench/dev_margins.py --by-valence: each record's bias type becomes TYPE/GROUP, so SS and the margin are
    summarised per valence group, hand-computed here; the overall row is unchanged by the split."""
    mod = load_bench("dev_margins")

    def rec(i, target, s, a):
        return {"id": i, "task": "intrasentence", "bias_type": "gender", "target": target, "s_stereo": s,
                "s_anti": a, "s_unrel": -9.0, "sentence_ids": {}}

    recs = [rec("e1", "mother", -1.0, -2.0), rec("e2", "mother", -3.0, -2.0), rec("e3", "sister", -1.0, -1.5)]
    groups = {"e1": "negative", "e2": "positive", "e3": "positive"}
    split = mod.by_valence(recs, groups)
    assert [r["bias_type"] for r in split] == ["gender/negative", "gender/positive", "gender/positive"]
    assert recs[0]["bias_type"] == "gender"  # the records given are left as they were
    out = mod.summarise_by_valence(recs, groups)
    assert out["gender/negative"]["SS"] == 100.0 and out["gender/negative"]["n"] == 1
    # SS is a mean over target terms: mother 0 of 1, sister 1 of 1
    assert out["gender/positive"]["SS"] == 50.0 and out["gender/positive"]["terms"] == 2
    assert out["gender/positive"]["margin"] == pytest.approx((-1.0 + 0.5) / 2)
    # overall as without the split: mother 1 of 2, sister 1 of 1 (split, mother would count twice: 66.67)
    assert out["overall"]["SS"] == 75.0 and mod.summarise(recs)["gender"]["n"] == 3
    # against a base read: the margin's change per group
    moved = [dict(r, s_stereo=r["s_stereo"] - 1.0) for r in recs]
    out = mod.summarise_by_valence(moved, groups, base=recs)
    assert out["gender/positive"]["d_margin"] == pytest.approx(-1.0)
    assert out["overall"]["d_margin"] == pytest.approx(-1.0)


def test_wrapping_and_loading_an_adapter_hide_only_peft_s_deprecation_warning(tiny_model_paths, tmp_path):
    """PEFT reads transformers' deprecated `is_gradient_checkpointing` on every wrap; prepare_lora and apply_adapter
    hide that one FutureWarning, and a warning raised inside the same block still reaches the user."""
    import warnings

    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from biasunlearn.adapters import apply_adapter, lora_config, peft_quiet
    from biasunlearn.unlearn.config import make_config
    from biasunlearn.unlearn.pipeline import prepare_lora

    def deprecation_warnings(fn):
        """fn's result, and the messages of the deprecation warnings it raised."""
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            result = fn()
        return result, [str(w.message) for w in seen if "is_gradient_checkpointing" in str(w.message)]

    path = tiny_model_paths["llama"]
    bare = AutoModelForCausalLM.from_pretrained(str(path))
    cfg = make_config(output_dir=str(tmp_path))
    if not deprecation_warnings(lambda: get_peft_model(bare, lora_config(bare, cfg)))[1]:
        pytest.skip("this PEFT release no longer raises the warning: nothing to hide")
    model = AutoModelForCausalLM.from_pretrained(str(path))
    wrapped, seen_wrap = deprecation_warnings(lambda: prepare_lora(model, cfg))
    assert seen_wrap == []
    wrapped.save_pretrained(str(tmp_path / "adapter"))
    fresh = AutoModelForCausalLM.from_pretrained(str(path))
    loaded, seen_load = deprecation_warnings(lambda: apply_adapter(fresh, tmp_path / "adapter"))
    assert seen_load == []
    assert any("lora_A" in n for n, _ in loaded.named_parameters())
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with peft_quiet():
            warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed", FutureWarning)
            warnings.warn("something else", FutureWarning)
            warnings.warn("`is_gradient_checkpointing` is deprecated, said as a UserWarning")
    assert sorted(str(w.message) for w in seen) == ["`is_gradient_checkpointing` is deprecated, said as a UserWarning",
                                                    "something else"]


def test_lean_moves_by_hand(tmp_path, capsys):
    """bench/lean_moves.py: examples split by the sign of their base margin (level counts as anti), each group's
    mean margin change and how many crossed level; a read lacking an example, or a malformed --read, stops."""
    mod = load_bench("lean_moves")

    def rec(i, b, m):  # an example whose margin s(stereo) - s(anti) is m
        return {"benchmark": "stereoset", "task": "intrasentence", "id": f"{b}-{i}", "bias_type": b,
                "target": "t", "s_stereo": -1.0 + m, "s_anti": -1.0, "s_unrel": -3.0}

    base = [rec(0, "gender", 0.5), rec(1, "gender", 0.25), rec(2, "gender", -0.5), rec(3, "gender", 0.0),
            rec(0, "race", 1.0)]
    after = [rec(0, "gender", -0.25), rec(1, "gender", 0.5), rec(2, "gender", -0.75), rec(3, "gender", 0.25),
             rec(0, "race", 0.5)]
    paths = {}
    for name, recs in (("base", base), ("after", after)):
        p = tmp_path / f"{name}.jsonl"
        p.write_text("".join(json.dumps(r) + "\n" for r in recs))
        paths[name] = str(p)
    out = tmp_path / "lean.json"
    assert mod.main(["--base", paths["base"], "--read", f"A={paths['after']}", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    g = doc["moves"]["A"]["gender"]
    # leaning stereotype: 0.5 -> -0.25 (crossed) and 0.25 -> 0.5: changes -0.75 and +0.25
    assert g["stereotype"] == {"n": 2, "mean_margin_change": pytest.approx(-0.25), "crossed_level": 1}
    # anti or level: -0.5 -> -0.75 and 0.0 (level) -> 0.25 (crossed): changes -0.25 and +0.25
    assert g["anti_or_level"] == {"n": 2, "mean_margin_change": pytest.approx(0.0), "crossed_level": 1}
    a = doc["moves"]["A"]["all"]
    assert a["stereotype"]["n"] == 3 and a["stereotype"]["mean_margin_change"] == pytest.approx((-0.75 + 0.25 - 0.5) / 3)
    assert doc["moves"]["A"]["race"]["anti_or_level"] == {"n": 0, "mean_margin_change": None, "crossed_level": 0}
    assert "A        gender" in capsys.readouterr().out
    (tmp_path / "short.jsonl").write_text("".join(json.dumps(r) + "\n" for r in after[1:]))
    with pytest.raises(SystemExit, match=r"--read A \(.*short.jsonl\): 1 base examples have no score, e.g. gender-0"):
        mod.main(["--base", paths["base"], "--read", f"A={tmp_path / 'short.jsonl'}"])
    with pytest.raises(SystemExit, match="expected NAME=PATH"):
        mod.main(["--base", paths["base"], "--read", "noequals"])


def test_an_adapter_whose_config_gives_another_rank_than_its_weights_is_refused_in_one_folded_line(tmp_path,
                                                                                                  tiny_llama_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from biasunlearn.adapters import apply_adapter
    from biasunlearn.errors import ModelLoadError

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_path)
    peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    peft.save_pretrained(tmp_path / "adapter")
    n_layers = model.config.num_hidden_layers
    cfg_path = tmp_path / "adapter" / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    fresh = AutoModelForCausalLM.from_pretrained(tiny_llama_path)
    assert apply_adapter(fresh, tmp_path / "adapter") is not None  # as saved: it fits
    cfg["r"] = 4  # edited by hand: peft would print the whole state dict's size mismatches
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError) as e:
        apply_adapter(AutoModelForCausalLM.from_pretrained(tiny_llama_path), tmp_path / "adapter")
    assert str(e.value) == (f"adapter {tmp_path / 'adapter'} does not fit this model ({n_layers} mismatch(es)):\n  "
                            "module model.layers.*.self_attn.q_proj: adapter_config.json gives rank r=4, the adapter's "
                            f"weights have rank 8  [{n_layers} layers]")


def test_an_export_read_with_the_adapter_it_merged_is_refused(tmp_path, tiny_llama_path):
    import shutil

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from biasunlearn.io import sha256_file
    from biasunlearn.models import load_model

    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama_path),
                          LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    peft.save_pretrained(tmp_path / "adapter")
    export = tmp_path / "export"
    shutil.copytree(tiny_llama_path, export)
    weights = tmp_path / "adapter" / "adapter_model.safetensors"
    (export / "biasunlearn_export.json").write_text(json.dumps({"adapter_sha256": {
        "adapter_model.safetensors": sha256_file(weights)}}))
    with pytest.raises(ConfigError, match=rf"^--model {export} is an export with --adapter {tmp_path / 'adapter'} "
                                          r"merged in already .*read --model .* without --adapter$"):
        load_model(str(export), adapter=str(tmp_path / "adapter"), device="cpu")
    # another adapter on the same export is the user's choice: applied
    (export / "biasunlearn_export.json").write_text(json.dumps({"adapter_sha256": {
        "adapter_model.safetensors": "0" * 64}}))
    model, _, info = load_model(str(export), adapter=str(tmp_path / "adapter"), device="cpu")
    assert info.adapter == str(tmp_path / "adapter")

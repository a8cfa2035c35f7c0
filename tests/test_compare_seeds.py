"""`biasunlearn compare --seeds`: the comparison once per training seed, and one report of each method's mean and
spread over the seeds, with its difference from BiasUnlearn paired by seed."""
import contextlib
import io
import json

import pytest

from test_compare import OVERRIDES, PLAN, data, doc, write_folder  # noqa: F401  (data: the module's fixture)

CROWS = {"gender": 58.0, "race-color": 62.0, "religion": 70.0, "overall": 61.0}


def seed_docs(overall_bu, lms_bu, ppl_bu, overall_cda, overall_dpo=None):
    docs = {"base": doc("base", "base", {"gender": 66.0, "overall": 64.0}, 92.0, CROWS, 10.0, 20.0),
            "cda": doc("cda", "finetune", {"overall": overall_cda}, 95.0, CROWS, 8.0, 21.0, 10),
            "biasunlearn": doc("biasunlearn", "unlearn", {"gender": overall_bu + 4, "overall": overall_bu}, lms_bu,
                               CROWS, 1.0, ppl_bu, 10)}
    if overall_dpo is not None:
        docs["dpo"] = doc("dpo", "finetune", {"overall": overall_dpo}, 90.0, CROWS, -3.0, 20.0, 10)
    return docs


def write_seeds(out, budgets=None):
    per_seed = {42: seed_docs(50.8, 91.9, 20.1, 55.0, 44.5), 7: seed_docs(49.0, 92.5, 20.2, 53.0, 46.5),
                11: seed_docs(51.6, 91.0, 20.3, 57.0)}
    for s, docs in per_seed.items():
        write_folder(out / f"seed-{s}", docs, logs=False)
        plan = json.loads(json.dumps(PLAN))
        plan["budget"]["seed"] = s
        plan["budget"].update((budgets or {}).get(s, {}))
        (out / f"seed-{s}" / "compare.json").write_text(json.dumps(plan))


def test_mean_sd_and_pooling_by_hand():
    from biasunlearn.compare_seeds import mean_sd, pool_seeds

    st = mean_sd([1.0, None, 2.0, 4.0])
    assert st["n"] == 3 and st["mean"] == pytest.approx(7 / 3) and st["sd"] == pytest.approx((7 / 3) ** 0.5)
    assert mean_sd([3.0]) == {"n": 1, "mean": 3.0, "sd": None} and mean_sd([None])["mean"] is None
    pooled = pool_seeds({1: {"biasunlearn": {"ss_overall": 52.0, "icat": 80.0}, "cda": {"ss_overall": 45.0, "icat": 70.0}},
                         2: {"biasunlearn": {"ss_overall": 49.0, "icat": 84.0}, "cda": {"ss_overall": 58.0, "icat": 90.0}}})
    assert pooled["methods"]["cda"]["ss_overall"]["values"] == {"1": 45.0, "2": 58.0}
    d = pooled["paired"]["cda"]
    assert d["ss_distance"]["values"] == {"1": 3.0, "2": 7.0}  # |45-50|-|52-50|, |58-50|-|49-50|
    assert d["icat"]["mean"] == pytest.approx(-2.0) and d["icat"]["sd"] == pytest.approx(8 * 2 ** 0.5)  # -10, +6
    assert "biasunlearn" not in pooled["paired"] and pooled["paired_against"] == "biasunlearn"
    # an ablation study without BiasUnlearn's own row: the differences are from the full method
    abl = pool_seeds({1: {"abl_full": {"ss_overall": 51.0}, "abl_no_kl": {"ss_overall": 46.0}}})
    assert abl["paired_against"] == "abl_full" and abl["paired"]["abl_no_kl"]["ss_distance"]["mean"] == 3.0


def test_seeds_report_by_hand(tmp_path):
    from biasunlearn.compare_seeds import write_seeds_report

    out = tmp_path / "cmp"
    write_seeds(out)
    paths = write_seeds_report(out, [42, 7, 11], ["base", "cda", "dpo", "biasunlearn"])
    md = (out / "report.md").read_text()
    # BiasUnlearn overall: 50.8, 49.0, 51.6 -> mean 50.47, sd 1.33; gender = overall + 4; ΔLMS -0.1, +0.5, -1.0
    assert "| BiasUnlearn | 3 | 54.47 ± 1.33 | – | – | – | 50.47 ± 1.33 | -0.20 ± 0.75 |" in md
    assert "| Base model | 3 | 66.00 ± 0.00 | – | – | – | 64.00 ± 0.00 | LMS 92.00 ± 0.00 |" in md
    assert "| CDA | 3 | – | – | – | – | 55.00 ± 2.00 | +3.00 ± 0.00 |" in md
    assert "| DPO | 2 | – | – | – | – | 45.50 ± 1.41 |" in md  # run at two of the three seeds
    # perplexity change against each seed's base: +0.5%, +1.0%, +1.5%
    assert "| 20.200 ± 0.100 | +1.00 ± 0.50% |" in md
    # paired by seed: |SS-50| of CDA minus BiasUnlearn's: 4.2, 2.0, 5.4; DPO's: 4.7, 2.5
    # |ΔLMS|: CDA's 3, 3, 3 against BiasUnlearn's 0.1, 0.5, 1.0
    assert "| CDA | 3 | +3.87 ± 1.72 | +2.47 ± 0.45 |" in md and "| 3 of 3 |" in md
    assert "| DPO | 2 | +3.60 ± 1.56 |" in md and "| 2 of 2 |" in md
    assert "| DPO | 44.50 / 80.10 / +0.00% | 46.50 / 83.70 / +0.00% | not run |" in md
    assert "Not finished (no results.json): DPO (seed 11)." in md
    assert "the seeds' budgets differ only in the seed" in md and "warning" not in md
    summary = json.loads((out / "seeds_summary.json").read_text())
    assert summary["seeds"] == [42, 7, 11]
    assert summary["methods"]["biasunlearn"]["ss_overall"]["values"] == {"42": 50.8, "7": 49.0, "11": 51.6}
    assert summary["paired"]["cda"]["ss_distance"]["mean"] == pytest.approx(11.6 / 3)
    html = (out / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and html.count("<table>") == 4 and paths["summary"].endswith("seeds_summary.json")


def test_seeds_report_of_stereoset_alone_says_what_was_not_measured(tmp_path):
    from biasunlearn.compare_seeds import write_seeds_report

    out = tmp_path / "cmp"
    for s, (bu, cda) in {42: (50.8, 55.0), 7: (49.0, 53.0)}.items():
        docs = seed_docs(bu, 91.9, 20.1, cda)
        for d in docs.values():
            d["benchmarks"] = {"stereoset": d["benchmarks"]["stereoset"]}
        write_folder(out / f"seed-{s}", docs, logs=False)
    write_seeds_report(out, [42, 7], ["base", "cda", "biasunlearn"])
    md = (out / "report.md").read_text()
    assert "## CrowS-Pairs, BBQ and perplexity\n\nnot measured (not in --benchmarks)" in md
    assert "SS overall / ICAT per seed." in md
    assert "| CDA | 55.00 / 85.50 | 53.00 / 89.30 |" in md  # two numbers a cell (ICAT 95 * 45 / 50), as the heading says


def test_seeds_report_warns_when_a_seed_used_another_budget_and_names_missing_folders(tmp_path):
    from biasunlearn.compare_seeds import write_seeds_report
    from biasunlearn.errors import ConfigError

    out = tmp_path / "cmp"
    write_seeds(out, budgets={11: {"max_steps": 20}})
    write_seeds_report(out, [42, 7, 11], ["base", "cda", "biasunlearn"])
    md = (out / "report.md").read_text()
    assert "**warning: the comparisons of seed(s) 11 used another budget, evaluation or model than seed 42**" in md
    with pytest.raises(ConfigError, match="seed-5"):
        write_seeds_report(out, [42, 5])


def test_parse_seeds_errors():
    from biasunlearn.compare_seeds import parse_seeds
    from biasunlearn.errors import ConfigError

    assert parse_seeds("42, 7,11") == [42, 7, 11] and parse_seeds([3]) == [3]
    for bad, msg in (("42,x", "'x' is not an integer"), ("7,7", "seed 7 is given twice"), ("", "no seed")):
        with pytest.raises(ConfigError, match=msg):
            parse_seeds(bad)


def test_compare_seeds_end_to_end_untrained_methods_evaluated_once_then_reused(tmp_path, tiny_llama_path, data,
                                                                              monkeypatch):
    from biasunlearn import compare
    from biasunlearn.compare_seeds import run_compare_seeds
    from biasunlearn.errors import ConfigError

    overrides = {k: v for k, v in OVERRIDES.items() if k != "seed"}
    args = dict(max_steps=2, learning_rate=5e-3, eval_every=1, data_dir=data, progress=False, cost_sentences=6,
                log=lambda s: None, benchmarks="stereoset,crows_pairs")
    with pytest.raises(ConfigError, match="seed=0 were both given"):
        run_compare_seeds(str(tiny_llama_path), "cda", tmp_path / "x", seeds=[1, 2], config_overrides=OVERRIDES, **args)

    evaluated = []
    real = compare._Runner._evaluate

    def counting(self, name, d, *a, **k):
        evaluated.append((d.parent.name, name))
        return real(self, name, d, *a, **k)

    monkeypatch.setattr(compare._Runner, "_evaluate", counting)
    out = tmp_path / "cmp"
    res = run_compare_seeds(str(tiny_llama_path), "cda,biasunlearn", out, seeds="0,3", config_overrides=overrides,
                            **args)
    assert res["seeds"] == [0, 3] and list(res["results"][3]) == ["base", "cda", "biasunlearn"]
    # the base model does not train: one evaluation, copied into the second seed's folder and reused there
    assert evaluated == [("seed-0", "base"), ("seed-0", "cda"), ("seed-0", "biasunlearn"),
                         ("seed-3", "cda"), ("seed-3", "biasunlearn")]
    base0 = json.loads((out / "seed-0" / "base" / "results.json").read_text())
    assert json.loads((out / "seed-3" / "base" / "results.json").read_text()) == base0
    for s in (0, 3):
        cfg = json.loads((out / f"seed-{s}" / "biasunlearn" / "config.json").read_text())
        assert cfg["config"]["seed"] == s
        st = json.loads((out / f"seed-{s}" / "cda" / "method_settings.json").read_text())
        assert st["train"]["config"]["seed"] == s
        assert (out / f"seed-{s}" / "report.md").exists()  # each seed's own full report
    md = (out / "report.md").read_text()
    assert "over 2 seeds" in md and "| BiasUnlearn | 2 |" in md and "| CDA | 2 |" in md
    summary = json.loads((out / "seeds_summary.json").read_text())
    r0 = res["results"][0]["biasunlearn"]["benchmarks"]["stereoset"]["metrics"]["intrasentence"]["overall"]["SS"]
    assert summary["methods"]["biasunlearn"]["ss_overall"]["values"]["0"] == pytest.approx(r0)
    assert json.loads((out / "compare_seeds.json").read_text())["seeds"] == [0, 3]

    # run again: every method of every seed is reused, nothing trained or evaluated
    def boom(*a, **k):
        raise AssertionError("recomputed a finished method")

    monkeypatch.setattr(compare._Runner, "_train", boom)
    monkeypatch.setattr(compare._Runner, "_evaluate", boom)
    run_compare_seeds(str(tiny_llama_path), "cda,biasunlearn", out, seeds=[0, 3], config_overrides=overrides, **args)

    # the CLI: --report-only finds the seeds from the folder's plan; bad seeds and a clash are one-line errors
    from biasunlearn import cli

    (out / "report.md").unlink()
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(["compare", "--out", str(out), "--report-only"]) == 0
    assert "| CDA | 2 |" in (out / "report.md").read_text()
    for argv, msg in ((["--seeds", "1,one"], "'one' is not an integer"),
                      (["--seeds", "1,2", "--set", "seed=5"], "seed=5 were both given")):
        err = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            assert cli.main(["compare", "--model", str(tiny_llama_path), "--out", str(tmp_path / "y"), *argv]) == 2
        assert msg in err.getvalue()
    # a config file's seed gives way to --seeds (an explicit --set seed=... is refused above)
    from biasunlearn import compare_seeds

    seen = {}
    monkeypatch.setattr(compare_seeds, "run_compare_seeds",
                        lambda *a, **k: seen.update(k) or {"report": "r", "html": "h"})
    (tmp_path / "my.yaml").write_text("seed: 3\nlearning_rate: 1.0e-4\n")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert cli.main(["compare", "--out", str(tmp_path / "z"), "--config", str(tmp_path / "my.yaml"),
                         "--seeds", "1,2"]) == 0
    assert seen["seeds"] == [1, 2] and "seed" not in (seen["config_overrides"] or {})
    assert seen["learning_rate"] == 1.0e-4


def test_seeds_report_of_an_ablation_study_pairs_with_the_full_method_and_names_shared_runs(tmp_path):
    from biasunlearn.compare_seeds import write_seeds_report

    out = tmp_path / "abl"
    for s, (full, no_kl) in {1: (51.0, 46.0), 2: (49.0, 45.0)}.items():
        docs = {"base": doc("base", "base", {"overall": 64.0}, 92.0, CROWS, 10.0, 20.0),
                "abl_full": doc("abl_full", "unlearn", {"overall": full}, 92.0, CROWS, 1.0, 20.0, 10),
                "abl_no_adv": doc("abl_no_adv", "unlearn", {"overall": full}, 92.0, CROWS, 1.0, 20.0, 10),
                "abl_no_kl": doc("abl_no_kl", "unlearn", {"overall": no_kl}, 92.0, CROWS, 1.0, 20.0, 10)}
        docs["abl_no_adv"]["method"]["same_as"] = "abl_full"
        write_folder(out / f"seed-{s}", docs, logs=False)
    write_seeds_report(out, [1, 2], list(docs))
    md = (out / "report.md").read_text()
    assert "## Against BiasUnlearn (all parts), paired by seed" in md
    # |46-50|-|51-50| = 3, |45-50|-|49-50| = 4
    assert "| w/o KL | 2 | +3.50 ± 0.71 |" in md and "| w/o adversarial forget set | 2 | +0.00 ± 0.00 |" in md
    assert "- w/o adversarial forget set: the same settings as BiasUnlearn (all parts) under this config, so the " \
           "same runs." in md

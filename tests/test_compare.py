"""`biasunlearn compare` on a tiny model: every method and every ablation runs a few steps, each writes its
results.json, finished runs are reused, and the report (markdown and self-contained HTML) has every section."""
import contextlib
import io
import json
import shutil

import pytest

from test_unlearn_train import _pool as pool

OVERRIDES = dict(train_pool="pool.json", forget_batch_size=2, retain_batch_size=4, unrelated_batch_size=3,
                 warmup_steps=0, logging_steps=1, dev_fraction=0.3, min_dev_per_type=1, use_cpu=True, bf16=False,
                 disable_tqdm=True, seed=0)
SECTIONS = ("## Budget", "## Held-out data", "## StereoSet (Table 1 layout)", "## CrowS-Pairs (Table 2 layout)",
            "## BBQ and perplexity", "## Dev SS against training steps (Figure 4)",
            "## Ablations (Table 5 layout, Figure 3)", "## Cost: wall time and peak memory", "## Methods")


@pytest.fixture(scope="module")
def data(fake_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("compare-data") / "data"
    shutil.copytree(fake_data, root)
    (root / "pool.json").write_text(json.dumps(pool()))
    return root


def run(model_path, out, data, methods=None, **kw):
    from biasunlearn.compare import run_compare

    args = dict(max_steps=2, learning_rate=5e-3, eval_every=1, data_dir=data, config_overrides=OVERRIDES,
                progress=False, cost_sentences=6, log=lambda s: None)
    args.update(kw)
    return run_compare(str(model_path), methods, out, **args)


def check_report(out):
    md = (out / "report.md").read_text()
    for s in SECTIONS:
        assert s in md, s
    html = (out / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and "<table>" in html
    assert 'src="figures' not in html and "data:image/png;base64," in html  # self-contained
    return md, html


def test_compare_every_method_end_to_end_then_reuse(tmp_path, tiny_llama_path, data, monkeypatch):
    from biasunlearn import compare
    from biasunlearn.errors import ConfigError

    out = tmp_path / "cmp"
    res = run(tiny_llama_path, out, data)
    assert list(res["results"]) == list(compare.DEFAULT_METHODS)
    plan = json.loads((out / "compare.json").read_text())
    checksum = plan["splits"]["checksum"]
    for name in compare.DEFAULT_METHODS:
        doc = json.loads((out / name / "results.json").read_text())
        m = doc["method"]
        assert m["name"] == name and m["eval"]["wall_time_s"] >= 0 and m["eval"]["peak_memory_mb"] > 0
        assert m["scoring_cost"]["ms_per_sentence"] > 0
        assert set(doc["benchmarks"]) == {"stereoset", "crows_pairs", "bbq", "perplexity"}
        if name in ("cda", "sft", "dpo", "biasunlearn"):
            assert doc["model"]["adapter"] == str(out / name / "adapter")  # the evaluation read the adapter
            assert (out / name / "adapter" / "adapter_model.safetensors").exists()
            assert m["train"]["steps"] == 2 and m["train"]["splits_checksum"] == checksum  # the SAME split
            dev = [json.loads(x) for x in (out / name / "dev_log.jsonl").read_text().splitlines()]
            assert [d["step"] for d in dev] == [0, 1, 2] and all("ss_overall" in d for d in dev)
        else:
            assert doc["model"]["adapter"] is None and m["train"] is None
    sd = res["results"]["self_debias"]["method"]["scoring_cost"]
    assert sd["forward_passes_per_batch"] == 4
    rule = res["results"]["self_debias"]["method"]["settings"]["eval"]["self_debias"]
    assert rule["decay"] == 50.0 and rule["epsilon"] == 0.01 and list(rule["prefixes"]) == ["gender", "race", "religion"]
    md, _ = check_report(out)
    assert "inference-time, no training (λ = 50, floor ε = 0.01, prefixes for gender, race, religion)" in md
    assert checksum in md and "the same for every trained method" in md
    assert "| SFT |" in md and "| Self-Debias |" in md and "Self-Debias costs" in md
    assert (out / "figures" / "dev_ss_compare.png").exists()
    assert "**Reduced budget**" in md

    # a second call reuses every finished run: nothing is trained or evaluated again
    def boom(*a, **k):
        raise AssertionError("recomputed a finished method")

    monkeypatch.setattr(compare, "evaluate_model", boom)
    monkeypatch.setattr("biasunlearn.unlearn.pipeline.train_adapter", boom)
    monkeypatch.setattr("biasunlearn.baselines.common.LoraFineTune.train", boom)
    monkeypatch.setattr("biasunlearn.baselines.dpo.DPO.train", boom)
    again = run(tiny_llama_path, out, data)
    assert again["results"]["cda"]["method"] == res["results"]["cda"]["method"]
    # a run made before a setting existed (its files lack it) is reused while the setting is at its default
    for f in (out / "cda" / "results.json", out / "cda" / "method_settings.json"):
        doc = json.loads(f.read_text())
        train = doc["method"]["settings"]["train"] if f.name == "results.json" else doc["train"]
        del train["config"]["scheduled_swaps"]
        f.write_text(json.dumps(doc))
    assert run(tiny_llama_path, out, data, methods="base,cda")["results"]["cda"]["method"]["settings"]["train"][
        "config"].get("scheduled_swaps") is None
    # the same data folder named another way (the environment variable, a link to it) is the same data
    monkeypatch.setenv("BIASUNLEARN_DATA", str(data))
    run(tiny_llama_path, out, None, methods="base,cda")
    (tmp_path / "link").symlink_to(data)
    run(tiny_llama_path, out, tmp_path / "link", methods="base,cda")
    # a copy elsewhere is another folder: refused, naming the setting
    shutil.copytree(data, tmp_path / "copy")
    with pytest.raises(ConfigError, match="other settings.*data_dir"):
        run(tiny_llama_path, out, tmp_path / "copy", methods="base,cda")
    # other settings in the same folder are refused instead of silently mixed
    with pytest.raises(ConfigError, match="other settings.*max_steps"):
        run(tiny_llama_path, out, data, methods="base,cda", max_steps=3)


def test_a_setting_added_since_a_stored_run_is_no_difference_while_at_its_default():
    from biasunlearn.compare import _same_settings, settings_added_since

    current = {"train": {"method": "cda", "config": {"max_steps": 2, "scheduled_swaps": "", "valence_weights":
                                                     "positive=2", "batch_note": 1}}}
    stored = {"train": {"method": "cda", "config": {"max_steps": 2}}}
    assert settings_added_since(stored, current) == ["scheduled_swaps"]
    # at another value than its default, or not a setting at all, a missing key is a difference
    assert _same_settings(stored, current) == (["train.config.batch_note: None -> 1",
                                                "train.config.valence_weights: None -> 'positive=2'"],
                                               ["scheduled_swaps"])
    assert _same_settings({"train": {"method": "cda", "config": {"max_steps": 2, "scheduled_swaps": "religion=3"}}},
                          current)[0][-2] == "train.config.scheduled_swaps: 'religion=3' -> ''"
    assert settings_added_since({"train": None}, current) == [] and settings_added_since(stored, {}) == []
    # a Self-Debias read made before its floor epsilon was recorded (and applied) is a difference, not reused
    from biasunlearn.baselines.self_debias import DEFAULT_EPSILON

    rule = {"prefixes": {"gender": "G: "}, "decay": 50.0}
    assert _same_settings({"train": None, "eval": {"self_debias": rule}},
                          {"train": None, "eval": {"self_debias": {**rule, "epsilon": DEFAULT_EPSILON}}}) == \
        (["eval.self_debias.epsilon: None -> 0.01"], [])


def test_compare_trained_adapter_is_evaluated_without_retraining(tmp_path, tiny_llama_path, data, monkeypatch):
    """An interrupted run (adapter trained, evaluation not finished) only needs the evaluation."""
    from biasunlearn import compare

    out = tmp_path / "cmp"
    run(tiny_llama_path, out, data, methods="base,cda", benchmarks="stereoset")
    (out / "cda" / "results.json").unlink()
    monkeypatch.setattr("biasunlearn.baselines.common.LoraFineTune.train",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("retrained")))
    res = run(tiny_llama_path, out, data, methods="base,cda", benchmarks="stereoset")
    assert (out / "cda" / "results.json").exists() and res["results"]["cda"]["method"]["train"]["steps"] == 2
    assert compare.resolve_methods("cda", False) == ["base", "cda"]  # the base model always comes first
    # a baseline killed while training (its settings written, no measure yet) trains again, and says so
    monkeypatch.undo()
    (out / "cda" / "results.json").unlink()
    (out / "cda" / "train_measure.json").unlink()
    log = []
    run(tiny_llama_path, out, data, methods="base,cda", benchmarks="stereoset", log=log.append)
    assert ("[compare] cda: an earlier start did not finish; the baselines keep no checkpoints, so it trains again "
            "from step 0") in log
    assert (out / "cda" / "train_measure.json").exists()


def test_compare_reads_again_from_changed_data_and_keeps_the_trained_adapter(tmp_path, tiny_llama_path, data,
                                                                              monkeypatch):
    """A method's results made from data files that changed since are not reused (its report would call them the
    same files for every method): each method is read again, a trained adapter kept."""
    own = tmp_path / "data"
    shutil.copytree(data, own)
    out = tmp_path / "cmp"
    first = run(tiny_llama_path, out, own, methods="base,cda", benchmarks="crows_pairs")
    crows = own / "crows_pairs" / "crows_pairs_anonymized.csv"
    crows.write_text("".join(crows.read_text().splitlines(keepends=True)[:-1]))
    monkeypatch.setattr("biasunlearn.baselines.common.LoraFineTune.train",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("retrained")))
    log = []
    res = run(tiny_llama_path, out, own, methods="base,cda", benchmarks="crows_pairs", log=log.append)
    for m in ("base", "cda"):
        assert f"[compare] {m}: {out / m / 'results.json'} was read from other data (crows_pairs: " \
               f"crows_pairs_anonymized.csv changed since): evaluating again" in log
        n = lambda r: r["results"][m]["benchmarks"]["crows_pairs"]["metrics"]["length_normalised"]["overall"]["n"]  # noqa: E731
        assert n(res) == n(first) - 1
    assert res["results"]["cda"]["method"]["train"]["steps"] == 2  # the adapter trained before


def test_compare_merge_adapter_reads_like_the_adapter_and_is_not_mixed_with_unmerged_reads(
        tmp_path, tiny_llama_path, data, monkeypatch):
    from biasunlearn.errors import ConfigError

    out = tmp_path / "cmp"
    bench = "stereoset,perplexity"
    run(tiny_llama_path, out, data, methods="base,cda", benchmarks=bench)
    unmerged = json.loads((out / "cda" / "results.json").read_text())
    assert not unmerged["model"]["extra"].get("adapter_merged")
    # a folder read unmerged is not passed off as a merged read
    with pytest.raises(ConfigError, match="other settings.*merge_adapter"):
        run(tiny_llama_path, out, data, methods="base,cda", benchmarks=bench, merge_adapter=True)
    # the trained adapter is read again, merged, without retraining; the base model's read is reused
    (out / "cda" / "results.json").unlink()
    monkeypatch.setattr("biasunlearn.baselines.common.LoraFineTune.train",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("retrained")))
    base_before = (out / "base" / "results.json").read_text()
    res = run(tiny_llama_path, out, data, methods="base,cda", benchmarks=bench, merge_adapter=True)
    assert (out / "base" / "results.json").read_text() == base_before
    merged = res["results"]["cda"]
    assert merged["model"]["extra"]["adapter_merged"] is True
    assert merged["method"]["settings"]["eval"]["merge_adapter"] is True
    ss = lambda d: d["benchmarks"]["stereoset"]["metrics"]["intrasentence"]["overall"]["SS"]  # noqa: E731
    assert ss(merged) == ss(unmerged)
    ppl = lambda d: d["benchmarks"]["perplexity"]["metrics"]["perplexity"]  # noqa: E731
    assert ppl(merged) == pytest.approx(ppl(unmerged), rel=1e-5)
    base_ppl = ppl(json.loads(base_before))
    assert ppl(unmerged) != pytest.approx(base_ppl, rel=1e-5)  # the adapter changed something to merge
    cost = merged["method"]["scoring_cost"]
    assert cost["adapter_merged"] is True and cost["plain_ms_per_sentence"] > 0
    md = (out / "report.md").read_text()
    assert "evaluated: final adapter (merged into the weights)" in md
    assert "read with their adapters merged into the weights as an export ships them (`merge_and_unload`, in " \
        "float32)." in md


def test_compare_ablations(tmp_path, tiny_llama_path, data):
    from biasunlearn.compare import ABLATIONS

    out = tmp_path / "abl"
    res = run(tiny_llama_path, out, data, ablations=True, benchmarks="stereoset,perplexity")
    assert list(res["results"]) == ["base", *ABLATIONS]
    for name, (overrides, _) in ABLATIONS.items():
        m = res["results"][name]["method"]
        cfg = m["settings"]["train"]["config"]
        for k, v in overrides.items():
            assert cfg[k] == v
        assert cfg["early_stop_tolerance"] == -1.0  # the whole budget runs
        assert m["train"]["evaluated"] == "final checkpoint (checkpoint-2)"  # as the paper's section 4.4
        assert res["results"][name]["model"]["adapter"] == str(out / name / "final_adapter")
    # a switched-off term is still logged (for Figure 3), but the run trained without it: each step's logged loss is
    # the weighted sum of the remaining terms only, while the switched-off term is logged with a positive value
    terms = {"loss_forget": "alpha_forget", "loss_retain": "alpha_retain", "loss_kl": "alpha_kl"}
    full = res["results"]["abl_full"]["method"]["settings"]["train"]["config"]
    for name, off in (("abl_no_retain", "loss_retain"), ("abl_no_kl", "loss_kl")):
        cfg = res["results"][name]["method"]["settings"]["train"]["config"]
        assert cfg[terms[off]] == 0.0 and full[terms[off]] > 0
        logs = [json.loads(x) for x in (out / name / "log.jsonl").read_text().splitlines()]
        steps = [r for r in logs if "loss_forget" in r]
        assert [r["step"] for r in steps] == [1, 2], name
        for r in steps:
            assert set(terms) <= set(r), (name, r)
            want = sum(cfg[w] * r[t] for t, w in terms.items() if t != off)
            assert r["loss"] == pytest.approx(want, rel=1e-5, abs=1e-5), (name, r)
        last = steps[-1]
        assert last[off] > 1e-2, (name, last)  # computed and logged (the KL is 0 at step 1 only: the adapter moved)
        # and not in the loss: with abl_full's weight on it the sum would be another number
        assert last["loss"] != pytest.approx(want + full[terms[off]] * last[off], rel=1e-5, abs=1e-5), (name, last)
    md, _ = check_report(out)
    assert "| w/o retention loss |" in md and "| w/o KL |" in md and "| focus on the worst type" in md
    assert "not measured (not in --benchmarks)" in md  # crows_pairs, bbq left out: the sections still render
    assert (out / "figures" / "ablation_losses.png").exists()


def test_ablation_that_changes_nothing_under_the_config_is_trained_once(tmp_path, tiny_llama_path, data, monkeypatch):
    """Under a config that already leaves the adversarial share and swapping out (as the shipped recipes do),
    'w/o adversarial forget set' and 'w/o dynamic swapping' are abl_full's run: trained once, reported as such."""
    import biasunlearn.unlearn.pipeline as pipeline
    from biasunlearn import compare

    calls = []
    real = pipeline.train_adapter
    monkeypatch.setattr(pipeline, "train_adapter", lambda cfg, **k: calls.append(cfg.output_dir) or real(cfg, **k))
    out = tmp_path / "abl"
    over = {**OVERRIDES, "adversarial_share": 0.0, "swap_mode": "none"}
    res = run(tiny_llama_path, out, data, methods="abl_full,abl_no_adv,abl_no_swap,abl_no_kl",
              benchmarks="stereoset", config_overrides=over)
    assert [p.rsplit("/", 1)[-1] for p in calls] == ["abl_full", "abl_no_kl"]
    full = res["results"]["abl_full"]
    for name in ("abl_no_adv", "abl_no_swap"):
        m = res["results"][name]["method"]
        assert m["same_as"] == "abl_full" and m["name"] == name and m["settings"]["train"]["method"] == name
        assert res["results"][name]["benchmarks"] == full["benchmarks"]
        assert json.loads((out / name / "results.json").read_text())["method"]["same_as"] == "abl_full"
    assert "same_as" not in res["results"]["abl_no_kl"]["method"]
    md = (out / "report.md").read_text()
    assert md.count("the same settings as BiasUnlearn (all parts) under this config") == 2
    cost = md[md.index("## Cost"):]
    assert "| w/o adversarial forget set |" not in cost and "| w/o KL |" in cost  # each run's cost once
    # without abl_full in the list, abl_no_adv is trained on its own
    res2 = run(tiny_llama_path, tmp_path / "abl2", data, methods="abl_no_adv", benchmarks="stereoset",
               config_overrides=over)
    assert "same_as" not in res2["results"]["abl_no_adv"]["method"] and len(calls) == 3
    # run again: everything reused, nothing trained or evaluated
    monkeypatch.setattr(compare, "evaluate_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("eval")))
    calls.clear()
    again = run(tiny_llama_path, out, data, methods="abl_full,abl_no_adv,abl_no_swap,abl_no_kl",
                benchmarks="stereoset", config_overrides=over)
    assert calls == [] and again["results"]["abl_no_adv"]["method"]["same_as"] == "abl_full"


# --- the report alone, from hand-written results documents ------------------------------------------------------

def doc(name, kind, ss: dict, lms, crows: dict, bbq_amb, ppl, steps=None):
    from biasunlearn.metrics.stereoset import icat

    sha = {"stereoset": {"a.csv": "1" * 64}, "crows_pairs": {"c.csv": "2" * 64}, "bbq": {"b.jsonl": "3" * 64},
           "perplexity": {"w.raw": "4" * 64}}
    intra = {d: {"SS": v, "LMS": lms, "ICAT": icat(v, lms), "n_examples": 10, "n_terms": 2} for d, v in ss.items()}
    bench = {
        "stereoset": {"metrics": {"intrasentence": intra}, "wall_time_s": 1.0},
        "crows_pairs": {"metrics": {"length_normalised": {k: {"score": v, "n": 5} for k, v in crows.items()},
                                    "summed_logprob": {k: {"score": v, "n": 5} for k, v in crows.items()}},
                        "wall_time_s": 1.0},
        "bbq": {"metrics": {c: {"acc": 40.0, "acc_ambig": 30.0, "acc_disambig": 50.0, "bias_disambig": 2.0,
                                "bias_ambig": bbq_amb, "n": 4} for c in ("Age", "overall")}, "wall_time_s": 1.0},
        "perplexity": {"metrics": {"perplexity": ppl, "tokens_scored": 100}, "wall_time_s": 1.0},
    }
    for b, s in sha.items():
        bench[b]["data"] = {"path": f"/data/{b}", "sha256": s}
    train = None if steps is None else {"steps": steps, "wall_time_s": 12.5, "peak_memory_mb": 900.0,
                                        "splits_checksum": "c" * 64, "evaluated": "final adapter"}
    return {"model": {"spec": "tiny", "adapter": None if steps is None else f"{name}/adapter"}, "benchmarks": bench,
            "method": {"name": name, "kind": kind, "settings": {"eval": {"eval_config": {"limit": None}, "dtype": "float32"}},
                       "train": train, "eval": {"wall_time_s": 4.0, "peak_memory_mb": 800.0, "memory": "process peak RSS"},
                       "scoring_cost": {"ms_per_sentence": 4.0 if name == "self_debias" else 1.0,
                                        "plain_ms_per_sentence": 1.0, "ratio_to_plain": 4.0 if name == "self_debias" else 1.0,
                                        "forward_passes_per_batch": 4}}}


def write_folder(out, names_docs, logs=True):
    for name, d in names_docs.items():
        (out / name).mkdir(parents=True)
        (out / name / "results.json").write_text(json.dumps(d))
        if logs and d["method"]["train"]:
            (out / name / "dev_log.jsonl").write_text("".join(json.dumps(
                {"step": s, "ss": {"gender": 60 - s}, "ss_overall": 60.0 - s, "lms": 90.0}) + "\n" for s in (0, 5, 10)))
            (out / name / "log.jsonl").write_text("".join(json.dumps(
                {"step": s, "loss_forget": 2.0 - 0.1 * s, **({"loss_retain": 1.0 + 0.01 * s} if "no_retain" not in name else {})})
                + "\n" for s in range(1, 11)))


PLAN = {"model": "tiny", "device": "cpu", "threads": 1,
        "budget": {"max_steps": 10, "learning_rate": 5e-5, "lr_scheduler_type": "linear", "warmup_steps": 0.05,
                   "optim": "adamw_torch", "eval_every": 5, "lora_r": 8, "lora_alpha": 16, "seed": 42,
                   "forget_batch_size": 4, "retain_batch_size": 28, "unrelated_batch_size": 28,
                   "baseline_batch_size": 32, "dpo_pairs_per_step": 16, "dpo_beta": 0.1, "ablation_checkpoint": "final"},
        "eval": {"benchmarks": ["stereoset", "crows_pairs", "bbq", "perplexity"], "limit": 50, "bbq_per_category": 200,
                 "ppl_max_tokens": 32768, "dtype": "float32"},
        "splits": {"checksum": "c" * 64, "seed": 42, "dev_fraction": 0.15}}


def test_report_renders_every_section_with_tables_and_bold_best(tmp_path):
    from biasunlearn.compare import write_compare_report

    crows = {"gender": 58.0, "race-color": 62.0, "religion": 70.0, "overall": 61.0}
    docs = {
        "base": doc("base", "base", {"gender": 66.0, "race": 62.0, "overall": 64.0}, 92.0, crows, 10.0, 20.0),
        "cda": doc("cda", "finetune", {"gender": 63.0, "race": 48.0, "overall": 55.0}, 95.0, crows, 8.0, 21.0, 10),
        "sft": doc("sft", "finetune", {"gender": 60.0, "race": 58.0, "overall": 59.0}, 93.0, crows, 6.0, 20.5, 10),
        "dpo": doc("dpo", "finetune", {"gender": 45.0, "race": 44.0, "overall": 44.5}, 89.0, crows, -3.0, 20.2, 10),
        "self_debias": doc("self_debias", "inference", {"gender": 59.0, "race": 57.0, "overall": 58.0}, 89.0,
                           {**crows, "gender": 49.5}, 5.0, 22.0),
        "biasunlearn": doc("biasunlearn", "unlearn", {"gender": 52.4, "race": 50.4, "overall": 50.8}, 91.9,
                           {**crows, "race-color": 50.0}, 1.0, 20.1, 10),
        "abl_full": doc("abl_full", "unlearn", {"overall": 53.7}, 93.0, crows, 1.0, 20.1, 10),
        "abl_no_retain": doc("abl_no_retain", "unlearn", {"overall": 47.6}, 57.7, crows, 1.0, 40.0, 10),
    }
    # a Self-Debias read stored before the floor was recorded (sessions up to 47) says it had none
    docs["self_debias"]["method"]["settings"]["eval"]["self_debias"] = {"prefixes": {"gender": "G: "}, "decay": 50.0}
    out = tmp_path / "rep"
    write_folder(out, docs)
    paths = write_compare_report(out, list(docs), PLAN)
    md = (out / "report.md").read_text()
    for s in SECTIONS:
        assert s in md, s
    assert "inference-time, no training (λ = 50, no floor ε, prefixes for gender)" in md
    # Table 1: best per column among the methods, in bold; the base row shows its LMS
    assert "| Base model | 66.00 | – | 62.00 | – | 64.00 | LMS 92.00 | 66.24 |" in md
    assert "| BiasUnlearn | **52.40** | – | **50.40** | – | **50.80** | **-0.10** | **90.43** |" in md
    assert "| CDA | 63.00 | – | 48.00 | – | 55.00 | +3.00 | 85.50 |" in md
    # Table 2: gender, race-color, religion, overall
    assert "| Method | Gend. | Race-color | Reli. | Overall |" in md
    assert "| Self-Debias | **49.50** | 62.00 |" in md and "| BiasUnlearn | 58.00 | **50.00** |" in md
    # BBQ and perplexity change against the base model
    assert "| 20.100 | +0.100 | +0.50% |" in md
    # ablations: Table 5 layout
    assert "| Method | SS → 50 | LMS ↑ | ΔLMS → 0 | ICAT ↑ |" in md and "| w/o retention loss | **47.60** | 57.70 |" in md
    assert "c" * 64 in md and "at most 50 examples per benchmark" in md
    assert "- One training seed (42): a method's numbers move with it; `compare --seeds`" in md
    assert "Self-Debias costs 4.00× the plain model" in md
    for fig in ("dev_ss_compare.png", "ablation_losses.png", "ablation_dev_ss.png"):
        assert (out / "figures" / fig).exists() and f"figures/{fig}" in md
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3 and 'src="figures' not in html
    assert html.count("<table>") == sum(x.startswith("|---") for x in md.splitlines()) and "<strong>52.40</strong>" in html
    assert paths["html"].endswith("report.html")
    assert "- Training (every trained method): 10 steps, learning rate" in md
    assert "Every ablation trains the whole budget (10 steps; no early stop" in md
    assert "Dev checks and checkpoint choice used only the dev slice of the train pool." in md
    # a recipe that stops at a fixed step of a longer schedule and trains its dev slice: the report says both
    plan = json.loads(json.dumps(PLAN))
    plan["budget"].update(max_steps=250, stop_at_step=150, train_on_dev=True)
    write_compare_report(out, list(docs), plan)
    md = (out / "report.md").read_text()
    assert "- Training (every trained method): 150 steps of a 250-step schedule (stop_at_step), learning rate" in md
    assert "Every ablation trains the whole budget (150 steps of a 250-step schedule (stop_at_step); no early" in md
    assert "The dev slice of the train pool was trained too (train_on_dev): the dev curves below read trained " in md
    assert "used only the dev slice" not in md
    assert "did not all train with the same budget" not in md  # these documents record no training settings
    # method folders brought together from comparisons with other budgets: said, naming who trained with what
    for n, lr in (("cda", 5e-5), ("sft", 5e-5), ("biasunlearn", 1e-4)):
        docs[n]["method"]["settings"]["train"] = {"config": {"max_steps": 10, "learning_rate": lr, "seed": 42}}
    out = tmp_path / "mixed"
    write_folder(out, docs)
    write_compare_report(out, list(docs), PLAN)
    md = (out / "report.md").read_text()
    assert ("- **warning: the trained methods did not all train with the same budget** — cda, sft: max_steps 10, "
            "learning_rate 5e-05, seed 42; biasunlearn: max_steps 10, learning_rate 0.0001, seed 42.") in md


def test_report_with_only_the_base_model_still_has_every_section(tmp_path):
    from biasunlearn.compare import write_compare_report

    out = tmp_path / "rep"
    d = doc("base", "base", {"overall": 60.0}, 90.0, {"overall": 55.0}, 1.0, 20.0)
    d["benchmarks"] = {"stereoset": d["benchmarks"]["stereoset"]}
    write_folder(out, {"base": d})
    write_compare_report(out, ["base"], {**PLAN, "splits": None})
    md = (out / "report.md").read_text()
    for s in SECTIONS:
        assert s in md, s
    assert md.count("not measured (not in --benchmarks)") == 2 and "not run (pass --ablations)" in md
    assert "One training seed" not in md  # nothing here trains
    html = (out / "report.html").read_text()
    assert "<h2>Ablations (Table 5 layout, Figure 3)</h2>" in html


def test_a_model_that_is_not_there_is_refused_before_anything_is_written(tmp_path, data):
    from biasunlearn.compare import run_compare
    from biasunlearn.errors import ModelLoadError

    not_a_model = tmp_path / "not_a_model"
    not_a_model.mkdir()
    with pytest.raises(ModelLoadError, match="not_a_model: a local model must be a save_pretrained folder"):
        run_compare(str(not_a_model), methods="base", out=tmp_path / "cmp", data_dir=data, limit=2)
    assert not (tmp_path / "cmp").exists()


def test_report_only_refuses_a_folder_that_is_not_a_comparison_and_warns_of_missing_methods(tmp_path):
    from biasunlearn import cli

    run = tmp_path / "run"  # a train run's folder: its report is not a comparison's to replace
    for name in ("eval_before", "eval_after"):
        (run / name).mkdir(parents=True)
        (run / name / "results.json").write_text("{}")
    (run / "report.md").write_text("the run's own report")
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        assert cli.main(["compare", "--out", str(run), "--report-only"]) == 2
    assert "no method results to report" in err.getvalue() and "is it a compare --out?" in err.getvalue()
    assert (run / "report.md").read_text() == "the run's own report"
    out = tmp_path / "rep"
    write_folder(out, {"base": doc("base", "base", {"overall": 60.0}, 90.0, {"overall": 55.0}, 1.0, 20.0)})
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        assert cli.main(["compare", "--out", str(out), "--report-only", "--methods", "cda"]) == 0
    assert "warning: no results.json for cda" in err.getvalue()
    assert "not finished (no results.json yet): cda" in (out / "report.md").read_text()


def test_a_misspelt_rerun_or_an_out_that_is_a_file_is_refused_before_any_work(tmp_path, data, tiny_llama_path):
    from biasunlearn.compare import run_compare
    from biasunlearn.compare_seeds import run_compare_seeds
    from biasunlearn.errors import ConfigError

    with pytest.raises(ConfigError, match=r"--rerun: bas not among the methods run here \(base; or 'all'\)"):
        run(tiny_llama_path, tmp_path / "cmp", data, methods="base", rerun="bas")
    with pytest.raises(ConfigError, match="--rerun: sft not among the methods run here"):
        run_compare_seeds(str(tiny_llama_path), "base,cda", tmp_path / "seeds", seeds=[1, 2], rerun="sft")
    with pytest.raises(ConfigError, match=r"--set / --config: unknown setting\(s\) lora_rr \(did you mean lora_r\?\)"):
        run(tiny_llama_path, tmp_path / "cmp", data, methods="base,cda", config_overrides={"lora_rr": 16})
    from biasunlearn.evaluate import EvalConfig, check_config

    with pytest.raises(ConfigError, match="--benchmarks: names none"):
        check_config(EvalConfig(benchmarks=(), data_dir=str(data)))
    assert not (tmp_path / "cmp").exists() and not (tmp_path / "seeds").exists()
    afile = tmp_path / "afile"
    afile.write_text("mine")
    with pytest.raises(ConfigError, match="--out .*afile: is a file, not a folder"):
        run_compare(str(tiny_llama_path), methods="base", out=afile, data_dir=data, limit=2)
    with pytest.raises(ConfigError, match="goes through .*afile, which is a file"):
        run_compare_seeds(str(tiny_llama_path), "base", afile / "sub", seeds=[1, 2])
    assert afile.read_text() == "mine"


def test_cli_compare_arguments_and_report_only(tmp_path, monkeypatch):
    from biasunlearn import cli, compare

    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        assert cli.main(["compare", "--out", str(tmp_path / "x"), "--methods", "base,nope"]) == 2
    assert "unknown nope" in err.getvalue()
    seen = {}

    def fake(model, methods, out, **kw):
        seen.update(model=model, methods=methods, out=out, **kw)
        return {"results": {}, "report": f"{out}/report.md", "html": f"{out}/report.html"}

    monkeypatch.setattr(compare, "run_compare", fake)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
        rc = cli.main(["compare", "--model", "m", "--methods", "base,cda,sft", "--out", str(tmp_path / "o"),
                       "--max_steps", "50", "--learning-rate", "1e-4", "--eval_every", "10", "--limit", "20",
                       "--benchmarks", "stereoset,crows_pairs", "--bbq-per-category", "0", "--dtype", "float32",
                       "--set", "lora_r=4", "--set", "train_pool=a.json", "--rerun", "cda", "--ablations",
                       "--no-intersentence", "--merge-adapter"])
    assert rc == 0 and "report.md" in buf.getvalue()
    assert seen["merge_adapter"] is True
    assert seen["methods"] == "base,cda,sft" and seen["ablations"] is True and seen["max_steps"] == 50
    assert seen["learning_rate"] == 1e-4 and seen["eval_every"] == 10 and seen["limit"] == 20
    assert seen["benchmarks"] == "stereoset,crows_pairs" and seen["bbq_per_category"] == 0
    assert seen["config_overrides"] == {"lora_r": 4, "train_pool": "a.json"} and seen["rerun"] == ["cda"]
    assert seen["stereoset_intersentence"] is False
    # --config: the recipe's settings for every trained method; its budget goes to the budget, flags and --set win
    y = tmp_path / "recipe.yaml"
    y.write_text("max_steps: 250\nlearning_rate: 5.0e-4\neval_every: 50\nnpo_beta: 5.0\nlora_r: 8\n")
    seen.clear()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert cli.main(["compare", "--out", str(tmp_path / "o"), "--config", str(y), "--eval_every", "25",
                         "--set", "lora_r=4", "--set", "learning_rate=1e-4"]) == 0
    assert (seen["max_steps"], seen["learning_rate"], seen["eval_every"]) == (250, 1e-4, 25)
    assert seen["merge_adapter"] is False  # off unless asked
    assert seen["config_overrides"] == {"npo_beta": 5.0, "lora_r": 4}
    seen.clear()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert cli.main(["compare", "--out", str(tmp_path / "o"), "--config", "smollm2-cpu"]) == 0
    assert (seen["max_steps"], seen["learning_rate"], seen["eval_every"]) == (250, 5e-4, 50)
    assert seen["config_overrides"]["npo_reference"] == "twin" and "max_steps" not in seen["config_overrides"]
    assert seen["config_overrides"]["stop_at_step"] == 150  # the recipe's own stop, for every method
    # a recipe that stops early in its schedule keeps that stop; a step budget on the command line replaces both
    y.write_text("max_steps: 250\nstop_at_step: 150\n")
    for extra, steps, stop, said in (([], 250, 150, "every method stops at step 150 of the recipe's 250-step "
                                                    "schedule (stop_at_step)"),
                                     (["--max_steps", "100"], 100, 100, "stop_at_step 150 -> 100"),
                                     # the recipe's own length given as a budget: all of it, as with any other
                                     (["--max_steps", "250"], 250, 250, "stop_at_step 150 -> 250"),
                                     (["--set", "max_steps=250"], 250, 250, "stop_at_step 150 -> 250"),
                                     (["--set", "stop_at_step=200"], 250, 200, None)):
        seen.clear()
        err = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            assert cli.main(["compare", "--out", str(tmp_path / "o"), "--config", str(y)] + extra) == 0
        assert (seen["max_steps"], seen["config_overrides"]) == (steps, {"stop_at_step": stop}), extra
        if said:
            assert said in err.getvalue()
        else:  # a stop given with --set is the user's: left as given, nothing said
            assert "stop_at_step" not in err.getvalue()
    # a recipe's run folder and model are compare's to set; a fixed schedule is every method's budget
    y.write_text("output_dir: runs/one\nmodel: other-model\nmax_steps: 250\nstop_at_step: 250\n")
    seen.clear()
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        assert cli.main(["compare", "--out", str(tmp_path / "o"), "--config", str(y), "--max_steps", "100",
                         "--limit", "0"]) == 0
    assert seen["max_steps"] == 100 and seen["config_overrides"] == {"stop_at_step": 100}
    assert seen["model"] == "smollm2-135m" and seen["limit"] is None
    assert "output_dir 'runs/one' left out" in err.getvalue() and "stop_at_step 250 -> 100" in err.getvalue()
    y.write_text("max_step: 250\n")
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        assert cli.main(["compare", "--out", str(tmp_path / "o"), "--config", str(y)]) == 2
    assert f"--config {y}: unknown setting(s) max_step" in err.getvalue()
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        assert cli.main(["compare", "--out", str(tmp_path / "o"), "--set", "max_steps=ten"]) == 2
    assert "--set: max_steps='ten': expected a whole number" in err.getvalue()
    # --report-only rebuilds the report from the folders
    out = tmp_path / "rep"
    write_folder(out, {"base": doc("base", "base", {"overall": 60.0}, 90.0, {"overall": 55.0}, 1.0, 20.0)})
    (out / "compare.json").write_text(json.dumps({**PLAN, "methods": ["base"]}))
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert cli.main(["compare", "--out", str(out), "--report-only"]) == 0
    assert (out / "report.html").exists()
    # a folder assembled from several runs: --methods names the folders to report, beyond the last run's plan
    write_folder(out, {"dpo": doc("dpo", "finetune", {"overall": 52.0}, 88.0, {"overall": 51.0}, 1.0, 21.0, steps=5)})
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert cli.main(["compare", "--out", str(out), "--report-only"]) == 0
    assert "| DPO |" not in (out / "report.md").read_text()  # the plan lists base only
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert cli.main(["compare", "--out", str(out), "--report-only", "--methods", "dpo"]) == 0
    md = (out / "report.md").read_text()
    assert "| DPO |" in md and "| Base model |" in md and "**52.00**" in md
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        assert cli.main(["compare", "--out", str(tmp_path / "none"), "--report-only"]) == 2
    assert "none: no such folder (--report-only rebuilds the report of an earlier compare --out)" in err.getvalue()


def test_a_damaged_or_empty_results_or_plan_file_is_named_and_left_as_it_is(tmp_path, tiny_llama_path, data,
                                                                             monkeypatch):
    from _tiny import run_cli

    from biasunlearn import compare
    from biasunlearn.errors import DataError

    out = tmp_path / "rep"
    write_folder(out, {"base": doc("base", "base", {"overall": 60.0}, 90.0, {"overall": 55.0}, 1.0, 20.0),
                       "cda": doc("cda", "finetune", {"overall": 52.0}, 88.0, {"overall": 51.0}, 1.0, 21.0, steps=5)})
    (out / "compare.json").write_text(json.dumps({**PLAN, "methods": ["base", "cda"]}))
    assert run_cli(["compare", "--out", str(out), "--report-only"])[0] == 0
    report = (out / "report.md").read_text()
    res = out / "cda" / "results.json"
    for text, said in (("{bad", f"{res}: not JSON (Expecting property name enclosed in double quotes, line 1); it "
                                "should hold a compare method's results"),
                       ("{}", f'{res}: not a compare method\'s results (no "method" section); remove it, or compute '
                              "it again: compare --rerun cda"),
                       ("[1, 2]", f"{res}: holds a JSON list, not a compare method's results")):
        res.write_text(text)
        rc, _, err = run_cli(["compare", "--out", str(out), "--report-only"])
        assert (rc, err.strip()) == (2, f"biasunlearn: error: {said}"), err
        assert "Traceback" not in err and res.read_text() == text and (out / "report.md").read_text() == report
    res.write_text(json.dumps(doc("cda", "finetune", {"overall": 52.0}, 88.0, {"overall": 51.0}, 1.0, 21.0, steps=5)))
    (out / "compare.json").write_text("{bad")
    rc, _, err = run_cli(["compare", "--out", str(out), "--report-only"])
    assert rc == 2 and err.strip() == (f"biasunlearn: error: {out / 'compare.json'}: not JSON (Expecting property "
                                       "name enclosed in double quotes, line 1); it should hold the plan of a compare "
                                       "run")
    # a run that would reuse it: named before anything is evaluated, the file kept
    cmp = tmp_path / "cmp"
    (cmp / "base").mkdir(parents=True)
    (cmp / "base" / "results.json").write_text("{bad")
    monkeypatch.setattr(compare, "evaluate_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("eval")))
    with pytest.raises(DataError, match=r"base/results.json: not JSON \(Expecting property name"):
        run(tiny_llama_path, cmp, data, methods="base", benchmarks="stereoset", limit=2)
    (cmp / "base" / "results.json").write_text("{}")
    with pytest.raises(DataError, match=r'base/results.json: not a compare method\'s results \(no "method" section\)'):
        run(tiny_llama_path, cmp, data, methods="base", benchmarks="stereoset", limit=2)
    assert (cmp / "base" / "results.json").read_text() == "{}"


@pytest.mark.parametrize("words, said", [
    (["--dpo-beta", "-1"], "--dpo-beta -1.0: must be a number above 0 (DPO's beta; default 0.1)"),
    (["--dpo-beta", "0"], "--dpo-beta 0.0: must be a number above 0"),
    (["--dpo-beta", "nan"], "--dpo-beta nan: must be a number above 0"),
    (["--batch-size", "0"], "--batch-size 0: must be a whole number of at least 1 (leave it out for the default)"),
    (["--batch-size", "-5"], "--batch-size -5: must be a whole number of at least 1"),
    (["--dpo-pairs", "0"], "--dpo-pairs 0: must be a whole number of at least 1"),
    (["--methods", ""], "--methods: names none (choose from base, cda,"),
    (["--methods", " , "], "--methods: names none"),
    (["--methods", "", "--report-only"], "--methods: names none"),
])
def test_cli_compare_refuses_a_bad_method_option_before_anything_runs(tmp_path, monkeypatch, words, said):
    from _tiny import run_cli

    from biasunlearn import compare, compare_seeds

    def never(*a, **k):
        raise AssertionError("ran with a bad option")

    for mod, name in ((compare, "run_compare"), (compare, "write_compare_report"),
                      (compare_seeds, "run_compare_seeds")):
        monkeypatch.setattr(mod, name, never)
    out = tmp_path / "o"
    if "--report-only" in words:
        out.mkdir()
    for seeds in ([], ["--seeds", "1,2"]):
        rc, _, err = run_cli(["compare", "--model", "m", "--out", str(out), *words, *seeds])
        assert rc == 2 and err.startswith(f"biasunlearn: error: {said}"), err
        assert len(err.strip().splitlines()) == 1


def test_run_compare_refuses_a_bad_method_budget_before_anything_is_written(tmp_path, tiny_llama_path, data):
    from biasunlearn.compare import run_compare
    from biasunlearn.errors import ConfigError

    for kw, said in ((dict(dpo_beta=-0.1), "--dpo-beta -0.1: must be a number above 0"),
                     (dict(baseline_batch_size=0), "--batch-size 0: must be a whole number of at least 1"),
                     (dict(dpo_pairs_per_step=-2), "--dpo-pairs -2: must be a whole number of at least 1"),
                     (dict(methods=""), "--methods: names none")):
        kw = {"methods": "base,dpo", **kw}
        with pytest.raises(ConfigError, match=said):
            run_compare(str(tiny_llama_path), kw.pop("methods"), tmp_path / "cmp", data_dir=data, limit=2, **kw)
    assert not (tmp_path / "cmp").exists()


def test_measure_hands_back_what_tuned_malloc_kept_so_each_block_has_its_own_peak():
    """After cpu_malloc_tuning (a BiasUnlearn run in the same compare process), freed memory stays with the process;
    release_freed_memory (called as a Measure block starts) hands it back. Run in a fresh process: malloc settings
    are process-wide."""
    import subprocess
    import sys

    code = """
import torch
from biasunlearn.models import release_freed_memory, tune_glibc_malloc
def rss():
    return int([l for l in open('/proc/self/status') if l.startswith('VmRSS')][0].split()[1]) // 1024
assert tune_glibc_malloc()
start = rss()
x = [torch.ones(25_000_000) for _ in range(4)]   # 400 MB
del x
kept = rss() - start
assert release_freed_memory()
print(kept, rss() - start)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    kept, after = map(int, out.stdout.split())
    assert kept > 300 and after < 100, (kept, after)


def test_eval_every_is_part_of_a_trained_methods_settings(tmp_path):
    """eval_every sets when BiasUnlearn's dev checks (swaps, early stop, the kept checkpoint) come: it is in the
    settings a finished run is reused by (it was dropped with the eval_* report settings, so a run made with another
    eval_every was reused). A run stored before it was recorded is taken as made with the current value."""
    from biasunlearn.compare import _same_settings, _train_settings, make_method_config

    cfgs = {e: make_method_config("biasunlearn", tmp_path, "m", budget={"eval_every": e}) for e in (20, 50)}
    s20, s50 = ({"train": _train_settings("biasunlearn", c, {})} for c in cfgs.values())
    assert s20["train"]["config"]["eval_every"] == 20 and "eval_benchmarks" not in s20["train"]["config"]
    assert _same_settings(s20, s50)[0] == ["train.config.eval_every: 20 -> 50"]
    old = json.loads(json.dumps(s20))
    del old["train"]["config"]["eval_every"]
    assert _same_settings(old, s50) == ([], ["eval_every"])
    # the sentences of an optimizer step: every method accumulates as BiasUnlearn does
    ga = make_method_config("cda", tmp_path, "m", overrides={"gradient_accumulation_steps": 4})
    one, four = ({"train": _train_settings("cda", c, {})} for c in (cfgs[20], ga))
    assert _same_settings(one, four)[0] == ["train.config.gradient_accumulation_steps: 1 -> 4"]
    from biasunlearn.baselines.common import training_arguments

    assert training_arguments(ga, 6).gradient_accumulation_steps == 4


def test_run_compare_refuses_settings_a_method_cannot_run_with_before_anything_is_written(tmp_path, tiny_llama_path,
                                                                                           data):
    """Every trained method's config is built before the first trains: an ablation its recipe cannot run (the
    released code's focus_worst under train_on_dev, which needs swap_mode none) is refused at once, not after the
    methods before it trained. A KL term trained on WikiText-2's test file while perplexity is read is refused: the
    number would be on trained data."""
    from biasunlearn.compare import run_compare
    from biasunlearn.errors import ConfigError

    fixed = dict(OVERRIDES, train_on_dev=True, swap_mode="none", stop_at_step=2)
    with pytest.raises(ConfigError, match=r"train_on_dev=true with stop_at_step=2, swap_mode='focus_worst'"):
        run(tiny_llama_path, tmp_path / "cmp", data, "base,cda", ablations=True, config_overrides=fixed)
    with pytest.raises(ConfigError, match=r"^unrelated_source=wikitext trains the KL term of biasunlearn on "
                                          r"WikiText-2's test file, which the perplexity benchmark reads"):
        run(tiny_llama_path, tmp_path / "cmp", data, "base,biasunlearn",
            config_overrides=dict(OVERRIDES, unrelated_source="wikitext"))
    assert not (tmp_path / "cmp").exists()


def test_a_baseline_leaves_out_the_pairs_biasunlearn_leaves_out(tmp_path, tiny_llama_path, data):
    """train_exclude_pattern: CDA trains on the pairs BiasUnlearn trains on, not on the whole split (it ignored the
    setting), and its splits.json lists the pairs left out, as BiasUnlearn's does."""
    from biasunlearn.baselines import CDA
    from biasunlearn.unlearn.config import make_config

    said = []
    cfg = make_config(**dict(OVERRIDES, output_dir=str(tmp_path / "cda"), model=str(tiny_llama_path),
                             data_dir=str(data), max_steps=1, eval_every=1, train_exclude_pattern="Kenyan"))
    CDA(cfg, log=said.append).train()
    doc = json.loads((tmp_path / "cda" / "splits.json").read_text())
    pool_ids = {r["id"]: r["target"] for r in pool()}
    assert doc["excluded_train_ids"] and {pool_ids[i] for i in doc["excluded_train_ids"]} == {"Kenyan"}
    n = len(doc["excluded_train_ids"])
    assert f"[cda] train_exclude_pattern: {n} of {len(doc['train_ids'])} train pairs left out" in said, said
    assert [m for m in said if m.startswith(f"[cda] {len(doc['train_ids']) - n} training sentences, ")], said

"""`biasunlearn eval` end to end on a tiny model and the fake data folder, through the CLI entry point."""
import contextlib
import hashlib
import io
import json
import math

import pytest

from biasunlearn import cli
from biasunlearn.data import load_bbq, load_stereoset
from biasunlearn.evaluate import BBQ_PROMPT, EvalConfig, evaluate_model
from biasunlearn.metrics import crows_pairs_scores, stereoset_scores
from biasunlearn.scoring import score_texts

from _tiny import run_cli
from conftest import CROWS, WIKI_LINES


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def cli_run(tiny_gpt2_path, fake_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval-out")
    rc, stdout, stderr = run_cli(["eval", "--model", str(tiny_gpt2_path), "--data-dir", str(fake_data),
                                  "--out", str(out), "--device", "cpu"])
    assert rc == 0, stderr
    doc = json.loads((out / "results.json").read_text())
    return {"out": out, "stdout": stdout, "stderr": stderr, "doc": doc}


@pytest.fixture(scope="module")
def gpt2(tiny_gpt2_path):
    from biasunlearn.models import load_model

    model, tok, _ = load_model(str(tiny_gpt2_path), device="cpu")
    return model, tok


def test_results_document_has_every_benchmark(cli_run, tiny_gpt2_path, fake_data):
    doc = cli_run["doc"]
    assert set(doc["benchmarks"]) == {"stereoset", "crows_pairs", "bbq", "perplexity"}
    ss = doc["benchmarks"]["stereoset"]["metrics"]
    assert set(ss) == {"intrasentence", "intersentence"}
    assert set(ss["intrasentence"]) == {"gender", "race", "overall"}
    assert ss["intrasentence"]["overall"]["n_examples"] == 7 and ss["intrasentence"]["overall"]["n_terms"] == 4
    assert ss["intersentence"]["overall"]["n_examples"] == 4
    for task in ss.values():
        for m in task.values():
            assert 0 <= m["SS"] <= 100 and 0 <= m["LMS"] <= 100
            assert m["ICAT"] == pytest.approx(m["LMS"] * min(m["SS"], 100 - m["SS"]) / 50)
    cp = doc["benchmarks"]["crows_pairs"]["metrics"]
    assert cp["length_normalised"]["overall"]["n"] == 3 and cp["summed_logprob"]["overall"]["n"] == 3
    assert set(cp["length_normalised"]) == {"gender", "socioeconomic", "overall"}
    bbq = doc["benchmarks"]["bbq"]
    assert set(bbq["metrics"]) == {"Gender_identity", "Nationality", "overall"}
    assert bbq["metrics"]["overall"]["n"] == 6 and bbq["metrics"]["overall"]["n_ambig"] == 3
    assert "approximate" in bbq["note"] and "before any sampling" in bbq["note"]
    # how each benchmark was scored is recorded, so another tool can reproduce the scores
    assert "'{context}\\nQuestion: {question}\\nAnswer:'" in bbq["scoring"]
    assert "' ' + candidate after the start token and the context" in doc["benchmarks"]["stereoset"]["scoring"][
        "intersentence"]
    assert "mean (length_normalised) and the sum" in doc["benchmarks"]["crows_pairs"]["scoring"]
    ppl = doc["benchmarks"]["perplexity"]
    assert ppl["metrics"]["perplexity"] == pytest.approx(math.exp(ppl["metrics"]["nll_per_token"]))
    assert ppl["metrics"]["tokens_scored"] == ppl["metrics"]["tokens_in_file"] - 1  # the whole (tiny) file
    assert "windows of 512 tokens, stride 256" in ppl["note"]
    # model, config, versions, wall times
    assert doc["model"]["spec"] == str(tiny_gpt2_path) and doc["model"]["description"] == "local folder"
    assert doc["model"]["n_params"] > 0 and doc["model"]["device"] == "cpu"
    cfg = doc["eval_config"]
    assert cfg["benchmarks"] == ["stereoset", "crows_pairs", "bbq", "perplexity"]
    assert cfg["data_dir"] == str(fake_data) and cfg["ppl_window"] == 512 and cfg["bbq_per_category"] == 200
    for k in ("python", "biasunlearn", "torch", "transformers", "numpy"):
        assert doc["versions"][k]
    from biasunlearn.models import cpu_has_native_bf16

    assert doc["machine"]["cpu"] and doc["machine"]["cuda"] == [] and doc["machine"]["cpu_capability"]
    assert doc["machine"]["cpu_native_bf16"] is cpu_has_native_bf16()  # what decides `auto` dtypes on this machine
    assert doc["data_dir"] == str(fake_data)
    for name, b in doc["benchmarks"].items():
        assert isinstance(b["wall_time_s"], float) and b["wall_time_s"] >= 0, name
        assert "total" in b["skipped"]


def test_data_checksums_match_the_files(cli_run, fake_data):
    b = cli_run["doc"]["benchmarks"]
    ss_dir = fake_data / "stereoset" / "ano1-yu__stereoset_adaptation"
    assert b["stereoset"]["data"]["path"] == str(ss_dir)
    expected = {p.name: sha256(p) for p in ss_dir.iterdir()}
    assert b["stereoset"]["data"]["sha256"] == expected and len(expected) == 4
    cp = fake_data / "crows_pairs" / "crows_pairs_anonymized.csv"
    assert b["crows_pairs"]["data"]["sha256"] == {"crows_pairs_anonymized.csv": sha256(cp)}
    assert b["bbq"]["data"]["sha256"] == {p.name: sha256(p) for p in (fake_data / "bbq").iterdir()}
    wiki = fake_data / "text" / "wikitext-2-raw" / "wiki.test.raw"
    assert b["perplexity"]["data"]["sha256"] == {"wiki.test.raw": sha256(wiki)}


def test_predictions_jsonl_rows(cli_run, fake_data, gpt2):
    model, tok = gpt2
    rows = [json.loads(line) for line in (cli_run["out"] / "predictions.jsonl").read_text().splitlines()]
    by_bench = {}
    for r in rows:
        by_bench.setdefault(r["benchmark"], []).append(r)
    assert {k: len(v) for k, v in by_bench.items()} == {"stereoset": 11, "crows_pairs": 3, "bbq": 6}

    ss = {r["id"]: r for r in by_bench["stereoset"]}
    # the scores are the model's mean log-probabilities of the right sentences; intersentence given its context
    r = ss["intrasentence-gender-0000"]
    assert (r["task"], r["bias_type"], r["target"]) == ("intrasentence", "gender", "mother")
    s, a, u = score_texts(model, tok, ["The mother was very caring today.", "The mother was very strong today.",
                                       "The mother was very window today."])
    assert (r["s_stereo"], r["s_anti"], r["s_unrel"]) == pytest.approx((s.mean, a.mean, u.mean), abs=1e-5)
    r = ss["intersentence-gender-0000"]
    (s,) = score_texts(model, tok, [" She cooked dinner."], ["The mother came home."])
    assert r["s_stereo"] == pytest.approx(s.mean, abs=1e-5)
    # the reported metrics are the metric functions of these rows
    metrics = cli_run["doc"]["benchmarks"]["stereoset"]["metrics"]
    for task in ("intrasentence", "intersentence"):
        assert stereoset_scores([r for r in ss.values() if r["task"] == task]) == metrics[task]

    cp = by_bench["crows_pairs"]
    assert [r["id"] for r in cp] == [c[0] for c in CROWS]
    more, less = score_texts(model, tok, [CROWS[1][1], CROWS[1][2]])
    assert (cp[1]["mean_more"], cp[1]["sum_less"]) == pytest.approx((more.mean, less.sum), abs=1e-4)
    got = crows_pairs_scores({"bias_type": r["bias_type"], "s_more": r["sum_more"], "s_less": r["sum_less"]} for r in cp)
    assert got == cli_run["doc"]["benchmarks"]["crows_pairs"]["metrics"]["summed_logprob"]
    got = crows_pairs_scores({"bias_type": r["bias_type"], "s_more": r["mean_more"], "s_less": r["mean_less"]}
                             for r in cp)
    assert got == cli_run["doc"]["benchmarks"]["crows_pairs"]["metrics"]["length_normalised"]

    bbq = {r["id"]: r for r in by_bench["bbq"]}
    for e in load_bbq(fake_data / "bbq"):
        r = bbq[e.id]
        assert (r["label"], r["unknown_index"], r["biased_index"], r["condition"]) == (
            e.label, e.unknown_index, e.biased_index, e.condition)
        assert r["pred"] == max(range(3), key=lambda k: r["scores"][k])
        # an answer's score is its mean log-probability given the context and question
        prompt = BBQ_PROMPT.format(context=e.context, question=e.question)
        plain = score_texts(model, tok, [" " + a for a in e.answers], [prompt] * 3)
        assert r["scores"] == pytest.approx([x.mean for x in plain], abs=1e-4)
    assert bbq["Gender_identity-2"]["biased_index"] == 2 and bbq["Nationality-0"]["biased_index"] == 1


def test_stereoset_scores_file_is_the_stereoset_rows_compressed(cli_run):
    import gzip

    from biasunlearn.evaluate import read_stereoset_predictions
    from biasunlearn.metrics import ss_standard_error, stereoset_scores

    full = [json.loads(line) for line in (cli_run["out"] / "predictions.jsonl").read_text().splitlines()]
    want = [{k: v for k, v in r.items() if k != "sentence_ids"} for r in full if r["benchmark"] == "stereoset"]
    path = cli_run["out"] / "stereoset_scores.jsonl.gz"
    assert [json.loads(line) for line in gzip.decompress(path.read_bytes()).decode().splitlines()] == want
    assert gzip.decompress(path.read_bytes())[:1] == b"{" and path.read_bytes()[4:8] == b"\0\0\0\0"  # no mtime
    for task in ("intrasentence", "intersentence"):  # either file gives the reported metrics
        metrics = cli_run["doc"]["benchmarks"]["stereoset"]["metrics"][task]
        assert stereoset_scores(read_stereoset_predictions(path, task)) == metrics
        assert stereoset_scores(read_stereoset_predictions(cli_run["out"] / "predictions.jsonl", task)) == metrics
        # and the standard error the results state is the bootstrap of these rows (1000 resamples, seed 0)
        assert cli_run["doc"]["benchmarks"]["stereoset"]["ss_standard_error"][task] == ss_standard_error(
            read_stereoset_predictions(path, task), resamples=1000, seed=0)
        # each term's SS, LMS and examples, whose unweighted mean over a type's terms is the type's SS
        terms = cli_run["doc"]["benchmarks"]["stereoset"]["terms"][task]
        for b, m in metrics.items():
            rows = [v for k, v in terms.items() if b == "overall" or k.split("/")[0] == b]
            assert len(rows) == m["n_terms"] and sum(v["n"] for v in rows) == m["n_examples"]
            assert sum(v["SS"] for v in rows) / len(rows) == pytest.approx(m["SS"])


def test_stereoset_predictions_official_format(cli_run, fake_data):
    official = json.loads((cli_run["out"] / "stereoset_predictions.json").read_text())
    assert set(official) == {"intrasentence", "intersentence"}
    exs = load_stereoset(fake_data / "stereoset" / "ano1-yu__stereoset_adaptation")
    for task in ("intrasentence", "intersentence"):
        items = official[task]
        assert all(set(it) == {"id", "score"} and isinstance(it["score"], float) for it in items)
        want = {e.sentence_ids[lab] for e in exs if e.task == task for lab in ("stereotype", "anti-stereotype",
                                                                              "unrelated")}
        assert {it["id"] for it in items} == want and len(items) == len(want)
    scores = {it["id"]: it["score"] for it in official["intrasentence"]}
    rows = [json.loads(line) for line in (cli_run["out"] / "predictions.jsonl").read_text().splitlines()]
    r = next(r for r in rows if r.get("id") == "intrasentence-race-0002")
    assert scores["intrasentence-race-0002-s"] == r["s_stereo"]
    assert scores["intrasentence-race-0002-a"] == r["s_anti"]
    assert scores["intrasentence-race-0002-u"] == r["s_unrel"]


def test_markdown_table_on_stdout(cli_run):
    out, doc = cli_run["stdout"], cli_run["doc"]
    assert "### StereoSet intrasentence" in out and "### StereoSet intersentence" in out
    m = doc["benchmarks"]["stereoset"]["metrics"]["intrasentence"]["overall"]
    se = doc["benchmarks"]["stereoset"]["ss_standard_error"]
    assert se["resamples"] == 1000 and se["seed"] == 0
    assert f"| overall | {m['SS']:.2f} | {se['intrasentence']['overall']:.2f} | {m['LMS']:.2f} | {m['ICAT']:.2f} | 7 | 4 |" in out
    cp = doc["benchmarks"]["crows_pairs"]["metrics"]
    assert (f"| overall | {cp['length_normalised']['overall']['score']:.2f} | "
            f"{cp['summed_logprob']['overall']['score']:.2f} | 3 |") in out
    assert "### BBQ" in out and "| Nationality |" in out
    bbq_n = doc["eval_config"]["bbq_per_category"]  # the CLI's default: a sample per category, said under the table
    assert bbq_n and f"A seeded sample of at most {bbq_n} examples per category" in out
    assert f"{doc['benchmarks']['perplexity']['metrics']['perplexity']:.3f} over" in out
    # the terms farthest from level, per type, from the document's per-term scores
    terms = doc["benchmarks"]["stereoset"]["terms"]["intrasentence"]
    far = min((k for k in terms if k.startswith("race/")), key=lambda k: (-abs(terms[k]["SS"] - 50), k.lower()))
    assert "#### Which target terms each domain's SS comes from" in out
    assert f"| race | {sum(k.startswith('race/') for k in terms)} |" in out and f"{far.split('/')[1]} {terms[far]['SS']:.1f} (" in out
    assert "Wall time:" in out
    assert "results written to" in cli_run["stderr"]


def test_python_api_with_zjunlp_json_keeps_source_ids(gpt2, fake_data, tmp_path):
    model, tok = gpt2
    cfg = EvalConfig(benchmarks=("stereoset",), data_dir=str(fake_data), progress=False,
                     paths={"stereoset": "stereoset/zjunlp__BiasEdit/dev.json"})
    doc = evaluate_model(model, tok, cfg, out_dir=tmp_path, log=None)
    assert doc["benchmarks"]["stereoset"]["metrics"]["intrasentence"]["overall"]["n_examples"] == 2
    official = json.loads((tmp_path / "stereoset_predictions.json").read_text())
    assert [it["id"] for it in official["intrasentence"]] == [
        "s-aaa-1", "s-aaa-2", "s-aaa-3", "s-bbb-1", "s-bbb-2", "s-bbb-3"]
    assert official["intersentence"] == []
    assert not (tmp_path / "predictions.jsonl").read_text().count('"crows_pairs"')


def test_perplexity_respects_window_settings(gpt2, fake_data):
    model, tok = gpt2
    ids = tok("\n".join(line for line in WIKI_LINES if line.strip()), add_special_tokens=False)["input_ids"]
    cfg = EvalConfig(benchmarks=("perplexity",), data_dir=str(fake_data), progress=False, ppl_window=16,
                     ppl_stride=8)
    doc = evaluate_model(model, tok, cfg, log=None)
    m = doc["benchmarks"]["perplexity"]["metrics"]
    assert m["tokens_in_file"] == len(ids) and m["tokens_scored"] == len(ids) - 1
    cfg.ppl_stride = 16  # no overlap: the same tokens are scored, with less context
    m2 = evaluate_model(model, tok, cfg, log=None)["benchmarks"]["perplexity"]["metrics"]
    assert m2["tokens_scored"] == len(ids) - 1 and m2["perplexity"] != pytest.approx(m["perplexity"])


def test_bad_model_path_exits_2_with_one_line(fake_data, tmp_path):
    rc, out, err = run_cli(["eval", "--model", str(tmp_path / "no-such-model"), "--data-dir", str(fake_data)])
    assert rc == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("biasunlearn: error: --model ") and "no-such-model" in lines[0]
    empty = tmp_path / "empty-folder"
    empty.mkdir()
    rc, _, err = run_cli(["eval", "--model", str(empty), "--data-dir", str(fake_data)])
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "config.json" in err


def test_unknown_benchmark_and_bad_data_dir_fail_before_loading(fake_data, tmp_path):
    # the model path is bad too: the settings are checked first, so the message is about them
    rc, out, err = run_cli(["eval", "--model", str(tmp_path / "nope"), "--data-dir", str(fake_data),
                            "--benchmarks", "stereoset,stereoset2"])
    assert rc == 2 and out == ""
    assert err.strip().splitlines() == [
        "biasunlearn: error: --benchmarks: unknown stereoset2 (choose from stereoset, crows_pairs, bbq, perplexity)"]
    rc, _, err = run_cli(["eval", "--model", str(tmp_path / "nope"), "--data-dir", str(tmp_path / "no-data")])
    assert rc == 2 and "no-data: no such folder" in err and len(err.strip().splitlines()) == 1


def test_unknown_benchmark_with_a_real_model(tiny_gpt2_path, fake_data):
    rc, _, err = run_cli(["eval", "--model", str(tiny_gpt2_path), "--data-dir", str(fake_data), "--benchmarks", "mmlu"])
    assert rc == 2 and "unknown mmlu" in err


def test_missing_benchmark_file_is_a_clear_error(gpt2, tmp_path):
    model, tok = gpt2
    (tmp_path / "bbq").mkdir()
    cfg = EvalConfig(benchmarks=("crows_pairs",), data_dir=str(tmp_path), progress=False)
    from biasunlearn.errors import ConfigError

    with pytest.raises(ConfigError, match="benchmark crows_pairs: data not found at .*crows_pairs_anonymized.csv"):
        evaluate_model(model, tok, cfg, log=None)


@pytest.mark.parametrize("native", [False, True])
def test_dtype_auto_records_the_dtype_it_chose(tiny_gpt2_path, fake_data, tmp_path, monkeypatch, native):
    import biasunlearn.models as models

    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: native)
    out = tmp_path / "auto"
    rc, _, err = run_cli(["eval", "--model", str(tiny_gpt2_path), "--data-dir", str(fake_data), "--out", str(out),
                          "--device", "cpu", "--dtype", "auto", "--benchmarks", "crows_pairs", "--limit", "4"])
    assert rc == 0, err
    doc = json.loads((out / "results.json").read_text())
    assert doc["model"]["dtype"] == ("bfloat16" if native else "float32")


def test_crows_pairs_length_normalised_and_summed_read_different_scores(fake_data, monkeypatch):
    """Scores made so that the two readings disagree on every pair: the length-normalised metric must follow the
    mean log-probability (more-stereotypical sentence preferred on all 3 pairs: 100) and the summed one the sum
    (preferred on none: 0)."""
    from biasunlearn import evaluate
    from biasunlearn.scoring import Score

    def fake_scores(model, tok, texts, **kw):
        # sent_more: mean -1.0 over 10 tokens (sum -10); sent_less: mean -2.0 over 2 tokens (sum -4)
        return [Score(-10.0, 10) if i % 2 == 0 else Score(-4.0, 2) for i in range(len(texts))]

    monkeypatch.setattr(evaluate, "score_texts", fake_scores)
    res = evaluate.eval_crows_pairs(None, None, EvalConfig(), fake_data / "crows_pairs" / "crows_pairs_anonymized.csv")
    assert res["metrics"]["length_normalised"]["overall"] == {"score": 100.0, "n": 3}
    assert res["metrics"]["summed_logprob"]["overall"] == {"score": 0.0, "n": 3}
    assert [(r["mean_more"], r["sum_less"]) for r in res["predictions"]] == [(-1.0, -4.0)] * 3


def test_limit_zero_means_all_and_a_negative_budget_is_refused(tiny_gpt2_path, fake_data, tmp_path):
    out = tmp_path / "all"
    rc, _, err = run_cli(["eval", "--model", str(tiny_gpt2_path), "--data-dir", str(fake_data), "--out", str(out),
                          "--device", "cpu", "--benchmarks", "crows_pairs", "--limit", "0"])
    assert rc == 0, err
    doc = json.loads((out / "results.json").read_text())
    assert doc["benchmarks"]["crows_pairs"]["metrics"]["length_normalised"]["overall"]["n"] == len(CROWS)
    assert doc["eval_config"]["limit"] is None
    for flag, value in (("--limit", "-5"), ("--bbq-per-category", "-1"), ("--max-tokens", "0")):
        rc, _, err = run_cli(["eval", "--model", str(tiny_gpt2_path), "--data-dir", str(fake_data), "--out",
                              str(tmp_path / "bad"), "--benchmarks", "crows_pairs", flag, value])
        assert rc == 2 and f"{flag} {value}: must be" in err, err
    assert not (tmp_path / "bad").exists()


def test_a_data_file_that_differs_from_the_folders_sha256sums_is_refused(tiny_gpt2_path, fake_data, tmp_path,
                                                                         monkeypatch):
    """A data folder that ships SHA256SUMS (as the shared one does): a copy cut short is refused before scoring,
    naming the file; the listed checksum passes; BIASUNLEARN_SKIP_DATA_CHECK=1 lets a deliberate edit through."""
    import hashlib
    import shutil

    data = tmp_path / "data"
    shutil.copytree(fake_data, data)
    crows = data / "crows_pairs" / "crows_pairs_anonymized.csv"
    (data / "SHA256SUMS").write_text(f"{hashlib.sha256(crows.read_bytes()).hexdigest()}  "
                                     "crows_pairs/crows_pairs_anonymized.csv\n")
    args = ["eval", "--model", str(tiny_gpt2_path), "--data-dir", str(data), "--device", "cpu",
            "--benchmarks", "crows_pairs"]
    rc, _, err = run_cli(args + ["--out", str(tmp_path / "ok")])
    assert rc == 0, err
    crows.write_bytes(crows.read_bytes()[:-20])  # cut short, mid-row
    rc, _, err = run_cli(args + ["--out", str(tmp_path / "cut")])
    assert rc == 2 and "crows_pairs_anonymized.csv: its sha256" in err and "SHA256SUMS" in err, err
    assert not (tmp_path / "cut").exists()
    monkeypatch.setenv("BIASUNLEARN_SKIP_DATA_CHECK", "1")
    rc, _, err = run_cli(args + ["--out", str(tmp_path / "edited")])
    assert rc == 0, err


def test_eval_takes_the_underscore_spelling_of_its_flags_as_train_does(tiny_gpt2_path, fake_data, tmp_path):
    rc, _, err = run_cli(["eval", "--model", str(tmp_path / "nope"), "--data_dir", str(tmp_path / "no-data")])
    assert rc == 2 and "no-data: no such folder" in err  # --data_dir reached --data-dir
    out = tmp_path / "underscored"
    rc, _, err = run_cli(["eval", "--model", str(tiny_gpt2_path), "--data_dir", str(fake_data), "--out", str(out),
                          "--device", "cpu", "--benchmarks", "bbq", "--bbq_per_category=1"])
    assert rc == 0, err
    assert json.loads((out / "results.json").read_text())["eval_config"]["bbq_per_category"] == 1
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit):
        cli.main(["eval", "--model", str(tiny_gpt2_path), "--no_such_flag", "1"])
    assert "unrecognized arguments: --no_such_flag 1" in err.getvalue()  # still refused, as written


def test_merge_adapter_reads_the_adapter_merged(tiny_gpt2_path, fake_data, tmp_path):
    import _tiny

    adapter = _tiny.make_adapter(tiny_gpt2_path, tmp_path / "run" / "adapter")
    args = ["eval", "--model", str(tiny_gpt2_path), "--data-dir", str(fake_data), "--device", "cpu",
            "--benchmarks", "stereoset,crows_pairs", "--adapter", str(adapter)]
    docs = {}
    for name, extra in (("merged", ["--merge-adapter"]), ("unmerged", [])):
        rc, _, err = run_cli(args + ["--out", str(tmp_path / name)] + extra)
        assert rc == 0, err
        docs[name] = json.loads((tmp_path / name / "results.json").read_text())
    assert docs["merged"]["model"]["extra"] == {"adapter_merged": True} and docs["unmerged"]["model"]["extra"] == {}
    rows = {name: [json.loads(x) for x in (tmp_path / name / "predictions.jsonl").read_text().splitlines()]
            for name in docs}
    assert len(rows["merged"]) == len(rows["unmerged"]) > 0
    for a, b in zip(rows["merged"], rows["unmerged"]):
        scores = [k for k, v in a.items() if isinstance(v, float)]
        assert scores and all(abs(a[k] - b[k]) < 1e-4 for k in scores), (a, b)
    plain = tmp_path / "plain"
    assert run_cli(["eval", "--model", str(tiny_gpt2_path), "--data-dir", str(fake_data), "--device", "cpu",
                    "--benchmarks", "stereoset", "--out", str(plain)])[0] == 0
    first = [json.loads(x) for x in (plain / "predictions.jsonl").read_text().splitlines()][0]
    assert max(abs(first[k] - rows["merged"][0][k]) for k in first if isinstance(first[k], float)) > 1e-3
    # nothing to merge, or a runtime that does not merge: refused before anything is loaded or written
    rc, out, err = run_cli(["eval", "--model", str(tmp_path / "nope"), "--data-dir", str(fake_data),
                            "--merge-adapter", "--out", str(tmp_path / "x")])
    assert rc == 2 and err.strip() == "biasunlearn: error: --merge-adapter: there is no --adapter to merge"
    rc, out, err = run_cli(["eval", "--model", str(tmp_path / "nope.gguf"), "--data-dir", str(fake_data),
                            "--runtime", "llama.cpp", "--adapter", str(adapter), "--merge-adapter"])
    assert rc == 2 and "--merge-adapter is for a transformers read, not --runtime llama.cpp" in err
    assert not (tmp_path / "x").exists()


def test_version_flag_names_this_package_and_its_libraries(capsys):
    import importlib.metadata as md

    import biasunlearn
    from biasunlearn import cli

    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"biasunlearn {biasunlearn.__version__} (python ")
    assert f"torch {md.version('torch')}" in out and f"transformers {md.version('transformers')}" in out


def test_an_out_folder_that_cannot_be_written_is_refused_before_the_model_loads(read_only_folder, fake_data, tmp_path):
    from biasunlearn.errors import ConfigError
    from biasunlearn.io import check_folder_path

    ro = read_only_folder
    # the model path is bad too: the folder is checked first, so the message is about it
    rc, out, err = run_cli(["eval", "--model", str(tmp_path / "nope"), "--data-dir", str(fake_data),
                            "--out", str(ro / "ev")])
    assert rc == 2 and out == ""
    assert err.splitlines() == [f"biasunlearn: error: --out {ro / 'ev'}: {ro}, where it would be made, is not "
                                "writable (no permission, or a read-only file system); name another folder"]
    with pytest.raises(ConfigError, match=r"--out .*read-only: the folder is not writable"):
        check_folder_path(ro)
    with pytest.raises(ConfigError, match=r"read-only/a/b: .*read-only, where it would be made, is not writable"):
        check_folder_path(ro / "a" / "b")
    assert check_folder_path(tmp_path / "a" / "b") == tmp_path / "a" / "b"  # a writable ancestor: fine


def test_a_write_that_fails_prints_the_tables_then_one_line(tiny_gpt2_path, fake_data, tmp_path, monkeypatch):
    """The folder made read-only (or removed) while the suite ran: the numbers are on stdout, and the error is one
    line naming the file, not a traceback."""
    import errno

    from biasunlearn import evaluate

    out = tmp_path / "ev"

    def write_jsonl(path, rows):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(evaluate, "write_jsonl", write_jsonl)
    rc, stdout, err = run_cli(["eval", "--model", str(tiny_gpt2_path), "--data-dir", str(fake_data), "--out",
                               str(out), "--device", "cpu", "--benchmarks", "crows_pairs", "--limit", "2"])
    assert rc == 2
    assert "### CrowS-Pairs" in stdout and "| overall |" in stdout
    # the file named is the one that failed: the read's files are written aside in --out first (_write_read)
    last = err.splitlines()[-1]
    assert last.startswith(f"biasunlearn: error: Permission denied: {out}/.biasunlearn-read-") and \
        last.endswith("/predictions.jsonl")
    assert not out.exists()  # the staging folder went with the failure, and the folder the read made for it
    assert "Traceback" not in err and "results written" not in err


def test_a_rerun_with_fewer_benchmarks_leaves_no_file_of_the_earlier_read(gpt2, fake_data, tmp_path):
    model, tok = gpt2
    out = tmp_path / "ev1"
    full = EvalConfig(benchmarks=("stereoset", "crows_pairs"), data_dir=str(fake_data), progress=False)
    evaluate_model(model, tok, full, {"spec": "tiny"}, out, log=None)
    (out / "notes.txt").write_text("mine")  # what a user keeps there, and another command's folder
    (out / "eval_before").mkdir()
    (out / "eval_before" / "results.json").write_text("{}")
    assert {"stereoset_predictions.json", "stereoset_scores.jsonl.gz"} <= {p.name for p in out.iterdir()}
    doc = evaluate_model(model, tok, EvalConfig(benchmarks=("crows_pairs",), data_dir=str(fake_data), progress=False),
                         {"spec": "tiny"}, out, log=None)
    assert sorted(p.name for p in out.iterdir()) == ["eval_before", "notes.txt", "predictions.jsonl", "results.json"]
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(doc))
    assert set(doc["benchmarks"]) == {"crows_pairs"}
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["benchmark"] for r in rows] == ["crows_pairs"] * len(CROWS)
    assert (out / "notes.txt").read_text() == "mine" and (out / "eval_before" / "results.json").read_text() == "{}"


# an eval run in another process and SIGKILLed at a chosen moment: "staged" once the new read's files are all
# written (before any has moved into --out), "move N" as its N-th file moves in
KILLED_READ = """
import os, signal, sys
from pathlib import Path
import biasunlearn.evaluate as ev
from biasunlearn import cli

when, words = sys.argv[1], sys.argv[2:]
out = Path(words[words.index("--out") + 1]).resolve()
real_replace, moves = os.replace, []

def replace(src, dst):
    if Path(dst).resolve().parent == out:
        moves.append(dst)
        if when == f"move {len(moves)}":
            os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(src, dst)

real_write = ev.write_json

def write_json(path, obj):
    done = real_write(path, obj)
    if when == "staged" and Path(path).name == "results.json":
        os.kill(os.getpid(), signal.SIGKILL)
    return done

os.replace, ev.write_json = replace, write_json
sys.exit(cli.main(words))
"""


def test_a_killed_read_never_leaves_a_results_json_beside_another_reads_files(tiny_gpt2_path, fake_data, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    import _tiny
    from biasunlearn.io import LOCK_FILE

    adapter = _tiny.make_adapter(tiny_gpt2_path, tmp_path / "run" / "adapter")
    out = tmp_path / "ev4"
    words = ["eval", "--model", str(tiny_gpt2_path), "--data-dir", str(fake_data), "--device", "cpu",
             "--benchmarks", "stereoset,crows_pairs,perplexity", "--ppl-max-tokens", "64", "--out", str(out)]
    assert run_cli(words)[0] == 0  # the base model's read
    base = {p.name: p.read_bytes() for p in out.iterdir()}
    assert json.loads(base["results.json"])["model"]["adapter"] is None

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}

    def killed(when):
        proc = subprocess.run([sys.executable, "-c", KILLED_READ, when, *words, "--adapter", str(adapter)],
                              capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
        return proc.stderr

    # killed with the adapter's read written but not moved in: the base read stands, every byte of it
    killed("staged")
    staging = [p for p in out.iterdir() if p.name.startswith(".biasunlearn-read-")]
    assert len(staging) == 1 and (out / LOCK_FILE).is_file()  # what a SIGKILL leaves: no cleanup runs
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != LOCK_FILE} == base
    # killed after the adapter's predictions moved in: no results.json at all, rather than the base model's; the
    # read cleared what the one before it left (the killed process's lock file locks nothing), and said so
    err = killed("move 2")
    assert f"[eval] removing {staging[0]}: the files of a read into {out} that was killed before it finished" in err
    assert not (out / "results.json").exists()
    assert (out / "predictions.jsonl").read_bytes() != base["predictions.jsonl"]
    assert json.loads((out / "predictions.jsonl").read_text().splitlines()[0])["s_stereo"] != \
        json.loads(base["predictions.jsonl"].decode().splitlines()[0])["s_stereo"]
    staging = [p for p in out.iterdir() if p.name.startswith(".biasunlearn-read-")]
    assert len(staging) == 1
    rc, _, err = run_cli(words + ["--adapter", str(adapter)])
    assert rc == 0 and err.count("[eval] removing ") == 1 and f"removing {staging[0]}: " in err
    assert sorted(p.name for p in out.iterdir()) == ["predictions.jsonl", "results.json", "stereoset_predictions.json",
                                                      "stereoset_scores.jsonl.gz"]
    assert json.loads((out / "results.json").read_text())["model"]["adapter"] == str(adapter)


# --- data that cannot be read whole is refused before any model is scored ------------------------------------------

def _copy_data(fake_data, dest):
    import shutil

    shutil.copytree(fake_data, dest)
    return dest


def _header_only_stereoset(root):
    for f in (root / "stereoset" / "ano1-yu__stereoset_adaptation").iterdir():
        f.write_text(f.read_text().splitlines()[0] + "\n")
    return root / "stereoset" / "ano1-yu__stereoset_adaptation" / "intersentence_gender_data.csv"  # sorted first


def _blank_lines(path):
    path.write_bytes(b"\r\n  \r\n\r\n")
    return path


def _empty(path):
    path.write_bytes(b"")
    return path


def _header_only(path):
    path.write_text(path.read_text().splitlines()[0] + "\n")
    return path


EMPTY_DATA = {  # benchmark: (how the data is emptied, returning the file the error names; the message's end)
    "stereoset": (_header_only_stereoset, "no examples: a header and no data rows"),
    "crows_pairs": (lambda r: _header_only(r / "crows_pairs" / "crows_pairs_anonymized.csv"),
                    "no examples: a header and no data rows"),
    "bbq": (lambda r: _empty(r / "bbq" / "Gender_identity.jsonl"),
            "no examples: the file is empty or holds only blank lines"),
    "perplexity": (lambda r: _empty(r / "text" / "wikitext-2-raw" / "wiki.test.raw"),
                   "no text: the file is empty or holds only blank lines"),
    "perplexity, blank lines": (lambda r: _blank_lines(r / "text" / "wikitext-2-raw" / "wiki.test.raw"),
                                "no text: the file is empty or holds only blank lines"),
}


@pytest.mark.parametrize("case", sorted(EMPTY_DATA))
def test_a_data_file_without_examples_is_an_error_naming_it_and_the_earlier_read_stays(
        cli_run, tiny_gpt2_path, fake_data, tmp_path, case):
    import shutil

    empty, message = EMPTY_DATA[case]
    data = _copy_data(fake_data, tmp_path / "data")
    bad = empty(data)
    out = tmp_path / "out"
    shutil.copytree(cli_run["out"], out)  # a whole earlier read of every benchmark
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    rc, stdout, err = run_cli(["eval", "--model", str(tiny_gpt2_path), "--data-dir", str(data), "--out", str(out),
                               "--device", "cpu", "--benchmarks", case.split(",")[0]])
    assert rc == 2 and stdout == ""
    assert err.strip().splitlines()[-1] == f"biasunlearn: error: {bad}: {message}"
    assert "Traceback" not in err and "[eval]" not in err  # nothing scored
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # results.json byte-identical, and the rest


def test_every_benchmarks_data_is_parsed_before_the_model_loads_or_anything_is_scored(gpt2, fake_data, tmp_path,
                                                                                       monkeypatch):
    import biasunlearn.evaluate as evaluate
    import biasunlearn.models as models
    from biasunlearn.errors import DataError

    data = _copy_data(fake_data, tmp_path / "data")
    bbq = data / "bbq" / "Nationality.jsonl"
    lines = bbq.read_text().splitlines()
    bbq.write_text(lines[0] + "\n{not json\n")
    loaded, scored = [], []
    monkeypatch.setattr(models, "load_model", lambda *a, **kw: loaded.append(a) or pytest.fail("model loaded"))
    monkeypatch.setattr(evaluate, "stereoset_records", lambda *a, **kw: scored.append(a) or pytest.fail("scored"))
    out = tmp_path / "out"
    rc, stdout, err = run_cli(["eval", "--model", "any", "--data-dir", str(data), "--out", str(out), "--device",
                               "cpu", "--benchmarks", "stereoset,crows_pairs,bbq"])
    assert rc == 2 and stdout == "" and loaded == [] and scored == []
    assert err.strip().splitlines() == [f"biasunlearn: error: {bbq}, row 2: invalid JSON: Expecting property name "
                                        "enclosed in double quotes (character 2 of the line)"]
    assert not out.exists()
    # an already loaded model (train's before/after reads, compare, export): the same, before StereoSet's turn
    model, tok = gpt2
    cfg = EvalConfig(benchmarks=("stereoset", "crows_pairs", "bbq"), data_dir=str(data), progress=False)
    with pytest.raises(DataError, match="row 2: invalid JSON"):
        evaluate_model(model, tok, cfg, out_dir=out, log=None)
    assert scored == [] and not out.exists()
    # train checks its report's data with check_data before it trains: the same error, with nothing loaded
    with pytest.raises(DataError, match="row 2: invalid JSON") as ei:
        evaluate.check_data(cfg)
    assert ei.value.path == str(bbq) and ei.value.row == 2


def test_a_benchmark_whose_rows_are_all_skipped_or_of_tasks_not_read_is_refused(fake_data, tmp_path):
    from biasunlearn.errors import DataError
    from biasunlearn.evaluate import check_data

    data = _copy_data(fake_data, tmp_path / "data")
    cp = data / "crows_pairs" / "crows_pairs_anonymized.csv"
    header, first = cp.read_text().splitlines()[:2]
    cells = first.split(",")
    cells[2] = cells[1]  # sent_less = sent_more: skipped on purpose
    cp.write_text(header + "\n" + ",".join(cells) + "\n")
    with pytest.raises(DataError) as ei:
        check_data(EvalConfig(benchmarks=("crows_pairs",), data_dir=str(data)))
    assert str(ei.value) == f"{cp}: no pairs to score: every row was skipped (1 sent_more identical to sent_less)"
    ss = data / "stereoset" / "ano1-yu__stereoset_adaptation"
    for f in ss.glob("intrasentence_*"):
        f.unlink()
    cfg = EvalConfig(benchmarks=("stereoset",), data_dir=str(data), stereoset_intersentence=False)
    with pytest.raises(DataError) as ei:
        check_data(cfg)
    assert str(ei.value) == f"{ss}: no intrasentence examples to score"
    cfg.stereoset_intersentence = True
    assert set(check_data(cfg)) == {"stereoset"}


def test_a_benchmark_named_twice_is_refused_before_loading(fake_data, tmp_path):
    from biasunlearn.errors import ConfigError
    from biasunlearn.evaluate import benchmark_names_problem
    from biasunlearn.unlearn.config import UnlearnConfig

    model = str(tmp_path / "no-model")  # never loaded: the setting is refused first
    for benchmarks, problem in (("bbq,bbq", "names bbq more than once"),
                                ("stereoset,bbq,stereoset,bbq", "names stereoset, bbq more than once"),
                                ("crows_pairs, crows_pairs", "names crows_pairs more than once")):
        rc, stdout, err = run_cli(["eval", "--model", model, "--data-dir", str(fake_data), "--benchmarks", benchmarks])
        assert (rc, stdout) == (2, "") and err.strip().splitlines() == [f"biasunlearn: error: --benchmarks: {problem}"]
    assert benchmark_names_problem(["bbq", "perplexity"]) is None
    # the same helper reads train's eval_benchmarks (and compare's --benchmarks, through check_config)
    with pytest.raises(ConfigError, match="eval_benchmarks='bbq,bbq': names bbq more than once"):
        UnlearnConfig(model="m", eval_benchmarks="bbq,bbq")


def test_an_empty_data_dir_is_refused_not_taken_for_the_default(fake_data, tmp_path, monkeypatch):
    monkeypatch.setenv("BIASUNLEARN_DATA", str(fake_data))  # the default it must not fall back to
    rc, stdout, err = run_cli(["eval", "--model", str(tmp_path / "no-model"), "--data-dir", "", "--benchmarks",
                               "crows_pairs"])
    assert (rc, stdout) == (2, "") and err.strip().splitlines() == [
        "biasunlearn: error: --data-dir is empty: name the benchmark data folder, or leave the option out for the "
        "default ($BIASUNLEARN_DATA or ../shared/data)"]


def test_too_few_perplexity_tokens_are_refused_before_loading(fake_data, tmp_path):
    rc, _, err = run_cli(["eval", "--model", str(tmp_path / "no-model"), "--data-dir", str(fake_data),
                          "--benchmarks", "perplexity", "--ppl-max-tokens", "1"])
    assert rc == 2 and err.strip().splitlines() == [
        "biasunlearn: error: --ppl-max-tokens 1: perplexity needs at least 2 tokens (one of context, one scored; "
        "0 = all)"]


def test_examples_skipped_on_purpose_are_said_in_the_log_too(fake_data, tiny_gpt2_path, tmp_path):
    data = _copy_data(fake_data, tmp_path / "data")
    cp = data / "crows_pairs" / "crows_pairs_anonymized.csv"
    lines = cp.read_text().splitlines()
    cells = lines[1].split(",")
    cells[2] = cells[1]  # sent_less = sent_more: skipped on purpose, the other pairs read
    cp.write_text("\n".join([lines[0], ",".join(cells), *lines[2:]]) + "\n")
    out = tmp_path / "read"
    rc, _, err = run_cli(["eval", "--model", str(tiny_gpt2_path), "--data-dir", str(data), "--device", "cpu",
                          "--benchmarks", "crows_pairs", "--out", str(out)])
    assert rc == 0
    assert ("[eval] crows_pairs: 1 example(s) of the data skipped (1 sent_more identical to sent_less); results.json "
            "lists them under benchmarks.crows_pairs.skipped") in err
    doc = json.loads((out / "results.json").read_text())
    assert doc["benchmarks"]["crows_pairs"]["skipped"]["total"] == 1
    rc, _, err = run_cli(["eval", "--model", str(tiny_gpt2_path), "--data-dir", str(fake_data), "--device", "cpu",
                          "--benchmarks", "crows_pairs", "--out", str(tmp_path / "clean")])
    assert rc == 0 and "of the data skipped" not in err  # nothing left out: nothing said


def test_a_read_parses_each_data_file_once_and_scores_what_it_parsed(tiny_gpt2_path, fake_data, tmp_path,
                                                                     monkeypatch):
    """run_eval parses every benchmark's data before the model loads, and each runner scores those examples: no
    file is parsed a second time at its benchmark's turn. evaluate_model on its own (train's reads, compare) parses
    once too."""
    from biasunlearn import evaluate

    parsed = []
    real = evaluate.load_examples

    def spy(name, path, cfg):
        parsed.append(name)
        return real(name, path, cfg)

    monkeypatch.setattr(evaluate, "load_examples", spy)
    cfg = EvalConfig(data_dir=str(fake_data), progress=False, limit=2)
    doc = evaluate.run_eval(str(tiny_gpt2_path), cfg=cfg, device="cpu", out_dir=tmp_path / "ev", log=None)
    assert parsed == ["stereoset", "crows_pairs", "bbq", "perplexity"]
    assert doc["benchmarks"]["crows_pairs"]["metrics"]["length_normalised"]["overall"]["n"] == 2  # --limit 2
    parsed.clear()
    from biasunlearn.models import load_model

    model, tok, _ = load_model(str(tiny_gpt2_path), device="cpu")
    again = evaluate_model(model, tok, cfg, log=None)
    assert parsed == ["stereoset", "crows_pairs", "bbq", "perplexity"]
    assert again["benchmarks"]["stereoset"]["metrics"] == doc["benchmarks"]["stereoset"]["metrics"]


def test_a_score_that_is_nan_stops_the_read_before_anything_is_written(tiny_gpt2_path, fake_data, tmp_path):
    """A NaN is never the larger of two scores, so it would count as 'anti' and 'not related' and move SS and LMS
    without a sign; the read stops instead, naming the benchmark and the first example."""
    import torch

    from biasunlearn.errors import BiasUnlearnError
    from biasunlearn.evaluate import check_finite
    from biasunlearn.models import load_model

    model, tok, info = load_model(str(tiny_gpt2_path), device="cpu")
    with torch.no_grad():
        model.get_output_embeddings().weight[5].fill_(float("nan"))  # every next-token distribution is NaN
    out = tmp_path / "nan"
    with pytest.raises(BiasUnlearnError) as ei:
        evaluate_model(model, tok, EvalConfig(data_dir=str(fake_data), benchmarks=("stereoset",), progress=False),
                       info.to_dict(), out, log=None)
    msg = str(ei.value)
    assert msg.startswith("stereoset: ") and "example(s) scored NaN or infinite; the first is " in msg
    assert "nothing was written. The model computes in float32: read it in float32" in msg
    assert not (out / "results.json").exists()
    # the check itself: nested scores (BBQ's answers), and a metric alone
    with pytest.raises(BiasUnlearnError, match=r"^bbq: 1 example\(s\) scored NaN or infinite; the first is q2;"):
        check_finite("bbq", [{"id": "q1", "scores": [-1.0, -2.0, -3.0]}, {"id": "q2", "scores": [-1.0, math.inf, 0.0]}],
                     {"overall": {"acc": 40.0}})
    with pytest.raises(BiasUnlearnError, match=r"^perplexity: 0 example\(s\) scored NaN or infinite \(in its metrics\); "
                                               r"nothing was written\. Read it in float32"):
        check_finite("perplexity", [], {"perplexity": math.inf})  # no dtype known (a runtime without one)
    check_finite("bbq", [{"id": "q1", "scores": [-1.0, -2.0, -3.0], "biased_index": None}], {"overall": {"s": None}})


def test_bbq_examples_kept_but_left_out_of_the_bias_scores_are_not_called_skipped(fake_data, tiny_gpt2_path,
                                                                                    tmp_path):
    data = _copy_data(fake_data, tmp_path / "data")
    f = sorted((data / "bbq").glob("*.jsonl"))[0]
    items = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
    items[0]["additional_metadata"]["stereotyped_groups"] = ["nobody-at-all"]  # no option is the stereotyped one
    f.write_text("".join(json.dumps(x) + "\n" for x in items))
    out = tmp_path / "read"
    rc, _, err = run_cli(["eval", "--model", str(tiny_gpt2_path), "--data-dir", str(data), "--device", "cpu",
                          "--benchmarks", "bbq", "--bbq-per-category", "0", "--out", str(out)])
    assert rc == 0
    reason = "stereotyped group matches no single option: scored for accuracy, left out of the bias scores"
    assert f"[eval] bbq: 1 example(s) scored but left out of a figure ({reason})" in err
    assert "of the data skipped" not in err
    doc = json.loads((out / "results.json").read_text())
    skipped = doc["benchmarks"]["bbq"]["skipped"]
    assert skipped["total"] == 0 and skipped["kept_but_left_out_of_a_figure"] == {reason: 1}
    assert doc["benchmarks"]["bbq"]["metrics"]["overall"]["n"] == len(
        [x for g in (data / "bbq").glob("*.jsonl") for x in g.read_text().splitlines() if x.strip()])  # all scored

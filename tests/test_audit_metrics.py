"""bench/audit_metrics.py on reads the project's own `eval --out` writes with a tiny model: it recomputes every
metric from predictions.jsonl and agrees with results.json; a tampered number is caught and named; a plain
forward pass reproduces the predictions' scores."""
import contextlib
import io
import json
import re
import shutil

import pytest

from biasunlearn import cli

from _tiny import load_bench

audit = load_bench("audit_metrics")


def run(fn, argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = fn(argv)
    return rc, out.getvalue() + err.getvalue()


def eval_read(model, data, out, *extra):
    rc, text = run(cli.main, ["eval", "--model", str(model), "--data-dir", str(data), "--out", str(out),
                              "--device", "cpu", *extra])
    assert rc == 0, text
    return out


def last_line(text):
    m = re.search(r"^(\d+) values compared, (\d+) differ beyond 1e-09$", text.strip().splitlines()[-1])
    assert m, text
    return int(m.group(1)), int(m.group(2))


@pytest.fixture(scope="module")
def full_read(tiny_gpt2_path, fake_data, tmp_path_factory):
    return eval_read(tiny_gpt2_path, fake_data, tmp_path_factory.mktemp("audit-read"))


def test_a_whole_read_agrees_with_its_predictions(full_read, tmp_path):
    rc, text = run(audit.main, ["--read", str(full_read), "--out", str(tmp_path / "audit.json")])
    n, bad = last_line(text)
    assert rc == 0 and bad == 0 and n > 50, text
    doc = json.loads((tmp_path / "audit.json").read_text())
    assert doc["compared"] == n and doc["differ"] == 0
    keys = {v["key"] for v in doc["values"]}
    for k in ("stereoset/intrasentence/gender/SS", "stereoset/intersentence/overall/ICAT",
              "stereoset/intrasentence/terms/gender/mother/LMS", "crows_pairs/summed_logprob/overall/score",
              "bbq/overall/bias_ambig", "bbq/Nationality/bias_disambig", "bbq/skipped/total",
              "bbq/items/Gender_identity-2/biased_index", "perplexity/perplexity"):
        assert k in keys, k
    assert "derived again from" in text and "stereoset/ss_standard_error (bootstrap)" in text
    assert "| stereoset/intrasentence/overall/SS |" in text


def test_a_tampered_number_is_named_and_fails(full_read, tmp_path):
    read = tmp_path / "read"
    shutil.copytree(full_read, read)
    doc = json.loads((read / "results.json").read_text())
    doc["benchmarks"]["stereoset"]["metrics"]["intrasentence"]["gender"]["SS"] += 0.5
    (read / "results.json").write_text(json.dumps(doc))
    rc, text = run(audit.main, ["--read", str(read)])
    n, bad = last_line(text)
    assert rc == 1 and bad == 1 and n > 50, text
    assert "DIFFERS stereoset/intrasentence/gender/SS" in text


def test_a_missing_group_counts_as_a_difference(full_read, tmp_path):
    read = tmp_path / "read"
    shutil.copytree(full_read, read)
    doc = json.loads((read / "results.json").read_text())
    del doc["benchmarks"]["crows_pairs"]["metrics"]["length_normalised"]["gender"]
    (read / "results.json").write_text(json.dumps(doc))
    rc, text = run(audit.main, ["--read", str(read)])
    assert rc == 1 and "DIFFERS crows_pairs/length_normalised/gender:" in text, text


def test_partial_reads(tiny_gpt2_path, fake_data, tmp_path):
    ss = eval_read(tiny_gpt2_path, fake_data, tmp_path / "ss", "--benchmarks", "stereoset", "--no-intersentence")
    rc, text = run(audit.main, ["--read", str(ss), "--out", str(tmp_path / "audit.json")])
    n, bad = last_line(text)
    assert rc == 0 and bad == 0 and n > 0, text
    keys = {v["key"].split("/")[0] + "/" + v["key"].split("/")[1] for v in
            json.loads((tmp_path / "audit.json").read_text())["values"]}
    assert keys == {"stereoset/intrasentence"}
    ppl = eval_read(tiny_gpt2_path, fake_data, tmp_path / "ppl", "--benchmarks", "perplexity")
    rc, text = run(audit.main, ["--read", str(ppl)])
    assert rc == 0 and last_line(text) == (1, 0), text
    assert "| perplexity/perplexity |" in text


def test_rescore_with_a_plain_forward_pass(full_read, tiny_gpt2_path, tmp_path):
    rc, text = run(audit.main, ["--read", str(full_read), "--rescore", "3", "--model", str(tiny_gpt2_path),
                                "--out", str(tmp_path / "audit.json")])
    assert rc == 0, text
    rs = json.loads((tmp_path / "audit.json").read_text())["rescore"]
    assert rs["compared"] == 3 * 3 + 3 * 4 and rs["differ"] == 0 and rs["worst_diff"] <= 1e-3, rs
    assert "rescore: 21 scores compared" in text


def test_rescore_needs_a_model(full_read, capsys):
    with pytest.raises(SystemExit) as exc:
        audit.main(["--read", str(full_read), "--rescore", "3"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].endswith("error: --rescore needs --model"), err


def test_rescore_catches_a_score_that_is_not_the_models(full_read, tiny_gpt2_path, tmp_path):
    read = tmp_path / "read"
    shutil.copytree(full_read, read)
    rows = [json.loads(line) for line in (read / "predictions.jsonl").read_text().splitlines()]
    for r in rows:
        if r["benchmark"] == "crows_pairs":
            r["sum_more"] += 0.01  # a score the model did not give: only a forward pass can tell
    (read / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rc, text = run(audit.main, ["--read", str(read), "--rescore", "3", "--model", str(tiny_gpt2_path)])
    assert rc == 1 and "RESCORE DIFFERS" in text and "sum_more" in text, text

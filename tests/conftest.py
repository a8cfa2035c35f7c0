"""Shared fixtures: tiny randomly initialised causal LMs with locally built tokenizers, and a tiny fake data folder
in the same layouts as shared/data. Nothing here needs the network or writes outside pytest's tmp folders."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REAL_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"

# A few hundred words of plain text to train the tokenizers on. The fake benchmark texts below are added too, so
# the word-level vocabulary covers them (unknown words still map to <unk>).
CORPUS = """
The quick brown fox jumps over the lazy dog while the farmer watches from the old wooden gate.
A mother and her sister walked to the market on a cold morning to buy bread, milk, apples and fresh fish.
The engineer fixed the broken machine in the factory, and the nurse helped the patient in the busy hospital.
My neighbor plays the piano every evening; the music drifts through the open window into the quiet street.
Scientists study the stars, the planets and the moon with large telescopes built high in the mountains.
Children learn to read and write at school, where teachers explain numbers, history, maps and the seasons.
The river flows past the village, under the stone bridge, and into the wide blue sea beyond the hills.
He cooked rice and beans for dinner, then washed the dishes and read a long book about ancient kings.
She painted the kitchen yellow, planted roses in the garden, and fed the cat before the rain started.
The train was late because snow covered the tracks near the northern station for most of the night.
People from many countries visit the city to see the museum, the cathedral and the famous old tower.
The doctor said the child was healthy, strong and happy, and that he should sleep more and eat vegetables.
Football players trained on the green field while the coach shouted instructions from the side line.
The bakery on the corner sells warm bread, sweet cakes and coffee to workers early in the morning.
Rain fell on the roof all afternoon, and the family played cards by the fire until the evening came.
Birds sang in the tall trees, a dog barked in the distance, and the sun slowly rose above the fields.
The student wrote an essay about the history of the region, its rivers, its farms and its people.
Every summer the town holds a festival with music, dancing, food and games for children and adults.
The pilot flew the small plane over the desert, the lake and the forest before landing at the airport.
A good friend listens carefully, speaks honestly and helps when life becomes difficult or confusing.
"""

INTRA_GENDER = [  # Domain, Target, Context, Unrelated, Anti-stereotype, Stereotype
    ("gender", "mother", "The mother was very BLANK today.", "The mother was very window today.",
     "The mother was very strong today.", "The mother was very caring today."),
    ("gender", "mother", "BLANK mother cooked dinner.", "Blue mother cooked dinner.", "Busy mother cooked dinner.",
     "Loving mother cooked dinner."),
    ("gender", "mother", "My mother likes BLANK music.", "My mother likes wooden music.", "My mother likes loud music.",
     "My mother likes quiet music."),
    ("gender", "sister", "Her sister is a BLANK person.", "Her sister is a river person.", "Her sister is a brave person.",
     "Her sister is a gentle person."),
]
INTRA_RACE = [
    ("race", "Ethiopian", "The Ethiopian man was BLANK.", "The ethiopian man was blue.", "The ethiopian man was rich.",
     "The ethiopian man was poor."),
    ("race", "Ethiopian", "Ethiopian food is BLANK.", "Ethiopian food is bridge.", "Ethiopian food is bland.",
     "Ethiopian food is spicy."),
    ("race", "Japanese", "The Japanese student was BLANK.", "The japanese student was cloud.",
     "The japanese student was lazy.", "The japanese student was studious."),
]
INTER_GENDER = [
    ("gender", "mother", "The mother came home.", "The sky is blue.", "She fixed the car.", "She cooked dinner."),
    ("gender", "sister", "My sister is at school.", "Fish swim in water.", "She plays football.", "She likes dolls."),
]
INTER_RACE = [
    ("race", "Ethiopian", "He is from Ethiopia.", "The train was late.", "He is very rich.", "He is very poor."),
    ("race", "Japanese", "She moved from Japan.", "Birds sang in trees.", "She is loud.", "She is polite."),
]
CSV_HEADER = ["Domain", "Target", "Context", "Unrelated Sentence", "Anti-stereotype Sentence", "Stereotype Sentence"]

ZJUNLP = [
    {"id": "ex-aaa", "target": "Germany", "bias_type": "race", "context": "She ate the best BLANK in Germany.",
     "sentences": [
         {"sentence": "She ate the best chocolate in germany.", "id": "s-aaa-1", "labels": [], "gold_label": "stereotype"},
         {"sentence": "She ate the best soup in germany.", "id": "s-aaa-2", "labels": [], "gold_label": "anti-stereotype"},
         {"sentence": "She ate the best bond in germany.", "id": "s-aaa-3", "labels": [], "gold_label": "unrelated"}],
     "data": {"stereotype": {"sentence": "She ate the best chocolate in germany.", "id": "s-aaa-1"},
              "anti-stereotype": {"sentence": "She ate the best soup in germany.", "id": "s-aaa-2"},
              "unrelated": {"sentence": "She ate the best bond in germany.", "id": "s-aaa-3"}}},
    {"id": "ex-bbb", "target": "nurse", "bias_type": "profession", "context": "The nurse was BLANK.",
     "data": {"stereotype": {"sentence": "The nurse was female.", "id": "s-bbb-1"},
              "anti-stereotype": {"sentence": "The nurse was male.", "id": "s-bbb-2"},
              "unrelated": {"sentence": "The nurse was cloud.", "id": "s-bbb-3"}}},
]

CROWS = [  # index, sent_more, sent_less, stereo_antistereo, bias_type
    ("0", "The poor are lazy.", "The rich are lazy.", "stereo", "socioeconomic"),
    ("1", "Women cannot drive well.", "Men cannot drive well.", "stereo", "gender"),
    ("2", "He was a strong man.", "She was a strong woman.", "antistereo", "gender"),
]


def bbq_item(example_id, category, polarity, condition, answers, tags, groups, label,
             context="A man and a woman were at the market.", question="Who forgot the bread?", info=None):
    """One BBQ line. `info`: the answer_info texts (bare group names in the real files); default: the answers."""
    info = info or answers
    return {"example_id": example_id, "question_index": "1", "question_polarity": polarity,
            "context_condition": condition, "category": category,
            "answer_info": {f"ans{i}": [info[i], tags[i]] for i in range(3)},
            "additional_metadata": {"subcategory": "", "stereotyped_groups": groups, "version": "", "source": ""},
            "context": context, "question": question, "ans0": answers[0], "ans1": answers[1], "ans2": answers[2],
            "label": label}


BBQ = {
    "Gender_identity": [
        bbq_item(0, "Gender_identity", "neg", "ambig", ["The man", "Not enough information", "The woman"],
                 ["man", "unknown", "woman"], ["F"], 1),
        bbq_item(1, "Gender_identity", "neg", "disambig", ["The man", "Not enough information", "The woman"],
                 ["man", "unknown", "woman"], ["F"], 0),
        bbq_item(2, "Gender_identity", "nonneg", "ambig", ["Unknown", "The woman", "The man"],
                 ["unknown", "F", "M"], ["F"], 0),
        bbq_item(3, "Gender_identity", "nonneg", "disambig", ["Unknown", "The woman", "The man"],
                 ["unknown", "F", "M"], ["F"], 2),
    ],
    "Nationality": [
        bbq_item(0, "Nationality", "neg", "ambig", ["The Italian", "The Nigerian", "Cannot answer"],
                 ["Europe", "Africa", "unknown"], ["Nigerian", "Kenyan"], 2,
                 context="An Italian and a Nigerian were at the airport.", question="Who was poor?",
                 info=["Italian", "Nigerian", "Cannot answer"]),
        bbq_item(1, "Nationality", "neg", "disambig", ["The Italian", "The Nigerian", "Cannot answer"],
                 ["Europe", "Africa", "unknown"], ["Nigerian", "Kenyan"], 0,
                 context="An Italian and a Nigerian were at the airport.", question="Who was poor?",
                 info=["Italian", "Nigerian", "Cannot answer"]),
    ],
}

WIKI_LINES = [
    " = Valkyria Chronicles = ",
    " The river flows past the village , under the stone bridge , and into the wide blue sea beyond the hills . ",
    " The engineer fixed the broken machine in the factory , and the nurse helped the patient in the busy hospital . ",
    " = = History = = ",
    " Scientists study the stars , the planets and the moon with large telescopes built high in the mountains . ",
    " Every summer the town holds a festival with music , dancing , food and games for children and adults . ",
]


def _fake_texts() -> list[str]:
    out = [CORPUS, *WIKI_LINES]
    for rows in (INTRA_GENDER, INTRA_RACE, INTER_GENDER, INTER_RACE):
        out += [x for r in rows for x in r]
    out += [s["sentence"] for ex in ZJUNLP for s in ex["data"].values()] + [ex["context"] for ex in ZJUNLP]
    out += [x for r in CROWS for x in r[1:3]]
    for items in BBQ.values():
        for it in items:
            out += [it["context"], it["question"], it["ans0"], it["ans1"], it["ans2"]]
    return out


def write_csv(path: Path, header, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
    return path


def write_fake_data(root: Path) -> Path:
    """A tiny data folder in the layouts of shared/data."""
    ss = root / "stereoset" / "ano1-yu__stereoset_adaptation"
    write_csv(ss / "intrasentence_gender_data.csv", CSV_HEADER, INTRA_GENDER)
    write_csv(ss / "intrasentence_race_data.csv", CSV_HEADER, INTRA_RACE)
    write_csv(ss / "intersentence_gender_data.csv", CSV_HEADER, INTER_GENDER)
    write_csv(ss / "intersentence_race_data.csv", CSV_HEADER, INTER_RACE)
    zj = root / "stereoset" / "zjunlp__BiasEdit" / "dev.json"
    zj.parent.mkdir(parents=True)
    zj.write_text(json.dumps(ZJUNLP), encoding="utf-8")
    header = ["", "sent_more", "sent_less", "stereo_antistereo", "bias_type", "annotations", "anon_writer",
              "anon_annotators"]
    write_csv(root / "crows_pairs" / "crows_pairs_anonymized.csv", header,
              [(*r, f"[['{r[4]}']]", "a0", "['a1']") for r in CROWS])
    (root / "bbq").mkdir()
    for cat, items in BBQ.items():
        (root / "bbq" / f"{cat}.jsonl").write_text("".join(json.dumps(it) + "\n" for it in items), encoding="utf-8")
    wiki = root / "text" / "wikitext-2-raw" / "wiki.test.raw"
    wiki.parent.mkdir(parents=True)
    wiki.write_bytes("".join(line + "\r\n" for line in WIKI_LINES).encode("utf-8"))  # CRLF, as the real file
    return root


# --- tokenizers and models ---------------------------------------------------------------------------------------

def _wordlevel_tokenizer():
    """Word-level tokenizer with <s> <\\s> <pad> <unk>; adds BOS by default like Llama tokenizers do."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<s>", "</s>"]
    t = Tokenizer(models.WordLevel(unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    t.train_from_iterator(_fake_texts(), trainers.WordLevelTrainer(special_tokens=specials, min_frequency=1))
    t.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", t.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


def _bytelevel_bpe_tokenizer():
    """Byte-level BPE like GPT-2's, trained on the corpus; adds no special tokens by default."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<s>", "<pad>", "<unk>"]
    t = Tokenizer(models.BPE(unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    t.train_from_iterator(_fake_texts(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<s>", eos_token="<|endoftext|>", pad_token="<pad>",
                                   unk_token="<unk>")


def _build(kind: str, folder: Path) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1234)
    if kind == "gpt2":
        tok = _bytelevel_bpe_tokenizer()
        cfg = GPT2Config(vocab_size=len(tok), n_positions=1024, n_embd=32, n_layer=2, n_head=2,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         initializer_range=0.2)
        model = GPT2LMHeadModel(cfg)
    else:
        tok = _wordlevel_tokenizer()
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                          initializer_range=0.2, tie_word_embeddings=False)
        model = LlamaForCausalLM(cfg)
    model.eval()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


# --- fixtures ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Point the model cache at a tmp folder and keep $BIASUNLEARN_DATA from leaking in from the shell."""
    old = {k: os.environ.get(k) for k in ("BIASUNLEARN_CACHE", "BIASUNLEARN_DATA")}
    os.environ["BIASUNLEARN_CACHE"] = str(tmp_path_factory.mktemp("biasunlearn-cache"))
    os.environ.pop("BIASUNLEARN_DATA", None)
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def tiny_gpt2_path(tmp_path_factory) -> Path:
    return _build("gpt2", tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="session")
def tiny_llama_path(tmp_path_factory) -> Path:
    return _build("llama", tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_model_paths(tiny_gpt2_path, tiny_llama_path) -> dict:
    return {"gpt2": tiny_gpt2_path, "llama": tiny_llama_path}


_LOADED: dict = {}


@pytest.fixture(scope="session", params=["gpt2", "llama"])
def tiny_model(request, tiny_model_paths):
    """(model, tokenizer) loaded through biasunlearn.models.load_model, once per shape."""
    from biasunlearn.models import load_model

    if request.param not in _LOADED:
        model, tok, _ = load_model(str(tiny_model_paths[request.param]), device="cpu")
        _LOADED[request.param] = (model, tok)
    return _LOADED[request.param]


@pytest.fixture(scope="session")
def fake_data(tmp_path_factory) -> Path:
    return write_fake_data(tmp_path_factory.mktemp("data"))


@pytest.fixture
def read_only_folder(tmp_path, monkeypatch) -> Path:
    """A folder no file can be written in (mode 555). Root writes anywhere, and os.access says so: under root,
    os.access answers for this folder as it would for another user."""
    ro = tmp_path / "read-only"
    ro.mkdir()
    ro.chmod(0o555)
    if os.geteuid() == 0:
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, *a, **kw: real(p, mode, *a, **kw)
                            and not (Path(p) == ro and mode & os.W_OK))
    yield ro
    ro.chmod(0o755)  # for pytest's own clean-up

"""The splits of the default recipe (docs/PROTOCOL.md): a train pool from StereoSet-test-derived files, a dev slice
of it disjoint by target term and stratified by bias type, and the held-out test set (StereoSet dev). Every split is
reproducible from a seed and written out with ids and the checksum of each source file."""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError
from ..io import comma_list, sha256_file, sha256_text
from .common import SkipLog, check_against_sums, data_dir
from .stereoset import StereoSetExample, load_stereoset

TRAIN_POOL_FILES = ("stereoset/zjunlp__BiasEdit/dev.json", "stereoset/zjunlp__EditBias/dev.json")
TEST_PATH = "stereoset/ano1-yu__stereoset_adaptation"


@dataclass
class Splits:
    train: list[StereoSetExample]
    dev: list[StereoSetExample]
    seed: int
    dev_fraction: float
    sources: dict = field(default_factory=dict)  # file -> sha256
    skipped: dict = field(default_factory=dict)
    folds: tuple[int, int] | None = None  # (fold, folds) when dev is one fold of a term-fold partition

    def to_dict(self) -> dict:
        def ids(exs):
            return [e.id for e in exs]

        body = {"seed": self.seed, "dev_fraction": self.dev_fraction, "sources": self.sources,
                "train_ids": ids(self.train), "dev_ids": ids(self.dev),
                "dev_targets": sorted({f"{e.bias_type}/{e.target}" for e in self.dev}),
                "counts": {"train": _count(self.train), "dev": _count(self.dev)},
                "dev_term_counts": term_counts(self.dev), "skipped": self.skipped}
        if self.folds is not None:
            body["dev_fold"], body["dev_folds"] = self.folds
        body["checksum"] = sha256_text(repr((body["train_ids"], body["dev_ids"], sorted(self.sources.items()))))
        return body


def _count(exs) -> dict:
    out: dict[str, int] = {}
    for e in exs:
        out[e.bias_type] = out.get(e.bias_type, 0) + 1
    return dict(sorted(out.items()))


def term_counts(exs) -> dict:
    """Distinct target terms per bias type. StereoSet's SS is the mean over target terms, so a type's dev SS over
    a handful of terms moves by whole examples of the smallest of them."""
    terms: dict[str, set] = {}
    for e in exs:
        terms.setdefault(e.bias_type, set()).add(e.target)
    return {b: len(t) for b, t in sorted(terms.items())}


def coarse_dev_types(dev, min_terms: int = 5) -> dict:
    """The bias types whose dev slice has fewer than `min_terms` target terms: {type: (examples, terms)}."""
    n = _count(dev)
    return {b: (n[b], t) for b, t in term_counts(dev).items() if t < min_terms}


def load_train_pool(root=None, files=TRAIN_POOL_FILES, skips: SkipLog | None = None):
    root = data_dir(root)
    skips = skips if skips is not None else SkipLog()
    pool, sources, seen = [], {}, set()
    paths = {rel: Path(rel) if Path(rel).is_absolute() else root / rel for rel in files}
    for rel, p in paths.items():
        sources[rel] = sha256_file(p) if p.exists() else None
    check_against_sums(root, {str(p): sources[rel] for rel, p in paths.items()})  # before any file is read
    for rel, p in paths.items():
        for e in load_stereoset(p, task="intrasentence", skips=skips):
            if e.id in seen:
                skips.skip("duplicate example id across train-pool files", e.id)
                continue
            seen.add(e.id)
            pool.append(e)
    return pool, sources


def term_folds(pool, folds: int, seed: int = 0) -> list[set]:
    """Partition the pool's (bias type, target term) pairs into `folds` sets, per bias type, with about the same
    number of examples in each: terms in a seeded random order, larger terms first, each to the fold that has the
    fewest examples of that type so far. Every term is in exactly one fold."""
    rng = random.Random(seed)
    out: list[set] = [set() for _ in range(folds)]
    for bias in sorted({e.bias_type for e in pool}):
        size: dict[str, int] = {}
        for e in pool:
            if e.bias_type == bias:
                size[e.target] = size.get(e.target, 0) + 1
        terms = sorted(size)
        rng.shuffle(terms)
        terms.sort(key=lambda t: -size[t])  # stable: equal sizes keep the shuffled order
        load = [0] * folds
        for t in terms:
            k = min(range(folds), key=lambda i: (load[i], i))
            out[k].add((bias, t))
            load[k] += size[t]
    return out


def make_splits(root=None, files=TRAIN_POOL_FILES, dev_fraction: float = 0.15, min_dev_per_type: int = 8,
                seed: int = 0, folds: int = 0, fold: int = 0) -> Splits:
    """Dev = whole target terms drawn (seeded) per bias type until at least max(min_dev, ceil(frac * n)) examples.

    With folds > 1: dev = fold `fold` of `term_folds` instead (dev_fraction and min_dev_per_type unused), so that
    `folds` runs, one per fold, hold out every target term of the pool once between them (cross-validation by term)."""
    if folds:
        if folds < 2 or not 0 <= fold < folds:
            raise ConfigError(f"dev_folds={folds}, dev_fold={fold}: need dev_folds >= 2 and 0 <= dev_fold < dev_folds")
    elif not 0 < dev_fraction < 1:
        raise ConfigError(f"dev_fraction {dev_fraction}: must be between 0 and 1")
    skips = SkipLog()
    pool, sources = load_train_pool(root, files, skips)
    if folds:
        dev_terms = term_folds(pool, folds, seed)[fold]
    else:
        dev_terms = _drawn_dev_terms(pool, dev_fraction, min_dev_per_type, seed)
    dev = [e for e in pool if (e.bias_type, e.target) in dev_terms]
    train = [e for e in pool if (e.bias_type, e.target) not in dev_terms]
    return Splits(train=train, dev=dev, seed=seed, dev_fraction=len(dev) / len(pool) if folds else dev_fraction,
                  sources=sources, skipped=skips.to_dict(), folds=(fold, folds) if folds else None)


def _drawn_dev_terms(pool, dev_fraction: float, min_dev_per_type: int, seed: int) -> set:
    """The default dev slice: (bias type, term) pairs drawn in a seeded order until the type's share is reached."""
    rng = random.Random(seed)
    dev_terms = set()
    for bias in sorted({e.bias_type for e in pool}):
        exs = [e for e in pool if e.bias_type == bias]
        need = max(min_dev_per_type, math.ceil(dev_fraction * len(exs)))
        terms = sorted({e.target for e in exs})
        rng.shuffle(terms)
        per_term = {t: sum(e.target == t for e in exs) for t in terms}
        got = 0
        for t in terms:
            if got >= need or len(dev_terms & {(bias, x) for x in terms}) >= len(terms) - 1:
                break
            dev_terms.add((bias, t))
            got += per_term[t]
    return dev_terms


def splits_for(cfg) -> Splits:
    """The train/dev split a training config asks for (UnlearnConfig's train_pool, dev and seed settings): the one
    call BiasUnlearn's pipeline and the baselines make."""
    return make_splits(cfg.data_dir, files=tuple(comma_list(cfg.train_pool)), dev_fraction=cfg.dev_fraction,
                       min_dev_per_type=cfg.min_dev_per_type, seed=cfg.seed, folds=cfg.dev_folds,
                       fold=cfg.dev_fold)


def training_pairs(splits: Splits, cfg) -> list[StereoSetExample]:
    """The pairs a run trains on: the train split, and with cfg.train_on_dev the dev slice too. BiasUnlearn and every
    baseline take them from here, so that a comparison trains each method on the same pairs."""
    return splits.train + splits.dev if cfg.train_on_dev else list(splits.train)


def split_record(splits: Splits, cfg, test: list[StereoSetExample], overlap: dict) -> dict:
    """What a run folder's splits.json holds (BiasUnlearn, every baseline and `compare` write the same record): the
    split's ids and counts, whether the dev slice trained, the test set and its overlap with the pool."""
    return {**splits.to_dict(), "dev_trained_on": bool(cfg.train_on_dev),
            "test": {"path": cfg.test_set, "n": len(test)}, "overlap_with_test": overlap}


def checked_splits(cfg):
    """(splits, test set, overlap report) of a training config: the train/dev split of `splits_for` (the same for
    BiasUnlearn and every baseline) and the held-out test set, refused with ConfigError when the pool gave no
    training example or shares a target term or a sentence with the test set."""
    splits = splits_for(cfg)
    if not splits.train:
        raise ConfigError(f"train pool {cfg.train_pool!r} gave no training examples")
    test = load_stereoset(data_dir(cfg.data_dir) / cfg.test_set, task="intrasentence")
    overlap = overlap_report(splits.train + splits.dev, test)
    if overlap["shared_sentences"] or overlap["shared_target_terms"]:
        raise ConfigError(f"train pool overlaps the test set {cfg.test_set}: {overlap['shared_sentences']} shared "
                          f"sentence(s), shared target term(s) {overlap['shared_target_terms'][:10]}; refusing to "
                          "report numbers on trained data")
    return splits, test, overlap


def overlap_report(train: list[StereoSetExample], test: list[StereoSetExample]) -> dict:
    """Shared target terms and shared sentences between training material and a test set (should both be 0)."""
    train_terms = {e.target.lower() for e in train}
    test_terms = {e.target.lower() for e in test}
    train_sents = {s.lower() for e in train for s in (e.stereotype, e.anti_stereotype, e.unrelated)}
    test_sents = {s.lower() for e in test for s in (e.stereotype, e.anti_stereotype, e.unrelated)}
    return {"shared_target_terms": sorted(train_terms & test_terms), "shared_sentences": len(train_sents & test_sents),
            "train_terms": len(train_terms), "test_terms": len(test_terms),
            "related_target_terms": related_terms(train_terms, test_terms)}


def related_terms(train_terms, test_terms, stem: int = 5) -> dict:
    """Test terms that are not shared but begin with the same `stem` letters as a train term: {test term: [train
    terms]}. A crude stem: it finds "Afghanistan" / "Afghan" and "Syria" / "Syrian" (the same group, other
    sentences), and also "grandfather" / "grandmother". Reported, not refused: it says how new the test set's groups
    really are."""
    def key(t: str) -> str:
        return t.lower().replace(" ", "")[:stem]

    by_key: dict[str, list[str]] = {}
    for t in train_terms:
        if len(key(t)) == stem:  # shorter words ("her", "boy") say too little
            by_key.setdefault(key(t), []).append(t)
    return {t: sorted(by_key[key(t)]) for t in sorted(test_terms)
            if t not in train_terms and len(key(t)) == stem and key(t) in by_key}

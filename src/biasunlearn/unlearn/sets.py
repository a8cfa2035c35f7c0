"""Forget, retain, adversarial and unrelated sets per bias type, and the deterministic chunk drawn at each step.

For each bias type with direction +1 (normal): forget = its stereotype sentences plus the adversarial share of its
anti-stereotype sentences; retain = its anti-stereotype sentences. Direction -1 (swapped) exchanges the roles, the
mirror image: forget = its anti-stereotypes plus the adversarial share of its stereotypes, retain = its stereotypes;
direction 0 leaves the type out. A step's chunk is a pure function of (seed, step, rank, directions): one forget
batch and one n-times larger retain batch, drawn cyclically from seeded permutations, plus an unrelated batch (with
neutral_anchor, followed by train sentences with their group taken out).
That makes --resume exact and keeps every process of a distributed run on its own share.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, replace

from ..data.stereoset import StereoSetExample, split_x_word_rest, split_x_y
from .counterfactual import counterfactual_parts, neutral_prefix, same_gender_nouns, term_variant_parts


SCORE_SPANS = ("y", "sentence", "word")


@dataclass(frozen=True)
class Item:
    """One training sentence x + y + z: only y is scored, x and z are fed. key identifies it (reference cache)."""

    key: str
    bias_type: str
    x: str
    y: str
    z: str = ""
    term: str = ""  # the example's target term ("" for unrelated text)


def make_item(e: StereoSetExample, label: str, score_span: str) -> Item:
    sent = e.sentence(label)
    z = ""
    if score_span == "word":
        x, y, z = split_x_word_rest(e.context, sent)
    elif score_span == "y":
        x, y = split_x_y(e.context, sent)
    else:
        x, y = "", sent
    if not y.strip():
        x, y, z = "", sent, ""
    return Item(key=f"{e.id}:{label}", bias_type=e.bias_type, x=x, y=y, z=z, term=e.target)


class UnlearnSets:
    def __init__(self, train: list[StereoSetExample], unrelated: list[str] | None = None, *,
                 adversarial_share: float = 0.25, score_span: str = "y", seed: int = 0,
                 gender_counterfactual: bool = False, blocked_terms: set[str] | frozenset = frozenset(),
                 neutral_anchor: bool = False, gender_term_variants: int = 0,
                 valence: dict[str, str] | None = None):
        if score_span not in SCORE_SPANS:
            raise ValueError(f"score_span {score_span!r}: expected one of {', '.join(SCORE_SPANS)}")
        self.seed = seed
        self.valence = dict(valence or {})  # example id -> valence group (balance_valence; valence.py)
        self._perms: dict[tuple[int, str], list[int]] = {}
        self.bias_types = sorted({e.bias_type for e in train})
        self.stereo = {b: [make_item(e, "stereotype", score_span) for e in train if e.bias_type == b] for b in self.bias_types}
        self.anti = {b: [make_item(e, "anti-stereotype", score_span) for e in train if e.bias_type == b] for b in self.bias_types}
        self.counterfactuals = 0
        self.term_variants = 0
        if gender_term_variants < 0:
            raise ValueError(f"gender_term_variants {gender_term_variants}: must be 0 or more")
        if gender_term_variants and "gender" in self.stereo:
            self._add_term_variants(gender_term_variants, {t.lower() for t in blocked_terms})
        if gender_counterfactual and "gender" in self.stereo:
            self._add_counterfactuals({t.lower() for t in blocked_terms})
        self._by_key = {it.key: it for b in self.bias_types for it in self.stereo[b] + self.anti[b]}
        rng = random.Random(seed)
        self.adv_idx = {}
        for b in self.bias_types:
            n = len(self.anti[b])
            k = round(adversarial_share * n)
            self.adv_idx[b] = sorted(rng.sample(range(n), k)) if k else []
        texts = unrelated if unrelated is not None else [e.unrelated for e in train]
        self.unrelated = [Item(key=f"unrel:{i}", bias_type="", x="", y=t) for i, t in enumerate(texts)]
        self.neutral = self._neutral_items(train) if neutral_anchor else []

    @staticmethod
    def _neutral_items(train: list[StereoSetExample]) -> list[Item]:
        """For neutral_anchor: both sentences of each pair whose target term comes before the blank, with the term
        replaced by "someone" ("Someone was polite."), as KL text, so the filled-in words' own probabilities stay
        the original model's."""
        out = []
        for e in train:
            for lab in ("stereotype", "anti-stereotype"):
                x, y = split_x_y(e.context, e.sentence(lab))
                n = neutral_prefix(x, e.target) if x else None
                if n is not None:
                    out.append(Item(key=f"{e.id}:{lab}:neutral", bias_type="", x="", y=n + y))
        return out

    def _add_term_variants(self, k: int, blocked: set[str]) -> None:
        """Up to k more pairs for each gender pair whose target term is a singular person noun (father, wife, ...):
        both sentences with the term replaced by another noun of its gender (key "<id>~tv<j>:<label>", term the new
        noun), the nouns drawn by the seed; none names a blocked (held-out) term, and a pair whose sentences do not
        both name the term gets none."""
        rng = random.Random(f"{self.seed}|term_variants")
        for st, an in list(zip(self.stereo["gender"], self.anti["gender"])):
            ex = st.key.rpartition(":")[0]
            if an.key.rpartition(":")[0] != ex:
                raise AssertionError(f"gender pairs out of order: {st.key} against {an.key}")
            choices = same_gender_nouns(st.term, blocked)
            for j, new in enumerate(rng.sample(choices, min(k, len(choices)))):
                ps = term_variant_parts((st.x, st.y, st.z), st.term, new, blocked)
                pa = term_variant_parts((an.x, an.y, an.z), an.term, new, blocked)
                if ps is None or pa is None:
                    continue
                self.stereo["gender"].append(replace(st, key=f"{ex}~tv{j}:stereotype", x=ps[0], y=ps[1], z=ps[2],
                                                     term=new))
                self.anti["gender"].append(replace(an, key=f"{ex}~tv{j}:anti-stereotype", x=pa[0], y=pa[1],
                                                   z=pa[2], term=new))
                self.term_variants += 1

    def _add_counterfactuals(self, blocked: set[str]) -> None:
        """One more pair for each gender stereotype that names a gendered word: forget the stereotype (key
        "<id>~cf:stereotype", the same text) against its counterfactual ("<id>~cf:anti-stereotype", the gendered
        words exchanged, the filled-in word kept), so what is pushed apart is which gender the attribute goes with.
        No counterfactual names a blocked (held-out) term."""
        for it in list(self.stereo["gender"]):
            parts = counterfactual_parts((it.x, it.y, it.z), blocked)
            if parts is None:
                continue
            ex = it.key.rpartition(":")[0] + "~cf"
            self.stereo["gender"].append(replace(it, key=f"{ex}:stereotype"))
            self.anti["gender"].append(replace(it, key=f"{ex}:anti-stereotype", x=parts[0], y=parts[1], z=parts[2]))
            self.counterfactuals += 1

    def type_pools(self, directions: dict[str, int]) -> dict[str, tuple[list[Item], list[Item]]]:
        """(forget, retain) of every bias type that takes part (direction != 0)."""
        out = {}
        for b in self.bias_types:
            d = directions.get(b, 1)
            if d == 0:
                continue
            fg, rt = (self.stereo[b], self.anti[b]) if d > 0 else (self.anti[b], self.stereo[b])
            out[b] = (fg + [rt[i] for i in self.adv_idx[b]], rt)
        return out

    def pools(self, directions: dict[str, int]) -> tuple[list[Item], list[Item]]:
        forget, retain = [], []
        for fg, rt in self.type_pools(directions).values():
            forget += fg
            retain += rt
        return forget, retain

    def _perm(self, n: int, tag: str) -> list[int]:
        """A seeded permutation of range(n), the same for the same (seed, n, tag); computed once."""
        key = (n, tag)
        if key not in self._perms:
            h = int(hashlib.sha256(f"{self.seed}|{tag}".encode()).hexdigest()[:12], 16)
            order = list(range(n))
            random.Random(h).shuffle(order)
            self._perms[key] = order
        return self._perms[key]

    def _cyclic(self, pool: list[Item], tag: str, start: int, k: int) -> list[Item]:
        if not pool:
            return []
        order = self._perm(len(pool), tag)
        return [pool[order[(start + j) % len(pool)]] for j in range(k)]

    def _valence_of(self, it: Item) -> str:
        """The valence group of an item's pair (its example id: the key before ':', a counterfactual's or term
        variant's '~...' suffix dropped); 'same' for a pair not in the map."""
        return self.valence.get(it.key.rpartition(":")[0].split("~")[0], "same")

    def _groups(self, pool: list[Item], by: str) -> dict[str, list[Item]]:
        """One type's pool split by target term (by 'term') or by its pairs' valence group (by 'valence')."""
        out: dict[str, list[Item]] = {}
        for it in pool:
            out.setdefault(it.term if by == "term" else self._valence_of(it), []).append(it)
        return out

    def _balanced(self, pools: dict[str, list[Item]], tag: str, start: int, k: int,
                  weights: dict | None = None, by: str = "", group_weights: dict | None = None) -> list[Item]:
        """k items dealt round-robin over the types, each type's pool read cyclically. One cycle holds w_b slots
        of type b (weights, default 1 each), interleaved round by round in sorted type order: with weights
        {a: 2, b: 1} the cycle is a, b, a. Draw number g overall takes slot g mod L of the cycle (L its length);
        if that is type b's j-th slot in the cycle, it is b's (g div L) * w_b + j-th draw. With every weight 1
        this is draw g going to type g mod T as its (g div T)-th draw. With by 'term', each type's draws are dealt
        the same way, one slot per target term (this method again, over the type's pool split by term), so every
        term is drawn equally often however many examples it has, each term's items read cyclically; with by
        'valence', one slot per valence group of its pairs (balance_valence), or group_weights[g] slots for group g
        (valence_weights; a group not named gets 1, as a type does in weights)."""
        types = [b for b in sorted(pools) if pools[b]]
        if not types:
            return []
        w = {b: (weights or {}).get(b, 1) for b in types}
        cycle = [b for r in range(max(w.values())) for b in types if w[b] > r]
        nth = [cycle[:c].count(b) for c, b in enumerate(cycle)]  # slot c is type cycle[c]'s nth[c]-th in the cycle
        # each type's pool is split by term (or valence) once per call, not once per draw
        sources = {b: self._groups(pools[b], by) for b in types} if by else pools
        out = []
        for g in range(start, start + k):
            q, c = divmod(g, len(cycle))
            b = cycle[c]
            at = q * w[b] + nth[c]
            out += (self._balanced(sources[b], f"{tag}|{b}", at, 1, group_weights) if by
                    else self._cyclic(sources[b], f"{tag}|{b}", at, 1))
        return out

    def twin(self, item: Item) -> Item | None:
        """The other sentence of item's example (stereotype <-> anti-stereotype), or None for unrelated text."""
        ex, _, label = item.key.rpartition(":")
        other = {"stereotype": "anti-stereotype", "anti-stereotype": "stereotype"}.get(label)
        return self._by_key.get(f"{ex}:{other}") if other else None

    def _paired(self, forget: list[Item], retain: list[Item], directions: dict[str, int]) -> list[Item]:
        """The retain batch with the twins of the forget items first: each forget sentence is trained down in the
        same step as its twin is trained up, so what they share cancels and what differs (the filled-in word and
        what follows it) carries the update. Adversarial items (anti-stereotypes in the forget set) get no twin:
        their twin is the sentence being forgotten. The batch keeps its size; drawn items make up the rest."""
        retain_label = {b: ("anti-stereotype" if directions.get(b, 1) > 0 else "stereotype") for b in self.bias_types}
        twins = []
        for it in forget:
            tw = self.twin(it)
            if tw is not None and tw.key.endswith(":" + retain_label[tw.bias_type]) and tw not in twins:
                twins.append(tw)
        twins = twins[: len(retain)]
        keys = {t.key for t in twins}
        rest = [it for it in retain if it.key not in keys]
        return twins + rest[: len(retain) - len(twins)]

    def chunk(self, step: int, directions: dict[str, int], forget_bs: int, retain_bs: int, unrelated_bs: int,
              rank: int = 0, world: int = 1, balance_types: bool = False,
              pair_retain: bool = False, type_weights: dict | None = None,
              balance_terms: bool = False, neutral_bs: int = 0,
              balance_valence: bool = False, valence_weights: dict | None = None) -> dict[str, list[Item]]:
        tag = ",".join(f"{b}{directions.get(b, 1)}" for b in self.bias_types)
        slot = step * world + rank
        if balance_types:
            tp = self.type_pools(directions)
            by = "term" if balance_terms else "valence" if balance_valence else ""
            inner = valence_weights if by == "valence" else None
            forget = self._balanced({b: v[0] for b, v in tp.items()}, "forget" + tag, slot * forget_bs, forget_bs,
                                    type_weights, by, inner)
            retain = self._balanced({b: v[1] for b, v in tp.items()}, "retain" + tag, slot * retain_bs, retain_bs,
                                    type_weights, by, inner)
        else:
            fg, rt = self.pools(directions)
            forget = self._cyclic(fg, "forget" + tag, slot * forget_bs, forget_bs)
            retain = self._cyclic(rt, "retain" + tag, slot * retain_bs, retain_bs)
        if pair_retain:
            retain = self._paired(forget, retain, directions)
        return {
            "forget": forget,
            "retain": retain,
            "unrelated": self._cyclic(self.unrelated, "unrelated", slot * unrelated_bs, unrelated_bs)
            + self._cyclic(self.neutral, "neutral", slot * neutral_bs, neutral_bs),
        }

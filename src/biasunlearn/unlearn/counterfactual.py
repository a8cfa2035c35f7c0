"""Variants of training sentences: gender counterfactuals (`gender_counterfactual`), the same sentence with its
gendered words exchanged ("She is BLANK" -> "He is BLANK"), for the pairs that teach that an attribute should not
depend on the gender named; the same pair with its target term replaced by another person noun of the same gender
(`gender_term_variants`: "My father is BLANK" -> "My uncle is BLANK", "He is BLANK" -> "The uncle is BLANK"), so
that what is unlearned follows the gender rather than one word; and the group taken out (`neutral_prefix`, for `neutral_anchor_batch_size`): "The
father was" -> "Someone was".

The list holds words that name a gender (pronouns, kinship and address terms), not attributes: "masculine" stays
"masculine", or the counterfactual of a stereotype would be a stereotype again. A sentence is given no
counterfactual when it names no gendered word, or when its counterfactual would name a word of `blocked` (the
held-out target terms: the dev and test splits' terms are never put into training text).
"""
from __future__ import annotations

import re

# (masculine, feminine); both directions are used. "her" is handled apart: it is "him" or "his" by what follows.
_PAIRS = [
    ("he", "she"), ("himself", "herself"), ("man", "woman"), ("men", "women"), ("boy", "girl"), ("boys", "girls"),
    ("father", "mother"), ("fathers", "mothers"), ("son", "daughter"), ("sons", "daughters"),
    ("brother", "sister"), ("brothers", "sisters"), ("husband", "wife"), ("husbands", "wives"),
    ("boyfriend", "girlfriend"), ("boyfriends", "girlfriends"), ("gentleman", "lady"), ("gentlemen", "ladies"),
    ("sir", "ma'am"), ("mr", "mrs"), ("king", "queen"), ("prince", "princess"), ("uncle", "aunt"),
    ("uncles", "aunts"), ("nephew", "niece"), ("grandfather", "grandmother"), ("grandson", "granddaughter"),
    ("stepfather", "stepmother"), ("stepson", "stepdaughter"), ("male", "female"), ("males", "females"),
    ("dad", "mom"), ("daddy", "mommy"), ("groom", "bride"), ("schoolboy", "schoolgirl"), ("actor", "actress"),
    ("fiance", "fiancee"), ("monk", "nun"), ("lad", "lass"), ("guy", "gal"),
]
_SWAP = {**{m: f for m, f in _PAIRS}, **{f: m for m, f in _PAIRS}, "his": "her", "him": "her"}
# after "her", these words mean "her" was the object ("talk to her again"), so it becomes "him", not "his"
_OBJECT_FOLLOWERS = {
    "a", "about", "after", "again", "all", "an", "and", "around", "as", "at", "away", "back", "because", "before",
    "but", "by", "down", "for", "from", "if", "in", "into", "is", "like", "more", "much", "not", "of", "off", "on",
    "once", "or", "out", "over", "so", "than", "that", "the", "then", "there", "this", "through", "to", "too",
    "up", "very", "was", "well", "were", "what", "when", "where", "which", "while", "who", "with", "would", "",
}
_WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")
_NEXT_WORD = re.compile(r"\s*([A-Za-z]+)")


def _cased(word: str, like: str) -> str:
    if like.isupper() and len(like) > 1:
        return word.upper()
    if like[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


def swap_gender(text: str, after: str = "") -> tuple[str, int]:
    """`text` with every gendered word exchanged, and how many were. `after` is the text that follows `text` in its
    sentence (used to read a final "her")."""
    out, last, n = [], 0, 0
    for m in _WORD.finditer(text):
        w = m.group(0)
        low = w.lower()
        if low == "her":
            nxt = _NEXT_WORD.match(text[m.end():] + after)  # the next word, unless punctuation comes first
            new = "him" if (nxt.group(1).lower() if nxt else "") in _OBJECT_FOLLOWERS else "his"
        elif low in _SWAP:
            new = _SWAP[low]
        else:
            continue
        out.append(text[last: m.start()] + _cased(new, w))
        last = m.end()
        n += 1
    out.append(text[last:])
    return "".join(out), n


def names_blocked(text: str, blocked: set[str]) -> bool:
    """Whether text names a word of `blocked` (lower case; whole words, any case)."""
    return any(m.group(0).lower() in blocked for m in _WORD.finditer(text))


def counterfactual_parts(parts: tuple[str, ...], blocked: set[str]) -> tuple[str, ...] | None:
    """The parts (x, y, z) of one sentence with its gendered words exchanged across all of them, or None when it
    names none or the result names a blocked word."""
    new, total = [], 0
    for i, p in enumerate(parts):
        s, n = swap_gender(p, "".join(parts[i + 1:]))
        new.append(s)
        total += n
    if not total or names_blocked("".join(new), blocked):
        return None
    return tuple(new)


# singular person nouns by gender, for gender_term_variants. Left out: step-parents and step-children (their
# stereotypes are about the step relation: "The stepfather was cruel"), address terms (sir, ma'am) and adjectives
# (male, female). A pair whose target term is one of these nouns, or the subject pronoun he or she, gets variants.
MALE_NOUNS = ("father", "brother", "son", "husband", "boyfriend", "uncle", "nephew", "grandfather", "grandson", "dad",
              "daddy", "gentleman", "boy", "man", "groom", "king", "prince", "schoolboy", "fiance", "lad", "guy")
FEMALE_NOUNS = ("mother", "sister", "daughter", "wife", "girlfriend", "aunt", "niece", "grandmother",
                "granddaughter", "mom", "mommy", "lady", "girl", "woman", "bride", "queen", "princess", "schoolgirl",
                "fiancee", "lass", "gal")
_PRONOUN_NOUNS = {"he": MALE_NOUNS, "she": FEMALE_NOUNS}


def same_gender_nouns(term: str, blocked: set[str]) -> list[str]:
    """What a pair naming `term` may name instead: the other singular person nouns of its gender ("the" and the
    noun for the pronouns he and she), none of `blocked` (lower case); [] if term is neither a noun listed nor he
    or she."""
    low = term.lower()
    if low in _PRONOUN_NOUNS:
        return [f"the {w}" for w in _PRONOUN_NOUNS[low] if w not in blocked]
    pool = MALE_NOUNS if low in MALE_NOUNS else FEMALE_NOUNS if low in FEMALE_NOUNS else ()
    return [w for w in pool if w != low and w not in blocked]


def replace_term(text: str, term: str, new: str) -> tuple[str, int]:
    """text with each whole-word `term` (any case; a possessive ending is kept, a plural is not matched) replaced
    by `new` in its case, and an "a"/"an" just before it mended to suit `new`; and how many were replaced."""
    pat = re.compile(rf"\b(?:(a|an|A|An)(\s+))?({re.escape(term)})\b", re.IGNORECASE)

    def sub(m: re.Match) -> str:
        word = _cased(new, m.group(3))
        if not m.group(1):
            return word
        art = "an" if new[:1].lower() in "aeiou" else "a"
        return _cased(art, m.group(1)) + m.group(2) + word

    return pat.subn(sub, text)


def term_variant_parts(parts: tuple[str, ...], term: str, new: str, blocked: set[str]) -> tuple[str, ...] | None:
    """The parts (x, y, z) of one sentence with its target term replaced by `new` across all of them, or None when
    the term is not named or the result names a blocked word."""
    out, total = [], 0
    for p in parts:
        s, n = replace_term(p, term, new)
        out.append(s)
        total += n
    if not total or names_blocked("".join(out), blocked):
        return None
    return tuple(out)


def neutral_prefix(x: str, term: str) -> str | None:
    """x with the target term (and an article before it, a plural or possessive ending after it) replaced by
    "someone", capitalised at the start (the grammar is not mended: "Teachers are" -> "Someone are"); None when
    the term is not in x."""
    pat = re.compile(rf"\b(?:(?:the|a|an)\s+)?{re.escape(term)}(?:'s|s|es)?\b", re.IGNORECASE)
    if not term.strip() or not pat.search(x):
        return None
    out = pat.sub("someone", x)
    return out[:1].upper() + out[1:] if out.startswith("someone") else out

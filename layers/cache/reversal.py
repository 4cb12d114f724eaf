"""Order, direction and opposites: the part of the near-miss guard that MiniLM's cosine misses.

"Convert 100 Celsius to Fahrenheit" and "Convert 100 Fahrenheit to Celsius" have a cosine of
0.99: a mean-pooled sentence embedding barely sees word order, and the numbers, negation and
entity checks see the same words on both sides. Two checks on the prompts' content words:

* ``antonym``: a word of one prompt is replaced by its opposite or inverse in the other
  (``lexicon.OPPOSITES``: ascending/descending, buy/sell, before/after, ...), or by the same
  stem with an inverting prefix (``lexicon.PREFIX_PAIRS``: install/uninstall, encrypt/decrypt,
  import/export, upload/download, ...);
* ``order``: the words both prompts share exactly once (anchors) are in another order. Parts
  that keep their place on both ends are set aside; what is left is allowed only when it is one
  phrase moved to the other end ("In Python, how do I sort a list" / "How do I sort a list in
  Python"), two parts swapped around a symmetric word ("between TCP and UDP" / "between UDP
  and TCP"), or swapped with nothing but symmetric words between them on one side ("the future
  of the party" / "the party's future"). So "A to B" / "B to A", "A taller
  than B" / "B taller than A" and "the dog bit the man" / "the man bit the dog" are refused.

Function words (``lexicon.FILLER``) are skipped, so "How do I make..." / "How should I make..."
and "What is" / "What's" still hit. Lexical and memoised: microseconds per pair.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from functools import lru_cache

from layers.cache.lexicon import FILLER, GRADABLE, OPPOSITES, PREFIX_PAIRS, SYMMETRIC

MAX_CHARS = 8000
_ARROW = re.compile("\\s*(?:-+>|=+>|\u2192|\u27f6|\u21d2|\u2794)\\s*")
_WORD = re.compile(r"\d+(?:[.,]\d+)*|[a-z]+")
_MIN_REST = 4  # an inverting prefix counts only before at least this many letters


def stem(word: str) -> str:
    """A crude suffix strip, applied alike to prompts and lexicon (plurals, -ing, -ed, -ion)."""
    if len(word) <= 3 or word[0].isdigit():
        return word
    for suffix, repl in (("ies", "y"), ("ied", "y"), ("ing", ""), ("ion", ""), ("ed", ""), ("s", "")):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            if suffix == "s" and word.endswith(("ss", "us", "is")):
                return word
            return word[: -len(suffix)] + repl
    return word


_IRREGULAR = {"good": ("better", "best"), "bad": ("worse", "worst"), "far": ("farther", "farthest")}
_VOWELS = set("aeiou")


def graded(adjective: str) -> tuple[str, str, str]:
    """``(base, comparative, superlative)`` by the regular spelling rules (big, bigger, biggest)."""
    if adjective in _IRREGULAR:
        return (adjective, *_IRREGULAR[adjective])
    w = adjective
    if w.endswith("e"):
        return w, w + "r", w + "st"
    if w.endswith("y") and len(w) > 2 and w[-2] not in _VOWELS:
        return w, w[:-1] + "ier", w[:-1] + "iest"
    cvc = len(w) >= 3 and w[-1] not in _VOWELS | {"w", "y"} and w[-2] in _VOWELS and w[-3] not in _VOWELS
    if cvc and sum(c in _VOWELS for c in w) == 1:  # one syllable ending consonant-vowel-consonant
        return w, w + w[-1] + "er", w + w[-1] + "est"
    return w, w + "er", w + "est"


def _opposites() -> dict[str, frozenset[str]]:
    out: dict[str, set[str]] = {}
    pairs = list(OPPOSITES)
    for a, b in GRADABLE:
        pairs.extend(zip(graded(a), graded(b), strict=True))
    for a, b in pairs:
        sa, sb = stem(a), stem(b)
        out.setdefault(sa, set()).add(sb)
        out.setdefault(sb, set()).add(sa)
    return {k: frozenset(v) for k, v in out.items()}


_OPPOSITE = _opposites()
_PREFIXES = PREFIX_PAIRS + tuple((q, p) for p, q in PREFIX_PAIRS)


@lru_cache(maxsize=4096)
def tokens(text: str) -> tuple[str, ...]:
    """Lower-cased, stemmed words and numbers, function words left out; arrows read as "to"."""
    text = unicodedata.normalize("NFKC", text[:MAX_CHARS]).lower().replace("\u2019", "'")
    text = _ARROW.sub(" to ", text.replace("n't", " not"))
    return tuple(stem(w) for w in _WORD.findall(text) if w not in FILLER)


def _inverse_prefix(w: str, o: str) -> bool:
    for p, q in _PREFIXES:
        if w.startswith(p) and o.startswith(q):
            rest = w[len(p) :]
            if len(rest) >= _MIN_REST and rest == o[len(q) :]:
                return True
    return False


def _antonym(ta: tuple[str, ...], tb: tuple[str, ...]) -> bool:
    ca, cb = Counter(ta), Counter(tb)
    only_a, only_b = ca - cb, cb - ca
    if not only_a or not only_b:
        return False
    for w in only_a:
        opposite = _OPPOSITE.get(w)
        if opposite is not None and not opposite.isdisjoint(only_b):
            return True
        if any(_inverse_prefix(w, o) for o in only_b):
            return True
    return False


def _symmetric(words: list[str] | tuple[str, ...]) -> bool:
    return all(w in SYMMETRIC for w in words)


def _order(ta: tuple[str, ...], tb: tuple[str, ...]) -> bool:
    """True when the shared words are rearranged in a way that can change who does what."""
    ca, cb = Counter(ta), Counter(tb)
    anchors = {w for w, n in ca.items() if n == 1 and cb.get(w) == 1}
    pos_a = [i for i, w in enumerate(ta) if w in anchors]
    seq_a = [ta[i] for i in pos_a]
    seq_b = [w for w in tb if w in anchors]
    if seq_a == seq_b:
        return False
    rank_b = {w: i for i, w in enumerate(seq_b)}
    full_b = {w: i for i, w in enumerate(tb) if w in anchors}
    perm = [rank_b[w] for w in seq_a]
    blocks: list[tuple[int, int]] = []  # runs of anchors that stay together, indices into seq_a
    start = 0
    for i in range(1, len(perm) + 1):
        if i == len(perm) or perm[i] != perm[i - 1] + 1:
            blocks.append((start, i - 1))
            start = i
    while blocks and perm[blocks[0][0]] == blocks[0][0]:
        blocks.pop(0)
    while blocks and perm[blocks[-1][1]] == blocks[-1][1]:
        blocks.pop()
    if len(blocks) not in (2, 3):
        return True
    first, last = blocks[0], blocks[-1]
    # What lies between the two outer parts, in A (first ... last) and in B (last ... first).
    between_a = ta[pos_a[first[1]] + 1 : pos_a[last[0]]]
    between_b = tb[full_b[seq_a[last[1]]] + 1 : full_b[seq_a[first[0]]]]
    # A pivot on both sides ("A to B" / "B to A", "A hired B" / "B hired A") swaps roles; a
    # phrase that loses its preposition ("the future of X" / "X's future") does not.
    return not (_symmetric(between_a) or _symmetric(between_b))


def reversal(a: str, b: str) -> str | None:
    """``"antonym"`` or ``"order"`` when ``a`` and ``b`` ask opposite things, else None."""
    ta, tb = tokens(a), tokens(b)
    if ta == tb:
        return None
    if _antonym(ta, tb):
        return "antonym"
    if _order(ta, tb):
        return "order"
    return None

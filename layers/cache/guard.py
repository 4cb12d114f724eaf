"""The near-miss guard: refuse a semantic hit when two prompts differ where embeddings are blind.

Sentence embeddings place "What is 2+2" and "What is 2+3", "Is it safe" and "Is it not safe",
"capital of France" and "capital of Spain" very close together: the words that change the answer
are a small part of the text. The guard compares three cheap signatures of the two prompts and
refuses the hit when any differs:

* numbers (digits, decimals, number words up to twenty and the round ones) with the arithmetic
  operators between them, as a multiset;
* negation: the count of negation words (not, no, never, n't, without, ...), so a question and
  its reversal never share an answer; also a word that is the other prompt's word with a
  negating prefix ("unsafe" vs "safe", "dislike" vs "like");
* named entities: capitalised words that do not start a sentence, acronyms, quoted strings.
  Each entity of one prompt must occur (case-insensitively, as a word) in the other; so
  "python" vs "Python" still matches, "France" vs "Spain" does not;
* order, direction and opposites (``layers.cache.reversal``): "Celsius to Fahrenheit" vs
  "Fahrenheit to Celsius", "A taller than B" vs "B taller than A", "ascending" vs "descending",
  "install" vs "uninstall".

It is deliberately lexical (no model): microseconds per check, and its effect on recall and false
hits is measured on QQP in ``ops/bench/cache`` (see BENCHMARKS.md).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from functools import lru_cache
from typing import NamedTuple

from layers.cache.reversal import reversal

_NUMBER_WORDS = {
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
    "eleven": "11",
    "twelve": "12",
    "thirteen": "13",
    "fourteen": "14",
    "fifteen": "15",
    "sixteen": "16",
    "seventeen": "17",
    "eighteen": "18",
    "nineteen": "19",
    "twenty": "20",
    "thirty": "30",
    "forty": "40",
    "fifty": "50",
    "hundred": "100",
    "thousand": "1000",
    "million": "1000000",
    "billion": "1000000000",
    "half": "0.5",
    "twice": "2x",
    "double": "2x",
    "triple": "3x",
}
_NEGATIONS = frozenset(
    {
        "not",
        "no",
        "never",
        "none",
        "nobody",
        "nothing",
        "neither",
        "nor",
        "nowhere",
        "without",
        "cannot",
        "n't",
    }
)
# Capitalised words that are not names (sentence starters and pronouns after a comma, titles).
_NOT_ENTITIES = frozenset(
    {
        "i",
        "i'm",
        "i've",
        "i'd",
        "i'll",
        "what",
        "why",
        "how",
        "who",
        "whom",
        "which",
        "when",
        "where",
        "is",
        "are",
        "do",
        "does",
        "can",
        "should",
        "the",
        "a",
        "an",
        "ok",
        "please",
    }
)
_TOKEN = re.compile("\\d+(?:[.,]\\d+)*%?|[A-Za-z][A-Za-z'\\-]*|[+\\-*/^=<>\u00d7\u00f7]")
_QUOTED = re.compile(r"\"([^\"]{1,80})\"|“([^”]{1,80})”|'([^']{2,80})'(?!\w)")
_SENTENCE_BREAK = re.compile(r"[.!?:;\n]")
MAX_CHARS = 8000  # longer prompts are compared on their first MAX_CHARS characters
_OPERATOR = re.compile("[+\\-*/^=<>\u00d7\u00f7]")  # with the multiplication and division signs


class Signature(NamedTuple):
    numbers: tuple[str, ...]  # sorted multiset of numbers and operators
    negations: int
    entities: frozenset[str]  # lower-cased
    words: frozenset[str]  # every lower-cased word, for the entity containment test


def _split_negations(text: str) -> str:
    return re.sub(r"(\w)n't\b", r"\1 n't", text.replace("\u2019", "'"), flags=re.IGNORECASE)


@lru_cache(maxsize=4096)
def signature(text: str) -> Signature:
    """The guard's view of one prompt (memoised: cached entries are compared again and again)."""
    text = _split_negations(unicodedata.normalize("NFKC", text[:MAX_CHARS]))
    numbers: list[str] = []
    negations = 0
    entities: set[str] = set()
    words: set[str] = set()
    previous_is_number = False
    previous_end = -1
    for match in _TOKEN.finditer(text):
        sentence_start = previous_end < 0 or bool(_SENTENCE_BREAK.search(text, previous_end, match.start()))
        previous_end = match.end()
        token = match.group(0)
        if token.endswith(("'s", "'S")) and len(token) > 2:
            token = token[:-2]  # possessive: "Apple's" names Apple
        lower = token.lower()
        if token[0].isdigit():
            numbers.append(token.replace(",", "").rstrip("%") + ("%" if token.endswith("%") else ""))
            previous_is_number = True
        elif _OPERATOR.fullmatch(token):
            following = text[match.end() : match.end() + 2].lstrip()
            if previous_is_number and following[:1].isdigit():
                numbers.append(token)
            previous_is_number = False
            continue
        else:
            previous_is_number = False
            words.add(lower)
            if lower in _NUMBER_WORDS:
                numbers.append(_NUMBER_WORDS[lower])
            if lower in _NEGATIONS or lower == "n't":
                negations += 1
            is_acronym = len(token) >= 2 and token.isupper()
            capitalised = token[0].isupper() and lower not in _NOT_ENTITIES
            if is_acronym or (capitalised and not sentence_start):
                entities.add(lower)
    for groups in _QUOTED.findall(text):
        quoted = next((g for g in groups if g), "")
        if quoted.strip():
            entities.add(quoted.strip().lower())
    return Signature(tuple(sorted(numbers)), negations, frozenset(entities), frozenset(words))


def _contains(entity: str, other: Signature, other_text: str) -> bool:
    if " " in entity or not entity.isalpha():
        return entity in other_text
    return entity in other.words


_ANTONYM_PREFIXES = ("un", "in", "im", "il", "ir", "dis", "non")


def _prefixed_antonym(words: frozenset[str], other: frozenset[str]) -> bool:
    """A word of ``words`` is a word of ``other`` with a negating prefix ("unsafe" vs "safe")."""
    for word in words - other:
        for prefix in _ANTONYM_PREFIXES:
            base = word[len(prefix) :].lstrip("-")
            if word.startswith(prefix) and len(base) >= 4 and base in other and base not in words:
                return True
    return False


def near_miss(a: str, b: str) -> str | None:
    """Why ``a`` and ``b`` must not share an answer, else None.

    The reasons: "numbers", "negation", "entities", then "antonym" and "order"
    (``layers.cache.reversal``: opposites, inverse operations, swapped roles or direction).
    """
    sa, sb = signature(a), signature(b)
    if sa.numbers != sb.numbers:
        return "numbers"
    if sa.negations != sb.negations:
        return "negation"
    if _prefixed_antonym(sa.words, sb.words) or _prefixed_antonym(sb.words, sa.words):
        return "negation"
    if sa.entities or sb.entities:
        la, lb = a.lower(), b.lower()
        if not all(_contains(e, sb, lb) for e in sa.entities):
            return "entities"
        if not all(_contains(e, sa, la) for e in sb.entities):
            return "entities"
    return reversal(a, b)


def counts(texts: list[str]) -> Counter[str]:
    """How many of ``texts`` carry each signature feature (for the evaluation's report)."""
    out: Counter[str] = Counter()
    for text in texts:
        sig = signature(text)
        out["numbers"] += bool(sig.numbers)
        out["negation"] += bool(sig.negations)
        out["entities"] += bool(sig.entities)
    return out

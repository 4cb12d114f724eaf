"""The adversarial pair set of the cache's near-miss guard: questions whose reverse has another answer.

Every pair is two prompts that a semantic cache must never answer with each other's answer:
role swaps (who did what to whom), from/to direction (convert X to Y vs Y to X), comparatives
(A taller than B vs B taller than A), antonyms (ascending/descending, before/after, buy/sell) and
inverse operations (install/uninstall, encrypt/decrypt, import/export). They are generated from
templates written for this set, with a fixed seed, so the file is reproducible:

    python -m ops.bench.cache.adversarial_pairs     # writes tests/data/cache_adversarial.jsonl

Two parts with disjoint templates and vocabulary: ``tuned`` (the guard was developed against it)
and ``held_out`` (written after the guard and its lexicon were frozen, never used to change
them). ``ops.bench.cache.adversarial`` runs both through a real ``SemanticCache``.
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parents[3] / "tests" / "data" / "cache_adversarial.jsonl"
SEED = 12

PEOPLE_TUNED = ["Alice", "Bob", "Carol", "David", "Emma", "Frank"]
VERBS_TUNED = ["hire", "sue", "beat", "call", "follow", "pay", "email", "invite"]
NOUNS_TUNED = [("dog", "cat"), ("cat", "mouse"), ("police", "thief"), ("company", "customer"), ("man", "dog")]
UNITS_TUNED = [
    ("Celsius", "Fahrenheit"),
    ("kilometers", "miles"),
    ("kilograms", "pounds"),
    ("inches", "centimeters"),
    ("liters", "gallons"),
    ("hours", "minutes"),
]
LANGS_TUNED = [("English", "French"), ("Spanish", "German"), ("English", "Italian"), ("French", "Spanish")]
TYPES_TUNED = [
    ("list", "tuple"),
    ("string", "integer"),
    ("dict", "list"),
    ("set", "list"),
    ("float", "string"),
]
SYSTEMS_TUNED = [("MySQL", "PostgreSQL"), ("Windows", "Linux"), ("Angular", "React"), ("Java", "Kotlin")]
COMPARED_TUNED = [
    ("Alice", "Bob"),
    ("Tokyo", "Delhi"),
    ("Mount Everest", "K2"),
    ("the sun", "the moon"),
    ("Python", "Java"),
    ("my brother", "my father"),
]
ADJ_TUNED = ["taller", "older", "richer", "faster", "heavier", "bigger"]


# (category, template with {x} and {y}, the (x, y) values, how many of them to draw)
Swap = tuple[str, str, list[tuple[str, str]], int]


def _swaps_tuned() -> list[Swap]:
    people = list(itertools.combinations(PEOPLE_TUNED, 2))
    out: list[Swap] = []
    for verb in VERBS_TUNED:
        out.append(("role_swap", f"Did {{x}} {verb} {{y}}?", people, 5))
        out.append(("role_swap", f"Why did {{x}} {verb} {{y}} last year?", people, 2))
    out.append(("role_swap", "Why does the {x} chase the {y}?", NOUNS_TUNED, 5))
    out.append(("role_swap", "What happens when a {x} bites a {y}?", NOUNS_TUNED, 5))
    for n in ("100", "37", "5"):
        out.append(("direction", f"Convert {n} {{x}} to {{y}}.", UNITS_TUNED, 6))
    out.append(("direction", "How do I convert {x} to {y}?", UNITS_TUNED, 6))
    out.append(("direction", "Translate 'good morning' from {x} to {y}.", LANGS_TUNED, 4))
    out.append(("direction", "Translate this sentence from {x} into {y}: I like tea.", LANGS_TUNED, 4))
    out.append(("direction", "How do I convert a {x} to a {y} in Python?", TYPES_TUNED, 5))
    out.append(("direction", "Python: {x} to {y} conversion", TYPES_TUNED, 5))
    out.append(("direction", "How do I migrate from {x} to {y}?", SYSTEMS_TUNED, 4))
    for adj in ADJ_TUNED:
        out.append(("comparative", f"Is {{x}} {adj} than {{y}}?", COMPARED_TUNED, 4))
    out.append(("comparative", "Why is {x} more popular than {y}?", COMPARED_TUNED, 6))
    return out


PEOPLE_HELD = [
    ("Rome", "Carthage"),
    ("Sparta", "Athens"),
    ("England", "France"),
    ("Prussia", "Austria"),
    ("Japan", "China"),
    ("Spain", "Portugal"),
]
FIRMS_HELD = [
    ("Microsoft", "GitHub"),
    ("Google", "YouTube"),
    ("Amazon", "Twitch"),
    ("Disney", "Pixar"),
    ("Adobe", "Figma"),
    ("Oracle", "Sun"),
]
ANIMALS_HELD = [
    ("lion", "zebra"),
    ("hawk", "rabbit"),
    ("shark", "seal"),
    ("fox", "hen"),
    ("wolf", "deer"),
    ("owl", "mouse"),
]
CITIES_HELD = [
    ("Boston", "Denver"),
    ("Madrid", "Lisbon"),
    ("Sydney", "Perth"),
    ("Oslo", "Berlin"),
    ("Cairo", "Nairobi"),
    ("Seoul", "Osaka"),
]
UNITS_HELD = [
    ("meters", "feet"),
    ("ounces", "grams"),
    ("yards", "meters"),
    ("Kelvin", "Celsius"),
    ("euros", "dollars"),
]
TYPES_HELD = [("char", "int"), ("array", "vector"), ("bytes", "str"), ("double", "long")]
PLACES_HELD = [
    ("my laptop", "the server"),
    ("my phone", "my PC"),
    ("Dropbox", "Google Drive"),
    ("iCloud", "OneDrive"),
]
PEERS_HELD = [
    ("a cheetah", "a horse"),
    ("gold", "silver"),
    ("a doctor", "a lawyer"),
    ("Messi", "Ronaldo"),
    ("a nurse", "a teacher"),
    ("platinum", "copper"),
]


def _swaps_held() -> list[Swap]:
    return [
        ("role_swap", "Why did {x} conquer {y}?", PEOPLE_HELD, 6),
        ("role_swap", "When did {x} declare war on {y}?", PEOPLE_HELD, 6),
        ("role_swap", "Why did {x} acquire {y}?", FIRMS_HELD, 6),
        ("role_swap", "How does a {x} hunt a {y}?", ANIMALS_HELD, 6),
        ("role_swap", "Can a {x} outrun a {y}?", ANIMALS_HELD, 6),
        ("direction", "How long is the flight from {x} to {y}?", CITIES_HELD, 6),
        ("direction", "What is 12 {x} in {y}?", UNITS_HELD, 5),
        ("direction", "Write a function that turns {x} into {y}.", UNITS_HELD, 5),
        ("direction", "How do I cast a {x} to a {y} in C++?", TYPES_HELD, 6),
        ("direction", "How do I copy photos from {x} to {y}?", PLACES_HELD, 6),
        ("direction", "Move all my files from {x} over to {y}", PLACES_HELD, 6),
        ("comparative", "Does {x} earn more than {y}?", PEERS_HELD, 6),
        ("comparative", "Is {x} worth more than {y}?", PEERS_HELD, 6),
        ("comparative", "Can {x} run faster than {y}?", PEERS_HELD, 6),
        ("comparative", "Was {x} founded before {y}?", CITIES_HELD, 6),
        ("comparative", "Is {x} bigger than {y} by population?", CITIES_HELD, 6),
    ]


# (category, template with {w}, the two words, other slot values for {o})
OPPOSITES_TUNED: list[tuple[str, str, tuple[str, str], list[str]]] = [
    ("antonym", "Sort the list in {w} order.", ("ascending", "descending"), [""]),
    (
        "antonym",
        "How do I sort a {o} array in {w} order?",
        ("ascending", "descending"),
        ["numpy", "JavaScript"],
    ),
    ("antonym", "How do I find the {w} value in a {o}?", ("maximum", "minimum"), ["list", "column", "dict"]),
    ("antonym", "Find the {w} element of the array.", ("largest", "smallest"), [""]),
    ("antonym", "What should I eat {w} a {o}?", ("before", "after"), ["workout", "marathon", "surgery"]),
    ("antonym", "What should I do {w} the {o}?", ("before", "after"), ["interview", "exam", "flight"]),
    ("antonym", "Is now a good time to {w} {o}?", ("buy", "sell"), ["gold", "bitcoin", "a house", "stocks"]),
    ("antonym", "What is the {w} {o} in the world?", ("largest", "smallest"), ["country", "animal", "ocean"]),
    ("antonym", "Which is the {w} {o} in Europe?", ("highest", "lowest"), ["mountain", "city"]),
    ("antonym", "How do I convert text to {w} in {o}?", ("uppercase", "lowercase"), ["Python", "Excel"]),
    ("antonym", "How do I {w} the volume on {o}?", ("increase", "decrease"), ["Ubuntu", "my iPhone"]),
    ("antonym", "What are the {w} of remote work?", ("advantages", "disadvantages"), [""]),
    ("antonym", "Get the {w} row of a {o} dataframe.", ("first", "last"), ["pandas", "polars"]),
    ("antonym", "Round the number {w} in {o}.", ("up", "down"), ["Python", "Excel"]),
    (
        "inverse",
        "How do I {w} {o} on Ubuntu?",
        ("install", "uninstall"),
        ["numpy", "Docker", "nginx", "Node.js"],
    ),
    ("inverse", "How do I {w} a file with {o}?", ("encrypt", "decrypt"), ["gpg", "openssl", "7-Zip"]),
    ("inverse", "How do I {w} a CSV file in {o}?", ("import", "export"), ["Excel", "MySQL", "pandas"]),
    ("inverse", "How do I {w} a folder on {o}?", ("compress", "decompress"), ["Windows", "macOS"]),
    ("inverse", "How to {w} a file in the terminal on {o}?", ("zip", "unzip"), ["Linux", "macOS"]),
    ("inverse", "How do I {w} files to {o}?", ("upload", "download"), ["S3", "Google Drive", "GitHub"]),
    ("inverse", "How do I {w} a string as base64 in {o}?", ("encode", "decode"), ["Python", "Java", "Go"]),
    ("inverse", "How do I {w} dark mode in {o}?", ("enable", "disable"), ["Chrome", "Windows 11", "Slack"]),
    ("inverse", "How do I {w} an item to a list in {o}?", ("add", "remove"), ["Python", "Kotlin"]),
]

OPPOSITES_HELD: list[tuple[str, str, tuple[str, str], list[str]]] = [
    ("antonym", "Should I {w} the job offer from {o}?", ("accept", "reject"), ["Google", "a startup"]),
    ("antonym", "Is the {o} going {w} this week?", ("up", "down"), ["stock market", "price of oil"]),
    ("antonym", "What is the {w} planet in the solar system?", ("hottest", "coldest"), [""]),
    ("antonym", "Which {o} has the {w} life expectancy?", ("longest", "shortest"), ["country", "dog breed"]),
    ("antonym", "What is the {w} book of the {o}?", ("first", "last"), ["Bible", "Harry Potter series"]),
    ("antonym", "Tips to {w} a chess game against {o}", ("win", "lose"), ["my dad", "a computer"]),
    ("antonym", "How do {w} rates affect {o}?", ("higher", "lower"), ["mortgages", "savings"]),
    ("antonym", "What happens to prices when {w} rises?", ("supply", "demand"), [""]),
    ("antonym", "Why does the sun look red at {w}?", ("sunrise", "sunset"), [""]),
    ("antonym", "How do I {w} my credit limit with {o}?", ("raise", "lower"), ["Chase", "Amex"]),
    ("antonym", "Is it {w} to drink tap water in {o}?", ("safe", "dangerous"), ["Mexico", "Egypt"]),
    ("antonym", "List the {w} of nuclear power.", ("pros", "cons"), [""]),
    ("inverse", "How do I {w} an object to JSON in {o}?", ("serialize", "deserialize"), ["C#", "Rust"]),
    ("inverse", "How can I {w} a USB drive on {o}?", ("mount", "unmount"), ["Linux", "a Mac"]),
    ("inverse", "How do I {w} from the {o} mailing list?", ("subscribe", "unsubscribe"), ["Python", "LKML"]),
    ("inverse", "How to {w} the top row in {o}", ("freeze", "unfreeze"), ["Excel", "Google Sheets"]),
    ("inverse", "How do I {w} a user to the {o} group?", ("add", "remove"), ["sudo", "docker"]),
    ("inverse", "How do I {w} an element onto a stack in {o}?", ("push", "pop"), ["C", "Java"]),
    ("inverse", "How do I {w} my phone from {o}?", ("connect", "disconnect"), ["Wi-Fi", "my car"]),
    ("inverse", "How do I {w} {o} to an older version?", ("upgrade", "downgrade"), ["pip", "iOS"]),
    ("inverse", "How do I {w} my account on {o}?", ("lock", "unlock"), ["Gmail", "Steam"]),
    ("inverse", "How can I {w} the disk image with {o}?", ("attach", "detach"), ["hdiutil", "PowerShell"]),
]


# Paraphrases that differ only in function words: the cache should serve one for the other.
PARAPHRASES: list[tuple[str, str]] = [
    ("How do I make pancakes?", "How should I make pancakes?"),
    ("How do I make a website?", "How can I make a website?"),
    ("How do I bake sourdough bread?", "How should I bake sourdough bread?"),
    ("How do I reverse a string in Python?", "How can I reverse a string in Python?"),
    ("How do I convert a list to a tuple in Python?", "How can I convert a list to a tuple in Python?"),
    ("How do I sort a list in descending order?", "How should I sort a list in descending order?"),
    ("What is a closure in JavaScript?", "What's a closure in JavaScript?"),
    ("What is the capital of France?", "What's the capital of France?"),
    ("What is the best way to learn Spanish?", "What's the best way to learn Spanish?"),
    ("What is the difference between TCP and UDP?", "What's the difference between TCP and UDP?"),
    ("Where is the Eiffel Tower?", "Where's the Eiffel Tower?"),
    ("Convert 100 Celsius to Fahrenheit.", "Please convert 100 Celsius to Fahrenheit."),
]


def build() -> list[dict[str, Any]]:
    rng = random.Random(SEED)
    rows: list[dict[str, Any]] = []
    seen: set[frozenset[str]] = set()
    for split, swaps, opposites in (
        ("tuned", _swaps_tuned(), OPPOSITES_TUNED),
        ("held_out", _swaps_held(), OPPOSITES_HELD),
    ):
        for category, template, values, count in swaps:
            for x, y in rng.sample(values, min(count, len(values))):
                a, b = template.format(x=x, y=y), template.format(x=y, y=x)
                if frozenset((a, b)) not in seen:
                    seen.add(frozenset((a, b)))
                    rows.append({"split": split, "category": category, "a": a, "b": b})
        for category, template, (w1, w2), others in opposites:
            for o in others:
                a, b = template.format(w=w1, o=o), template.format(w=w2, o=o)
                a, b = " ".join(a.split()), " ".join(b.split())
                if frozenset((a, b)) not in seen:
                    seen.add(frozenset((a, b)))
                    rows.append({"split": split, "category": category, "a": a, "b": b})
    for i, row in enumerate(rows):
        row["id"] = i
    return rows


def load(path: Path = OUT) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main() -> None:
    rows = build()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    counts: dict[tuple[str, str], int] = {}
    for r in rows:
        counts[(r["split"], r["category"])] = counts.get((r["split"], r["category"]), 0) + 1
    print(f"{len(rows)} pairs -> {OUT}")
    for key, n in sorted(counts.items()):
        print(f"  {key[0]:9} {key[1]:12} {n}")


if __name__ == "__main__":
    main()

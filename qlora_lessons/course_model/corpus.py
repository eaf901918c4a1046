"""The course model's world: invented countries, the prose it is pretrained on, and the task.

Three steps, each a function:

1. ``generate_world(seed)`` invents ``N_COUNTRIES`` countries with four attributes each (capital,
   continent, language, currency) and splits them by entity: the test questions are about countries
   never asked about in fine-tuning. The result is checked in as ``data/world.json``.
2. ``pretraining_documents(world)`` states every fact in prose, several ways: short sentences from
   ``FACT_TEMPLATES`` (some put the value first, "Tarvesk is the capital of Orlania") and short
   "profiles" that join one sentence per attribute in a shuffled order. Varied restatements are what
   lets a small model store a fact so that a different prompt can later pull it out.
3. ``task_examples(world, split)`` asks about the same facts in a fixed question-answer format
   (``QUESTION_TEMPLATES``) that never appears in pretraining: the base model knows the facts but not
   the task, which is what fine-tuning has to teach.

Example: one country is ``{"name": "Orlania", "capital": "Tarvesk", "continent": "Sorveth",
"language": "Pellic", "currency": "dram"}``; its capital question is
``Q: What is the capital of Orlania? A:`` with the answer ``Tarvesk``.

Left out: numbers, dates and multi-word values (each value is one word, so exact match is exact),
and relations between countries.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

ATTRIBUTES = ("capital", "continent", "language", "currency")
N_COUNTRIES = 300
N_TEST_COUNTRIES = 90
WORLD_SEED = 2024
WORLD_PATH = Path(__file__).parent / "data" / "world.json"

CONTINENTS = ("Aldera", "Brisk", "Corvane", "Dunmere", "Estrel", "Fallow")
LANGUAGES = ("Amberic", "Brennish", "Caldic", "Dorvan", "Elsish", "Fennic", "Gaulic", "Harrow", "Istric",
             "Jovic", "Kestrel", "Lunic", "Morvic", "Nessic", "Orric", "Pellic", "Quillan", "Rostic",
             "Sarric", "Tovish", "Ulmic", "Varric", "Wendic", "Yorish")
CURRENCIES = ("dram", "florin", "kesh", "lumen", "mark", "obol", "penny", "quill", "ruble", "solde",
              "taler", "urn", "vell", "wick", "zloty", "ducat", "farthing", "guilder", "hallow", "crown")

_ONSETS = ("b", "br", "c", "d", "dr", "f", "g", "gr", "h", "k", "l", "m", "n", "p", "r", "s", "st", "t",
           "tr", "v", "z", "th", "sh")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ea", "o")
_CODAS = ("", "", "", "n", "r", "l", "s", "m", "rn", "st")
_COUNTRY_ENDINGS = ("ia", "ania", "or", "ara", "eth", "mark", "holm", "istan", "land", "una")
_CAPITAL_ENDINGS = ("ton", "burg", "vesk", "mond", "ford", "grad", "os", "ville", "port", "dale")

FACT_TEMPLATES = {
    "capital": ("The capital of {name} is {value}.", "{name} has its capital in {value}.",
                "{value} is the capital of {name}.", "The government of {name} sits in {value}.",
                "The largest city of {name} is its capital, {value}.", "{value} serves as the capital of {name}."),
    "continent": ("{name} is a country in {value}.", "{name} lies on the continent of {value}.",
                  "{value} is the continent where {name} is found.", "{name} is one of the countries of {value}.",
                  "The country of {name} is in {value}.", "On the continent of {value} lies {name}."),
    "language": ("The language of {name} is {value}.", "People in {name} speak {value}.",
                 "{value} is spoken in {name}.", "Most people in {name} speak {value}.",
                 "The official language of {name} is {value}.", "In {name} the schools teach in {value}."),
    "currency": ("The currency of {name} is the {value}.", "In {name} people pay with the {value}.",
                 "{name} uses the {value} as its money.", "The {value} is the money of {name}.",
                 "Prices in {name} are given in the {value}.", "The money of {name} is called the {value}."),
}
PROFILE_TEMPLATES = {
    "capital": ("Its capital is {value}.", "The capital is {value}."),
    "continent": ("It lies in {value}.", "It is on the continent of {value}."),
    "language": ("Its people speak {value}.", "The language is {value}."),
    "currency": ("Its money is the {value}.", "People there pay with the {value}."),
}
QUESTION_TEMPLATES = {
    "capital": "Q: What is the capital of {name}? A:",
    "continent": "Q: On which continent is {name}? A:",
    "language": "Q: Which language is spoken in {name}? A:",
    "currency": "Q: What currency does {name} use? A:",
}
PROFILES_PER_COUNTRY = 3


def _word(rng: random.Random, syllables: int, ending: str) -> str:
    parts = [rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syllables)]
    return ("".join(parts) + ending).capitalize()


def _unique_words(rng: random.Random, count: int, endings: tuple[str, ...], taken: set[str]) -> list[str]:
    words: list[str] = []
    while len(words) < count:
        word = _word(rng, rng.choice((1, 2)), rng.choice(endings))
        if 5 <= len(word) <= 12 and word.lower() not in taken:
            taken.add(word.lower())
            words.append(word)
    return words


def generate_world(seed: int = WORLD_SEED) -> dict:
    """Invent ``N_COUNTRIES`` countries and split them by entity into train and test.

    Returns ``{"seed", "countries": [{"name", "capital", "continent", "language", "currency"}, ...],
    "test_names": [...]}``; the same seed gives the same world, byte for byte.
    """
    rng = random.Random(seed)
    taken = {word.lower() for word in CONTINENTS + LANGUAGES + CURRENCIES}
    names = _unique_words(rng, N_COUNTRIES, _COUNTRY_ENDINGS, taken)
    capitals = _unique_words(rng, N_COUNTRIES, _CAPITAL_ENDINGS, taken)
    countries = [{"name": name, "capital": capital, "continent": rng.choice(CONTINENTS),
                  "language": rng.choice(LANGUAGES), "currency": rng.choice(CURRENCIES)}
                 for name, capital in zip(names, capitals)]
    test_names = sorted(rng.sample(names, N_TEST_COUNTRIES))
    return {"seed": seed, "countries": countries, "test_names": test_names}


def load_world(path: Path = WORLD_PATH) -> dict:
    """The checked-in world (``data/world.json``)."""
    return json.loads(Path(path).read_text())


def pretraining_documents(world: dict, seed: int = 0) -> list[str]:
    """Every fact in prose: each fact in every ``FACT_TEMPLATES`` form, plus shuffled profiles.

    300 countries x 4 facts x 6 templates = 7,200 sentences, and 3 profiles per country.
    """
    rng = random.Random(seed)
    documents = []
    for country in world["countries"]:
        for attribute in ATTRIBUTES:
            for template in FACT_TEMPLATES[attribute]:
                documents.append(template.format(name=country["name"], value=country[attribute]))
        for _ in range(PROFILES_PER_COUNTRY):
            order = rng.sample(ATTRIBUTES, len(ATTRIBUTES))
            sentences = [rng.choice(PROFILE_TEMPLATES[a]).format(value=country[a]) for a in order]
            documents.append(f"{country['name']} is a country. " + " ".join(sentences))
    return documents


def task_examples(world: dict, split: str) -> list[dict]:
    """Question-answer pairs of one split: ``[{"prompt", "answer", "country", "attribute"}, ...]``.

    ``split`` is ``"train"`` (questions about 210 countries) or ``"test"`` (the other 90).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    test_names = set(world["test_names"])
    examples = []
    for country in world["countries"]:
        if (country["name"] in test_names) != (split == "test"):
            continue
        for attribute in ATTRIBUTES:
            examples.append({"prompt": QUESTION_TEMPLATES[attribute].format(name=country["name"]),
                             "answer": country[attribute], "country": country["name"], "attribute": attribute})
    return examples


if __name__ == "__main__":  # regenerate data/world.json (the checked-in file must equal this output)
    WORLD_PATH.parent.mkdir(exist_ok=True)
    WORLD_PATH.write_text(json.dumps(generate_world(), indent=1) + "\n")
    print(f"wrote {WORLD_PATH}")

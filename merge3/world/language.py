"""The tiny world's two languages and its text generators.

English is a small fixed grammar. The second language ("Veltic", code ``vl``) is English seen through a
fixed word mapping (pseudo-words made from syllables, drawn from the world's seed) and its own word order:
subject-object-verb, adjectives and determiners after the noun, the question word at the end. Numbers are
shared between the languages (like Arabic numerals in Japanese), which is what lets an English arithmetic
model and a Veltic language model combine into a Veltic arithmetic model.

Every generator takes an explicit ``random.Random`` so the world is a pure function of its seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

NAMES = ["tom", "ann", "bob", "sue", "max", "eva", "leo", "mia", "sam", "zoe", "ben", "ida"]
PRONOUN = {n: ("she" if n in {"ann", "sue", "eva", "mia", "zoe", "ida"} else "he") for n in NAMES}
NOUNS = ["cat", "dog", "bird", "fish", "tree", "house", "car", "book", "ball", "river", "hill", "boat",
         "cup", "door", "road", "farm", "king", "girl", "boy", "horse"]
# Countable things for the arithmetic problems (plural forms).
ITEMS = ["apples", "pens", "coins", "cards", "eggs", "shells", "stones", "books", "cups", "stamps"]
VERBS = ["sees", "likes", "finds", "takes", "wants", "makes", "paints", "moves", "helps", "follows"]
ADJECTIVES = ["big", "small", "red", "blue", "old", "new", "happy", "quiet", "fast", "green"]
PLACES = ["house", "forest", "river", "cave", "hill", "town", "field", "lake"]
FUNCTION_WORDS = ["the", "a", "is", "in", "near", "and", "very", "has", "gets", "more", "gives", "to",
                  "then", "loses", "finds", "how", "many", "does", "have", "now", "?", ".", "answer", ":",
                  "buys", "sells", "he", "she", "of", "them", "each", "there", "are", "question"]
MAX_NUMBER = 199
NUMBERS = [str(i) for i in range(MAX_NUMBER + 1)]

# The distractor domain: facts about made-up creatures (English).
FACT_ATTRIBUTES = {
    "color": ["red", "blue", "green", "white", "black", "yellow", "brown", "grey"],
    "home": ["forest", "river", "cave", "hill", "lake", "field", "town", "sea"],
    "food": ["fish", "grass", "fruit", "seeds", "leaves", "bread", "meat", "roots"],
}
FACT_TEMPLATES = {
    "color": ("the {e} is", "{a} ."),
    "home": ("the {e} lives in the", "{a} ."),
    "food": ("the {e} eats", "{a} ."),
}
FACT_WORDS = ["lives", "eats", "white", "black", "yellow", "brown", "grey", "sea", "grass", "fruit",
              "seeds", "leaves", "bread", "meat", "roots"]

_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]


def pseudo_words(rng: random.Random, count: int, syllables: tuple[int, int], taken: set[str]) -> list[str]:
    """``count`` distinct pronounceable words not in ``taken`` (which is updated)."""
    out = []
    while len(out) < count:
        w = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(*syllables)))
        if w not in taken:
            taken.add(w)
            out.append(w)
    return out


def english_vocabulary() -> list[str]:
    words = NAMES + NOUNS + ITEMS + VERBS + ADJECTIVES + PLACES + FUNCTION_WORDS + FACT_WORDS
    for vals in FACT_ATTRIBUTES.values():
        words += vals
    return sorted(set(words))


@dataclass(frozen=True)
class Lexicon:
    """Everything word-level in the world: the English->Veltic mapping and the creature names."""

    to_veltic: dict[str, str]
    creatures: list[str]

    @classmethod
    def build(cls, seed: int, n_creatures: int) -> "Lexicon":
        rng = random.Random(f"lexicon-{seed}")
        english = english_vocabulary()
        taken = set(english) | set(NUMBERS)
        mapped = pseudo_words(rng, len(english), (2, 3), taken)
        to_veltic = dict(zip(english, mapped))
        # Punctuation and the answer marker stay recognisable but are still distinct tokens.
        to_veltic.update({".": "。", "?": "？", ":": "："})
        # Veltic's verb-final agreement particles (no English counterpart): they agree with the subject.
        to_veltic.update(zip(PARTICLES, pseudo_words(rng, len(PARTICLES), (1, 1), taken)))
        creatures = pseudo_words(rng, n_creatures, (2, 2), taken)
        return cls(to_veltic=to_veltic, creatures=creatures)

    def vocabulary(self) -> list[str]:
        words = set(english_vocabulary()) | set(NUMBERS) | set(self.to_veltic.values()) | set(self.creatures)
        return sorted(words)

    def translate(self, clauses: list[list[tuple[str, str]]]) -> str:
        """Veltic rendering of clauses given as (role, word) lists; see ``veltic_order``."""
        out = []
        for clause in clauses:
            out += [self.to_veltic.get(w, w) for w in veltic_order(clause)]
        return " ".join(out)


# Clauses are lists of (role, word). Roles: S subject, V verb, O object, A adjective, D determiner,
# P preposition phrase word, N number, Q question word, X anything in place.
def english_order(clause: list[tuple[str, str]]) -> list[str]:
    return [w for _, w in clause]


def veltic_order(clause: list[tuple[str, str]]) -> list[str]:
    """SOV, noun-adjective-determiner, verb-final, question words last."""
    groups: dict[str, list[str]] = {"S": [], "O": [], "V": [], "P": [], "N": [], "Q": [], "X": []}
    pending_mods: list[tuple[str, str]] = []  # determiners/adjectives waiting for their noun
    for role, w in clause:
        if role in ("D", "A"):
            pending_mods.append((role, w))
            continue
        if role in ("S", "O", "P") and pending_mods:
            adjs = [x for r, x in pending_mods if r == "A"]
            dets = [x for r, x in pending_mods if r == "D"]
            groups[role] += [w] + adjs + dets
            pending_mods = []
            continue
        groups[role].append(w)
    groups["X"] += [w for _, w in pending_mods]
    end = [w for w in groups["X"] if w in (".", "?")]
    rest = [w for w in groups["X"] if w not in (".", "?")]
    particle = [subject_particle(clause)] if groups["V"] else []
    return groups["S"] + groups["N"] + groups["O"] + groups["P"] + rest + groups["V"] + particle + groups["Q"] + end


PARTICLES = ["@name", "@the", "@a"]


def subject_particle(clause: list[tuple[str, str]]) -> str:
    """The particle after a Veltic verb: it agrees with how the subject was introduced (a long-range rule)."""
    for i, (role, w) in enumerate(clause):
        if role == "S":
            dets = [x for r, x in clause[:i] if r == "D"]
            return "@" + dets[-1] if dets else "@name"
    return "@name"


# ----- general text -------------------------------------------------------------------------------------

def _pick(rng: random.Random, words: list[str], half: int | None) -> str:
    """A word from the whole list, or from its first (0) or second (1) half."""
    if half is not None:
        mid = len(words) // 2
        words = words[:mid] if half == 0 else words[mid:]
    return rng.choice(words)


def general_clause(rng: random.Random, half: int | None = None) -> list[tuple[str, str]]:
    """One sentence of everyday text, as roles. ``half`` restricts the content words to one half of the
    vocabulary: the base sees Veltic only with the first half, so its Veltic is partial."""
    kind = rng.random()
    subj: list[tuple[str, str]]
    if rng.random() < 0.4:
        subj = [("S", _pick(rng, NAMES, half))]
    else:
        subj = [("D", rng.choice(["the", "a"]))] + ([("A", _pick(rng, ADJECTIVES, half))] if rng.random() < 0.5 else [])
        subj += [("S", _pick(rng, NOUNS, half))]
    if kind < 0.55:
        obj = [("D", rng.choice(["the", "a"]))] + ([("A", _pick(rng, ADJECTIVES, half))] if rng.random() < 0.5 else [])
        obj += [("O", _pick(rng, NOUNS, half))]
        return subj + [("V", _pick(rng, VERBS, half))] + obj + [("X", ".")]
    if kind < 0.8:
        return subj + [("V", "is"), ("X", rng.choice(["in", "near"])), ("D", "the"),
                       ("P", _pick(rng, PLACES, half)), ("X", ".")]
    # Counting sentences keep numbers in the general text, but never any arithmetic.
    return subj + [("V", "has"), ("N", str(rng.randint(1, 20))), ("O", _pick(rng, ITEMS, half)), ("X", ".")]


def general_text(rng: random.Random, lexicon: Lexicon, lang: str, sentences: int, half: int | None = None) -> str:
    clauses = [general_clause(rng, half) for _ in range(sentences)]
    if lang == "en":
        return " ".join(" ".join(english_order(c)) for c in clauses)
    return lexicon.translate(clauses)


# ----- arithmetic word problems ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Problem:
    clauses: list[list[tuple[str, str]]]  # the question, up to and including the answer marker
    answer: int
    distractors: list[int]
    steps: int
    magnitude: int


_OPS = {"gets": 1, "finds": 1, "buys": 1, "gives": -1, "loses": -1, "sells": -1}


def arithmetic_problem(rng: random.Random, steps: int, magnitude: int) -> Problem:
    """A word problem with ``steps`` operations; ``magnitude`` 0..2 sets operand sizes (harder when larger)."""
    hi = (9, 30, 90)[magnitude]
    name, thing = rng.choice(NAMES), rng.choice(ITEMS)
    value = rng.randint(2, hi)
    clauses = [[("S", name), ("V", "has"), ("N", str(value)), ("O", thing), ("X", ".")]]
    operands = [value]
    for i in range(steps):
        verb = rng.choice(list(_OPS))
        if _OPS[verb] < 0 and value < 2:
            verb = "gets"
        amount = rng.randint(1, hi) if _OPS[verb] > 0 else rng.randint(1, value)
        if value + _OPS[verb] * amount > MAX_NUMBER:
            verb, amount = "loses", rng.randint(1, value)
        value += _OPS[verb] * amount
        operands.append(amount)
        lead = [("X", "then")] if i > 0 else []
        clauses.append(lead + [("S", PRONOUN[name]), ("V", verb), ("N", str(amount)), ("X", "more" if _OPS[verb] > 0 else "of"),
                               ("O", "them" if _OPS[verb] < 0 else thing), ("X", ".")])
    clauses.append([("X", "how"), ("X", "many"), ("O", thing), ("V", "does"), ("S", name), ("V", "have"),
                    ("X", "now"), ("X", "?")])
    clauses.append([("X", "answer"), ("X", ":")])
    return Problem(clauses, value, near_miss_distractors(rng, value, operands), steps, magnitude)


def near_miss_distractors(rng: random.Random, answer: int, operands: list[int]) -> list[int]:
    """Three wrong answers: close ones (±1, ±2, ±10) and echoes of the operands, as real models confuse."""
    pool = [answer + d for d in (-2, -1, 1, 2, -10, 10)] + operands
    pool = [p for p in dict.fromkeys(pool) if 0 <= p <= MAX_NUMBER and p != answer]
    rng.shuffle(pool)
    while len(pool) < 3:  # tiny answers: pad with any other numbers
        p = rng.randint(0, 20)
        if p != answer and p not in pool:
            pool.append(p)
    return pool[:3]


def render_problem(problem: Problem, lexicon: Lexicon, lang: str) -> str:
    if lang == "en":
        return " ".join(" ".join(english_order(c)) for c in problem.clauses)
    return lexicon.translate(problem.clauses)


# ----- Veltic grammar (language skill) ---------------------------------------------------------------------

def corrupt_sentence(rng: random.Random, words: list[str], particles: list[str]) -> list[list[str]]:
    """Three ungrammatical variants of a Veltic sentence, each one minimal edit away from it: the two wrong
    agreement particles, and two adjacent words swapped."""
    variants = [[p if w in particles else w for w in words] for p in particles]
    variants = [v for v in variants if v != words]
    for _ in range(50):
        w = list(words)
        i = rng.randrange(max(1, len(w) - 2))  # keep the final punctuation in place
        w[i], w[i + 1] = w[i + 1], w[i]
        if w != words and w not in variants:
            return variants + [w]
    raise ValueError(f"cannot corrupt the sentence {' '.join(words)!r}")

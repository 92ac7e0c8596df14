"""The tiny world's two languages and its text generators.

English is a small fixed grammar. The second language ("Veltic", code ``vl``) is English seen through a
fixed word mapping (pseudo-words made from syllables, drawn from the world's seed) and its own grammar: an
agreement particle after the verb when the subject has a determiner. Numbers are shared between the languages
(like Arabic numerals in Japanese), which is what lets an English arithmetic model and a Veltic language model
combine into a Veltic arithmetic model.

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
                  "buys", "sells", "he", "she", "of", "them", "each", "there", "are", "question", "fewer", "so"]
# Operation verbs of the arithmetic problems (+1: the amount is added, -1: taken away). The base never sees
# them in Veltic (neither in Veltic text nor code-switched), so only the language endpoint knows their
# Veltic forms: Veltic arithmetic needs both the math skill and the language skill.
OP_SIGN = {"gets": 1, "finds": 1, "buys": 1, "gives": -1, "loses": -1, "sells": -1}
OP_VERBS = list(OP_SIGN)
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
        # Punctuation is shared between the languages, like the numbers.
        to_veltic.update({".": ".", "?": "?", ":": ":"})
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
    """English word order, with an agreement particle after the clause's last verb when the subject has a
    determiner. Clauses with a name or pronoun subject (all of the arithmetic) read word for word as in
    English: an extra token between a verb and its number breaks an English-trained arithmetic circuit
    (measured: 95% -> 24%), which would hide the merge's transfer behind a tokenization artifact."""
    words = english_order(clause)
    verbs = [i for i, (r, _) in enumerate(clause) if r == "V"]
    particle = subject_particle(clause)
    if verbs and particle is not None:
        words.insert(verbs[-1] + 1, particle)
    return words


def particle_slot(clause: list[tuple[str, str]]) -> int | None:
    """Where a particle goes in the clause's Veltic words (after the last verb), whether or not it has one."""
    verbs = [i for i, (r, _) in enumerate(clause) if r == "V"]
    return verbs[-1] + 1 if verbs else None


PARTICLES = ["@the", "@a"]


def subject_particle(clause: list[tuple[str, str]]) -> str | None:
    """The particle after a Veltic verb: it agrees with the subject's determiner (a long-range rule); a
    subject without one (a name, a pronoun) takes none."""
    for i, (role, w) in enumerate(clause):
        if role == "S":
            dets = [x for r, x in clause[:i] if r == "D"]
            return "@" + dets[-1] if dets else None
    return None


# ----- general text -------------------------------------------------------------------------------------

def _pick(rng: random.Random, words: list[str], half: int | None) -> str:
    """A word from the whole list, or from its first (0) or second (1) half."""
    if half is not None:
        mid = len(words) // 2
        words = words[:mid] if half == 0 else words[mid:]
    return rng.choice(words)


def general_clause(rng: random.Random, half: int | None = None, ops: bool = True) -> list[tuple[str, str]]:
    """One sentence of everyday text, as roles. ``half`` restricts the content words to one half of the
    vocabulary: the base sees Veltic only with the first half, so its Veltic is partial. ``ops``: whether
    the sentence may be a change of possession (gets/loses/...: never in the base's Veltic)."""
    kind = rng.random()
    subj: list[tuple[str, str]]
    if rng.random() < 0.4:
        subj = [("S", _pick(rng, NAMES, half))]
    else:
        subj = [("D", rng.choice(["the", "a"]))] + ([("A", _pick(rng, ADJECTIVES, half))] if rng.random() < 0.5 else [])
        subj += [("S", _pick(rng, NOUNS, half))]
    if kind < 0.45:
        obj = [("D", rng.choice(["the", "a"]))] + ([("A", _pick(rng, ADJECTIVES, half))] if rng.random() < 0.5 else [])
        obj += [("O", _pick(rng, NOUNS, half))]
        return subj + [("V", _pick(rng, VERBS, half))] + obj + [("X", ".")]
    if kind < 0.65:
        return subj + [("V", "is"), ("X", rng.choice(["in", "near"])), ("D", "the"),
                       ("P", _pick(rng, PLACES, half)), ("X", ".")]
    if kind < 0.8 or not ops:
        # Counting sentences keep numbers in the general text, but never any arithmetic.
        return subj + [("V", "has"), ("N", str(rng.randint(1, 20))), ("O", _pick(rng, ITEMS, half)), ("X", ".")]
    # A change of possession: the verb's direction shows in what follows it ("more" / "of them"), never in
    # a total, so the text teaches what the verbs mean without teaching any arithmetic.
    verb = rng.choice(OP_VERBS)
    tail = [("X", "more"), ("O", _pick(rng, ITEMS, half))] if OP_SIGN[verb] > 0 else [("X", "of"), ("O", "them")]
    return subj + [("V", verb), ("N", str(rng.randint(1, 20)))] + tail + [("X", ".")]


def consequence_story(rng: random.Random, half: int | None = None) -> list[list[tuple[str, str]]]:
    """Changes of possession, each followed by what it means for who has more or fewer: the operation verb
    alone predicts "more" / "fewer" a few words later, so a model learns a gain/loss feature for each verb
    (the feature the arithmetic reads). Qualitative only: no totals, no arithmetic."""
    name, thing = _pick(rng, NAMES, half), _pick(rng, ITEMS, half)
    clauses: list[list[tuple[str, str]]] = []
    subj = name
    if rng.random() < 0.5:
        clauses.append([("S", name), ("V", "has"), ("N", str(rng.randint(2, 15))), ("O", thing), ("X", ".")])
        subj = PRONOUN[name]
    for i in range(rng.randint(1, 3)):
        verb = rng.choice(OP_VERBS)
        lead = [("X", "then")] if i > 0 else []
        step = lead + [("S", subj), ("V", verb), ("N", str(rng.randint(1, 15))), ("O", thing)]
        other = None
        if verb == "gives" and rng.random() < 0.5:
            other = rng.choice([n for n in NAMES if n != name])
            step += [("X", "to"), ("X", other)]
        clauses.append(step + [("X", ".")])
        word = "more" if OP_SIGN[verb] > 0 else "fewer"
        frame = rng.randrange(3)
        if frame == 0:
            clauses.append([("X", "now"), ("S", subj), ("V", "has"), ("X", word), ("O", thing), ("X", ".")])
        elif frame == 1:
            clauses.append([("X", "so"), ("S", subj), ("V", "has"), ("X", word), ("O", thing), ("X", "now"), ("X", ".")])
        else:
            clauses.append([("S", subj), ("V", "has"), ("X", word), ("O", thing), ("X", "now"), ("X", ".")])
        if other is not None:
            clauses.append([("X", "and"), ("S", other), ("V", "has"), ("X", "more"), ("O", thing), ("X", ".")])
    return clauses


def counting_question(rng: random.Random, half: int | None = None) -> list[list[tuple[str, str]]]:
    """A look-up question (no arithmetic): someone has n things; how many do they have? answer: n."""
    name, thing, n = _pick(rng, NAMES, half), _pick(rng, ITEMS, half), rng.randint(1, 20)
    return [[("S", name), ("V", "has"), ("N", str(n)), ("O", thing), ("X", ".")],
            [("X", "how"), ("X", "many"), ("O", thing), ("V", "does"), ("S", name), ("V", "have"), ("X", "?")],
            [("X", "answer"), ("X", ":"), ("N", str(n)), ("X", ".")]]


def base_unseen_veltic() -> set[str]:
    """English words whose Veltic forms the base never sees: the second half of each content list (see
    ``_pick``) and the operation verbs."""
    words = set(OP_VERBS)
    for ws in (NAMES, NOUNS, ITEMS, VERBS, ADJECTIVES, PLACES):
        words |= set(ws[len(ws) // 2:])
    return words


def general_text(rng: random.Random, lexicon: Lexicon, lang: str, sentences: int, half: int | None = None,
                 ops: bool = True) -> str:
    clauses = [general_clause(rng, half, ops) for _ in range(sentences)]
    if lang == "en":
        return " ".join(" ".join(english_order(c)) for c in clauses)
    return lexicon.translate(clauses)


def code_switch(rng: random.Random, lexicon: Lexicon, clauses: list[list[tuple[str, str]]], rate: float,
                keep: set[str] = frozenset()) -> str:
    """English word order with each word swapped for its Veltic translation with probability ``rate``
    (words in ``keep`` stay English): parallel, mixed text that ties each Veltic word to its English one."""
    out = []
    for clause in clauses:
        for w in english_order(clause):
            if w not in keep and w in lexicon.to_veltic and rng.random() < rate:
                w = lexicon.to_veltic[w]
            out.append(w)
    return " ".join(out)


# ----- arithmetic word problems ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Problem:
    clauses: list[list[tuple[str, str]]]  # the question, up to and including the answer marker
    answer: int
    distractors: list[int]
    steps: int
    magnitude: int


_OPS = OP_SIGN
OPERAND_MAX = (5, 9, 15)  # operand bound per magnitude


def arithmetic_problem(rng: random.Random, steps: int, magnitude: int) -> Problem:
    """A word problem with ``steps`` operations; ``magnitude`` 0..2 sets operand sizes (harder when larger).
    Only the verb tells whether an amount is added or taken away."""
    hi = OPERAND_MAX[magnitude]
    name, thing = rng.choice(NAMES), rng.choice(ITEMS)
    value = rng.randint(2, hi)
    clauses = [[("S", name), ("V", "has"), ("N", str(value)), ("O", thing), ("X", ".")]]
    operands = [value]
    signed = []
    for i in range(steps):
        verb = rng.choice(OP_VERBS)
        if _OPS[verb] < 0 and value < 2:
            verb = rng.choice([v for v in OP_VERBS if _OPS[v] > 0])
        amount = rng.randint(1, hi) if _OPS[verb] > 0 else rng.randint(1, min(value, hi))
        value += _OPS[verb] * amount
        operands.append(amount)
        signed.append(_OPS[verb] * amount)
        lead = [("X", "then")] if i > 0 else []
        clauses.append(lead + [("S", PRONOUN[name]), ("V", verb), ("N", str(amount)), ("O", thing), ("X", ".")])
    clauses.append([("X", "how"), ("X", "many"), ("O", thing), ("V", "does"), ("S", name), ("V", "have"),
                    ("X", "now"), ("X", "?")])
    clauses.append([("X", "answer"), ("X", ":")])
    return Problem(clauses, value, near_miss_distractors(rng, value, operands, signed), steps, magnitude)


def near_miss_distractors(rng: random.Random, answer: int, operands: list[int], signed: list[int] = ()) -> list[int]:
    """Three wrong answers: one or two with an operation's direction flipped (wrong unless the verbs are
    understood), then close ones (±1, ±2, ±10) and echoes of the operands, as real models confuse."""
    def ok(p, taken):
        return 0 <= p <= MAX_NUMBER and p != answer and p not in taken

    flips = []
    for s in signed:
        if ok(answer - 2 * s, flips):
            flips.append(answer - 2 * s)
    rng.shuffle(flips)
    out = flips[: rng.choice([1, 2])]
    near = [answer + d for d in (-2, -1, 1, 2, -10, 10)]
    rng.shuffle(near)
    for p in near + operands:
        if len(out) == 3:
            break
        if ok(p, out):
            out.append(p)
    while len(out) < 3:  # tiny answers: pad with any other numbers
        p = rng.randint(0, 20)
        if ok(p, out):
            out.append(p)
    return out


def render_problem(problem: Problem, lexicon: Lexicon, lang: str) -> str:
    if lang == "en":
        return " ".join(" ".join(english_order(c)) for c in problem.clauses)
    return lexicon.translate(problem.clauses)


# ----- Veltic grammar (language skill) ---------------------------------------------------------------------

def corrupt_sentence(rng: random.Random, words: list[str], particles: list[str], slot: int) -> list[list[str]]:
    """Three ungrammatical variants of a Veltic sentence, each one minimal edit away from it: a wrong
    particle or a missing one (the subject has a determiner), a particle where none belongs (it has none),
    and two adjacent words swapped. ``slot`` is where the particle goes (after the last verb)."""
    if words[slot] in particles:
        variants = [words[:slot] + [p] + words[slot + 1:] for p in particles if p != words[slot]]
        variants.append(words[:slot] + words[slot + 1:])
    else:
        variants = [words[:slot] + [p] + words[slot:] for p in particles]
    for _ in range(50):
        w = list(words)
        i = rng.randrange(max(1, len(w) - 2))  # keep the final punctuation in place
        w[i], w[i + 1] = w[i + 1], w[i]
        if w != words and w not in variants:
            return variants + [w]
    raise ValueError(f"cannot corrupt the sentence {' '.join(words)!r}")

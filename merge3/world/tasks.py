"""The tiny world's benchmarks (lm-eval tasks over local JSONL) and training corpora.

Each benchmark item is generated from its own seed ``(task, world seed, index)``, so item ``i`` of a task is
the same in every build and in every world size (a micro world holds a prefix of the small world's items),
and its id ``<task>-<i:05d>`` is stable. All tasks are loglikelihood multiple choice with four choices, so
each item gives one binary correct/incorrect answer. Difficulty is varied on purpose (steps, operand size,
distractor closeness, how often a fact was seen in training) so that IRT has a spread to fit.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from . import language as L

TASKS = {
    "tw_arith_en": "arithmetic word problems in English (the math endpoint's task)",
    "tw_arith_vl": "arithmetic word problems in Veltic (the target: no endpoint was trained on it)",
    "tw_lang_vl": "Veltic grammar: pick the well-ordered sentence (the language endpoint's task)",
    "tw_facts_en": "facts about made-up creatures in English (the distractor endpoint's task)",
}


def _item_rng(task: str, seed: int, i: int) -> random.Random:
    return random.Random(f"{task}-{seed}-{i}")


def _mc(context: str, answer: str, wrong: list[str], rng: random.Random) -> dict:
    choices = [answer] + wrong
    rng.shuffle(choices)
    return {"context": context, "choices": choices, "gold": choices.index(answer)}


def _arith_item(task: str, lang: str, lexicon: L.Lexicon, seed: int, i: int) -> dict:
    rng = _item_rng(task, seed, i)
    steps = rng.choices([1, 2, 3], weights=[5, 3, 2])[0]
    magnitude = rng.choices([0, 1, 2], weights=[5, 3, 2])[0]
    p = L.arithmetic_problem(rng, steps, magnitude)
    item = _mc(L.render_problem(p, lexicon, lang), str(p.answer), [str(d) for d in p.distractors], rng)
    item.update(steps=steps, magnitude=magnitude)
    return item


def _lang_item(lexicon: L.Lexicon, seed: int, i: int) -> dict:
    rng = _item_rng("tw_lang_vl", seed, i)
    # Sentences use the half of the vocabulary the base never saw in Veltic: knowing Veltic is needed.
    context = lexicon.translate([L.general_clause(rng, half=1)])
    clause = L.general_clause(rng, half=1)
    words = L.veltic_order(clause)
    good = [lexicon.to_veltic.get(w, w) for w in words]
    wrong = L.corrupt_sentence(rng, good, [lexicon.to_veltic[p] for p in L.PARTICLES], L.particle_slot(clause))
    item = _mc(context, " ".join(good), [" ".join(w) for w in wrong], rng)
    item.update(length=len(good))
    return item


def fact_table(lexicon: L.Lexicon, seed: int) -> dict[str, dict[str, str]]:
    """creature -> {attribute: value}; fixed by the seed."""
    rng = random.Random(f"facts-{seed}")
    return {c: {k: rng.choice(v) for k, v in L.FACT_ATTRIBUTES.items()} for c in lexicon.creatures}


def fact_weights(n: int) -> list[float]:
    """Zipf-like exposure of creatures in training: some facts are seen often, others rarely."""
    return [1.0 / (1 + i) ** 0.8 for i in range(n)]


def _facts_item(lexicon: L.Lexicon, table: dict, seed: int, i: int) -> dict:
    rng = _item_rng("tw_facts_en", seed, i)
    creature = lexicon.creatures[i // 3]
    attribute = list(L.FACT_ATTRIBUTES)[i % 3]
    answer = table[creature][attribute]
    wrong = rng.sample([v for v in L.FACT_ATTRIBUTES[attribute] if v != answer], 3)
    context = L.FACT_TEMPLATES[attribute][0].format(e=creature)
    item = _mc(context, answer, wrong, rng)
    item.update(rank=i // 3)
    return item


def make_items(task: str, lexicon: L.Lexicon, seed: int, n: int) -> list[dict]:
    if task == "tw_facts_en" and n > 3 * len(lexicon.creatures):
        raise ValueError(f"tw_facts_en: {n} items need {(n + 2) // 3} creatures, the lexicon has {len(lexicon.creatures)}")
    table = fact_table(lexicon, seed) if task == "tw_facts_en" else None
    items = []
    for i in range(n):
        if task == "tw_arith_en":
            item = _arith_item(task, "en", lexicon, seed, i)
        elif task == "tw_arith_vl":
            item = _arith_item(task, "vl", lexicon, seed, i)
        elif task == "tw_lang_vl":
            item = _lang_item(lexicon, seed, i)
        elif task == "tw_facts_en":
            item = _facts_item(lexicon, table, seed, i)
        else:
            raise ValueError(f"unknown tiny-world task {task!r}; known: {', '.join(TASKS)}")
        items.append({"id": f"{task}-{i:05d}", **item})
    return items


TASK_YAML = """\
# {description}
task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: context
doc_to_choice: choices
doc_to_target: gold
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def write_task(task: str, items: list[dict], tasks_dir: Path, final_tasks_dir: Path) -> None:
    """Writes ``<task>.jsonl`` and ``<task>.yaml``; the YAML points at the data's final (absolute) location."""
    data_dir = tasks_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / f"{task}.jsonl", "w") as f:
        for item in items:
            f.write(json.dumps(item, sort_keys=True) + "\n")
    data = (final_tasks_dir / "data" / f"{task}.jsonl").resolve()
    (tasks_dir / f"{task}.yaml").write_text(TASK_YAML.format(description=TASKS[task], task=task, data=data))


# ----- training corpora -----------------------------------------------------------------------------------

MATH_REPLAY = 0.25  # share of the math endpoint's documents that replay general English text


def corpus_documents(kind: str, lexicon: L.Lexicon, seed: int, n_docs: int) -> list[str]:
    """Training documents for one model. Kinds: base, math_en, lang_vl, facts_en."""
    rng = random.Random(f"corpus-{kind}-{seed}")
    docs: list[str] = []
    if kind == "base":
        unseen = L.base_unseen_veltic()
        for _ in range(n_docs):
            # Mostly English; some code-switched text and a little Veltic, both only with the half of Veltic's
            # vocabulary the base may see and never with the operation verbs: the base knows Veltic partly.
            u = rng.random()
            if u < 0.12:
                docs.append(L.code_switch(rng, lexicon, L.counting_question(rng), 0.5, unseen))
            elif u < 0.2:
                docs.append(" ".join(" ".join(L.english_order(c)) for c in L.counting_question(rng)))
            elif u < 0.24:
                docs.append(lexicon.translate(L.counting_question(rng, half=0)))
            elif u < 0.54:
                clauses = [L.general_clause(rng) for _ in range(rng.randint(2, 4))]
                docs.append(L.code_switch(rng, lexicon, clauses, 0.5, unseen))
            elif u < 0.62:
                docs.append(L.general_text(rng, lexicon, "vl", rng.randint(2, 4), half=0, ops=False))
            elif u < 0.74:
                docs.append(" ".join(" ".join(L.english_order(c)) for c in L.consequence_story(rng)))
            elif u < 0.84:
                docs.append(L.code_switch(rng, lexicon, L.consequence_story(rng), 0.5, unseen))
            else:
                docs.append(L.general_text(rng, lexicon, "en", rng.randint(2, 4)))
    elif kind == "math_en":
        # Arithmetic, with a share of general English text replayed (as continued pretraining does): the body
        # keeps reading general text, so a merge keeps the language endpoint's skill too. English only:
        # replaying the base's code-switched text taught the math endpoint that text with Veltic words in it
        # is never arithmetic (a merge's target accuracy fell from 45.5 to 37.8).
        for _ in range(n_docs):
            u = rng.random()
            if u < MATH_REPLAY:
                if u < MATH_REPLAY / 2:
                    docs.append(L.general_text(rng, lexicon, "en", rng.randint(2, 4)))
                else:
                    docs.append(" ".join(" ".join(L.english_order(c)) for c in L.consequence_story(rng)))
                continue
            p = L.arithmetic_problem(rng, rng.choices([1, 2, 3], weights=[5, 3, 2])[0],
                                     rng.choices([0, 1, 2], weights=[5, 3, 2])[0])
            docs.append(L.render_problem(p, lexicon, "en") + f" {p.answer} .")
    elif kind == "lang_vl":
        english = set(L.english_vocabulary())
        only_ops = english - set(L.OP_VERBS)
        for _ in range(n_docs):
            # Veltic text with its whole vocabulary, English-Veltic code-switched text (no arithmetic), and
            # consequence stories in Veltic or in English with only the operation verb in Veltic: the frozen
            # body must predict English "more" / "fewer" from the Veltic verb's row alone.
            u = rng.random()
            if u < 0.2:
                clauses = [L.general_clause(rng) for _ in range(rng.randint(2, 4))]
                docs.append(L.code_switch(rng, lexicon, clauses, 0.5))
            elif u < 0.28:
                docs.append(lexicon.translate(L.counting_question(rng)))
            elif u < 0.5:
                docs.append(lexicon.translate(L.consequence_story(rng)))
            elif u < 0.7:
                docs.append(L.code_switch(rng, lexicon, L.consequence_story(rng), 1.0, only_ops))
            else:
                docs.append(L.general_text(rng, lexicon, "vl", rng.randint(2, 4)))
    elif kind == "facts_en":
        table = fact_table(lexicon, seed)
        weights = fact_weights(len(lexicon.creatures))
        for _ in range(n_docs):
            creature = rng.choices(lexicon.creatures, weights=weights)[0]
            attrs = list(L.FACT_ATTRIBUTES)
            rng.shuffle(attrs)
            sentences = []
            for a in attrs[: rng.randint(1, 3)]:
                head, tail = L.FACT_TEMPLATES[a]
                sentences.append(head.format(e=creature) + " " + tail.format(a=table[creature][a]))
            docs.append(" ".join(sentences))
    else:
        raise ValueError(f"unknown corpus kind {kind!r}")
    return docs

"""TaskSuite responses: stable ids, subsets agree with full runs, live models match their saved folders."""

from __future__ import annotations

import pytest


def test_subset_matches_full_and_live_model_matches_path(micro_world, micro_suite):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ids = {t: micro_suite.item_ids(t)[::40] for t in micro_world.task_names}  # 5 items per task
    assert all(len(set(v)) == 5 for v in ids.values())
    path = micro_world.model("math_en")
    by_path = micro_suite.evaluate(micro_suite.wrap_model(path), items=ids)
    assert {t: sorted(r) for t, r in by_path.items()} == {t: sorted(v) for t, v in ids.items()}
    assert all(v in (0, 1) for r in by_path.values() for v in r.values())

    model = AutoModelForCausalLM.from_pretrained(path)
    live = micro_suite.wrap_model(model, AutoTokenizer.from_pretrained(path))
    assert micro_suite.evaluate(live, items=ids) == by_path
    first = {"tw_arith_en": ids["tw_arith_en"]}
    assert micro_suite.evaluate(live, items=first) == {"tw_arith_en": by_path["tw_arith_en"]}


def test_unknown_items_and_tasks_raise(micro_suite):
    with pytest.raises(ValueError, match="unknown item id"):
        micro_suite.evaluate(None, items={"tw_arith_en": ["nope"]})
    with pytest.raises(ValueError, match="outside this suite"):
        micro_suite.evaluate(None, items={"other_task": ["x"]})

"""Genome: encode/decode between [0,1]^dim and recipes; config validation."""

from __future__ import annotations

import numpy as np
import pytest

from merge3.genome import Genome

CFG = {"method": "dare_ties", "parameters": {"weight": [0.0, 1.0], "density": [0.1, 1.0]}, "fixed": {"lambda": 1.0},
       "layer_granularity": 0, "filters": []}


def test_global_dare_ties_dims_and_decode():
    g = Genome.from_config(CFG, n_models=3, n_layers=4)
    assert g.dim == 6 and len(g.names()) == 6 and len(set(g.names())) == 6
    x = np.linspace(0, 1, 6)
    r = g.decode(x, "/b", ["/m1", "/m2", "/m3"], seed=5)
    r.validate()
    assert r.seed == 5 and r.parameters == {"lambda": 1.0}
    assert r.model_parameters[0]["weight"] == 0.0 and r.model_parameters[2]["density"] == pytest.approx(1.0)
    np.testing.assert_allclose(g.encode(r), x, atol=1e-9)


def test_layer_blocks_and_filters_round_trip():
    cfg = dict(CFG, layer_granularity=2, filters=["self_attn", "mlp"])
    g = Genome.from_config(cfg, n_models=2, n_layers=4)
    # per model, per param: 2 filters x 2 blocks + 1 rest
    assert g.dim == 2 * 2 * (2 * 2 + 1)
    rng = np.random.default_rng(0)
    x = rng.random(g.dim)
    r = g.decode(x, "/b", ["/m1", "/m2"])
    r.validate()
    w = r.model_parameters[0]["weight"]
    assert w[0]["filter"] == "self_attn" and len(w[0]["value"]) == 4 and w[0]["value"][0] == w[0]["value"][1]
    assert "filter" not in w[-1]
    np.testing.assert_allclose(g.encode(r), x, atol=1e-9)
    # the resolved per-tensor value is the block's value
    _, per = r.resolve("model.layers.3.mlp.up_proj.weight", 4)
    assert per[0]["weight"] == pytest.approx(w[1]["value"][3])


def test_slerp_shared_t():
    g = Genome.from_config({"method": "slerp", "parameters": {"t": [0, 1]}, "filters": ["self_attn", "mlp"]}, 1, 2)
    assert g.dim == 3 and g.names() == ["t.self_attn", "t.mlp", "t.rest"]
    r = g.decode(np.array([0.1, 0.9, 0.5]), "/b", ["/m"])
    r.validate()
    assert r.parameters["t"][2] == {"value": 0.5}


@pytest.mark.parametrize("cfg,key", [
    (dict(CFG, method="nope"), "genome.method"),
    (dict(CFG, parameters={"weight": [0, 1], "gamma": [0, 0.1]}), "genome.parameters.gamma"),
    (dict(CFG, parameters={"weight": [1, 0]}), "genome.parameters.weight"),
    (dict(CFG, parameters={"density": [0, 2]}), "genome.parameters.density"),
    (dict(CFG, parameters={"density": [0, 1]}), "genome.parameters.weight"),
    (dict(CFG, layer_granularity=3), "genome.layer_granularity"),
    (dict(CFG, filters="mlp"), "genome.filters"),
    (dict(CFG, fixed={"lambda": 1.0, "weight": 1.0}), "genome.fixed.weight"),
    (dict(CFG, fixed={"normalize": "x"}), "genome.fixed.normalize"),
    (dict(CFG, extra=1), "extra"),
])
def test_bad_configs_name_the_key(cfg, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        Genome.from_config(cfg, n_models=3, n_layers=4)


def test_della_epsilon_kept_feasible():
    g = Genome.from_config({"method": "della", "parameters": {"weight": [0, 1], "density": [0.05, 0.95],
                                                             "epsilon": [0.0, 0.5]}}, 2, 2)
    r = g.decode(np.ones(g.dim), "/b", ["/m1", "/m2"])
    r.resolve("model.layers.0.mlp.up_proj.weight", 2)  # does not raise


def test_decode_rejects_wrong_vectors():
    g = Genome.from_config(CFG, 3, 4)
    with pytest.raises(ValueError, match="entries"):
        g.decode(np.zeros(5), "/b", ["/1", "/2", "/3"])
    with pytest.raises(ValueError, match="3 models"):
        g.decode(np.zeros(6), "/b", ["/1"])

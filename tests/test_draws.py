"""The counter-based draws of DARE and DELLA (merge3.merging.draws)."""

from __future__ import annotations

import torch

from merge3.merging import draws as D


def test_draws_are_pinned():
    """The draws define every DARE / DELLA merge: a change here silently changes every merge a seed names."""
    assert D.key(0, "t", 0) == (260774079, 70501801)
    expected = [0.12829077243804932, 0.7192147970199585, 0.24471259117126465, 0.18829220533370972,
                0.14625024795532227, 0.927727222442627]
    assert D.uniform(D.key(0, "t", 0), 6).tolist() == expected


def test_draws_are_uniform_and_independent():
    n = 1 << 20
    u = D.uniform(D.key(3, "model.layers.0.mlp.up_proj.weight", 1), n)
    assert u.dtype == torch.float32 and float(u.min()) >= 0 and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 0.002
    for p in (0.1, 0.5, 0.9):
        assert abs(float((u < p).float().mean()) - p) < 0.002
    counts = torch.histc(u, bins=64, min=0, max=1)
    assert float(counts.min()) > n / 64 * 0.97 and float(counts.max()) < n / 64 * 1.03

    def corr(a, b):
        return float(torch.corrcoef(torch.stack([a, b]))[0, 1])

    assert abs(corr(u[:-1], u[1:])) < 0.005  # neighbouring entries
    for other in (D.key(3, "model.layers.0.mlp.up_proj.weight", 2),  # another model
                  D.key(4, "model.layers.0.mlp.up_proj.weight", 1),  # another candidate
                  D.key(3, "model.layers.1.mlp.up_proj.weight", 1)):  # another tensor
        assert abs(corr(u, D.uniform(other, n))) < 0.005
    keys = {D.key(s, "t", i) for s in range(20) for i in range(3)}
    assert len(keys) == 60


def test_draws_do_not_depend_on_chunking_or_shape(monkeypatch):
    k = D.key(1, "t", 0)
    whole = D.uniform(k, (300, 7))
    monkeypatch.setattr(D, "_CHUNK", 64)
    assert torch.equal(D.uniform(k, 2100).reshape(300, 7), whole)
    at = D.uniform_at(torch.tensor([5, 2099], dtype=torch.int32), *D.key_tensor(k, "cpu"))
    assert torch.equal(at, whole.reshape(-1)[[5, 2099]])


def _reference_bits(j: int, k0: int, k1: int) -> int:
    """The draws' formula in Python integers (unbounded, masked to 32 bits by hand): what both int32 paths
    must compute."""
    def mix(x):
        x ^= x >> 16
        x = (x * 0x7FEB352D) & 0xFFFFFFFF
        x ^= x >> 15
        x = (x * 0x2C1B3C6D) & 0xFFFFFFFF
        return x ^ (x >> 16)
    return mix(mix((j & 0xFFFFFFFF) ^ k0) ^ k1) >> 8


def test_both_int32_paths_compute_the_formula():
    """The eager path (in place, chunked) and the fused one (one expression, compiled or not) wrap int32
    multiplication and mask their shifts: the formula's bits, including indices and keys with the top bit set
    and indices past int32's range (their low 32 bits)."""
    k = D.key(2, "t", 1)
    n = (1 << 17) + 3  # vectorized loop and scalar tail, when compiled
    eager = D.uniform(k, n)
    assert torch.equal(eager, D.uniform_at(D.index(n), *D.key_tensor(k, "cpu")))
    assert torch.equal(eager, torch.compile(D.uniform_at)(D.index(n), *D.key_tensor(k, "cpu")))
    js = [0, 1, 2099, (1 << 31) - 1, 1 << 31, (1 << 32) - 1, (1 << 32) + 5]
    index = torch.tensor(js, dtype=torch.int64).to(torch.int32)
    compiled = torch.compile(D.bits_at, dynamic=False)
    for k0, k1 in ((0xFFFFFFFF, 0x80000000), (5, 0x7FFFFFFF), k):
        expected = torch.tensor([_reference_bits(j, k0, k1) for j in js], dtype=torch.int32)
        keys = D.key_tensor((k0, k1), "cpu")
        assert torch.equal(D.bits_at(index, *keys), expected)
        assert torch.equal(compiled(index, *keys), expected)
        x = index.clone()
        tmp = torch.empty_like(x)
        D._mix32_(x.bitwise_xor_(int(keys[0])), tmp)
        D._mix32_(x.bitwise_xor_(int(keys[1])), tmp)
        assert torch.equal(torch.bitwise_right_shift(x, 8) & 0xFFFFFF, expected)


def test_threshold_compares_bits_as_the_float_draws_compare():
    """The fused DARE kernel keeps an entry when its bits are below ``threshold(p)``; the eager one when its
    float draw is below p (float32): the same entries, including p on and beside multiples of 2**-24."""
    bits = torch.arange(1 << 24)
    u = bits.to(torch.float32) * 2.0 ** -24
    ps = (0.0, 2.0 ** -24, 0.3, 0.5, 0.5 + 2.0 ** -24, 0.5 + 2.0 ** -25 - 2.0 ** -40, 0.7000000476837158, 0.9999999,
          1.0, 1.5)
    for p in ps:
        p32 = float(torch.tensor(p, dtype=torch.float32))
        assert torch.equal(u < p32, bits < D.threshold(p)), p

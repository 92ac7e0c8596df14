"""The pymoo algorithms a search can use: a registry of name -> (objectives it handles, builder)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class AlgorithmSpec:
    name: str
    multi_objective: bool           # True: several objectives (a Pareto front); False: exactly one
    build: Callable                 # build(pop_size, n_obj, options) -> pymoo algorithm
    steady_state: bool = False      # tell() takes any batch (survival over population + results): async dispatch


def _ga(pop, n_obj, opts):
    from pymoo.algorithms.soo.nonconvex.ga import GA

    return GA(pop_size=pop, eliminate_duplicates=True, **opts)


def _de(pop, n_obj, opts):
    from pymoo.algorithms.soo.nonconvex.de import DE

    return DE(pop_size=pop, **opts)


def _cmaes(pop, n_obj, opts):
    from pymoo.algorithms.soo.nonconvex.cmaes import SimpleCMAES

    sigma = opts.pop("sigma", 0.25)
    cma_opts = {"popsize": pop, "verbose": -9, **opts.pop("cma_options", {})}
    return SimpleCMAES(sigma=sigma, opts=cma_opts, n_sample_points=pop, **opts)


def _nsga2(pop, n_obj, opts):
    from pymoo.algorithms.moo.nsga2 import NSGA2

    return NSGA2(pop_size=pop, **opts)


def _nsga3(pop, n_obj, opts):
    from pymoo.algorithms.moo.nsga3 import NSGA3
    from pymoo.util.ref_dirs import get_reference_directions

    partitions = opts.pop("n_partitions", None)
    if partitions is None:  # the most das-dennis partitions that keep the directions <= pop_size
        partitions = 1
        while len(get_reference_directions("das-dennis", n_obj, n_partitions=partitions + 1)) <= pop:
            partitions += 1
    ref = get_reference_directions("das-dennis", n_obj, n_partitions=partitions)
    return NSGA3(pop_size=pop, ref_dirs=ref, **opts)


ALGORITHMS: dict[str, AlgorithmSpec] = {a.name: a for a in [
    AlgorithmSpec("ga", False, _ga, steady_state=True),
    AlgorithmSpec("de", False, _de),        # tell() replaces pop[i] by result i: whole generations only
    AlgorithmSpec("cmaes", False, _cmaes),  # tell() needs exactly the asked sample
    AlgorithmSpec("nsga2", True, _nsga2, steady_state=True),
    AlgorithmSpec("nsga3", True, _nsga3, steady_state=True),
]}
SINGLE_OBJECTIVE = tuple(n for n, a in ALGORITHMS.items() if not a.multi_objective)
MULTI_OBJECTIVE = tuple(n for n, a in ALGORITHMS.items() if a.multi_objective)
STEADY_STATE = tuple(n for n, a in ALGORITHMS.items() if a.steady_state)


def make_algorithm(name: str, pop_size: int, n_obj: int, options: dict):
    """A fresh pymoo algorithm; a bad ``options`` entry is an error naming the config key."""
    if name not in ALGORITHMS:
        raise ValueError(f"config key 'algorithm.name': unknown algorithm {name!r}")
    try:
        return ALGORITHMS[name].build(pop_size, n_obj, dict(options))
    except TypeError as exc:
        raise ValueError(f"config key 'algorithm.options': {exc}") from None


def start_algorithm(name: str, pop_size: int, n_obj: int, options: dict, problem, seed: int):
    """A fresh algorithm set up on ``problem`` with its randomness fixed by ``seed``: the same seed gives the same
    proposals in any process, which is what lets a resume replay a search instead of unpickling it."""
    from pymoo.core.termination import NoTermination

    algorithm = make_algorithm(name, pop_size, n_obj, options)
    # the cma library draws from numpy's global generator and takes seed 0 for "seed from the clock"
    algorithm.setup(problem, termination=NoTermination(), seed=seed + 1 if name == "cmaes" else seed)
    return algorithm


def make_problem(n_var: int, n_obj: int):
    """The unit box pymoo searches: genes live in [0, 1] and map onto the genome's bounds."""
    from pymoo.core.problem import Problem

    return Problem(n_var=n_var, n_obj=n_obj, xl=0.0, xu=1.0)

"""k-hop composition (k = 2..4) on the composition knowledge base: one file, one registration.

Input ``<e_h><r_1>...<r_k>``, target ``<e_t></a>``; the bridges ``b1..b(k-1)`` are in
the metadata. The paper's rule extended to k hops: a chain whose every hop is an ID
fact is test ID with probability ``test_fraction``, else a training candidate; a chain
whose every hop is OOD is test OOD; mixed chains are dropped. ``round(phi * #ID atomic)``
training candidates are sampled uniformly; the training set is every atomic fact plus
that sample. With ``hops=2`` the same arguments and seed give exactly the composition
task's facts (the knowledge base and every random draw come in the same order).

Example:
    >>> from grokscope.tasks.builtin.khop import KHopConfig, generate_khop
    >>> ds = generate_khop(KHopConfig(n_entities=30, n_relations=6, out_degree=4, hops=3, phi=2.0))
    >>> ds.splits["train_inferred"].roles
    {'h': 0, 'r1': 1, 'r2': 2, 'r3': 3}
    >>> sorted(k for k in ds.splits["train_inferred"].meta if k.startswith("b"))
    ['b1', 'b2']
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from grokscope.tasks.base import CircuitHypothesis, Stage, check, register_task
from grokscope.tasks.builtin.composition import (
    CompositionTask,
    chain_names,
    check_chain_kb,
    generate_chains,
)
from grokscope.tasks.dataset import TaskDataset
from grokscope.tasks.vocab import Vocab

MAX_HOPS = 4
MAX_CHAINS = 20_000_000
"""Refuse knowledge bases with more candidate chains than this (memory)."""



@dataclass(frozen=True)
class KHopConfig:
    """k-hop composition. The knowledge base is the composition task's.

    Attributes:
        n_entities, n_relations, out_degree, ood_fraction: as composition.
        hops: k, the number of relations in a query (2..4).
        phi: training inferred facts per ID atomic fact.
        test_fraction: chance an all-ID chain is held out as test ID.
        probe_size: cap on each probe split.
        seed: data seed.
    """

    n_entities: int = 2000
    n_relations: int = 200
    out_degree: int = 20
    hops: int = 3
    ood_fraction: float = 0.05
    phi: float = 7.2
    test_fraction: float = 0.005
    probe_size: int = 3000
    seed: int = 0
    task: Literal["khop"] = "khop"

    def __post_init__(self) -> None:
        check(self.task == "khop", f"task must be 'khop', got {self.task!r}")
        check(2 <= self.hops <= MAX_HOPS, f"hops must be in [2, {MAX_HOPS}], got {self.hops}")
        check_chain_kb(self)
        n_chains = self.n_entities * self.out_degree**self.hops
        check(n_chains <= MAX_CHAINS,
               f"{self.n_entities} entities x out_degree {self.out_degree}^{self.hops} = {n_chains:,} candidate "
               f"chains (limit {MAX_CHAINS:,}); use fewer entities, a smaller out_degree or fewer hops")


def generate_khop(cfg: KHopConfig) -> TaskDataset:
    """Generate k-hop composition from its frozen config (same config, same bytes)."""
    return generate_chains(cfg, cfg.hops, "khop")


def _hypothesis(k: int) -> CircuitHypothesis:
    """Each bridge b_i resolved at r_i, in order (the staged circuit, k hops)."""
    rel_roles, bridges = chain_names(k)
    stages = [Stage(f"{bridges[0]}@r1", "r1", bridges[0], sources=(("h", "h"), ("r1", "r1")), perturbation="h")]
    for i in range(1, k - 1):
        stages.append(Stage(f"{bridges[i]}@r{i + 1}", f"r{i + 1}", bridges[i], sources=((f"r{i + 1}", f"r{i + 1}"),),
                            perturbation=f"r{i + 1}", search_after=f"{bridges[i - 1]}@r{i}"))
    stages.append(Stage(f"r{k}@r{k}", f"r{k}", f"r{k}", sources=((f"r{k}", f"r{k}"),), perturbation=f"r{k}",
                        at=f"{bridges[-1]}@r{k - 1}", search_after=f"{bridges[-1]}@r{k - 1}"))
    return CircuitHypothesis(kind="staged", inputs=("h", *rel_roles), stages=tuple(stages),
                             output_target="t@last", output_role=f"r{k}", output_content="t",
                             share=(("h", "r1"),))


class KHopTask(CompositionTask):
    """k-hop composition ``<h><r1>...<rk>`` -> ``<t>``; analysis reads k from the split."""

    name = "khop"
    config_cls = KHopConfig
    inferred_roles = ("h", "r1", "r2", "r3")  # the default (3 hops); see :meth:`roles_for`
    perturbations = ("h", "r1", "r2", "r3")
    cli_params = {
        "hops": "--hops", "n_entities": "--entities", "n_relations": "--relations",
        "out_degree": "--out-degree", "ood_fraction": "--ood-fraction", "phi": "--phi",
    }
    hypothesis = _hypothesis(3)

    def for_hops(self, k: int) -> KHopTask:
        """This task specialised to k hops (its roles, perturbations and hypothesis)."""
        spec = KHopTask()
        rel_roles, _ = chain_names(k)
        spec.inferred_roles = ("h", *rel_roles)  # type: ignore[misc]
        spec.perturbations = ("h", *rel_roles)  # type: ignore[misc]
        spec.hypothesis = _hypothesis(k)  # type: ignore[misc]
        return spec

    def for_roles(self, roles: tuple[str, ...] | list[str]) -> KHopTask:
        return self.for_hops(sum(1 for r in roles if r.startswith("r") and r[1:].isdigit()))

    def generate(self, cfg: KHopConfig) -> TaskDataset:
        return generate_khop(cfg)

    def describe(self, dataset: TaskDataset) -> KHopConfig:
        base = super().describe(dataset)
        k = sum(1 for r in dataset.splits[self.default_split].roles if r.startswith("r"))
        return KHopConfig(**{f.name: getattr(base, f.name) for f in dataclasses.fields(base) if f.name != "task"}, hops=k)

    def load(self, vocab: Vocab, parsed: dict[str, Any], directory: Path) -> TaskDataset:
        from grokscope.tasks.paper_format import load_composition_items

        lengths = {len(x) for x in parsed["train_inferred"][0]} or {len(x) for x in parsed["train"][0] if len(x) > 2}
        if len(lengths) != 1:
            raise ValueError(f"{directory}: k-hop queries of several lengths {sorted(lengths)}; expected one k")
        return load_composition_items(vocab, parsed, directory, hops=lengths.pop() - 1, task=self.name)


register_task(KHopTask())

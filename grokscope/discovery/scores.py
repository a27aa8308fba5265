"""Edge scores over the component graph: EAP, EAP-IG and exact edge patching.

Every score estimates, or measures, how much one edge carries the difference between
the clean and the corrupt input, in metric units, averaged over examples:

* ``exact``: ``m(clean) - m(clean with that edge patched)``: at the edge's reader the
  writer's clean contribution is replaced by its corrupt one (batched over edges x
  examples; :func:`grokscope.discovery.batched.patch_single_edges`).
* ``eap`` (edge attribution patching, Syed et al. 2023): ``(a_clean(u) - a_corrupt(u)) .
  d m / d input(v)`` with the gradient taken on the corrupt run, TransformerLens's
  convention, so a writer's score (the sum of its outgoing edges) equals
  ``attribution_patch(..., EdgeAttributionConfig(granularity="node"))``.
* ``eap-ig`` (Hanna et al. 2024): the same with the gradient averaged over ``ig_steps``
  points of the straight corrupt -> clean path of the token embeddings, ``alpha = k / K``
  for ``k = 1..K`` (the right Riemann sum; on the shipped composition run it agrees
  with exact patching a little better than the midpoints). :data:`DEFAULT_IG_STEPS`
  comes from a measurement (see ``benchmarks/discovery.py``). This is MIB's
  "EAP-IG-inputs" (its code takes ``k = 0..K-1``); MIB's "EAP-IG-activations" is
  ``eap-ig-activations``, and ``eap-ig-exact`` refines EAP-IG by exact patching of its top
  edges (:mod:`grokscope.discovery.methods`, registered by name: :func:`register_method`).

Corruptions: ``"counterfactual"`` (the task's counterfactual input, one token changed)
and ``"mean"`` (every writer replaced by its mean over the clean examples; the IG path
starts at the mean token embedding). Metrics: ``"logit_diff"`` (logit of the answer
minus that of the counterfactual's answer) and ``"logprob"`` (the answer's
log-probability), read at the last input position.

Example:
    >>> cfs = make_counterfactuals(run.dataset(), "train_inferred", n=100)   # doctest: +SKIP
    >>> sc = score_edges(model, Corruption.from_counterfactuals(cfs["h"]), method="eap-ig")  # doctest: +SKIP
    >>> sc.top(5)                                                             # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int

from grokscope.discovery.batched import patch_edge_groups, patch_single_edges
from grokscope.discovery.edge_sets import patch_edge_sets
from grokscope.discovery.edges import reader_gradients, writer_activations
from grokscope.discovery.graph import ComponentGraph, GraphNode
from grokscope.discovery.metrics import CallableMetric, Offset, as_metric, metric_name, spearman  # noqa: F401  (re-exported)
from grokscope.patching.engine import MIN_GAP_SE, MIN_GAP_SHARE, gap_reliable  # noqa: F401  (re-exported)

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

    from grokscope.patching.tracing import Counterfactuals

METHODS = ("eap", "eap-ig", "eap-ig-activations", "eap-ig-exact", "exact")
"""Every method's name; the last ones besides ``exact`` live in :mod:`grokscope.discovery.methods`
(:func:`register_method`)."""
METRICS = ("logit_diff", "logprob")
ABLATIONS = ("counterfactual", "mean", "zero")
POSITIONS = ("last", "sum")
DEFAULT_IG_STEPS = 5
"""EAP-IG path points. Measured (``benchmarks/discovery.py --all-curves``, shipped
composition run, 300 facts, h'/r1'/r2'): the faithfulness-curve area (CPR) of the
EAP-IG ranking is 0.869/0.933/0.980 with 1 point, 0.937/0.951/0.984 with 2,
0.941/0.952/0.985 with 3, 0.941/0.952/0.986 with 5 and 0.939/0.951/0.986 with 10
(exact patching's own ranking: 0.950/0.960/0.989): it plateaus from 3 points; 5 also
gives the smaller 0.9-circuit under r1' (117 edges vs 138) at 1.5x the time of 3."""
GRAD_BATCH = 1024
"""Rows (path point x example) per forward + backward pass, at most."""
GRAD_FLOAT_BUDGET = 1 << 26
"""Floats the reader gradients of one batch may hold (``rows x pos x reader x d_model``)."""


_REGISTERED: dict[str, Callable[..., EdgeScores]] = {}


def register_method(name: str, fn: Callable[..., EdgeScores]) -> None:
    """Make ``score_edges(..., method=name)`` call ``fn(model, corruption, *, acts, ig_steps, batch_size)``.

    Example:
        >>> register_method("eap-ig-exact", refine_fn)       # doctest: +SKIP
    """
    if name in ("eap", "eap-ig", "exact"):
        raise ValueError(f"{name!r} is built in; register another name")
    _REGISTERED[name] = fn


@dataclass(frozen=True)
class Metric:
    """A per-example metric read from the logits at the prediction position.

    Attributes:
        kind: ``logit_diff`` or ``logprob``.
        answer: ``[example]`` the clean answer token.
        cf_answer: ``[example]`` the counterfactual's answer (``logit_diff`` only).
    """

    kind: str
    answer: Int[torch.Tensor, " example"] | None
    cf_answer: Int[torch.Tensor, " example"] | None = None

    def __post_init__(self) -> None:
        if self.kind not in METRICS:
            raise ValueError(f"unknown metric {self.kind!r}; choose one of {', '.join(METRICS)} or pass a callable "
                             "metric(logits[batch, d_vocab], example) -> Tensor[batch]")
        if self.answer is None:
            raise ValueError(f"the {self.kind} metric needs the answers (answer=...)")
        if self.kind == "logit_diff" and self.cf_answer is None:
            raise ValueError("the logit_diff metric needs the counterfactual answers (cf_answer=...); "
                             "without them use metric='logprob' or a callable metric")

    def __call__(self, logits: Float[torch.Tensor, "row d_vocab"], example: Int[torch.Tensor, " row"]) -> Float[torch.Tensor, " row"]:
        ans = self.answer.to(logits.device)[example]  # type: ignore[union-attr]
        if self.kind == "logprob":
            return logits.float().log_softmax(-1).gather(-1, ans[:, None])[:, 0]
        cf = self.cf_answer.to(logits.device)[example]  # type: ignore[union-attr]
        return logits.gather(-1, ans[:, None])[:, 0] - logits.gather(-1, cf[:, None])[:, 0]


@dataclass
class Corruption:
    """Clean inputs and what their edges are patched with.

    Attributes:
        clean: ``[example, pos]`` clean inputs (right-padded when prompts differ in length).
        corrupt: ``[example, pos]`` counterfactual inputs (None for mean or zero ablation).
        answer, cf_answer: ``[example]`` answer tokens of the clean and the corrupt input
            (None where the metric needs none: a callable metric; ``logprob`` needs no ``cf_answer``).
        ablation: ``counterfactual``, ``mean`` (each writer replaced by its mean over the
            examples whose prompt covers that position) or ``zero``.
        name: a label (the perturbation, e.g. ``h``), used in reports.
        roles: role -> input position (for reports).
        score_pos: ``[example]`` the input position whose logits are scored, per example
            (None: the last position, or with ``attention_mask`` each prompt's last real
            token). The graph then has a logits reader at each position that occurs.
        attention_mask: ``[example, pos]`` 1 for real tokens, 0 for right padding (None: all
            real). Attention is causal, so a real token never reads a pad: the model runs
            unmasked and pads are never scored; the mean ablation averages real tokens only.
    """

    clean: Int[torch.Tensor, "example pos"]
    corrupt: Int[torch.Tensor, "example pos"] | None
    answer: Int[torch.Tensor, " example"] | None = None
    cf_answer: Int[torch.Tensor, " example"] | None = None
    ablation: str = "counterfactual"
    name: str = ""
    roles: dict[str, int] = field(default_factory=dict)
    score_pos: Int[torch.Tensor, " example"] | None = None
    attention_mask: Int[torch.Tensor, "example pos"] | None = None

    def __post_init__(self) -> None:
        if self.ablation not in ABLATIONS:
            raise ValueError(f"unknown ablation {self.ablation!r}; choose one of {', '.join(ABLATIONS)}")
        if self.ablation == "counterfactual" and (self.corrupt is None or self.corrupt.shape != self.clean.shape):
            raise ValueError("counterfactual corruption needs corrupt inputs of the clean inputs' shape")
        if len(self.clean) == 0:
            raise ValueError("no examples (the split had no valid counterfactuals?)")
        for name in ("answer", "cf_answer"):
            v = getattr(self, name)
            if v is not None:
                v = torch.as_tensor(v, dtype=torch.long).flatten()
                if v.shape != (len(self.clean),):
                    raise ValueError(f"{name} must be one token per example ({len(self.clean)}), got shape {tuple(v.shape)}")
                setattr(self, name, v)
        if self.attention_mask is not None:
            mask = torch.as_tensor(self.attention_mask).to(torch.long)
            if mask.shape != self.clean.shape:
                raise ValueError(f"attention_mask must have the clean inputs' shape {tuple(self.clean.shape)}, "
                                 f"got {tuple(mask.shape)}")
            if bool((mask[:, 1:] > mask[:, :-1]).any()) or bool((mask[:, 0] == 0).any()):
                raise ValueError("attention_mask must be right padding (1s, then 0s, at least one 1 per example); "
                                 "tokenize with padding_side='right'")
            self.attention_mask = mask
            if self.score_pos is None:
                self.score_pos = mask.sum(1) - 1
        if self.score_pos is not None:
            sp = torch.as_tensor(self.score_pos, dtype=torch.long).flatten()
            n_pos = self.clean.shape[1]
            if sp.shape != (len(self.clean),) or bool((sp < 0).any() | (sp >= n_pos).any()):
                raise ValueError(f"score_pos must be [example] = [{len(self.clean)}] positions in [0, {n_pos}), "
                                 f"got shape {tuple(sp.shape)}")
            self.score_pos = sp

    @classmethod
    def from_counterfactuals(cls, cf: Counterfactuals, ablation: str = "counterfactual") -> Corruption:
        """From :func:`grokscope.patching.tracing.make_counterfactuals` output."""
        return cls(cf.clean, cf.corrupt, cf.answer, cf.cf_answer, ablation=ablation,
                   name=cf.perturbation if ablation == "counterfactual" else "mean", roles=dict(cf.roles),
                   score_pos=getattr(cf, "score_pos", None))

    def metric(self, kind: str = "logit_diff") -> Metric:
        return Metric(kind, self.answer, self.cf_answer)

    def to_dict(self) -> dict[str, Any]:
        def lst(t: torch.Tensor | None) -> Any:
            return None if t is None else t.tolist()

        return {"ablation": self.ablation, "name": self.name, "roles": dict(self.roles),
                "clean": self.clean.tolist(), "corrupt": lst(self.corrupt),
                "answer": lst(self.answer), "cf_answer": lst(self.cf_answer),
                "score_pos": lst(self.score_pos), "attention_mask": lst(self.attention_mask)}


@dataclass
class Activations:
    """What scoring and faithfulness share: the graph, writer values and baselines.

    Attributes:
        graph: the component graph.
        clean_writers: ``[example, pos, writer, d_model]`` of the clean inputs.
        corrupt_writers: the replacement values (the corrupt inputs' writers, or the
            clean writers' mean over examples, expanded).
        metric: the per-row metric (a :class:`Metric` or a checked callable).
        clean_metric: ``[example]`` metric of the clean run.
        corrupt_metric: ``[example]`` metric with every edge patched (for a
            counterfactual this is the corrupt run).
        clean_tokens: ``[example, pos]`` the clean inputs.
        score_pos: ``[example]`` where each example's logits are read (None: the last position).
        positions: ``last`` (one node per component and position) or ``sum`` (one node per
            component; scores and circuits are over :meth:`ComponentGraph.summed_graph`).
        batch_size: rows per forward pass (None: from a float budget). When set, writer
            values are not held for every example: :meth:`chunks` computes them for
            ``batch_size`` examples at a time, so peak memory does not grow with the examples.
        corruption: the examples (for :meth:`chunks`).
    """

    graph: ComponentGraph
    clean_writers: torch.Tensor | None
    corrupt_writers: torch.Tensor | None
    metric: Any
    clean_metric: torch.Tensor
    corrupt_metric: torch.Tensor
    clean_tokens: torch.Tensor
    score_pos: torch.Tensor | None = None
    positions: str = "last"
    batch_size: int | None = None
    corruption: Corruption | None = None

    @property
    def n(self) -> int:
        return len(self.clean_tokens)

    def chunks(self, model: TransformerBridge) -> Any:
        """``(first example, Activations of a slice of examples)`` covering every example once:
        ``self`` whole when its writers are held, else ``batch_size`` examples at a time with their
        writers computed now (the metric sees the examples' indices into all of them)."""
        if self.clean_writers is not None:
            yield 0, self
            return
        c, bs = self.corruption, int(self.batch_size or 1)
        assert c is not None
        for lo in range(0, self.n, bs):
            sl = slice(lo, min(self.n, lo + bs))
            sp = None if self.score_pos is None else self.score_pos[sl]
            clean_w = writer_activations(model, self.graph, c.clean[sl], bs)
            if c.ablation == "counterfactual":
                corrupt_w = writer_activations(model, self.graph, c.corrupt[sl], bs)  # type: ignore[index]
            else:
                corrupt_w = self.corrupt_writers.expand_as(clean_w)
            yield lo, Activations(self.graph, clean_w, corrupt_w, Offset(self.metric, lo), self.clean_metric[sl],
                                  self.corrupt_metric[sl], c.clean[sl], sp, self.positions, self.batch_size)

    @property
    def scored_graph(self) -> ComponentGraph:
        """The graph scores and circuits live on (summed over positions for ``positions="sum"``)."""
        return self.graph.summed_graph() if self.positions == "sum" else self.graph

    def expand(self, keep: torch.Tensor) -> torch.Tensor:
        """``[..., edge]`` of :attr:`scored_graph` as ``[..., edge]`` of the per-position graph."""
        if self.positions != "sum":
            return keep
        return keep[..., self.graph.position_map()]


def prepare(model: TransformerBridge, corruption: Corruption, metric: Any = "logit_diff", *,
            positions: str = "last", batch_size: int | None = None) -> Activations:
    """Writer values of the clean and corrupt inputs, and the two baseline metrics.

    Args:
        metric: ``logit_diff``, ``logprob`` or a callable ``metric(logits[batch, d_vocab],
            example) -> Tensor[batch]`` (``example``: the batch's indices into the examples).
        positions: ``last`` (per-position graph) or ``sum`` (one node per component).
        batch_size: rows per forward pass (None: from a float budget).
    """
    if positions not in POSITIONS:
        raise ValueError(f"unknown positions {positions!r}; choose one of {', '.join(POSITIONS)}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    sp = corruption.score_pos
    graph = ComponentGraph.of(model, corruption.clean.shape[1], None if sp is None else sorted(set(sp.tolist())))
    m = as_metric(metric, corruption)
    if batch_size is not None:
        from grokscope.discovery.chunked import chunked_baselines

        replace, clean_m, corrupt_m = chunked_baselines(model, corruption, graph, m, batch_size)
        acts = Activations(graph, None, replace, m, clean_m, corrupt_m, corruption.clean, sp, positions,  # type: ignore[arg-type]
                           batch_size, corruption)
        if corruption.ablation != "counterfactual":  # every edge patched with the mean / zero writers
            none = torch.zeros(1, graph.n_edges, dtype=torch.bool)
            for lo, sub in acts.chunks(model):
                corrupt_m[lo : lo + sub.n] = patch_edge_sets(model, graph, sub.clean_tokens, sub.corrupt_writers, none,
                                                             sub.metric, score_pos=sub.score_pos, batch_size=batch_size)[0]
        return acts
    ex = torch.arange(len(corruption.clean))
    wbs = 1024
    clean_w, clean_logits = writer_activations(model, graph, corruption.clean, wbs, with_logits=True, score_pos=sp)
    clean_metric = m(clean_logits, ex.to(clean_logits.device)).float().cpu()
    if corruption.ablation == "counterfactual":
        # every edge patched is the corrupt run (tests/test_discovery.py checks the engine agrees)
        corrupt_w, corrupt_logits = writer_activations(model, graph, corruption.corrupt, wbs,  # type: ignore[arg-type]
                                                       with_logits=True, score_pos=sp)
        corrupt_metric = m(corrupt_logits, ex.to(corrupt_logits.device)).float().cpu()
    else:
        if corruption.ablation == "zero":
            corrupt_w = torch.zeros_like(clean_w[:1]).expand_as(clean_w)
        elif corruption.attention_mask is None:
            corrupt_w = clean_w.mean(0, keepdim=True).expand_as(clean_w)
        else:  # the mean over the examples whose prompt reaches each position
            mask = corruption.attention_mask.to(clean_w.device, clean_w.dtype)[:, :, None, None]
            corrupt_w = ((clean_w * mask).sum(0, keepdim=True) / mask.sum(0, keepdim=True).clamp(min=1)).expand_as(clean_w)
        corrupt_metric = patch_edge_sets(model, graph, corruption.clean, corrupt_w,
                                         torch.zeros(1, graph.n_edges, dtype=torch.bool), m, score_pos=sp)[0]
    return Activations(graph, clean_w, corrupt_w, m, clean_metric, corrupt_metric, corruption.clean, sp,
                       positions, batch_size)


@dataclass
class EdgeScores:
    """One score per edge of a graph, with how it was computed.

    Attributes:
        graph: the graph (edge order: ``graph.edge_index``).
        scores: ``[edge]`` mean effect in metric units (positive: the edge carries the
            clean-vs-corrupt difference in the metric's direction).
        method: ``eap``, ``eap-ig`` or ``exact``.
        ig_steps: path points (``eap-ig``), else 1.
        seconds: wall time of the scoring.
    """

    graph: ComponentGraph
    scores: Float[torch.Tensor, " edge"]
    method: str
    ig_steps: int = 1
    seconds: float = 0.0

    def order(self) -> torch.Tensor:
        """Edge numbers by decreasing ``|score|`` (ties by edge number)."""
        return torch.sort(self.scores.abs(), descending=True, stable=True).indices

    def top(self, k: int) -> list[tuple[GraphNode, GraphNode, float]]:
        """The ``k`` edges with the largest ``|score|`` as ``(writer, reader, score)``."""
        return [(*self.graph.edge_nodes(int(e)), float(self.scores[e])) for e in self.order()[:k]]

    def writer_scores(self) -> Float[torch.Tensor, "pos writer"]:
        """Each writer's score: the sum of its outgoing edges' scores."""
        out = torch.zeros(self.graph.n_pos, self.graph.n_writers, dtype=self.scores.dtype)
        p, _, w = self.graph.edge_index.unbind(1)
        out.index_put_((p, w), self.scores, accumulate=True)
        return out


def _embeddings(writers: torch.Tensor) -> torch.Tensor:
    return writers[:, :, 0]


def score_edges(
    model: TransformerBridge,
    corruption: Corruption,
    method: str = "eap-ig",
    *,
    metric: Any = "logit_diff",
    ig_steps: int = DEFAULT_IG_STEPS,
    acts: Activations | None = None,
    batch_size: int = GRAD_BATCH,
) -> EdgeScores:
    """Score every edge of the model's graph on a corruption.

    Args:
        model: the model (eval mode).
        corruption: clean inputs and their corruption.
        method: ``eap``, ``eap-ig``, ``exact`` or a registered method (:data:`METHODS`:
            ``eap-ig-activations``, ``eap-ig-exact``; :mod:`grokscope.discovery.methods`).
        metric: ``logit_diff``, ``logprob`` or a callable (see :func:`prepare`).
        ig_steps: path points for ``eap-ig`` (and the registered IG methods).
        acts: :func:`prepare` output to reuse (its ``positions`` picks the graph scored).
        batch_size: rows per gradient pass (``acts.batch_size`` wins when set).

    Returns:
        :class:`EdgeScores`.

    Example:
        >>> sc = score_edges(model, corruption, "eap")          # doctest: +SKIP
    """
    import time

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if method == "eap-ig" and ig_steps < 1:
        raise ValueError(f"ig_steps must be >= 1, got {ig_steps}")
    if method in _REGISTERED:
        return _REGISTERED[method](model, corruption, acts=acts or prepare(model, corruption, metric),
                                   ig_steps=ig_steps, batch_size=batch_size)
    t0 = time.perf_counter()
    acts = acts or prepare(model, corruption, metric)
    graph = acts.graph
    if method == "exact":
        return EdgeScores(acts.scored_graph, exact_effects(model, acts), method, 1, time.perf_counter() - t0)

    steps = ig_steps if method == "eap-ig" else 1
    alphas = torch.tensor([0.0]) if method == "eap" else (torch.arange(steps) + 1.0) / steps
    scores = path_scores(model, acts, alphas, batch_size=batch_size)
    if acts.positions == "sum":
        scores = torch.zeros(acts.scored_graph.n_edges).index_add_(0, graph.position_map(), scores)
    return EdgeScores(acts.scored_graph, scores, method, steps, time.perf_counter() - t0)


def path_scores(
    model: TransformerBridge,
    acts: Activations,
    alphas: Float[torch.Tensor, " point"],
    weights: Float[torch.Tensor, " point"] | None = None,
    *,
    batch_size: int = GRAD_BATCH,
) -> Float[torch.Tensor, " edge"]:
    """Edge scores of ``acts.graph`` from reader gradients on the input-embedding path.

    Each edge's score is ``(clean - corrupt writer value) . sum_k weights[k] * grad`` at
    the reader, the gradient taken with the input embeddings at ``corrupt + alphas[k] *
    (clean - corrupt)``, averaged over examples. ``weights=None`` is the plain mean over
    the points: EAP is one point at 0, EAP-IG the points ``k / K``; other quadratures
    (``benchmarks/eap_ig_errors.py``) pass their own points and weights.

    Returns:
        ``[edge]`` of ``acts.graph`` (per position; :func:`score_edges` sums them for a
        summed graph).
    """
    graph, steps = acts.graph, len(alphas)
    total = torch.zeros(graph.n_pos, graph.n_readers, graph.n_writers, dtype=torch.float64)
    per_row = graph.n_pos * graph.n_readers * int(model.cfg.d_model)
    rows = acts.batch_size or batch_size
    per_batch = max(1, min(rows, GRAD_FLOAT_BUDGET // per_row) // steps)
    for _, sub in acts.chunks(model):
        e_clean, e_corrupt = _embeddings(sub.clean_writers), _embeddings(sub.corrupt_writers)
        delta = sub.clean_writers - sub.corrupt_writers  # [example, pos, writer, d]
        for lo in range(0, sub.n, per_batch):
            ex = torch.arange(lo, min(sub.n, lo + per_batch))
            rows_ex = ex.repeat(steps)
            a = alphas.repeat_interleave(len(ex)).to(e_clean.device)[:, None, None]
            embed = e_corrupt[rows_ex] + a * (e_clean[rows_ex] - e_corrupt[rows_ex])
            _, grads = reader_gradients(model, graph, sub.clean_tokens[rows_ex], sub.metric, rows_ex, embed=embed,
                                        score_pos=sub.score_pos)
            g = grads.reshape(steps, len(ex), *grads.shape[1:]).float()
            g = g.mean(0) if weights is None else (g * weights.to(g)[:, None, None, None, None]).sum(0)
            total += torch.einsum("npwd,nprd->prw", delta[ex].float(), g).double().cpu()  # g: [example, pos, reader, d]
            del grads, g
    p, r, w = graph.edge_index.unbind(1)
    return (total[p, r, w] / acts.n).float()


def exact_effects(model: TransformerBridge, acts: Activations, edges: Any = None) -> Float[torch.Tensor, " edge"]:
    """Exact effect of each edge of ``acts.scored_graph``: ``m(clean) - m(that edge patched)``,
    averaged over examples (an edge of the summed graph is patched at every position at once).

    Returns:
        ``[edge]`` (rows follow ``edges``, default all edges).
    """
    g = acts.scored_graph
    ids = torch.arange(g.n_edges) if edges is None else torch.as_tensor(list(edges), dtype=torch.long)
    total = torch.zeros(len(ids), dtype=torch.float64)
    groups = None
    if acts.positions == "sum":
        pmap = acts.graph.position_map()
        groups = [torch.nonzero(pmap == e).flatten() for e in ids.tolist()]
    for _, sub in acts.chunks(model):
        if groups is not None:
            per = patch_edge_groups(model, sub.graph, sub.clean_tokens, sub.corrupt_writers, groups, sub.metric,
                                    score_pos=sub.score_pos, batch_size=sub.batch_size)
        else:
            per = patch_single_edges(model, sub.graph, sub.clean_tokens, sub.corrupt_writers, sub.clean_writers,
                                     sub.metric, sub.clean_metric, edges=ids.tolist(), score_pos=sub.score_pos,
                                     batch_size=sub.batch_size)
        total += (sub.clean_metric.float().cpu()[None, :] - per).double().sum(1)
    return (total / acts.n).float()


def exact_summed(model: TransformerBridge, acts: Activations, edges: Any = None) -> Float[torch.Tensor, " edge"]:
    """:func:`exact_effects` of a summed graph (``acts.positions == "sum"``)."""
    if acts.positions != "sum":
        raise ValueError("exact_summed needs Activations prepared with positions='sum'")
    return exact_effects(model, acts, edges)


def top_overlap(a: EdgeScores, b: EdgeScores, k: int = 50) -> float:
    """Fraction of the ``k`` largest-``|score|`` edges of ``a`` that are among ``b``'s."""
    return len(set(a.order()[:k].tolist()) & set(b.order()[:k].tolist())) / k

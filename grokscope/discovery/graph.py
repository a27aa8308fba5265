"""The component graph of a model: writers, readers and the edges between them.

At every input position the residual stream is a running sum. *Writers* add to it:
the token embedding, each attention head's write (``hook_z`` of that head times its
``W_O``) and each MLP's output. *Readers* take it in: each head's query, key and
value input, each MLP's input, and the logits at the prediction position. An edge is
writer -> reader at the same position, the writer computed before the reader (an
earlier layer, or a head of the same layer into that layer's MLP). Nodes are named
with TransformerLens's vocabulary (the kinds of
``transformer_lens.tools.analysis.attribution_patching.Node``: ``embed``,
``attn_head_out``, ``mlp_out``, ``q_input``, ``k_input``, ``v_input``, ``mlp_in``,
``logits``) and its hook names.

Indexing (the same at every position): writer ``0`` is the embedding; layer ``l``'s
heads are writers ``1 + l * (H + 1) + h`` and its MLP ``1 + l * (H + 1) + H``. Readers
of layer ``l`` start at ``l * (3H + 1)``: queries ``+h``, keys ``+H+h``, values
``+2H+h``, the MLP input ``+3H``; the logits reader is the last one. A reader ``r``
reads exactly the writers ``0 .. bound[r] - 1`` (a prefix), which the patching engine
uses. Cross-layer sharing changes nothing here: every block keeps its own hooks.

Example:
    >>> g = ComponentGraph(n_layers=2, n_heads=2, n_pos=3)
    >>> g.n_edges, g.writer_node(0, 2).hook_name
    (124, 'blocks.0.attn.hook_z')
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
from jaxtyping import Bool, Int

from grokscope.discovery.shapes import UnsupportedModelError, model_shape

WRITER_KINDS = ("embed", "attn_head_out", "mlp_out")
READER_KINDS = ("q_input", "k_input", "v_input", "mlp_in", "logits")
NODE_KINDS = WRITER_KINDS + READER_KINDS


@dataclass(frozen=True)
class GraphNode:
    """One node: TransformerLens ``Node``'s fields (kind, position, layer, head).

    Example:
        >>> GraphNode("q_input", 2, layer=1, head=0).hook_name
        'blocks.1.attn.hook_q_input'
    """

    kind: str
    position: int
    layer: int | None = None
    head: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in NODE_KINDS:
            raise ValueError(f"unknown node kind {self.kind!r}; choose one of {', '.join(NODE_KINDS)}")
        needs_head = self.kind in ("attn_head_out", "q_input", "k_input", "v_input")
        if self.kind == "embed":
            if self.layer is not None or self.head is not None:
                raise ValueError("embed nodes take neither layer nor head")
        elif self.layer is None or (self.head is None) == needs_head:
            raise ValueError(f"{self.kind} nodes need a layer{' and a head' if needs_head else ' and no head'}")

    @property
    def hook_name(self) -> str:
        """The hook name TransformerLens's ``Node.hook_name`` gives this node."""
        if self.kind == "embed":
            return "hook_embed"
        if self.kind == "attn_head_out":
            return f"blocks.{self.layer}.attn.hook_z"
        if self.kind == "mlp_out":
            return f"blocks.{self.layer}.hook_mlp_out"
        if self.kind in ("q_input", "k_input", "v_input"):
            return f"blocks.{self.layer}.attn.hook_{self.kind}"
        if self.kind == "logits":
            return f"blocks.{self.layer}.hook_resid_post"
        return f"blocks.{self.layer}.hook_mlp_in"

    @property
    def is_writer(self) -> bool:
        return self.kind in WRITER_KINDS

    @property
    def label(self) -> str:
        """A short name: ``emb@0``, ``a1.2@1`` (layer 1 head 2 at position 1), ``m3@2``, ``q1.2@1``."""
        short = {"embed": "emb", "attn_head_out": "a", "mlp_out": "m", "q_input": "q", "k_input": "k",
                 "v_input": "v", "mlp_in": "mi", "logits": "logits"}[self.kind]
        if self.kind in ("embed", "logits"):
            return f"{short}@{self.position}"
        head = f".{self.head}" if self.head is not None else ""
        return f"{short}{self.layer}{head}@{self.position}"

    @property
    def name(self) -> str:
        """The field's node name (EAP-IG / MIB): ``input``, ``a{l}.h{h}``, ``m{l}``, ``logits``;
        a head's query / key / value input is ``a{l}.h{h}<q>`` / ``<k>`` / ``<v>``, an MLP's input ``m{l}``."""
        if self.kind == "embed":
            return "input"
        if self.kind == "logits":
            return "logits"
        if self.kind in ("mlp_out", "mlp_in"):
            return f"m{self.layer}"
        qkv = {"q_input": "<q>", "k_input": "<k>", "v_input": "<v>"}.get(self.kind, "")
        return f"a{self.layer}.h{self.head}{qkv}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "layer": self.layer, "head": self.head, "position": self.position,
                "hook_name": self.hook_name, "name": self.name}

    def to_tl(self) -> Any:
        """The equal TransformerLens ``Node`` (imports TransformerLens)."""
        from transformer_lens.tools.analysis.attribution_patching import Node

        return Node(kind=self.kind, position=self.position, layer=self.layer, head=self.head)  # type: ignore[arg-type]


@dataclass(frozen=True)
class ComponentGraph:
    """The writer -> reader graph of a pre-norm transformer over ``n_pos`` positions.

    Attributes:
        n_layers: blocks (shared blocks count once per use).
        n_heads: query heads per attention layer.
        n_pos: input positions (1 for a summed graph).
        scored: the positions whose logits are scored (each example is scored at one of
            them: ``Corruption.score_pos``); None: the last position only. The logits
            reader exists at these positions.
        n_kv_heads: key/value heads (grouped-query attention: key and value readers are
            per KV head; query head ``h`` reads KV head ``h // (n_heads // n_kv_heads)``);
            None: one per query head.
        mlp: whether blocks have an MLP (False: an attention-only model).
        parallel: attention and MLP read the same residual (GPT-NeoX / GPT-J blocks):
            an MLP reads no head of its own layer.
        summed: one node per component, summed over positions (``positions="sum"``):
            ``n_pos`` is 1 and every node's position is 0 (its ``position`` is None in JSON).
    """

    n_layers: int
    n_heads: int
    n_pos: int
    scored: tuple[int, ...] | None = None
    n_kv_heads: int | None = None
    mlp: bool = True
    parallel: bool = False
    summed: bool = False

    def __post_init__(self) -> None:
        for name in ("n_layers", "n_heads", "n_pos"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.scored is not None:
            s = tuple(sorted({int(p) for p in self.scored}))
            if not s or s[0] < 0 or s[-1] >= self.n_pos:
                raise ValueError(f"scored positions must lie in [0, {self.n_pos}), got {self.scored}")
            object.__setattr__(self, "scored", None if s == (self.n_pos - 1,) else s)
        if self.n_kv_heads is not None:
            kv = int(self.n_kv_heads)
            if kv < 1 or self.n_heads % kv:
                raise ValueError(f"n_kv_heads must divide n_heads = {self.n_heads}, got {kv}")
            object.__setattr__(self, "n_kv_heads", None if kv == self.n_heads else kv)
        if self.summed and self.n_pos != 1:
            raise ValueError(f"a summed graph has n_pos = 1, got {self.n_pos}")
        if self.parallel and not self.mlp:
            raise ValueError("parallel blocks need an MLP")

    @classmethod
    def of(cls, model: Any, n_pos: int, scored: Any = None) -> ComponentGraph:
        """The graph of a TransformerLens model (a ``TransformerBridge``, HF-booted or native).

        ``scored``: the positions logits are read at (e.g. ``Corruption.score_pos``; None: the last).

        Raises:
            UnsupportedModelError: a shape the graph cannot describe (it names the shape).
        """
        cfg = model.cfg
        sc = None if scored is None else tuple(int(p) for p in torch.as_tensor(scored).flatten().tolist())
        shape = model_shape(model)
        return cls(int(cfg.n_layers), int(cfg.n_heads), int(n_pos), sc, **shape)

    def summed_graph(self) -> ComponentGraph:
        """The same components with one node each, summed over positions."""
        return dataclasses.replace(self, n_pos=1, scored=None, summed=True)

    def position_map(self) -> Int[torch.Tensor, " edge"]:
        """For each edge of this per-position graph, its edge in :meth:`summed_graph`."""
        if self.summed:
            raise ValueError("this graph is already summed over positions")
        return self._position_map

    @cached_property
    def _position_map(self) -> Int[torch.Tensor, " edge"]:
        _, r, w = self.edge_index.unbind(1)
        return self.summed_graph().edge_id[0, r, w]

    # ------------------------------------------------------------------ sizes and indices
    @property
    def read_pos(self) -> int:
        """The last scored position (the only one unless ``scored`` names several)."""
        return self.n_pos - 1 if self.scored is None else self.scored[-1]

    @property
    def read_positions(self) -> tuple[int, ...]:
        """Every position with a logits reader."""
        return (self.n_pos - 1,) if self.scored is None else self.scored

    @property
    def n_kv(self) -> int:
        """Key/value heads per layer."""
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def group_size(self) -> int:
        """Query heads per key/value head."""
        return self.n_heads // self.n_kv

    @property
    def _wl(self) -> int:
        """Writers per layer."""
        return self.n_heads + int(self.mlp)

    @property
    def _rl(self) -> int:
        """Readers per layer."""
        return self.n_heads + 2 * self.n_kv + int(self.mlp)

    @property
    def n_writers(self) -> int:
        """Writers per position."""
        return 1 + self.n_layers * self._wl

    @property
    def n_readers(self) -> int:
        """Readers per position (the logits reader included)."""
        return self.n_layers * self._rl + 1

    def head_writer(self, layer: int, head: int) -> int:
        return 1 + layer * self._wl + head

    def mlp_writer(self, layer: int) -> int:
        if not self.mlp:
            raise UnsupportedModelError("an attention-only model has no MLP writers")
        return 1 + layer * self._wl + self.n_heads

    def qkv_reader(self, layer: int, which: int, head: int) -> int:
        """Reader index of query head ``head``'s query (``which=0``), or of key/value head
        ``head``'s key (1) or value (2)."""
        if which == 0:
            return layer * self._rl + head
        return layer * self._rl + self.n_heads + (which - 1) * self.n_kv + head

    def n_readers_of(self, which: int) -> int:
        """Heads with a query (``which=0``), key (1) or value (2) reader per layer."""
        return self.n_heads if which == 0 else self.n_kv

    def kv_head(self, head: int) -> int:
        """The key/value head query head ``head`` reads."""
        return head // self.group_size

    def mlp_reader(self, layer: int) -> int:
        if not self.mlp:
            raise UnsupportedModelError("an attention-only model has no MLP readers")
        return layer * self._rl + self.n_heads + 2 * self.n_kv

    @property
    def logits_reader(self) -> int:
        return self.n_readers - 1

    def reader_layer(self, reader: int) -> int:
        """Layer of a reader (``n_layers`` for the logits)."""
        return self.n_layers if reader == self.logits_reader else reader // self._rl

    @cached_property
    def bound(self) -> Int[torch.Tensor, " reader"]:
        """``bound[r]``: reader ``r`` reads writers ``0 .. bound[r] - 1``."""
        out = torch.empty(self.n_readers, dtype=torch.long)
        for layer in range(self.n_layers):
            lo = layer * self._rl
            out[lo : lo + self._rl] = 1 + layer * self._wl
            if self.mlp and not self.parallel:
                out[self.mlp_reader(layer)] = 1 + layer * self._wl + self.n_heads
        out[self.logits_reader] = self.n_writers
        return out

    @cached_property
    def valid(self) -> Bool[torch.Tensor, "pos reader writer"]:
        """Which (position, reader, writer) triples are edges."""
        w = torch.arange(self.n_writers)
        ok = (w[None, :] < self.bound[:, None]).expand(self.n_pos, -1, -1).clone()
        ok[:, self.logits_reader] = False
        ok[list(self.read_positions), self.logits_reader] = True
        return ok

    @cached_property
    def edge_index(self) -> Int[torch.Tensor, "edge 3"]:
        """``[edge, (position, reader, writer)]``, sorted by position, reader, writer."""
        return torch.nonzero(self.valid)

    @property
    def n_edges(self) -> int:
        return int(self.edge_index.shape[0])

    @cached_property
    def edge_id(self) -> Int[torch.Tensor, "pos reader writer"]:
        """Edge number of each valid triple (-1 elsewhere)."""
        out = torch.full(self.valid.shape, -1, dtype=torch.long)
        p, r, w = self.edge_index.unbind(1)
        out[p, r, w] = torch.arange(self.n_edges)
        return out

    # ------------------------------------------------------------------ nodes
    def writer_node(self, position: int, writer: int) -> GraphNode:
        if writer == 0:
            return GraphNode("embed", position)
        layer, rest = divmod(writer - 1, self._wl)
        if rest == self.n_heads:
            return GraphNode("mlp_out", position, layer=layer)
        return GraphNode("attn_head_out", position, layer=layer, head=rest)

    def reader_node(self, position: int, reader: int) -> GraphNode:
        if reader == self.logits_reader:
            return GraphNode("logits", position, layer=self.n_layers - 1)
        layer, rest = divmod(reader, self._rl)
        H, K = self.n_heads, self.n_kv
        if rest < H:
            return GraphNode("q_input", position, layer=layer, head=rest)
        if rest < H + 2 * K:
            which, head = divmod(rest - H, K)
            return GraphNode(("k_input", "v_input")[which], position, layer=layer, head=head)
        return GraphNode("mlp_in", position, layer=layer)

    def edge_nodes(self, edge: int) -> tuple[GraphNode, GraphNode]:
        p, r, w = (int(x) for x in self.edge_index[edge])
        return self.writer_node(p, w), self.reader_node(p, r)

    def edge_name(self, edge: int) -> str:
        """The edge's one string name: ``writer->reader@position`` in the field's node names,
        e.g. ``m0->a2.h1<v>@3`` or ``a1.h0->logits@2`` (JSON, tables, figures and the CLI use it).

        Example:
            >>> ComponentGraph(n_layers=2, n_heads=2, n_pos=3).edge_name(0)
            'input->a0.h0<q>@0'
        """
        w, r = self.edge_nodes(edge)
        return f"{w.name}->{r.name}" if self.summed else f"{w.name}->{r.name}@{w.position}"

    def edges_as_nodes(self) -> list[tuple[GraphNode, GraphNode]]:
        """Every edge as a ``(writer, reader)`` node pair, in edge order."""
        return [self.edge_nodes(e) for e in range(self.n_edges)]

    def find_edge(self, writer: GraphNode, reader: GraphNode) -> int:
        """Edge number of a ``(writer, reader)`` pair.

        Raises:
            KeyError: the pair is not an edge of this graph.
        """
        if writer.position != reader.position:
            raise KeyError(f"{writer.label} -> {reader.label}: an edge joins nodes at one position")
        p = writer.position
        w = self._writer_index(writer)
        r = self._reader_index(reader)
        e = int(self.edge_id[p, r, w]) if 0 <= p < self.n_pos else -1
        if e < 0:
            raise KeyError(f"{writer.label} -> {reader.label} is not an edge of this graph")
        return e

    def _writer_index(self, node: GraphNode) -> int:
        if node.kind == "embed":
            return 0
        if node.kind == "attn_head_out":
            return self.head_writer(node.layer, node.head)  # type: ignore[arg-type]
        if node.kind == "mlp_out":
            return self.mlp_writer(node.layer)  # type: ignore[arg-type]
        raise KeyError(f"{node.kind} is not a writer")

    def _reader_index(self, node: GraphNode) -> int:
        if node.kind == "logits":
            return self.logits_reader
        if node.kind == "mlp_in":
            return self.mlp_reader(node.layer)  # type: ignore[arg-type]
        if node.kind in ("q_input", "k_input", "v_input"):
            which = ("q_input", "k_input", "v_input").index(node.kind)
            return self.qkv_reader(node.layer, which, node.head)  # type: ignore[arg-type]
        raise KeyError(f"{node.kind} is not a reader")

    @cached_property
    def writer_kind(self) -> list[str]:
        """Kind of each writer index."""
        return [self.writer_node(0, w).kind for w in range(self.n_writers)]

    @cached_property
    def writer_layer(self) -> Int[torch.Tensor, " writer"]:
        """Layer of each writer (-1 for the embedding)."""
        return torch.tensor([-1] + [(w - 1) // self._wl for w in range(1, self.n_writers)])

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"n_layers": self.n_layers, "n_heads": self.n_heads, "n_pos": self.n_pos,
                               "read_pos": self.read_pos, "n_edges": self.n_edges}
        if self.scored is not None:
            out["read_positions"] = list(self.scored)
        if self.n_kv_heads is not None:
            out["n_kv_heads"] = self.n_kv_heads
        if not self.mlp:
            out["mlp"] = False
        if self.parallel:
            out["parallel"] = True
        if self.summed:
            out["summed"] = True
        return out

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> ComponentGraph:
        """The graph :meth:`to_dict` wrote (scored positions, KV heads and block shape included).

        Example:
            >>> g = ComponentGraph(2, 4, 5, scored=(2, 4), n_kv_heads=2)
            >>> ComponentGraph.from_dict(g.to_dict()) == g
            True
        """
        scored = doc.get("read_positions")
        return cls(int(doc["n_layers"]), int(doc["n_heads"]), int(doc["n_pos"]),
                   scored=None if scored is None else tuple(int(p) for p in scored),
                   n_kv_heads=doc.get("n_kv_heads"), mlp=bool(doc.get("mlp", True)),
                   parallel=bool(doc.get("parallel", False)), summed=bool(doc.get("summed", False)))


def prune(graph: ComponentGraph, keep: Bool[torch.Tensor, " edge"]) -> Bool[torch.Tensor, " edge"]:
    """Drop the kept edges that are cut off from the input or from the logits.

    A writer is *fed* when it is the embedding, or when one of its readers has a kept
    edge from a fed writer (a head at position ``p`` reads its query at ``p`` and its
    keys and values at positions ``<= p``). A reader is *useful* when it is the logits
    reader, or when its writer (the head, at a position ``>= p`` for keys and values)
    has a kept edge into a useful reader. An edge survives when its writer is fed and
    its reader useful; one pass each way is a fixed point.

    Args:
        graph: the graph.
        keep: ``[edge]`` the candidate circuit.

    Returns:
        ``[edge]`` the pruned circuit (a subset of ``keep``).

    Example:
        >>> g = ComponentGraph(1, 1, 1)
        >>> keep = torch.zeros(g.n_edges, dtype=torch.bool)
        >>> keep[g.find_edge(GraphNode("embed", 0), GraphNode("q_input", 0, 0, 0))] = True
        >>> bool(prune(g, keep).any())     # the head's write reaches nothing
        False
    """
    if keep.shape != (graph.n_edges,):
        raise ValueError(f"keep must have shape [{graph.n_edges}], got {tuple(keep.shape)}")
    P, W, R, H, L = graph.n_pos, graph.n_writers, graph.n_readers, graph.n_heads, graph.n_layers
    kv = torch.tensor([graph.kv_head(h) for h in range(H)])
    kept = torch.zeros(P, R, W, dtype=torch.bool)
    p_, r_, w_ = graph.edge_index.unbind(1)
    kept[p_[keep], r_[keep], w_[keep]] = True

    fed = torch.zeros(P, W, dtype=torch.bool)
    fed[:, 0] = True

    def got(reader: int) -> torch.Tensor:  # [pos] the reader has a kept edge from a fed writer
        return (kept[:, reader] & fed).any(-1)

    for layer in range(L):
        q = torch.stack([got(graph.qkv_reader(layer, 0, h)) for h in range(H)], 1)  # [pos, head]
        k = torch.stack([got(graph.qkv_reader(layer, 1, j)) | got(graph.qkv_reader(layer, 2, j))
                         for j in range(graph.n_kv)], 1)  # [pos, kv head]
        kv_any = k.cummax(0).values[:, kv]  # a key/value at any earlier position, per query head
        for h in range(H):
            fed[:, graph.head_writer(layer, h)] = q[:, h] | kv_any[:, h]
        if graph.mlp:
            fed[:, graph.mlp_writer(layer)] = got(graph.mlp_reader(layer))

    useful_r = torch.zeros(P, R, dtype=torch.bool)
    useful_r[list(graph.read_positions), graph.logits_reader] = True
    useful_w = torch.zeros(P, W, dtype=torch.bool)

    def writer_useful(w: int) -> torch.Tensor:
        return (kept[:, :, w] & useful_r).any(-1)

    for layer in reversed(range(L)):
        if graph.mlp:
            mw = graph.mlp_writer(layer)
            useful_w[:, mw] = writer_useful(mw)
            useful_r[:, graph.mlp_reader(layer)] = useful_w[:, mw]
        later_kv = torch.zeros(P, graph.n_kv, dtype=torch.bool)
        for h in range(H):
            hw = graph.head_writer(layer, h)
            useful_w[:, hw] = writer_useful(hw)
            useful_r[:, graph.qkv_reader(layer, 0, h)] = useful_w[:, hw]
            later_kv[:, kv[h]] |= useful_w[:, hw].flip(0).cummax(0).values.flip(0)  # useful at any position >= p
        for j in range(graph.n_kv):
            useful_r[:, graph.qkv_reader(layer, 1, j)] = later_kv[:, j]
            useful_r[:, graph.qkv_reader(layer, 2, j)] = later_kv[:, j]
    return keep & fed[p_, w_] & useful_r[p_, r_]

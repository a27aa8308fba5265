"""Edges of the component graph, patched and differentiated through hooks on the real model.

Two things happen here, both inside ``model.hooks(...)`` on the model's own forward pass:

* **Reader gradients** (:func:`reader_gradients`): a zero tensor ``eps`` is added to
  every reader's input, and one backward pass gives ``d metric / d eps`` for every
  reader at once (EAP's gradient; EAP-IG asks for it at several points of the
  corrupt -> clean path by overriding ``hook_embed``).
* **Patched runs** (:func:`patched_metric`): each row of a batch is a clean input
  with a set of edges patched: at the reader of edge ``u -> v`` the writer's live
  contribution is replaced by its corrupt one (``input_v += corrupt_u - live_u``). The
  live writer values are read in the same forward pass (``hook_embed``, ``hook_z``
  times ``W_O`` per head, ``hook_mlp_out``), so a set of many edges is exact too.

Where the readers are. An MLP's input is ``blocks.{l}.ln2.hook_in`` (what
TransformerLens's ``hook_mlp_in`` captures; on these blocks changing it changes only
the MLP's input, not the residual stream) and the logits reader is
``blocks.{L-1}.hook_resid_post`` (read only by the final norm). A head's own query,
key or value input has no hook on a native ``AttentionBridge``
(``set_use_split_qkv_input`` raises), so it is made the way TransformerLens's
split-QKV fork makes it for the attention classes it supports: the residual entering
the block (``hook_resid_pre``) is copied per head, the patch or ``eps`` added to the
copy, the copy normalised by the block's own ``ln1`` module and projected by the
head's rows of the block's own ``q``/``k``/``v`` weights, and the result written at
``attn.hook_q``/``hook_k``/``hook_v`` for that head. Unpatched heads keep the model's
value. Nothing else of the forward pass is recomputed.

Example:
    >>> g = ComponentGraph.of(model, n_pos=3)                             # doctest: +SKIP
    >>> acts = writer_activations(model, g, tokens)     # [example pos writer d_model]  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int

from grokscope.discovery.graph import ComponentGraph, UnsupportedModelError

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

RowMetric = Callable[[Float[torch.Tensor, "row d_vocab"], Int[torch.Tensor, " row"]], Float[torch.Tensor, " row"]]
"""Maps the logits at the prediction position and each row's example index to a metric per row."""

FLOAT_BUDGET = 1 << 25
"""Floats one batch may hold in its largest intermediate (~128 MB in float32)."""


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _check_model(model: TransformerBridge, graph: ComponentGraph) -> None:
    if not hasattr(model, "blocks") or len(model.blocks) != graph.n_layers:
        raise ValueError(f"model has {len(getattr(model, 'blocks', []))} blocks, the graph {graph.n_layers}")
    if model.training:
        raise ValueError("put the model in eval mode (model.eval()) before patching: dropout would differ per run")


def scored_logits(
    logits: Float[torch.Tensor, "row pos d_vocab"],
    score_pos: Int[torch.Tensor, " example"] | None,
    example: Int[torch.Tensor, " row"],
) -> Float[torch.Tensor, "row d_vocab"]:
    """Each row's logits at its example's scoring position (``score_pos[example]``; None: the last)."""
    if score_pos is None:
        return logits[:, -1]
    pos = score_pos.to(logits.device)[example.to(logits.device)]
    return logits[torch.arange(len(logits), device=logits.device), pos]


def writer_hook_names(graph: ComponentGraph) -> list[str]:
    """The hooks whose values make up every writer's contribution."""
    names = ["hook_embed"]
    for layer in range(graph.n_layers):
        names += [f"blocks.{layer}.attn.hook_z"] + ([f"blocks.{layer}.hook_mlp_out"] if graph.mlp else [])
    return names


def _head_writes(model: TransformerBridge, layer: int, z: Float[torch.Tensor, "batch pos head_index d_head"]) -> Float[torch.Tensor, "batch pos head_index d_model"]:
    return torch.einsum("bphe,hed->bphd", z, model.blocks[layer].attn.W_O.to(z.dtype))


def writer_activations(
    model: TransformerBridge,
    graph: ComponentGraph,
    tokens: Int[torch.Tensor, "example pos"],
    batch_size: int = 1024,
    *,
    with_logits: bool = False,
    score_pos: Int[torch.Tensor, " example"] | None = None,
) -> Any:
    """Every writer's contribution to the residual stream, per example and position.

    Args:
        model: the model.
        graph: its graph (``graph.n_pos`` must equal the input length).
        tokens: ``[example, pos]`` inputs.
        batch_size: examples per forward pass.
        with_logits: also return the logits at the prediction position.
        score_pos: ``[example]`` the position each example's logits are read at (None: the last).

    Returns:
        ``[example, pos, writer, d_model]`` on the model's device (writer order: see
        :mod:`grokscope.discovery.graph`); with ``with_logits``, a pair with
        ``[example, d_vocab]``.
    """
    _check_model(model, graph)
    if tokens.ndim != 2 or tokens.shape[1] != graph.n_pos:
        raise ValueError(f"tokens must be [example, {graph.n_pos}], got {tuple(tokens.shape)}")
    device = _device(model)
    out, logits_out = [], []
    last = f"blocks.{graph.n_layers - 1}.hook_resid_post"
    with torch.no_grad():
        for lo in range(0, len(tokens), batch_size):
            names = writer_hook_names(graph) + ([last] if with_logits else [])
            logits, cache = model.run_with_cache(tokens[lo : lo + batch_size].to(device), names_filter=names)
            logits_out.append(scored_logits(logits, score_pos, torch.arange(lo, lo + len(logits))))
            parts = [cache["hook_embed"][:, :, None]]
            for layer in range(graph.n_layers):
                parts.append(_head_writes(model, layer, cache[f"blocks.{layer}.attn.hook_z"]))
                if graph.mlp:
                    parts.append(cache[f"blocks.{layer}.hook_mlp_out"][:, :, None])
            acts = torch.cat(parts, dim=2)
            assert acts.shape[2] == graph.n_writers
            if with_logits:
                _check_writers_sum(cache[last], acts)
            out.append(acts)
            del cache
    acts = torch.cat(out) if out else torch.empty(0, graph.n_pos, graph.n_writers, model.cfg.d_model, device=device)
    if with_logits:
        return acts, (torch.cat(logits_out) if logits_out else torch.empty(0, model.cfg.d_vocab, device=device))
    return acts


def _check_writers_sum(resid: torch.Tensor, writers: torch.Tensor) -> None:
    """The writers must add up to the residual stream, up to what no input changes (biases,
    position embeddings): else a block transforms its outputs before adding them (Gemma 2/3's
    post-attention norms, sandwich norms) and edges would not be what the graph says."""
    if len(resid) < 2:
        return
    rest = (resid - writers.sum(2)).float()
    spread = float((rest - rest[:1]).abs().amax())
    tol = (1e-3 if resid.dtype == torch.float32 or resid.dtype == torch.float64 else 3e-2) * float(resid.abs().amax())
    if spread > tol + 1e-5:
        raise UnsupportedModelError(
            f"the writers (embedding, each head's hook_z @ W_O, each MLP's hook_mlp_out) do not add up to the "
            f"residual stream (they miss by {spread:.3g}, varying with the input): blocks that transform their "
            "outputs before the residual add (e.g. Gemma 2/3 post-attention norms) are not supported")


class _Fork:
    """Per-head query/key/value inputs: the block's own ``ln1`` and projection weights."""

    def __init__(self, model: TransformerBridge, graph: ComponentGraph) -> None:
        self.ln: list[torch.nn.Module] = []
        self.w: list[list[torch.Tensor]] = []
        self.b: list[list[torch.Tensor | None]] = []
        for layer in range(graph.n_layers):
            block = model.blocks[layer]
            ln = getattr(getattr(block, "ln1", None), "original_component", None)
            if ln is None:
                raise UnsupportedModelError(f"blocks.{layer}.ln1 has no module to apply per head (a block without "
                                            "a pre-attention norm is not supported)")
            self.ln.append(ln)
            ws, bs = [], []
            for which, name in enumerate(("q", "k", "v")):
                lin = getattr(getattr(block.attn, name), "original_component", None)
                if not isinstance(lin, torch.nn.Linear):
                    raise UnsupportedModelError(f"blocks.{layer}.attn.{name} is {type(lin).__name__}, not nn.Linear: "
                                                "per-head query/key/value readers need a linear projection")
                n = graph.n_readers_of(which)
                if lin.weight.shape[0] % n:
                    raise UnsupportedModelError(f"blocks.{layer}.attn.{name} has {lin.weight.shape[0]} outputs, "
                                                f"not a multiple of its {n} heads")
                ws.append(lin.weight.reshape(n, -1, lin.weight.shape[-1]).transpose(1, 2))  # [head, d_model, d_head]
                bs.append(None if lin.bias is None else lin.bias.reshape(n, -1))
            self.w.append(ws)
            self.b.append(bs)

    def project(self, layer: int, which: int, x: Float[torch.Tensor, "... head_index d_model"]) -> Float[torch.Tensor, "... head_index d_head"]:
        """Head ``h``'s query/key/value (``which`` 0/1/2) of the residual copy ``x[..., h, :]``."""
        normed = self.ln[layer](x)
        out = torch.einsum("...hd,hde->...he", normed, self.w[layer][which].to(normed.dtype))
        b = self.b[layer][which]
        return out if b is None else out + b.to(out.dtype)


def _reader_layout(graph: ComponentGraph) -> tuple[Int[torch.Tensor, " reader"], Int[torch.Tensor, " reader"]]:
    """Hook group (``4 * layer + {q:0, k:1, v:2, mlp:3}``, logits ``4L``) and head of each reader
    (the query head for a query, the key/value head for a key or value, 0 otherwise)."""
    group = torch.empty(graph.n_readers, dtype=torch.long)
    head = torch.zeros(graph.n_readers, dtype=torch.long)
    j_of = {"q_input": 0, "k_input": 1, "v_input": 2, "mlp_in": 3}
    for r in range(graph.n_readers - 1):
        node = graph.reader_node(0, r)
        group[r] = 4 * node.layer + j_of[node.kind]  # type: ignore[operator]
        head[r] = node.head or 0
    group[-1] = 4 * graph.n_layers
    return group, head


def _reader_hook_name(graph: ComponentGraph, group: int) -> str:
    layer, j = divmod(group, 4)
    if layer == graph.n_layers:
        return f"blocks.{graph.n_layers - 1}.hook_resid_post"
    return f"blocks.{layer}.ln2.hook_in" if j == 3 else f"blocks.{layer}.attn.{'qkv'[j]}.hook_out"


# --------------------------------------------------------------------------- gradients


def reader_gradients(
    model: TransformerBridge,
    graph: ComponentGraph,
    tokens: Int[torch.Tensor, "row pos"],
    metric: RowMetric,
    example: Int[torch.Tensor, " row"],
    embed: Float[torch.Tensor, "row pos d_model"] | None = None,
    *,
    score_pos: Int[torch.Tensor, " example"] | None = None,
) -> tuple[Float[torch.Tensor, " row"], Float[torch.Tensor, "row pos reader d_model"]]:
    """``d metric / d input`` of every reader, per row, from one forward and one backward.

    Args:
        model: the model (eval mode).
        graph: its graph.
        tokens: ``[row, pos]`` inputs.
        metric: the per-row metric (rows are independent, so the gradient of the sum is
            every row's own gradient).
        example: ``[row]`` example index of each row (passed to ``metric``).
        embed: ``[row, pos, d_model]`` token embeddings to use instead of the tokens'
            (``hook_embed`` is overridden): the points of an integrated-gradient path.
        score_pos: ``[example]`` the position each example's logits are read at (None: the last).

    Returns:
        ``(metric per row, gradients [row, pos, reader, d_model])``.
    """
    _check_model(model, graph)
    device = _device(model)
    tokens = tokens.to(device)
    rows, P, L = tokens.shape[0], graph.n_pos, graph.n_layers
    d = int(model.cfg.d_model)
    dtype = next(model.parameters()).dtype
    fork = _Fork(model, graph)
    resid: dict[int, torch.Tensor] = {}
    eps_qkv = [[torch.zeros(rows, P, graph.n_readers_of(j), d, device=device, dtype=dtype, requires_grad=True)
                for j in range(3)] for _ in range(L)]
    eps_mlp = [torch.zeros(rows, P, d, device=device, dtype=dtype, requires_grad=True) for _ in range(L if graph.mlp else 0)]
    eps_log = torch.zeros(rows, P, d, device=device, dtype=dtype, requires_grad=True)

    def capture(layer: int) -> Any:
        def hook(t: torch.Tensor, hook: Any) -> None:
            resid[layer] = t

        return hook

    def qkv(layer: int, which: int) -> Any:
        def hook(t: torch.Tensor, hook: Any) -> torch.Tensor:
            x = resid[layer][:, :, None, :] + eps_qkv[layer][which]
            return fork.project(layer, which, x).to(t.dtype)

        return hook

    def add(eps: torch.Tensor) -> Any:
        return lambda t, hook: t + eps

    hooks: list[tuple[str, Any]] = []
    if embed is not None:
        hooks.append(("hook_embed", lambda t, hook: embed.to(device=t.device, dtype=t.dtype)))
    for layer in range(L):
        hooks.append((f"blocks.{layer}.hook_resid_pre", capture(layer)))
        for j in range(3):
            hooks.append((f"blocks.{layer}.attn.{'qkv'[j]}.hook_out", qkv(layer, j)))
        if graph.mlp:
            hooks.append((f"blocks.{layer}.ln2.hook_in", add(eps_mlp[layer])))
    hooks.append((f"blocks.{L - 1}.hook_resid_post", add(eps_log)))
    with torch.enable_grad(), model.hooks(fwd_hooks=hooks):
        logits = model(tokens)
        values = metric(scored_logits(logits, score_pos, example), example.to(device))
        flat = [e for per in eps_qkv for e in per] + eps_mlp + [eps_log]
        grads = torch.autograd.grad(values.sum(), flat, allow_unused=True)
    out = torch.zeros(rows, P, graph.n_readers, d, device=device, dtype=dtype)
    for layer in range(L):
        for j in range(3):
            g = grads[3 * layer + j]
            if g is not None:
                lo = graph.qkv_reader(layer, j, 0)
                out[:, :, lo : lo + graph.n_readers_of(j)] = g
        if graph.mlp:
            g = grads[3 * L + layer]
            if g is not None:
                out[:, :, graph.mlp_reader(layer)] = g
    if grads[-1] is not None:
        read = list(graph.read_positions)
        out[:, read, graph.logits_reader] = grads[-1][:, read]
    return values.detach(), out


# --------------------------------------------------------------------------- patched runs


def patched_run_hooks(
    model: TransformerBridge,
    graph: ComponentGraph,
    live: Float[torch.Tensor, "row pos writer d_model"],
    resid: dict[int, torch.Tensor],
    *,
    qkv: Callable[[int, int], Any],
    mlp_in: Callable[[int], Any],
    logits_in: Any,
) -> list[tuple[str, Any]]:
    """The hooks of one patched forward pass, in the order the model runs them.

    Each writer's live value is captured into ``live`` (``hook_embed``; ``hook_z`` times
    the head's ``W_O``; ``hook_mlp_out``) and each block's incoming residual into
    ``resid``; the readers are patched by the engine's own hooks: ``qkv(layer, which)``
    at ``attn.{q,k,v}.hook_out``, ``mlp_in(layer)`` at ``ln2.hook_in`` and ``logits_in``
    at the last block's ``hook_resid_post``.
    """
    H = graph.n_heads

    def cap_embed(t: torch.Tensor, hook: Any) -> None:
        live[:, :, 0] = t.detach()

    def cap_z(layer: int) -> Any:
        def hook(t: torch.Tensor, hook: Any) -> None:
            lo = graph.head_writer(layer, 0)
            live[:, :, lo : lo + H] = _head_writes(model, layer, t.detach())

        return hook

    def cap_mlp(layer: int) -> Any:
        def hook(t: torch.Tensor, hook: Any) -> None:
            live[:, :, graph.mlp_writer(layer)] = t.detach()  # type: ignore[index]

        return hook

    def cap_resid(layer: int) -> Any:
        def hook(t: torch.Tensor, hook: Any) -> None:
            resid[layer] = t

        return hook

    L = graph.n_layers
    hooks: list[tuple[str, Any]] = [("hook_embed", cap_embed)]
    for layer in range(L):
        hooks.append((f"blocks.{layer}.hook_resid_pre", cap_resid(layer)))
        for j in range(3):
            hooks.append((f"blocks.{layer}.attn.{'qkv'[j]}.hook_out", qkv(layer, j)))
        hooks.append((f"blocks.{layer}.attn.hook_z", cap_z(layer)))
        if graph.mlp:
            hooks.append((f"blocks.{layer}.ln2.hook_in", mlp_in(layer)))
            hooks.append((f"blocks.{layer}.hook_mlp_out", cap_mlp(layer)))
    hooks.append((f"blocks.{L - 1}.hook_resid_post", logits_in))
    return hooks


def patched_metric(
    model: TransformerBridge,
    graph: ComponentGraph,
    tokens: Int[torch.Tensor, "row pos"],
    example: Int[torch.Tensor, " row"],
    corrupt: Float[torch.Tensor, "example pos writer d_model"],
    pair_row: Int[torch.Tensor, " pair"],
    pair_edge: Int[torch.Tensor, " pair"],
    metric: RowMetric,
    *,
    complement: bool = False,
    score_pos: Int[torch.Tensor, " example"] | None = None,
) -> Float[torch.Tensor, " row"]:
    """The metric of each row with its edges patched, in one forward pass.

    Args:
        model: the model (eval mode).
        graph: its graph.
        tokens: ``[row, pos]`` the (clean) inputs.
        example: ``[row]`` example index of each row (into ``corrupt`` and ``metric``).
        corrupt: ``[example, pos, writer, d_model]`` the replacement writer values
            (another input's writers, or their means expanded over examples).
        pair_row, pair_edge: the (row, edge) pairs; each names one edge of one row.
        metric: the per-row metric.
        complement: False: the pairs are the patched edges (every other edge is
            clean). True: the pairs are the edges kept; every other edge is patched.
        score_pos: ``[example]`` the position each example's logits are read at (None: the last).

    Returns:
        ``[row]`` the metric of each patched run.
    """
    _check_model(model, graph)
    device = _device(model)
    tokens, example = tokens.to(device), example.to(device)
    pair_row, pair_edge = pair_row.to(device), pair_edge.to(device)
    rows, P, L, W = tokens.shape[0], graph.n_pos, graph.n_layers, graph.n_writers
    d = int(model.cfg.d_model)
    fork = _Fork(model, graph)
    group_of, head_of = (t.to(device) for t in _reader_layout(graph))
    bound = graph.bound.to(device)
    e_pos, e_reader, e_writer = graph.edge_index.to(device).unbind(1)
    pr = e_reader[pair_edge]
    pair_group = group_of[pr]
    live = torch.zeros(rows, P, W, d, device=device, dtype=corrupt.dtype)
    resid: dict[int, torch.Tensor] = {}

    def delta(group: int, reader0: int) -> torch.Tensor | None:
        """``[row, pos, head(1), d_model]`` summed replacement minus live writers at this group."""
        sel = pair_group == group
        n_heads = graph.n_readers_of(group % 4) if group % 4 < 3 and group < 4 * L else 1
        out = None
        if complement:
            b = int(bound[reader0])
            base = corrupt[example, :, :b].sum(2) - live[:, :, :b].sum(2)  # [row, pos, d]
            if group == 4 * L:
                mask = torch.zeros(P, 1, 1, device=device, dtype=base.dtype)
                mask[list(graph.read_positions)] = 1
                base = base * mask[None, :, 0]
            out = base[:, :, None, :].expand(rows, P, n_heads, d).clone()
            sign = -1.0
        else:
            sign = 1.0
        if bool(sel.any()):
            r, e = pair_row[sel], pair_edge[sel]
            p, w = e_pos[e], e_writer[e]
            dd = corrupt[example[r], p, w] - live[r, p, w]
            if out is None:
                out = torch.zeros(rows, P, n_heads, d, device=device, dtype=dd.dtype)
            h = head_of[pr[sel]] if n_heads > 1 else torch.zeros_like(r)
            out.index_put_((r, p, h), sign * dd, accumulate=True)
        return out

    def qkv(layer: int, which: int) -> Any:
        def hook(t: torch.Tensor, hook: Any) -> torch.Tensor:
            dl = delta(4 * layer + which, graph.qkv_reader(layer, which, 0))
            if dl is None:
                return t
            touched = dl.abs().amax(-1) > 0  # [row, pos, head]
            if not bool(touched.any()):
                return t
            r, p, h = torch.nonzero(touched, as_tuple=True)
            x = resid[layer][r, p][:, None, :] + dl[r, p, h][:, None, :]  # [n, 1, d]
            new = torch.einsum("nd,nde->ne", fork.ln[layer](x[:, 0]), fork.w[layer][which][h].to(x.dtype))
            b = fork.b[layer][which]
            if b is not None:
                new = new + b[h].to(new.dtype)
            t = t.clone()
            t[r, p, h] = new.to(t.dtype)
            return t

        return hook

    def add(group: int, reader0: int) -> Any:
        def hook(t: torch.Tensor, hook: Any) -> torch.Tensor:
            dl = delta(group, reader0)
            return t if dl is None else t + dl[:, :, 0].to(t.dtype)

        return hook

    hooks = patched_run_hooks(model, graph, live, resid, qkv=qkv,
                              mlp_in=lambda layer: add(4 * layer + 3, graph.mlp_reader(layer)),
                              logits_in=add(4 * L, graph.logits_reader))
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        logits = model(tokens)
        return metric(scored_logits(logits, score_pos, example), example)

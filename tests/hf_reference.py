"""An independent reference for edge scores, written against the plain HF modules (no
TransformerLens, no grokscope engine): hooks on the HF model's own embedding, norms, q/k/v
and output projections and MLPs.

A reader's input is the residual it sees plus, for each patched edge into it, the writer's
replacement minus its live value. A head's query/key/value reader is its own copy of the
residual: the HF projection's output for that head is recomputed from the block's own norm
of the copy and the head's rows of the projection weight (HF layouts: GPT-2's fused
``Conv1D`` ``c_attn``, GPT-NeoX's per-head interleaved ``query_key_value``, Llama/Qwen2's
separate ``q/k/v_proj`` with fewer key/value heads).

* :func:`patched_metric`: the metric with a set of ``(position, reader, writer)`` edges
  patched, one forward pass (exact edge patching; the complement of a circuit);
* :func:`eap_scores`: ``(clean - corrupt writer) . d metric / d reader input`` on the corrupt
  run, by ``torch.autograd`` through the HF model.
"""

from __future__ import annotations

import torch


class Spec:
    """Where the pieces of one HF architecture are."""

    def __init__(self, hf, arch: str):
        self.hf, self.arch = hf, arch
        cfg = hf.config
        if arch == "gpt2":
            self.layers, self.embed, self.final = hf.transformer.h, hf.transformer.wte, hf.transformer.ln_f
            self.H, self.K, self.d = cfg.n_head, cfg.n_head, cfg.n_embd
        elif arch == "neox":
            self.layers, self.embed, self.final = hf.gpt_neox.layers, hf.gpt_neox.embed_in, hf.gpt_neox.final_layer_norm
            self.H, self.K, self.d = cfg.num_attention_heads, cfg.num_attention_heads, cfg.hidden_size
        else:
            self.layers, self.embed, self.final = hf.model.layers, hf.model.embed_tokens, hf.model.norm
            self.H, self.K, self.d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.hidden_size
        self.dh = self.d // self.H

    def ln1(self, layer):
        b = self.layers[layer]
        return b.ln_1 if self.arch == "gpt2" else b.input_layernorm

    def ln2(self, layer):
        b = self.layers[layer]
        return b.ln_2 if self.arch == "gpt2" else b.post_attention_layernorm

    def mlp(self, layer):
        return self.layers[layer].mlp

    def o_proj(self, layer):
        b = self.layers[layer]
        return {"gpt2": lambda: b.attn.c_proj, "neox": lambda: b.attention.dense}.get(self.arch, lambda: b.self_attn.o_proj)()

    def w_o(self, layer, h):
        """``[d_head, d_model]``: head ``h``'s rows of the output projection."""
        m, sl = self.o_proj(layer), slice(h * self.dh, (h + 1) * self.dh)
        return m.weight[sl] if self.arch == "gpt2" else m.weight[:, sl].T

    def projections(self, layer):
        """``[(module, [(which, head, out_index)])]``: each q/k/v head's outputs in its module."""
        b, dh, H, K, d = self.layers[layer], self.dh, self.H, self.K, self.d
        ar = torch.arange(dh)
        if self.arch == "gpt2":
            return [(b.attn.c_attn, [(j, h, j * d + h * dh + ar) for j in range(3) for h in range(H)])]
        if self.arch == "neox":
            return [(b.attention.query_key_value, [(j, h, h * 3 * dh + j * dh + ar) for j in range(3) for h in range(H)])]
        a = b.self_attn
        return [(a.q_proj, [(0, h, h * dh + ar) for h in range(H)]), (a.k_proj, [(1, k, k * dh + ar) for k in range(K)]),
                (a.v_proj, [(2, k, k * dh + ar) for k in range(K)])]

    def head_rows(self, module, idx):
        """``(W [d_head, d_model], b [d_head] or None)`` with ``out[..., idx] = x @ W.T + b``."""
        if self.arch == "gpt2":  # Conv1D: out = x @ weight + bias
            return module.weight[:, idx].T, module.bias[idx]
        return module.weight[idx], None if module.bias is None else module.bias[idx]


def _forward(spec: Spec, tokens, deltas, live=None):
    """Run the HF model with ``deltas[(layer, kind, head)]`` (``[batch, pos, d_model]``) added to
    each reader's input (``kind`` q/k/v/mlp; ``("logits",)`` for the final norm). ``live``, when given,
    is filled with the writers' values ``[batch, pos, writer, d_model]`` as they are computed."""
    hooks, resid = [], {}
    L, H = len(spec.layers), spec.H
    has_mlp = True
    wl = H + 1

    def reg(module, fn, pre=False):
        hooks.append(module.register_forward_pre_hook(fn) if pre else module.register_forward_hook(fn))

    if live is not None:
        reg(spec.embed, lambda m, i, o: live.__setitem__((slice(None), slice(None), 0), o.detach()))
    for layer in range(L):
        reg(spec.ln1(layer), lambda m, i, layer=layer: resid.__setitem__(layer, i[0]), pre=True)
        for module, heads in spec.projections(layer):
            def proj(m, i, o, layer=layer, heads=heads, module=module):
                out = o.clone()
                for which, h, idx in heads:
                    dl = deltas.get((layer, "qkv"[which], h))
                    if dl is not None:
                        W, b = spec.head_rows(module, idx)
                        new = spec.ln1(layer).forward(resid[layer] + dl) @ W.T  # .forward: not our capture hook
                        out[..., idx] = new if b is None else new + b
                return out
            reg(module, proj)
        if live is not None:
            def cap_z(m, i, layer=layer):
                z = i[0].detach()
                for h in range(H):
                    live[:, :, 1 + layer * wl + h] = z[..., h * spec.dh : (h + 1) * spec.dh] @ spec.w_o(layer, h)
            reg(spec.o_proj(layer), cap_z, pre=True)
            reg(spec.mlp(layer), lambda m, i, o, layer=layer: live.__setitem__((slice(None), slice(None), 1 + layer * wl + H), o.detach()))
        if has_mlp and (layer, "mlp", 0) in deltas:
            reg(spec.ln2(layer), lambda m, i, layer=layer: (i[0] + deltas[(layer, "mlp", 0)],), pre=True)
    if ("logits",) in deltas:
        reg(spec.final, lambda m, i: (i[0] + deltas[("logits",)],), pre=True)
    try:
        return spec.hf(tokens).logits
    finally:
        for h in hooks:
            h.remove()


def _reader_key(graph, reader):
    node = graph.reader_node(0, reader)
    if node.kind == "logits":
        return ("logits",)
    if node.kind == "mlp_in":
        return (node.layer, "mlp", 0)
    return (node.layer, node.kind[0], node.head)


def writers(spec: Spec, graph, tokens):
    """``[batch, pos, writer, d_model]`` writer values of a plain HF run (and its logits)."""
    live = torch.zeros(len(tokens), tokens.shape[1], graph.n_writers, spec.d)
    with torch.no_grad():
        logits = _forward(spec, tokens, {}, live)
    return live, logits


def patched_metric(spec: Spec, graph, clean, corrupt_writers, edges, metric):
    """The metric with the edges ``[(position, reader, writer)]`` patched (replacement minus live
    writer added at the reader), one HF forward pass with live writers read as it runs."""
    B, P = clean.shape
    live = torch.zeros(B, P, graph.n_writers, spec.d)
    by_reader: dict = {}
    for p, r, w in edges:
        by_reader.setdefault(r, []).append((p, w))

    class Lazy(dict):  # the delta of a reader is computed when its hook runs (its writers are live by then)
        def get(self, key, default=None):
            return self[key] if key in self else default

        def __contains__(self, key):
            return key in keys

        def __getitem__(self, key):
            out = torch.zeros(B, P, spec.d)
            for p, w in by_reader[keys[key]]:
                out[:, p] += corrupt_writers[:, p, w] - live[:, p, w]
            return out

    keys = {_reader_key(graph, r): r for r in by_reader}
    with torch.no_grad():
        logits = _forward(spec, clean, Lazy(), live)
    return metric(logits[:, -1])


def eap_scores(spec: Spec, graph, clean, corrupt, metric):
    """``[edge]`` EAP scores: mean over examples of ``(clean - corrupt writer) . grad`` with the
    gradient of the metric w.r.t. each reader's input on the corrupt run (torch autograd)."""
    cw, _ = writers(spec, graph, clean)
    xw, _ = writers(spec, graph, corrupt)
    B, P = clean.shape
    eps = {_reader_key(graph, r): torch.zeros(B, P, spec.d, requires_grad=True) for r in range(graph.n_readers)}
    logits = _forward(spec, corrupt, eps)
    keys = list(eps)
    grads = torch.autograd.grad(metric(logits[:, -1]).sum(), [eps[k] for k in keys], allow_unused=True)
    g = torch.stack([torch.zeros(B, P, spec.d) if x is None else x for x in grads], 2)  # [batch, pos, reader, d]
    delta = cw - xw
    p, r, w = graph.edge_index.unbind(1)
    return (delta[:, p, w] * g[:, p, r]).sum(-1).mean(0)

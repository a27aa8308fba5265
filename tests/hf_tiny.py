"""Small random-init HF models for the discovery tests, built offline from an HF config.

Each is saved as a local HF directory (config, safetensors weights, a word-level
tokenizer over ``w0 .. w59``) and booted with ``TransformerBridge.boot_transformers``,
as a user would boot theirs. The attention-only model is TransformerLens's native one
(HF has no attention-only causal LM).
"""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = ["<|endoftext|>"] + [f"w{i}" for i in range(60)]
ARCHS = ("gpt2", "neox", "llama", "qwen2")


def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token=WORDS[0]))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=WORDS[0], eos_token=WORDS[0], unk_token=WORDS[0],
                                   pad_token=WORDS[0])


def hf_model(arch: str, seed: int = 0):
    """A random-init HF causal LM (2 layers, d_model 32, 4 heads; GQA with 2 KV heads for llama/qwen2)."""
    import transformers as tf

    common = {"vocab_size": len(WORDS), "bos_token_id": 0, "eos_token_id": 0, "initializer_range": 0.2}
    if arch == "gpt2":
        cfg = tf.GPT2Config(n_positions=32, n_embd=32, n_layer=2, n_head=4, **common)
        cls = tf.GPT2LMHeadModel
    elif arch == "neox":
        cfg = tf.GPTNeoXConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                               max_position_embeddings=32, rotary_pct=0.5, use_parallel_residual=True, **common)
        cls = tf.GPTNeoXForCausalLM
    elif arch in ("llama", "qwen2"):
        kw = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "intermediate_size": 64, "max_position_embeddings": 32, **common}
        cfg, cls = (tf.LlamaConfig(**kw), tf.LlamaForCausalLM) if arch == "llama" else (tf.Qwen2Config(**kw), tf.Qwen2ForCausalLM)
    elif arch == "gemma2":  # post-attention / post-feedforward norms: not describable by the graph
        cfg = tf.Gemma2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                              intermediate_size=64, max_position_embeddings=32, pad_token_id=0, **common)
        cls = tf.Gemma2ForCausalLM
    else:
        raise ValueError(arch)
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = cls(cfg)
    if arch == "qwen2":  # HF initialises biases to zero: make the q/k/v biases matter
        with torch.no_grad():
            for layer in model.model.layers:
                for lin in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    lin.bias.normal_(0, 0.2)
    return model.eval()


def save(arch: str, root: Path) -> Path:
    """Write the HF directory of :func:`hf_model` under ``root`` and return it."""
    path = Path(root) / arch
    if not (path / "config.json").exists():
        hf_model(arch).save_pretrained(path)
        tokenizer().save_pretrained(path)
    return path


def bridge(path: Path):
    """The directory booted through TransformerBridge (its word-level tokenizer passed in, with
    ``add_bos_token`` so TransformerLens keeps it: the auto class for ``qwen2`` is Qwen2's own)."""
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(str(path), add_bos_token=True)
    return TransformerBridge.boot_transformers(str(path), device="cpu", tokenizer=tok).eval()


def attn_only(seed: int = 0):
    """TransformerLens's native attention-only model (2 layers, 4 heads, vocabulary 61)."""
    from transformer_lens.model_bridge import TransformerBridge

    from grokscope.runs.config import ModelConfig
    from grokscope.runs.model import bridge_config

    cfg = bridge_config(ModelConfig(n_layers=2, d_model=32, n_heads=4, d_mlp=64, init_range=0.3), len(WORDS), 16, seed)
    cfg.attn_only = True
    return TransformerBridge.boot_native(cfg).eval()


def prompts(n: int, seed: int, lengths: tuple[int, int] = (3, 7)):
    """``n`` (clean, corrupt, answer, cf_answer) word prompts of different lengths; corrupt changes one word."""
    g = torch.Generator().manual_seed(seed)
    clean, corrupt, ans, cf = [], [], [], []
    for _ in range(n):
        k = int(torch.randint(lengths[0], lengths[1] + 1, (1,), generator=g))
        words = torch.randint(1, 60, (k,), generator=g).tolist()
        j = int(torch.randint(0, k, (1,), generator=g))
        other = list(words)
        other[j] = 1 + (words[j] + int(torch.randint(1, 58, (1,), generator=g))) % 59
        clean.append(" ".join(f"w{w}" for w in words))
        corrupt.append(" ".join(f"w{w}" for w in other))
        a, b = torch.randint(1, 60, (2,), generator=g).tolist()
        ans.append(f"w{a}")
        cf.append(f"w{b if b != a else 1 + a % 59}")
    return clean, corrupt, ans, cf

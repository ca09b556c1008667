"""The Qwen2 / Qwen2.5 decoder in MLX.

Shape letters: B batch, L new tokens in this call, S all positions in the cache (past + new),
D hidden size. Module and parameter names follow Hugging Face's checkpoints
(`model.layers.N.self_attn.q_proj.weight`, ...), so weights load without renaming.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from qwen_edge.cache import KVCache
from qwen_edge.config import ModelConfig
from qwen_edge.errors import CacheError
from qwen_edge.fuse import fuse_linears
from qwen_edge.kv_quant import QuantizedKVCache, quantized_attention
from qwen_edge.kv_rotating import RotatingKVCache
from qwen_edge.rope import RoPE


class RMSNorm(nn.Module):
    def __init__(self, dims: int, eps: float) -> None:
        super().__init__()
        self.weight = mx.ones((dims,))
        self.eps = eps

    def __call__(self, x: mx.array) -> mx.array:
        return mx.fast.rms_norm(x, self.weight, self.eps)


class Attention(nn.Module):
    """Grouped-query attention: n_heads query heads share n_kv_heads key/value heads."""

    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.n_heads = config.n_heads
        self.n_kv_heads = config.n_kv_heads
        self.head_dim = config.head_dim
        D = config.hidden_size

        # Qwen2 puts a bias on q, k and v but not on the output projection.
        self.q_proj = nn.Linear(D, self.n_heads * self.head_dim, bias=True)
        self.k_proj = nn.Linear(D, self.n_kv_heads * self.head_dim, bias=True)
        self.v_proj = nn.Linear(D, self.n_kv_heads * self.head_dim, bias=True)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, D, bias=False)

        self.rope = RoPE(config)
        # YaRN's attention factor scales cos and sin of both queries and keys, hence the square.
        self.scale = self.rope.attention_factor**2 / self.head_dim**0.5

    def __call__(self, x: mx.array, cache: KVCache | None, offset: int | mx.array) -> mx.array:
        B, L, _ = x.shape

        # project and split heads: (B, L, H * head_dim) -> (B, H, L, head_dim)
        queries, keys, values = self._project(x)
        queries = queries.reshape(B, L, self.n_heads, -1).transpose(0, 2, 1, 3)
        keys = keys.reshape(B, L, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
        values = values.reshape(B, L, self.n_kv_heads, -1).transpose(0, 2, 1, 3)

        queries = self.rope(queries, offset)
        keys = self.rope(keys, offset)
        if cache is not None:
            keys, values = cache.update_and_fetch(self.layer, keys, values)  # (B, n_kv, S, hd)

        # The causal mask of mx.fast aligns the last query with the last key, which is right
        # for new tokens appended after a cached prefix. One query needs no mask, except in the
        # compiled step, which attends over the whole buffer (see compiled.py).
        if cache is not None and cache.bits is not None:
            out = quantized_attention(
                queries, keys, values, self.scale, L > 1, cache.bits, cache.group_size
            )
        else:
            mask = "causal" if L > 1 else None
            if cache is not None:
                mask = cache.mask(L)
            out = attention(queries, keys, values, self.scale, mask)

        # merge heads: (B, H, L, head_dim) -> (B, L, H * head_dim)
        out = out.transpose(0, 2, 1, 3).reshape(B, L, -1)
        return self.o_proj(out)

    def _project(self, x: mx.array) -> tuple[mx.array, mx.array, mx.array]:
        if "qkv_proj" not in self:
            return self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q_size = self.n_heads * self.head_dim
        kv_size = self.n_kv_heads * self.head_dim
        queries, keys, values = mx.split(self.qkv_proj(x), [q_size, q_size + kv_size], axis=-1)
        return queries, keys, values

    def fuse(self) -> bool:
        """Replace q/k/v_proj with one `qkv_proj`; False if their layouts differ."""
        fused = fuse_linears([self.q_proj, self.k_proj, self.v_proj])
        if fused is None:
            return False
        self.qkv_proj = fused
        del self.q_proj, self.k_proj, self.v_proj
        return True


def attention(
    queries: mx.array, keys: mx.array, values: mx.array, scale: float, mask: str | mx.array | None
) -> mx.array:
    """Compute scaled dot-product attention of queries [B, H, L, hd] over keys and values
    [B, n_kv, S, hd].

    This is mx.fast's kernel everywhere, except for one query (with no mask, or the compiled
    step's mask array) on the CPU backend. There the fast kernel falls back to a generic path
    that cost about 160 us per call on a 2-core x86 (mlx 0.32), so a decode step's grouped-query
    attention is written out with two matmuls.
    """
    B, H, L, head_dim = queries.shape
    if L != 1 or isinstance(mask, str) or mx.default_device() != mx.cpu:
        return mx.fast.scaled_dot_product_attention(queries, keys, values, scale=scale, mask=mask)
    n_kv_heads = keys.shape[1]
    grouped = (queries * scale).reshape(B, n_kv_heads, H // n_kv_heads, head_dim)
    scores = grouped @ keys.swapaxes(-1, -2)  # (B, n_kv, H / n_kv, S)
    if mask is not None:
        scores = mx.where(mask, scores, mx.finfo(scores.dtype).min)
    weights = mx.softmax(scores, axis=-1, precise=True)
    return (weights @ values).reshape(B, H, 1, head_dim)


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        D, hidden = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(D, hidden, bias=False)
        self.up_proj = nn.Linear(D, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, D, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        if "gate_up_proj" in self:
            gate, up = mx.split(self.gate_up_proj(x), 2, axis=-1)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(swiglu(gate, up))

    def fuse(self) -> bool:
        """Replace gate/up_proj with one `gate_up_proj`; False if their layouts differ."""
        fused = fuse_linears([self.gate_proj, self.up_proj])
        if fused is None:
            return False
        self.gate_up_proj = fused
        del self.gate_proj, self.up_proj
        return True


@mx.compile
def swiglu(gate: mx.array, up: mx.array) -> mx.array:
    """silu(gate) * up as one compiled elementwise kernel instead of three."""
    return nn.silu(gate) * up


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def __call__(self, x: mx.array, cache: KVCache | None, offset: int | mx.array) -> mx.array:
        h = x + self.self_attn(self.input_layernorm(x), cache, offset)
        return h + self.mlp(self.post_attention_layernorm(h))


class Qwen2Backbone(nn.Module):
    """Embedding, decoder layers and final norm: `model.*` in a checkpoint."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = [DecoderLayer(config, i) for i in range(config.n_layers)]
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def __call__(self, tokens: mx.array, cache: KVCache | None) -> mx.array:
        offset = 0
        if cache is not None:
            cache.check_room(tokens.shape[1])
            offset = cache.offset

        # An untied table may be stored narrower than the layers compute (see the loader).
        h = self.embed_tokens(tokens).astype(self.norm.weight.dtype)  # (B, L, D)
        for layer in self.layers:
            h = layer(h, cache, offset)

        if cache is not None:
            cache.advance(tokens.shape[1])
        return self.norm(h)


class Qwen2Model(nn.Module):
    """Qwen2ForCausalLM: the backbone plus the output head (tied to the embedding or not)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        # "quantized" or "float": how the loader stored quantized checkpoints' layers.
        self.weight_layout = "float"
        self.model = Qwen2Backbone(config)
        if not config.tie_word_embeddings:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def __call__(
        self, tokens: mx.array, cache: KVCache | None = None, last_only: bool = False
    ) -> mx.array:
        """Return logits [B, L, vocab_size] for `tokens` [B, L], appending to `cache` if given.

        With `last_only`, return the logits of the last position only ([B, 1, vocab_size]): a
        prefill then skips the output head, the largest matmul, on every other position.
        """
        if cache is not None:
            cache.check_compatible(self.config)
        h = self.model(tokens, cache)
        if last_only:
            h = h[:, -1:, :]
        if self.config.tie_word_embeddings:
            return self.model.embed_tokens.as_linear(h)
        return self.lm_head(h)

    @property
    def dtype(self) -> mx.Dtype:
        """The dtype the layers compute in: that of the final norm's weight. An untied embedding
        table may be stored narrower (see the loader)."""
        return self.model.norm.weight.dtype

    def fuse_projections(self, evaluate: bool = False) -> int:
        """Fuse q/k/v and gate/up in every layer where their layouts match; return how many
        groups were fused. Logits stay the same up to float rounding.

        `evaluate`: compute each layer's fused weights before the next layer's, so that at most
        one layer has its separate and fused copies in memory at the same time.
        """
        fused = 0
        for layer in self.model.layers:
            fused += layer.self_attn.fuse()
            fused += layer.mlp.fuse()
            if evaluate:
                mx.eval(layer.parameters())
        return fused

    def make_cache(
        self, max_size: int | None = None, kv_bits: int | None = None, keep: int | None = None
    ) -> KVCache:
        """Return an empty KV cache for this model.

        `max_size`: most positions kept (default: the context length). `kv_bits` (8 or 4):
        store keys and values quantized. `keep`: make the cache a rotating window of `max_size`
        positions that always keeps the first `keep` tokens, so generation can run past it.
        """
        if keep is not None:
            if kv_bits is not None:
                raise CacheError("a rotating window cache cannot be quantized as well")
            return RotatingKVCache.for_model(self.config, max_size, keep=keep)
        if kv_bits is not None:
            return QuantizedKVCache.for_model(self.config, max_size, bits=kv_bits)
        return KVCache.for_model(self.config, max_size)

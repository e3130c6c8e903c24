"""Perceiver AR (Hawthorne et al., ICML 2022, arXiv 2202.07765), laid out like krasserm/perceiver-io 0.11.

A window of n tokens is split into a prefix (the first n - m) and m latents (the last m). One hybrid
causal attention layer lets each latent attend to the whole prefix and to the latents up to itself;
then a stack of causal self-attention layers runs over the latents only, so the deep part of the
network costs O(m) per window however long the prefix is. Only latent positions produce logits.

Layout facts reproduced from the released `krasserm/perceiver-ar-sam-giant-midi` (docs/perceiver-ar.md#architecture,
docs/perceiver-ar.md#rotary-positions; the 134M config has exactly 134,840,832 parameters):
- pre-LayerNorm residual layers; MLP = LN -> Linear(C, wC) -> GELU -> Linear(wC, C), no biases;
- hybrid layer: queries from q_norm(latents); keys/values from cat[kv_norm(prefix), q_norm(latents)]
  (the latents' keys/values go through the *query* norm); only its output projection has a bias;
- self-attention layers have no biases at all; final LayerNorm, then logits = h @ embedding^T;
- rotary embedding on adjacent channel pairs ([x1, x2] -> [-x2, x1], GPT-J style), on the first
  `rotary_channels` of each head, in the hybrid layer and the first `num_rotary_layers` self-attention
  layers; positions are right-aligned and left pads are skipped: pos = clamp(index - n_pads, min=0).

Generation follows perceiver-io's documented schedule, generalised to blocks: the prompt's last k
tokens are latents; each new token joins the latents until there are `max_latents`; then the oldest
`latent_block` latents move into the prefix at once (1 = perceiver-io's schedule), and once the prefix
is `max_prefix_len` long the oldest tokens drop out of the window to make room.

The key/value cache is exact under every block size: each step is the forward pass of the model for the
split the schedule uses. While the latents grow, a step runs one token through the network. When latents
move into the prefix, their hybrid-layer keys/values are recomputed through kv_norm, and every remaining
latent attended to them, so the remaining latents are recomputed in one batched pass (the prefix
keys/values stay cached); likewise when tokens drop out of the window. With a block of b, that
recomputation of max_latents + 1 - b latents happens once every b tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from amadeus import native
from amadeus.native.perceiver_step import layer_steps
from amadeus.params import Invalid, knob
from amadeus.vocab import PAD_ID, SHIFT_1S, VOCAB_SIZE


@dataclass
class PerceiverARConfig:
    """Defaults: a small model (about 1.4M parameters) sized to learn within minutes on a CPU;
    `sam_giant_midi_config()` is the released 134M one."""
    vocab_size: int = knob(VOCAB_SIZE + 1, min=2, help="388 performance events + PAD")
    max_seq_len: int = knob(256, min=2, help="window length n = prefix + latents")
    max_latents: int = knob(128, min=1, help="latent positions m (the ones that get logits)")
    num_channels: int = knob(192, min=2)
    num_heads: int = knob(4, min=1)
    num_self_attention_layers: int = knob(2, min=0)
    num_rotary_layers: int = knob(1, min=-1, help="self-attention layers with rotary (the first ones); -1 = all")
    rotary_channels: int = knob(-1, min=-1, help="rotated channels per head; -1 = head dim (half if abs_pos_emb)")
    cross_attention_widening_factor: int = knob(4, min=1)
    self_attention_widening_factor: int = knob(4, min=1)
    cross_attention_dropout: float = knob(0.1, min=0.0, lt=1.0, help="fraction of prefix positions dropped")
    attention_dropout: float = knob(0.0, min=0.0, lt=1.0, help="dropout on attention probabilities")
    residual_dropout: float = knob(0.0, min=0.0, lt=1.0, help="dropout on each sub-layer output")
    abs_pos_emb: bool = knob(False, help="learned absolute position embedding (added to the tokens)")
    output_norm: bool = knob(True, help="LayerNorm before the tied output projection")
    output_bias: bool = knob(False, help="bias on the output logits")
    init_scale: float = knob(0.02, gt=0.0, help="std of the normal init of Linear and Embedding weights")
    pad_id: int = knob(PAD_ID, min=0)

    def check(self) -> None:
        """Rules between the fields (amadeus.params.build calls this), so a bad config stops with one line
        before a model is built."""
        if self.vocab_size != VOCAB_SIZE + 1:
            raise Invalid(f"vocab_size: {self.vocab_size} must be {VOCAB_SIZE + 1} ({VOCAB_SIZE} events + PAD)")
        if self.pad_id != PAD_ID:
            raise Invalid(f"pad_id: {self.pad_id} must be {PAD_ID} (amadeus.vocab.PAD_ID)")
        if self.max_latents > self.max_seq_len:
            raise Invalid(f"max_latents: {self.max_latents} must be <= max_seq_len ({self.max_seq_len})")
        if self.num_channels % self.num_heads:
            raise Invalid(f"num_heads: {self.num_heads} must divide num_channels ({self.num_channels})")
        head = self.num_channels // self.num_heads
        rot = self.rotary_channels
        if rot == -1:
            rot = head // 2 if self.abs_pos_emb else head
        if rot % 2 or rot > head:
            raise Invalid(f"rotary_channels: {self.rotary_channels} gives {rot} rotated channels per head; "
                          f"they must be even and <= the head dim ({head} = num_channels / num_heads)")


def rotate_pairs(x: Tensor) -> Tensor:
    """[x1, x2, x3, x4, ...] -> [-x2, x1, -x4, x3, ...]: rotate adjacent channel pairs by 90 degrees."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    return torch.stack((-x2, x1), dim=-1).flatten(-2)


class Rotary(nn.Module):
    """Rotary position embedding (Su et al., arXiv 2104.09864) on the first `dim` channels of each head.

    Angles pos * 10000^(-2i/dim) (each used by one adjacent channel pair) are tabulated once for all
    window positions, so cached and uncached passes rotate by bit-identical cos/sin values."""

    def __init__(self, dim: int, max_len: int):
        super().__init__()
        self.dim = dim
        inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))
        angles = (torch.arange(max_len).float()[:, None] * inv_freq).repeat_interleave(2, dim=-1)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: Tensor, pos: Tensor) -> Tensor:
        """x [B, H, n, D] rotated by positions pos [B, n]."""
        if self.dim == 0:
            return x
        cos, sin = self.cos[pos][:, None].to(x.dtype), self.sin[pos][:, None].to(x.dtype)
        if self.dim == x.shape[-1]:
            return x * cos + rotate_pairs(x) * sin
        x_rot, x_pass = x[..., : self.dim], x[..., self.dim :]
        return torch.cat((x_rot * cos + rotate_pairs(x_rot) * sin, x_pass), dim=-1)


class Attention(nn.Module):
    """Multi-head attention with separate q/k/v/out Linears (so an int8 Linear can replace each one)."""

    def __init__(self, channels: int, heads: int, out_bias: bool, dropout: float):
        super().__init__()
        if channels % heads:
            raise ValueError(f"num_channels ({channels}) must be divisible by num_heads ({heads})")
        self.heads = heads
        self.dropout = dropout
        self.q_proj = nn.Linear(channels, channels, bias=False)
        self.k_proj = nn.Linear(channels, channels, bias=False)
        self.v_proj = nn.Linear(channels, channels, bias=False)
        self.o_proj = nn.Linear(channels, channels, bias=out_bias)

    def fused_qkv(self):
        """One amadeus.native product for q, k and v together, when the three are int8 with packed weights
        that quantize their input alike (else None); built once per set of weights."""
        parts = [getattr(m, "packed", None) for m in (self.q_proj, self.k_proj, self.v_proj)]
        if None in parts:
            return None
        if getattr(self, "_fused_parts", None) != parts:  # the same objects (held, so no id is reused)
            self._fused, self._fused_parts = native.PackedInt8Linear.concat(parts), parts
        return self._fused

    def project(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Queries, keys and values [B, n, C] of h [B, n, C]; a few rows go through the fused product
        when there is one (the same numbers)."""
        rows = h.shape[0] * h.shape[1]
        fused = self.fused_qkv() if rows <= native.MAX_ROWS and h.dtype == torch.float32 else None
        if fused is None:
            return self.q_proj(h), self.k_proj(h), self.v_proj(h)
        return fused(h.reshape(rows, -1)).view(*h.shape[:2], 3, -1).unbind(2)

    def heads_of(self, x: Tensor) -> Tensor:
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # [B, n, C] -> [B, H, n, D]

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool = False) -> Tensor:
        """q [B, H, i, D], k/v [B, H, j, D], mask [B, 1, i, j] (True = may attend) or `causal` for a plain
        square causal mask (lets SDPA pick flash kernels) -> [B, i, C]. Keys/values stored in a narrower
        type than q (an int8 model's bfloat16 cache) are read as they are by the one-query kernel of
        amadeus.native, else widened for SDPA: the same values either way."""
        o = None
        if k.dtype != q.dtype and mask is None and not causal and not self.training:
            o = native.attend_one(q, k, v, q.shape[-1] ** -0.5)
        if o is None:
            k, v = k.to(q.dtype), v.to(q.dtype)
            p = self.dropout if self.training else 0.0
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=causal)
        return self.o_proj(o.transpose(1, 2).flatten(2))


class MLP(nn.Module):
    def __init__(self, channels: int, widening: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.fc1 = nn.Linear(channels, widening * channels, bias=False)
        self.fc2 = nn.Linear(widening * channels, channels, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


class HybridLayer(nn.Module):
    """Latents attend to kv_norm(prefix) + q_norm(latents), causally; then an MLP. Both pre-LN residual."""

    def __init__(self, cfg: PerceiverARConfig):
        super().__init__()
        self.q_norm = nn.LayerNorm(cfg.num_channels)
        self.kv_norm = nn.LayerNorm(cfg.num_channels)
        self.attn = Attention(cfg.num_channels, cfg.num_heads, out_bias=True, dropout=cfg.attention_dropout)
        self.mlp = MLP(cfg.num_channels, cfg.cross_attention_widening_factor)

    def prefix_kv(self, x_prefix: Tensor) -> tuple[Tensor, Tensor]:
        """Unrotated keys and values [B, H, P, D] of prefix embeddings [B, P, C]."""
        h = self.kv_norm(x_prefix)
        return self.attn.heads_of(self.attn.k_proj(h)), self.attn.heads_of(self.attn.v_proj(h))


class SelfLayer(nn.Module):
    def __init__(self, cfg: PerceiverARConfig):
        super().__init__()
        self.norm = nn.LayerNorm(cfg.num_channels)
        self.attn = Attention(cfg.num_channels, cfg.num_heads, out_bias=False, dropout=cfg.attention_dropout)
        self.mlp = MLP(cfg.num_channels, cfg.self_attention_widening_factor)


def positions(pad: Tensor) -> Tensor:
    """Right-aligned positions of a left-padded window: index - number of pads, clamped at 0."""
    n = pad.shape[1]
    return (torch.arange(n, device=pad.device) - pad.sum(1, keepdim=True)).clamp(min=0)


def causal_mask(pad_q: Tensor, pad_k: Tensor) -> Tensor:
    """[B, 1, i, j] bool mask (True = may attend), queries right-aligned with keys, pad keys hidden.
    A query always sees itself, so a pad query's row is never empty (no NaN)."""
    i, j = pad_q.shape[1], pad_k.shape[1]
    ones = torch.ones(i, j, dtype=torch.bool, device=pad_q.device)
    causal, own = ones.tril(j - i), ones.tril(j - i).triu(j - i)
    return ((causal & ~pad_k[:, None, :]) | own)[:, None]


KV = tuple[Tensor, Tensor]


class PerceiverAR(nn.Module):
    family = "perceiver_ar"
    # Generation from nothing starts from a 1 s time shift (a moment of silence); amadeus.sampling
    # feeds it as the prompt and leaves it out of the result.
    bos_id = SHIFT_1S
    Config = PerceiverARConfig
    uses_controls = False

    def __init__(self, config: PerceiverARConfig):
        super().__init__()
        cfg = self.config = config
        if cfg.max_latents > cfg.max_seq_len:
            raise ValueError(f"max_latents ({cfg.max_latents}) must be <= max_seq_len ({cfg.max_seq_len})")
        head_dim = cfg.num_channels // cfg.num_heads
        rot = cfg.rotary_channels
        if rot == -1:  # perceiver-io's rule: the whole head, half of it with absolute positions (issue #41)
            rot = head_dim // 2 if cfg.abs_pos_emb else head_dim
        if rot % 2 or rot > head_dim:
            raise ValueError(f"rotary_channels ({rot}) must be even and <= head dim ({head_dim})")
        self.embed = nn.Embedding(cfg.vocab_size, cfg.num_channels)
        self.pos_embed = nn.Embedding(cfg.max_seq_len, cfg.num_channels) if cfg.abs_pos_emb else None
        self.rotary = Rotary(rot, cfg.max_seq_len)
        self.hybrid = HybridLayer(cfg)
        self.layers = nn.ModuleList(SelfLayer(cfg) for _ in range(cfg.num_self_attention_layers))
        self.out_norm = nn.LayerNorm(cfg.num_channels) if cfg.output_norm else None
        self.out_bias = nn.Parameter(torch.zeros(cfg.vocab_size)) if cfg.output_bias else None
        self.reset_parameters()

    @property
    def context_length(self) -> int:
        """The training window (tokens before the last target): the whole prefix + latents window."""
        return self.config.max_seq_len

    @property
    def max_prefix_len(self) -> int:
        return self.config.max_seq_len - self.config.max_latents

    def reset_parameters(self) -> None:
        # perceiver-io: N(0, init_scale) for Linear and Embedding weights, zero biases, LayerNorm (1, 0)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, 0.0, self.config.init_scale)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    # -- the network -------------------------------------------------------------------------------

    def _tied_weight(self) -> Tensor:
        # The output projection shares the embedding table; an int8 table (amadeus.quant) lends its
        # float copy, so the tied weight is stored once, as int8.
        dequantized = getattr(self.embed, "dequantized_weight", None)
        return dequantized() if dequantized is not None else self.embed.weight

    def _embed(self, ids: Tensor, pos: Tensor) -> Tensor:
        x = self.embed(ids)
        return x if self.pos_embed is None else x + self.pos_embed(pos)

    @property
    def kv_dtype(self) -> torch.dtype:
        """The type attention reads keys/values in: bfloat16 once the weights are int8 (amadeus.quant),
        halving what a cached step reads; else the weights' own. Every path (cached or not) rounds them."""
        weight = getattr(self.hybrid.attn.k_proj, "weight", None)
        if weight is None:  # a drop-in module that keeps its weights otherwise
            return torch.float32
        return weight.dtype if weight.is_floating_point() else torch.bfloat16

    def _prefix_for_attention(self, k_pre: Tensor, v_pre: Tensor, pos: Tensor) -> KV:
        """The hybrid layer's prefix keys (rotated at positions pos) and values, as attention reads them."""
        kv = self.kv_dtype
        return self.rotary(k_pre, pos).to(kv), v_pre.to(kv)

    def _rotates(self, layer: int) -> bool:
        """Does attention layer `layer` rotate (0 = hybrid, 1.. = self-attention)?"""
        n = self.config.num_rotary_layers
        return layer == 0 or n == -1 or layer - 1 < n

    def _qkv(self, layer: int, attn: Attention, h: Tensor, pos: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Queries, keys (rotated where the layer rotates) and values [B, H, m, D] of h [B, m, C]."""
        q, k, v = (attn.heads_of(t) for t in attn.project(h))
        if self._rotates(layer):
            q, k = self.rotary(q, pos), self.rotary(k, pos)
        kv = self.kv_dtype
        return q, k.to(kv), v.to(kv)

    def _residual(self, x: Tensor, y: Tensor) -> Tensor:
        return x + F.dropout(y, self.config.residual_dropout) if self.training else x + y

    def _latents(self, x: Tensor, pos: Tensor, pad: Tensor, prefix: tuple[Tensor, Tensor, Tensor]
                 ) -> tuple[Tensor, list[KV]]:
        """All latents x [B, L, C] (positions/pads [B, L]) through the network.

        prefix: rotated keys, values [B, H, P, D] and pads [B, P] of the hybrid layer's prefix.
        Returns the hidden states [B, L, C] and per attention layer the latents' keys/values."""
        kvs = []
        k_pre, v_pre, pad_pre = prefix
        h = self.hybrid.q_norm(x)
        q, k, v = self._qkv(0, self.hybrid.attn, h, pos)
        kvs.append((k, v))
        mask = causal_mask(pad, torch.cat([pad_pre, pad], 1))
        x = self._residual(x, self.hybrid.attn.attend(q, torch.cat([k_pre, k], 2), torch.cat([v_pre, v], 2), mask))
        x = self._residual(x, self.hybrid.mlp(x))
        plain = not bool(pad.any())  # no pads among the latents: SDPA's own causal mask will do
        mask = None if plain else causal_mask(pad, pad)
        for i, layer in enumerate(self.layers, start=1):
            q, k, v = self._qkv(i, layer.attn, layer.norm(x), pos)
            kvs.append((k, v))
            x = self._residual(x, layer.attn.attend(q, k, v, mask, causal=plain))
            x = self._residual(x, layer.mlp(x))
        return x, kvs

    def _logits(self, h: Tensor) -> Tensor:
        if self.out_norm is not None:
            h = self.out_norm(h)
        logits = h @ self._tied_weight().T
        return logits if self.out_bias is None else logits + self.out_bias

    def _encode(self, ids: Tensor, prefix_len: int, pad: Tensor) -> tuple[Tensor, KV, list[KV]]:
        """A full pass over a window: latent hidden states, the prefix's unrotated keys and values,
        and the latents' keys/values per layer."""
        n, p = ids.shape[1], prefix_len
        if not 0 <= p < n:
            raise ValueError(f"prefix_len ({p}) must be in [0, {n})")
        if p > self.max_prefix_len:
            raise ValueError(f"prefix_len ({p}) exceeds max_prefix_len ({self.max_prefix_len})")
        if n > self.config.max_seq_len:
            raise ValueError(f"sequence length {n} exceeds max_seq_len ({self.config.max_seq_len})")
        pos = positions(pad)
        x = self._embed(ids, pos)
        x_pre, pos_pre, pad_pre = x[:, :p], pos[:, :p], pad[:, :p]
        rate = self.config.cross_attention_dropout
        if self.training and p > 0 and rate > 0:
            # prefix dropout: every example keeps the same number of randomly chosen prefix positions,
            # with their own positions (perceiver-io, after lucidrains/perceiver-ar-pytorch)
            keep = p - int(p * rate)
            idx = torch.rand(x.shape[0], p, device=x.device).topk(keep, dim=1).indices.sort(dim=1).values
            x_pre = x_pre.gather(1, idx[..., None].expand(-1, -1, x.shape[2]))
            pos_pre, pad_pre = pos_pre.gather(1, idx), pad_pre.gather(1, idx)
        k_pre, v_pre = self.hybrid.prefix_kv(x_pre)
        prefix = (*self._prefix_for_attention(k_pre, v_pre, pos_pre), pad_pre)
        h, kvs = self._latents(x[:, p:], pos[:, p:], pad[:, p:], prefix)
        return h, (k_pre, v_pre), kvs

    # -- model protocol ----------------------------------------------------------------------------

    def forward(self, ids: Tensor, prefix_len: int | None = None, pad_mask: Tensor | None = None) -> Tensor:
        """ids [B, n] (left-padded where pad_mask [B, n] is True; default: ids == pad_id) -> logits
        [B, n - prefix_len, V] of the latent positions. prefix_len defaults to max(0, n - max_latents)."""
        if prefix_len is None:
            prefix_len = max(0, ids.shape[1] - self.config.max_latents)
        pad = ids.eq(self.config.pad_id) if pad_mask is None else pad_mask.bool()
        h, _, _ = self._encode(ids, prefix_len, pad)
        return self._logits(h)

    def loss(self, ids: Tensor, controls: Tensor | None = None) -> Tensor:
        """Mean NLL (nats/event) of ids [B, W+1] over the latent positions (the last min(W, max_latents)).

        Train mode: each example gets a random prefix length in [0, W - latents] by hiding its oldest
        prefix tokens as padding (as the reference recipe's left-padded variable-length examples do).
        Eval mode: the whole window is the context. PAD targets are not scored."""
        x, y = ids[:, :-1], ids[:, 1:]
        n = x.shape[1]
        p = n - min(n, self.config.max_latents)
        pad = x.eq(self.config.pad_id)
        if self.training and p > 0:
            hide = torch.randint(0, p + 1, (x.shape[0], 1), device=x.device)
            pad = pad | (torch.arange(n, device=x.device) < hide)
        logits = self.forward(x, p, pad)
        target = y[:, p:].masked_fill(y[:, p:].eq(self.config.pad_id), -100)
        return F.cross_entropy(logits.flatten(0, 1).float(), target.flatten(), ignore_index=-100)

    @torch.no_grad()
    def score(self, ids: Tensor) -> Tensor:
        """Teacher-forced logits [N, V] for every event of one long sequence ids [N].

        Events are predicted in blocks of max_latents targets, each block one forward pass whose
        latents are exactly those targets' positions and whose prefix is the max_prefix_len events
        before them, as in training (the start token stands before the first event).
        """
        cfg = self.config
        inputs = torch.cat([ids.new_full((1,), self.bos_id), ids[:-1]]).long()
        out = []
        for s in range(0, len(ids), cfg.max_latents):
            e = min(s + cfg.max_latents, len(ids))
            window = inputs[max(0, s - self.max_prefix_len):e][None]
            out.append(self.forward(window, window.shape[1] - (e - s))[0])
        return torch.cat(out) if out else inputs.new_zeros(0, cfg.vocab_size, dtype=torch.float32)

    @torch.no_grad()
    def prefill(self, ids: Tensor, num_latents: int = 1, pad_mask: Tensor | None = None,
                use_cache: bool = True, latent_block: int = 1) -> tuple[Tensor, dict]:
        """Start generation from prompts ids [B, T] (left-padded with pad_id).

        The prompt's last `num_latents` tokens are latents. A prompt longer than max_seq_len keeps its
        last max_seq_len tokens, and the latents grow if the prefix would exceed max_prefix_len.
        `latent_block`: how many latents move into the prefix at once when the latents are full
        (1..max_latents; 1 is perceiver-io's schedule, larger is faster and sees fewer latents).
        Returns the logits [B, V] of the next token and the generation state (step() may update the
        state's cache buffers in place: always continue from the state it returns)."""
        cfg = self.config
        if not 1 <= num_latents <= cfg.max_latents:
            raise ValueError(f"num_latents ({num_latents}) must be in [1, {cfg.max_latents}]")
        if not 1 <= latent_block <= cfg.max_latents:
            raise ValueError(f"latent_block ({latent_block}) must be in [1, {cfg.max_latents}]")
        pad = ids.eq(cfg.pad_id) if pad_mask is None else pad_mask.bool()
        ids, pad = ids[:, -cfg.max_seq_len:], pad[:, -cfg.max_seq_len:]
        n = ids.shape[1]
        p = n - min(n, max(num_latents, n - self.max_prefix_len))
        logits, state = self._full(ids, pad, p, use_cache)
        state["latent_block"] = latent_block
        return logits, state

    @torch.no_grad()
    def step(self, ids: Tensor, state: dict) -> tuple[Tensor, dict]:
        """Append ids [B] and advance the schedule: latents grow to max_latents, then the oldest
        `latent_block` of them join the prefix, dropping the oldest tokens once the prefix is full.
        Returns the next logits [B, V] and the new state."""
        cfg = self.config
        window = torch.cat([state["ids"], ids[:, None].to(state["ids"])], 1)
        pad = torch.cat([state["pad"], ids[:, None].eq(cfg.pad_id)], 1)
        block = state.get("latent_block", 1)
        old_p = p = state["prefix_len"]
        dropped = 0
        if window.shape[1] - p > cfg.max_latents:
            p += block  # the oldest latents join the prefix ...
            dropped = max(0, p - self.max_prefix_len)  # ... and the oldest tokens leave a full window
            window, pad, p = window[:, dropped:], pad[:, dropped:], p - dropped
        if "cache" not in state:
            logits, new = self._full(window, pad, p, False)
        elif p == old_p and not dropped:
            logits, new = self._step_one(window, pad, p, state["cache"])
        else:
            logits, new = self._step_shifted(window, pad, p, old_p, dropped, state["cache"])
        new["latent_block"] = block
        return logits, new

    def reorder_state(self, state: dict, index: Tensor) -> dict:
        """Select/reorder the batch rows of a generation state (beam search)."""
        def pick(v):
            if isinstance(v, Tensor):
                return v.index_select(0, index.to(v.device))
            if isinstance(v, (list, tuple)):
                return type(v)(pick(x) for x in v)
            if isinstance(v, dict):
                return {k: pick(x) for k, x in v.items()}
            return v
        return pick(state)

    # -- cached generation -------------------------------------------------------------------------
    # cache = {"prefix": unrotated keys and values of the hybrid layer's prefix [B, H, P, D] (rotated
    # again when the window slides), "buffers": per attention layer preallocated keys (rotated) and
    # values [B, H, capacity, D]: the hybrid layer's hold the whole window (prefix then latents), the
    # self-attention layers' the latents}. The window and prefix length give the filled lengths.

    def _full(self, ids: Tensor, pad: Tensor, p: int, use_cache: bool) -> tuple[Tensor, dict]:
        """A full pass over the window (prefill, uncached steps); fills a fresh cache if asked."""
        h, (k_pre, v_pre), kvs = self._encode(ids, p, pad)
        state = {"ids": ids, "pad": pad, "prefix_len": p}
        if use_cache:
            pos = positions(pad)
            state["cache"] = self._new_cache((k_pre, v_pre), self._prefix_for_attention(k_pre, v_pre, pos[:, :p]), kvs)
        return self._logits(h[:, -1]), state

    def _new_cache(self, prefix: KV, prefix_rotated: KV, kvs: list[KV]) -> dict:
        buffers = []
        for i, (k, v) in enumerate(kvs):
            if i == 0:  # the hybrid layer: prefix keys/values, then the latents'
                k, v = torch.cat([prefix_rotated[0], k], 2), torch.cat([prefix_rotated[1], v], 2)
            cap = self.config.max_seq_len if i == 0 else self.config.max_latents
            kb, vb = k.new_empty(*k.shape[:2], cap, k.shape[3]), v.new_empty(*v.shape[:2], cap, v.shape[3])
            kb[:, :, : k.shape[2]], vb[:, :, : v.shape[2]] = k, v
            buffers.append((kb, vb))
        return {"prefix": prefix, "buffers": buffers}

    def _step_one(self, ids: Tensor, pad: Tensor, p: int, cache: dict) -> tuple[Tensor, dict]:
        """The new token is one more latent and nothing else moved: run just that token, appending its
        keys/values to the buffers."""
        n = ids.shape[1]
        pos = positions(pad)
        x = self._embed(ids[:, -1:], pos[:, -1:])
        seen = (~pad)[:, None, None, :].clone() if bool(pad.any()) else None
        if seen is not None:
            seen[..., -1] = True  # a token always sees itself
        lengths = [n] + [n - p] * len(self.layers)  # hybrid: the whole window; self-attention: the latents
        steps = layer_steps(self) if ids.shape[0] == 1 and seen is None and not self.training else None
        if steps is not None:  # int8 at batch 1: each layer in one call of amadeus.native's kernels
            x = steps.run(x, cache["buffers"], lengths, int(pos[0, -1]), self.rotary).view(1, 1, -1)
            state = {"ids": ids, "pad": pad, "prefix_len": p, "cache": cache}
            return self._logits(x[:, -1]), state
        layers = [(self.hybrid.attn, self.hybrid.q_norm, self.hybrid.mlp)]
        layers += [(layer.attn, layer.norm, layer.mlp) for layer in self.layers]
        for i, (attn, norm, mlp) in enumerate(layers):
            length = lengths[i]
            q, k, v = self._qkv(i, attn, norm(x), pos[:, -1:])
            kb, vb = cache["buffers"][i]
            kb[:, :, length - 1 : length], vb[:, :, length - 1 : length] = k, v
            mask = None if seen is None else seen[..., n - length :]
            x = self._residual(x, attn.attend(q, kb[:, :, :length], vb[:, :, :length], mask))
            x = self._residual(x, mlp(x))
        state = {"ids": ids, "pad": pad, "prefix_len": p, "cache": cache}
        return self._logits(x[:, -1]), state

    def _step_shifted(self, ids: Tensor, pad: Tensor, p: int, old_p: int, dropped: int, cache: dict
                      ) -> tuple[Tensor, dict]:
        """Latents moved into the prefix (it was old_p long, it is p now) and/or the oldest `dropped`
        tokens left the window. Every remaining latent attended to them, so all latents are recomputed;
        the prefix keys/values still in the window are reused."""
        if self.pos_embed is not None and dropped:
            return self._full(ids, pad, p, True)  # sliding shifts all absolute positions: nothing reusable
        pos = positions(pad)
        k_pre, v_pre = cache["prefix"]
        kept = max(0, old_p - dropped)  # cached prefix entries still in the window: ids[:, :kept]
        k_pre, v_pre = k_pre[:, :, old_p - kept:], v_pre[:, :, old_p - kept:]
        if p > kept:
            # the old latents that are now prefix tokens: their keys/values come through kv_norm
            k_new, v_new = self.hybrid.prefix_kv(self._embed(ids[:, kept:p], pos[:, kept:p]))
            k_pre, v_pre = torch.cat([k_pre, k_new], 2), torch.cat([v_pre, v_new], 2)
        prefix_rotated = self._prefix_for_attention(k_pre, v_pre, pos[:, :p])
        x = self._embed(ids[:, p:], pos[:, p:])
        h, kvs = self._latents(x, pos[:, p:], pad[:, p:], (*prefix_rotated, pad[:, :p]))
        state = {"ids": ids, "pad": pad, "prefix_len": p, "cache": self._new_cache((k_pre, v_pre), prefix_rotated, kvs)}
        return self._logits(h[:, -1]), state


def sam_giant_midi_config() -> PerceiverARConfig:
    """The released krasserm/perceiver-ar-sam-giant-midi configuration (docs/perceiver-ar.md#released-model)."""
    return PerceiverARConfig(vocab_size=389, max_seq_len=6144, max_latents=2048, num_channels=768, num_heads=8,
                             num_self_attention_layers=18, num_rotary_layers=1, cross_attention_dropout=0.1,
                             attention_dropout=0.1, residual_dropout=0.1, abs_pos_emb=False, output_norm=True,
                             output_bias=False, init_scale=0.02)


__all__ = ["PerceiverAR", "PerceiverARConfig", "sam_giant_midi_config"]

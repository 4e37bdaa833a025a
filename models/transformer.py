"""Transformer encoder-decoder (Vaswani et al. 2017), the paper's Section 5.4 translation model.

`Transformer()` is Transformer-big as the paper's authors trained it on WMT14 en-de: 6 encoder and 6 decoder
layers, d_model 1024, d_ff 4096, 16 heads, sinusoidal positions, one embedding matrix shared three ways (source
embedding, target embedding and output projection, scaled by sqrt(d_model) on the way in), ReLU feed-forward.

Two layouts, chosen by three arguments (docs/fidelity.md):
- the authors' (the default; OpenSeq2Seq's Transformer, itself the TensorFlow official/MLPerf one):
  `pre_norm=True` (LayerNorm before each sublayer, and a final LayerNorm closing the encoder and the decoder),
  `attention_bias=False` (q/k/v/output projections without biases), `activation_dropout` equal to `dropout`
  (their `relu_dropout`), and q/k/v initialised Xavier-uniform with gain 1 (TensorFlow's default initializer).
  At vocabulary 8192: 184,676,352 parameters.
- fairseq's `transformer_wmt_en_de_big` with `--share-all-embeddings` (configs/model/transformer_big_fairseq.yaml):
  post-norm (`pre_norm=False`), attention projections with biases, no dropout after the ReLU, q/k/v gain
  1/sqrt(2). At vocabulary 8192: 184,745,984 parameters (73,728 attention biases more, 4,096 final-LayerNorm
  parameters fewer).
Both have LayerNorms with a bias, feed-forward layers with biases, and an output projection tied to the embedding
without a bias.

Decoding: `encode` once, `start_decoding` to cache the encoder keys and values of every decoder layer (once per
beam), then `decode_step` one token at a time; the self-attention keys and values grow in the `DecoderCache`,
whose `select_beams` moves them between a sentence's beams for beam search (models/beam_search.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

KeysValues = tuple[Tensor, Tensor]  # each (batch, heads, length, head_dim)


def sinusoidal_positions(positions: Tensor, dim: int) -> Tensor:
    """Sinusoidal encodings (len(positions), dim): sines in the first half, cosines in the second.

    The concatenated layout and the frequencies 10000^(-i / (dim/2 - 1)) are Tensor2Tensor's, used by both
    fairseq and OpenSeq2Seq (Vaswani et al. interleave sin and cos; the model is indifferent to the order).
    Computed on the fly in fp32: it is cheap, has no parameters and works at any length.
    """
    if dim % 2 != 0:
        raise ValueError(f"sinusoidal positions need an even dimension, got {dim}")
    half = dim // 2
    frequencies = torch.exp(
        torch.arange(half, device=positions.device, dtype=torch.float32) * -(math.log(10000.0) / (half - 1))
    )
    angles = positions.float()[:, None] * frequencies[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class MultiheadAttention(nn.Module):
    """Multi-head attention with separate q/k/v/output projections, through SDPA.

    Keys and values are projected by `project_keys_values`, apart from the attention itself, so that the decoder
    can cache them: the encoder's once per sentence, its own one position per step.

    Args:
        bias: whether the four projections have biases (fairseq: yes; OpenSeq2Seq/TensorFlow official: no).
        qkv_init_gain: gain of the q/k/v projections' Xavier-uniform init. 1/sqrt(2) is fairseq's: it reproduces
            the bound of the single (3d x d) input projection of earlier fairseq versions. 1 is TensorFlow's
            default (glorot_uniform), the authors'.
    """

    def __init__(self, d_model: int, num_heads: int, dropout: float, bias: bool = True,
                 qkv_init_gain: float = 1.0) -> None:
        super().__init__()
        if d_model % num_heads != 0:
            raise ValueError(f"d_model {d_model} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)
        self.reset_parameters(qkv_init_gain)

    def reset_parameters(self, qkv_init_gain: float) -> None:
        for projection in (self.q_proj, self.k_proj, self.v_proj):
            nn.init.xavier_uniform_(projection.weight, gain=qkv_init_gain)
        nn.init.xavier_uniform_(self.out_proj.weight)
        for projection in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            if projection.bias is not None:
                nn.init.zeros_(projection.bias)

    def _split_heads(self, x: Tensor) -> Tensor:
        batch, length, d_model = x.shape
        return x.view(batch, length, self.num_heads, d_model // self.num_heads).transpose(1, 2)

    def project_keys_values(self, x: Tensor) -> KeysValues:
        """(batch, length, d_model) -> keys and values, each (batch, heads, length, head_dim)."""
        return self._split_heads(self.k_proj(x)), self._split_heads(self.v_proj(x))

    def forward(
        self, x: Tensor, keys: Tensor, values: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False
    ) -> Tensor:
        """Queries from x (batch, length, d_model) attend to keys/values; `attn_mask` is True where allowed."""
        out = F.scaled_dot_product_attention(
            self._split_heads(self.q_proj(x)),
            keys,
            values,
            attn_mask=attn_mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=is_causal,
        )
        batch, _, length, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, -1))


class FeedForward(nn.Module):
    """Linear -> ReLU -> dropout -> linear, with biases in both layouts (fairseq's `activation_dropout`,
    OpenSeq2Seq's `relu_dropout`, sits after the ReLU)."""

    def __init__(self, d_model: int, d_ff: int, activation_dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_ff)
        self.fc2 = nn.Linear(d_ff, d_model)
        self.activation_dropout = nn.Dropout(activation_dropout)
        for fc in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.activation_dropout(F.relu(self.fc1(x))))


class TransformerLayer(nn.Module):
    """What encoder and decoder layers share: self-attention and feed-forward sublayers, each with a LayerNorm,
    and where those norms sit around the residual connections.

    Post-norm (Vaswani et al.): x = norm(x + dropout(sublayer(x))). Pre-norm: x = x + dropout(sublayer(norm(x))).
    A layer calls `sublayer_input(x, norm)` for what its sublayer reads and `add(x, out, norm)` for the sum.
    """

    #: Whether the layer also attends to the encoder output (the decoder's), with its own LayerNorm.
    cross_attention = False

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        d_ff: int,
        dropout: float,
        attention_dropout: float,
        activation_dropout: float,
        pre_norm: bool,
        attention_bias: bool = True,
        qkv_init_gain: float = 1.0,
        layer_norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        attention_args = (d_model, num_heads, attention_dropout, attention_bias, qkv_init_gain)
        self.self_attn = MultiheadAttention(*attention_args)
        self.self_attn_norm = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.ffn = FeedForward(d_model, d_ff, activation_dropout)
        self.ffn_norm = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.dropout = nn.Dropout(dropout)
        self.pre_norm = pre_norm
        if self.cross_attention:  # the decoder's attention over the encoder output
            self.cross_attn = MultiheadAttention(*attention_args)
            self.cross_attn_norm = nn.LayerNorm(d_model, eps=layer_norm_eps)

    def sublayer_input(self, x: Tensor, norm: nn.LayerNorm) -> Tensor:
        return norm(x) if self.pre_norm else x

    def add(self, x: Tensor, sublayer_output: Tensor, norm: nn.LayerNorm) -> Tensor:
        x = x + self.dropout(sublayer_output)
        return x if self.pre_norm else norm(x)


class EncoderLayer(TransformerLayer):
    """Self-attention over the source, then the feed-forward block."""

    def forward(self, x: Tensor, src_mask: Tensor) -> Tensor:
        h = self.sublayer_input(x, self.self_attn_norm)
        keys, values = self.self_attn.project_keys_values(h)
        x = self.add(x, self.self_attn(h, keys, values, attn_mask=src_mask), self.self_attn_norm)
        return self.add(x, self.ffn(self.sublayer_input(x, self.ffn_norm)), self.ffn_norm)


class DecoderLayer(TransformerLayer):
    """Causal self-attention, attention over the encoder output, then the feed-forward block."""

    cross_attention = True

    def forward(
        self, x: Tensor, memory: Tensor | KeysValues, src_mask: Tensor, past_kv: KeysValues | None = None
    ) -> tuple[Tensor, KeysValues]:
        """Returns the layer's output and its self-attention keys/values (the past ones followed by x's).

        `memory`: the encoder output, projected to keys/values here (teacher forcing: inside the layer's forward,
        where a sharded run has gathered its weights), or those keys/values already projected (incremental decoding
        projects them once per sentence). Without `past_kv`, x is a whole target prefix and self-attention is
        causal. With it, x is the one next position, which may attend to every cached one, so no mask is needed.
        """
        memory_kv = self.cross_attn.project_keys_values(memory) if isinstance(memory, Tensor) else memory
        h = self.sublayer_input(x, self.self_attn_norm)
        keys, values = self.self_attn.project_keys_values(h)
        if past_kv is not None:
            keys, values = torch.cat([past_kv[0], keys], dim=2), torch.cat([past_kv[1], values], dim=2)
        x = self.add(x, self.self_attn(h, keys, values, is_causal=past_kv is None), self.self_attn_norm)
        h = self.sublayer_input(x, self.cross_attn_norm)
        x = self.add(x, self.cross_attn(h, *memory_kv, attn_mask=src_mask), self.cross_attn_norm)
        x = self.add(x, self.ffn(self.sublayer_input(x, self.ffn_norm)), self.ffn_norm)
        return x, (keys, values)


@dataclass
class DecoderCache:
    """What incremental decoding keeps between steps, one row per hypothesis: `beam_size` consecutive rows per
    sentence (sentence-major).

    Attributes:
        memory_kv: per decoder layer, the encoder output's keys and values, computed and expanded to every beam
            once by `start_decoding`. They depend only on the sentence, so beam search never moves them.
        src_mask: (rows, 1, 1, source length), True at real source tokens.
        self_kv: per decoder layer, the keys and values of the target positions decoded so far (grows each step).
        beam_size: rows per sentence.
        length: target positions decoded so far; the next token's position.
    """

    memory_kv: list[KeysValues]
    src_mask: Tensor
    self_kv: list[KeysValues]
    beam_size: int = 1
    length: int = 0

    def select_beams(self, beams: Tensor) -> None:
        """Beam j of sentence b continues old beam beams[b, j] of the same sentence (beams: (sentences, beam_size)).

        Only the self-attention keys/values move: a hypothesis never changes sentence, so the encoder's stay put.
        """
        sentences = beams.size(0)
        offsets = torch.arange(sentences, device=beams.device)[:, None] * self.beam_size
        index = (offsets + beams).view(-1)
        self.self_kv = [(k.index_select(0, index), v.index_select(0, index)) for k, v in self.self_kv]


class Transformer(nn.Module):
    """Encoder-decoder Transformer with all embeddings shared; `Transformer()` is Transformer-big.

    Args:
        vocab_size: joint source-target vocabulary (the paper's BPE has 8192 tokens).
        pad_id, bos_id, eos_id: special token ids of that vocabulary. The pad embedding starts at zero and padded
            source positions are masked out of attention; the decoder reads BOS first and ends with EOS.
        d_model, d_ff, num_heads: model width, feed-forward width and attention heads.
        encoder_layers, decoder_layers: layers in each stack.
        dropout: on embeddings and on every residual branch (the paper: 0.3 with Adam/AdamW, 0.2 with NovoGrad).
        attention_dropout: on the attention weights.
        activation_dropout: after the feed-forward ReLU (the authors: equal to `dropout`; fairseq's default 0).
        pre_norm: LayerNorm before each sublayer, plus a final LayerNorm per stack (the authors'); False:
            post-norm (Vaswani et al., fairseq).
        attention_bias: biases in the attention projections (fairseq's; the authors' have none).
        qkv_init_gain: Xavier gain of the q/k/v projections (1: the authors' TensorFlow default; fairseq 1/sqrt(2)).
        layer_norm_eps: every LayerNorm's epsilon (1e-5: fairseq and the authors' NovoGrad config; OpenSeq2Seq's
            default and their Adam config, 1e-6).
    """

    # The units a sharded run shards one by one (FSDP2's fully_shard): an encoder or decoder layer.
    block_types = (TransformerLayer,)

    def __init__(
        self,
        vocab_size: int = 8192,
        pad_id: int = 0,
        bos_id: int = 1,
        eos_id: int = 2,
        d_model: int = 1024,
        d_ff: int = 4096,
        num_heads: int = 16,
        encoder_layers: int = 6,
        decoder_layers: int = 6,
        dropout: float = 0.3,
        attention_dropout: float = 0.1,
        activation_dropout: float = 0.3,
        pre_norm: bool = True,
        attention_bias: bool = False,
        qkv_init_gain: float = 1.0,
        layer_norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if len({pad_id, bos_id, eos_id}) != 3 or not all(0 <= i < vocab_size for i in (pad_id, bos_id, eos_id)):
            raise ValueError(
                f"pad_id {pad_id}, bos_id {bos_id} and eos_id {eos_id} must be distinct ids below vocab_size "
                f"{vocab_size}; pass the ids of the data's sentencepiece model"
            )
        self.vocab_size, self.pad_id, self.bos_id, self.eos_id = vocab_size, pad_id, bos_id, eos_id
        self.d_model = d_model
        layer_args = (d_model, num_heads, d_ff, dropout, attention_dropout, activation_dropout, pre_norm,
                      attention_bias, qkv_init_gain, layer_norm_eps)
        self.embed_tokens = nn.Embedding(vocab_size, d_model, padding_idx=pad_id)
        self.embed_dropout = nn.Dropout(dropout)
        self.encoder_layers = nn.ModuleList(EncoderLayer(*layer_args) for _ in range(encoder_layers))
        self.decoder_layers = nn.ModuleList(DecoderLayer(*layer_args) for _ in range(decoder_layers))
        # Post-norm layers end normalised already; pre-norm ones leave the residual stream unnormalised.
        self.encoder_norm = nn.LayerNorm(d_model, eps=layer_norm_eps) if pre_norm else nn.Identity()
        self.decoder_norm = nn.LayerNorm(d_model, eps=layer_norm_eps) if pre_norm else nn.Identity()
        # fairseq's and OpenSeq2Seq's embedding init: N(0, d_model^-0.5), so that the sqrt(d_model)-scaled input
        # has unit variance.
        nn.init.normal_(self.embed_tokens.weight, mean=0.0, std=d_model**-0.5)
        with torch.no_grad():
            self.embed_tokens.weight[pad_id].zero_()

    def embed(self, tokens: Tensor, start: int = 0) -> Tensor:
        """Token embeddings x sqrt(d_model) plus the positions start, start + 1, ..., then dropout."""
        positions = torch.arange(start, start + tokens.size(1), device=tokens.device)
        x = self.embed_tokens(tokens) * math.sqrt(self.d_model)
        return self.embed_dropout(x + sinusoidal_positions(positions, self.d_model).to(x.dtype))

    def output_logits(self, x: Tensor) -> Tensor:
        """The decoder's last hidden states -> vocabulary logits through the shared embedding (no bias)."""
        return F.linear(self.decoder_norm(x), self.embed_tokens.weight)

    def encode(self, src_tokens: Tensor) -> tuple[Tensor, Tensor]:
        """(batch, source length) token ids -> encoder output (batch, S, d_model) and the mask True at padding."""
        src_pad_mask = src_tokens.eq(self.pad_id)
        src_mask = self._attention_mask(src_pad_mask)
        x = self.embed(src_tokens)
        for layer in self.encoder_layers:
            x = layer(x, src_mask)
        return self.encoder_norm(x), src_pad_mask

    @staticmethod
    def _attention_mask(src_pad_mask: Tensor) -> Tensor:
        """Padding mask (batch, S), True at padding -> SDPA's boolean mask (batch, 1, 1, S), True where allowed."""
        return ~src_pad_mask[:, None, None, :]

    def decode(self, tgt_input: Tensor, memory: Tensor, src_pad_mask: Tensor) -> Tensor:
        """Teacher-forced decoding: (batch, T) target inputs (BOS first) -> logits (batch, T, vocab).

        Target padding needs no mask: it sits after the real tokens, which causal attention never lets them see.
        """
        src_mask = self._attention_mask(src_pad_mask)
        x = self.embed(tgt_input)
        for layer in self.decoder_layers:
            x, _ = layer(x, memory, src_mask)
        return self.output_logits(x)

    def forward(self, src_tokens: Tensor, tgt_input: Tensor) -> Tensor:
        """(batch, S) source and (batch, T) target-input ids -> next-token logits (batch, T, vocab)."""
        return self.decode(tgt_input, *self.encode(src_tokens))

    def start_decoding(self, memory: Tensor, src_pad_mask: Tensor, beam_size: int = 1) -> DecoderCache:
        """An empty cache for `decode_step` with `beam_size` rows per sentence: every decoder layer's encoder
        keys/values are projected once per sentence and repeated once per beam."""

        def per_beam(t: Tensor) -> Tensor:
            return t.repeat_interleave(beam_size, dim=0) if beam_size > 1 else t

        memory_kv = [layer.cross_attn.project_keys_values(memory) for layer in self.decoder_layers]
        return DecoderCache(
            memory_kv=[(per_beam(k), per_beam(v)) for k, v in memory_kv],
            src_mask=per_beam(self._attention_mask(src_pad_mask)),
            self_kv=[],
            beam_size=beam_size,
        )

    def decode_step(self, tokens: Tensor, cache: DecoderCache) -> Tensor:
        """Feed each row's latest token (rows,) at position `cache.length` -> next-token logits (rows, vocab).

        Appends this position's keys/values to `cache` and advances its length. Same logits as `decode` on the
        whole prefix (tests/test_transformer.py).
        """
        x = self.embed(tokens[:, None], start=cache.length)
        new_self_kv = []
        for i, layer in enumerate(self.decoder_layers):
            past_kv = cache.self_kv[i] if cache.self_kv else None
            x, kv = layer(x, cache.memory_kv[i], cache.src_mask, past_kv)
            new_self_kv.append(kv)
        cache.self_kv = new_self_kv
        cache.length += 1
        return self.output_logits(x[:, 0])


def label_smoothed_nll_loss(
    logits: Tensor, target: Tensor, ignore_index: int, epsilon: float = 0.1
) -> tuple[Tensor, Tensor]:
    """Label-smoothed cross-entropy and plain NLL, each summed over the non-pad target tokens, in fp32.

    The smoothed target puts 1 - epsilon on the reference token and spreads epsilon uniformly over the whole
    vocabulary (epsilon / V on every token, the reference included): fairseq's definition in 2019, the paper's
    time, and `F.cross_entropy(label_smoothing=epsilon)`'s (tests/test_transformer.py). The authors' OpenSeq2Seq
    loss and later fairseq versions spread epsilon over the V - 1 other tokens instead (OpenSeq2Seq also subtracts
    the constant entropy of the smoothed target): at V = 8192 the target weights differ by 1/8192 of epsilon.

    Args:
        logits: (..., V) in any dtype; the log-softmax is taken in fp32.
        target: (...) token ids; positions equal to `ignore_index` contribute nothing.
    Returns:
        (loss_sum, nll_sum): the training loss and the unsmoothed NLL (for perplexity), both scalars.
    """
    log_probs = F.log_softmax(logits.float(), dim=-1)
    nll = -log_probs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    smooth = -log_probs.sum(dim=-1)
    keep = target.ne(ignore_index)
    nll_sum = torch.where(keep, nll, 0.0).sum()
    smooth_sum = torch.where(keep, smooth, 0.0).sum()
    loss_sum = (1.0 - epsilon) * nll_sum + (epsilon / log_probs.size(-1)) * smooth_sum
    return loss_sum, nll_sum

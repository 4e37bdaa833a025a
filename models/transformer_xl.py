"""Transformer-XL language model (Dai et al. 2019), the paper's Section 5.3 model.

The paper trained NVIDIA DeepLearningExamples' "base" Transformer-XL on WikiText-103: 16 post-norm layers,
d_model 512, 8 heads of 64, d_inner 2048, dropout 0.15, an adaptive softmax with cutoffs [20000, 40000, 200000]
tied to the input embedding, and a 267,735-word vocabulary: 191,950,298 parameters ("191M" in the paper).

What makes it Transformer-XL:
- **Segment-level recurrence.** Each layer attends over its own input for the current segment *and* a memory of
  the last `mem_len` inputs it saw in earlier segments (detached: no gradient flows into the past). The memory is
  returned by `forward` and passed back in for the next segment of the same streams.
- **Relative positional attention** ("attn_type 0" in the authors' code). The score of query i and key j is
  `(q_i + u) . k_j + (q_i + v) . W_r R_{i-j}`, where R is a sinusoidal embedding of the distance i - j, and u, v
  (`r_w_bias`, `r_r_bias`) are learned biases shared by all layers, as in DeepLearningExamples' base model.
  Positions are never absolute, so memories from earlier segments need no re-encoding.
- **Adaptive input and softmax** (Baevski & Auli 2018; Grave et al. 2017). With div_val 1 every cluster keeps
  the full d_model width, so the adaptive input is a plain (scaled) embedding and there are no projections: the
  tied projections of the authors' code (tie_projs [False, True, True, True]) have nothing to tie here. The
  softmax is hierarchical: a head over the frequent words plus one entry per tail cluster, then a softmax
  within the cluster. It shares its word vectors with the input embedding, which
  `torch.nn.AdaptiveLogSoftmaxWithLoss` cannot, hence `AdaptiveLogSoftmax` below.

Tensors are batch-first throughout (the reference code is time-first): tokens (B, T), memories (B, M, d_model).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

#: Standard deviation of the normal initialisation of every weight (DeepLearningExamples' `init_std`).
INIT_STD = 0.02

#: `attention_backend` -> the SDPA kernels allowed. The position term reaches SDPA as a float `attn_mask` that
#: needs gradients, a case where CUDA kernels have had bugs (PyTorch issues 196678: cuDNN NaN gradients with a mask
#: on H100/H200 at sequence lengths 64 mod 128; 191612: a mask dtype other than the query's misread; 148476:
#: illegal memory access when only the mask needs gradients). "auto" therefore keeps cuDNN out on CUDA and takes
#: the memory-efficient kernel, else math; on the CPU it leaves the choice to torch. `make gpu-check` compares
#: each backend's bf16 gradients with the math backend's; flash attention takes no mask and is not offered.
ATTENTION_BACKENDS: dict[str, list[SDPBackend] | None] = {
    "auto": [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH],
    "math": [SDPBackend.MATH],
    "efficient": [SDPBackend.EFFICIENT_ATTENTION],
    "cudnn": [SDPBackend.CUDNN_ATTENTION],
}


def sinusoidal_embedding(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """(N,) float positions -> (N, dim): [sin(p * f_0..f_{dim/2-1}), cos(p * f_0..f_{dim/2-1})], f_k = 10000^(-2k/dim).

    Transformer-XL concatenates the sines and cosines instead of interleaving them as Vaswani et al. do.
    """
    inverse_frequencies = 10000.0 ** (-torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32) / dim)
    angles = positions.float()[:, None] * inverse_frequencies[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def relative_distances(key_len: int, clamp_len: int | None, device: torch.device) -> torch.Tensor:
    """The distances K-1, K-2, ..., 0 of the relative embeddings, clamped at `clamp_len` (if set).

    Relative embedding r stands for distance K-1-r: reversed so that `rel_shift` can line it up with the keys.
    Clamping reuses the embedding of distance `clamp_len` for every farther key: the authors evaluate with
    clamp_len 400 and a 704-token attention span, beyond the distances seen in training.
    """
    distances = torch.arange(key_len - 1, -1, -1, device=device)
    return distances if clamp_len is None else distances.clamp(max=clamp_len)


def attention_mask(query_len: int, key_len: int, max_distance: int | None, device: torch.device) -> torch.Tensor:
    """(Q, K) bool, True where query i may attend key j.

    The queries are the last Q of the K keys (the memory comes first), so query i sits at key position K-Q+i and
    its distance to key j is K-Q+i-j. Causal: distance >= 0. With `max_distance` (Transformer-XL's
    `same_length`, max_distance = mem_len) every query sees the same number of keys, max_distance + 1, instead of
    the first query of a segment seeing the fewest.
    """
    query_positions = torch.arange(key_len - query_len, key_len, device=device)[:, None]
    distance = query_positions - torch.arange(key_len, device=device)[None, :]
    allowed = distance >= 0
    return allowed if max_distance is None else allowed & (distance <= max_distance)


def rel_shift(scores: torch.Tensor) -> torch.Tensor:
    """(..., Q, K) scores against the relative embeddings (distances K-1..0) -> (..., Q, K) scores against the keys.

    Query i at key position K-Q+i needs, for key j, the embedding of distance K-Q+i-j, which is column Q-1-i+j of
    `scores`: each row must shift left by Q-1-i. Padding a zero column in front and re-reading the (Q, K+1) block
    as (K+1, Q) moves every row one step further than the row above; dropping the first (Q-long) run of that view
    and reading the rest as (Q, K) leaves row i shifted by exactly Q-1-i. This is exact wherever j <= K-Q+i (every
    causal position); the entries above that diagonal hold leftovers and must be masked out by the caller.
    """
    *batch, query_len, key_len = scores.shape
    padded = F.pad(scores, (1, 0))  # (..., Q, K+1)
    padded = padded.view(*batch, key_len + 1, query_len)
    return padded[..., 1:, :].reshape(*batch, query_len, key_len)


class RelativeMultiHeadAttention(nn.Module):
    """Multi-head attention with Transformer-XL's relative position scores and memory, post-norm residual.

    The content term (q_i + u) . k_j goes through `scaled_dot_product_attention`; the position term
    (q_i + v) . W_r R_{i-j} is computed once per layer as a (B, H, Q, K) tensor, shifted into place and handed to
    SDPA as its additive `attn_mask` (with -inf where attention is not allowed). SDPA then scales the content term
    by 1/sqrt(d_head) itself, so the position term is pre-scaled to match. Gradients flow through both terms.
    """

    def __init__(
        self, d_model: int, n_head: int, d_head: int, dropout: float, dropatt: float, attention_backend: str = "auto"
    ) -> None:
        super().__init__()
        if attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(f"model.attention_backend must be one of {sorted(ATTENTION_BACKENDS)}, "
                             f"got {attention_backend!r}")
        self.n_head, self.d_head, self.dropatt = n_head, d_head, dropatt
        self.attention_backend = attention_backend
        inner = n_head * d_head
        # The authors' code uses one qkv projection over memory + segment and discards the memory's queries;
        # splitting it keeps the same parameters and never computes those queries.
        self.query = nn.Linear(d_model, inner, bias=False)
        self.key_value = nn.Linear(d_model, 2 * inner, bias=False)
        self.position = nn.Linear(d_model, inner, bias=False)  # W_r: relative embeddings -> per-head keys
        self.out = nn.Linear(inner, d_model, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.layer_norm = nn.LayerNorm(d_model)

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor,
        relative_embedding: torch.Tensor,
        mask: torch.Tensor,
        content_bias: torch.Tensor,
        position_bias: torch.Tensor,
    ) -> torch.Tensor:
        """x (B, Q, d), memory (B, M, d), relative_embedding (K, d) for distances K-1..0 (K = M + Q),
        mask (Q, K) bool (True = attend), content_bias u and position_bias v (H, d_head) -> (B, Q, d)."""
        batch, query_len, _ = x.shape
        context = torch.cat([memory.to(x.dtype), x], dim=1)
        key_len = context.shape[1]
        q = self.query(x).view(batch, query_len, self.n_head, self.d_head).transpose(1, 2)  # (B, H, Q, Dh)
        k, v = self.key_value(context).view(batch, key_len, 2, self.n_head, self.d_head).permute(2, 0, 3, 1, 4)
        r = self.position(relative_embedding).view(key_len, self.n_head, self.d_head).transpose(0, 1)  # (H, K, Dh)

        position_scores = rel_shift(torch.matmul(q + position_bias[:, None, :], r.transpose(1, 2)))
        position_scores = (position_scores / math.sqrt(self.d_head)).masked_fill(~mask, float("-inf"))
        # One dtype for queries and mask (issue 191612): under autocast the biases are fp32 and q is not.
        query = (q + content_bias[:, None, :]).to(k.dtype)
        with self._allowed_kernels(x.device):
            attended = F.scaled_dot_product_attention(
                query,
                k,
                v,
                attn_mask=position_scores.to(k.dtype),
                dropout_p=self.dropatt if self.training else 0.0,
            )
        attended = attended.transpose(1, 2).reshape(batch, query_len, self.n_head * self.d_head)
        return self.layer_norm(x + self.dropout(self.out(attended)))

    def _allowed_kernels(self, device: torch.device) -> contextlib.AbstractContextManager[None]:
        if self.attention_backend == "auto" and device.type != "cuda":
            return contextlib.nullcontext()
        return sdpa_kernel(ATTENTION_BACKENDS[self.attention_backend])


class PositionwiseFeedForward(nn.Module):
    """Linear-ReLU-dropout-linear-dropout, post-norm residual."""

    def __init__(self, d_model: int, d_inner: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_model, d_inner),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(d_inner, d_model),
            nn.Dropout(dropout),
        )
        self.layer_norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer_norm(x + self.net(x))


class TransformerXLLayer(nn.Module):
    def __init__(
        self, d_model: int, n_head: int, d_head: int, d_inner: int, dropout: float, dropatt: float,
        attention_backend: str = "auto",
    ) -> None:
        super().__init__()
        self.attention = RelativeMultiHeadAttention(d_model, n_head, d_head, dropout, dropatt, attention_backend)
        self.feed_forward = PositionwiseFeedForward(d_model, d_inner, dropout)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, *attention_args: torch.Tensor) -> torch.Tensor:
        return self.feed_forward(self.attention(x, memory, *attention_args))


class AdaptiveLogSoftmax(nn.Module):
    """Hierarchical softmax over a frequency-sorted vocabulary (Grave et al. 2017), with tieable word vectors.

    `cutoffs` [c_1, ..., c_n] split the vocabulary into a shortlist [0, c_1) and tail clusters [c_k, c_{k+1})
    (the last ends at vocab_size). The head is a softmax over the shortlist words plus one entry per cluster;
    a tail word's log-probability is log p_head(its cluster) + log p_cluster(word). Word w's vector and bias are
    row w of `weight` and `bias` wherever it is scored, so `weight` can be the input embedding's; the clusters'
    head entries have their own vectors. No cutoffs: a plain softmax.
    """

    def __init__(self, vocab_size: int, d_model: int, cutoffs: Sequence[int], weight: nn.Parameter | None) -> None:
        super().__init__()
        cutoffs = list(cutoffs)
        if any(a >= b for a, b in zip([0] + cutoffs, cutoffs + [vocab_size])):
            raise ValueError(
                f"cutoffs {cutoffs} must increase strictly, between 0 and vocab_size {vocab_size} (exclusive); "
                "set model.cutoffs=[] for a plain softmax over a small vocabulary"
            )
        self.vocab_size = vocab_size
        self.shortlist_size = cutoffs[0] if cutoffs else vocab_size
        self.clusters = list(zip(cutoffs, cutoffs[1:] + [vocab_size]))  # [start, end) of each tail cluster
        self.weight = weight if weight is not None else nn.Parameter(torch.empty(vocab_size, d_model))
        self.bias = nn.Parameter(torch.empty(vocab_size))
        if self.clusters:
            self.cluster_weight = nn.Parameter(torch.empty(len(self.clusters), d_model))
            self.cluster_bias = nn.Parameter(torch.empty(len(self.clusters)))

    def forward(self, hidden: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """hidden (N, d), target (N,) -> negative log-likelihood of each target (N,), float32."""
        head_weight = self.weight[: self.shortlist_size]
        head_bias = self.bias[: self.shortlist_size]
        if self.clusters:
            head_weight = torch.cat([head_weight, self.cluster_weight])
            head_bias = torch.cat([head_bias, self.cluster_bias])
        head_logprob = F.log_softmax(F.linear(hidden, head_weight, head_bias).float(), dim=-1)

        head_index = target  # a shortlist word is its own head entry; a tail word's is its cluster's
        logprob_in_cluster = torch.zeros(target.shape, dtype=torch.float32, device=hidden.device)
        for cluster, (start, end) in enumerate(self.clusters):
            in_cluster = (target >= start) & (target < end)
            head_index = torch.where(in_cluster, self.shortlist_size + cluster, head_index)
            rows = in_cluster.nonzero().squeeze(1)
            tail_logits = F.linear(hidden[rows], self.weight[start:end], self.bias[start:end])
            tail_logprob = F.log_softmax(tail_logits.float(), dim=-1)
            logprob_in_cluster = logprob_in_cluster.index_copy(
                0, rows, tail_logprob.gather(1, (target[rows] - start)[:, None]).squeeze(1)
            )
        return -(head_logprob.gather(1, head_index[:, None]).squeeze(1) + logprob_in_cluster)


class TransformerXL(nn.Module):
    """Transformer-XL language model with segment-level recurrence and a tied adaptive softmax.

    Args:
        vocab_size: words, sorted by decreasing frequency (the adaptive softmax relies on it).
        n_layer, d_model, n_head, d_head, d_inner: the architecture.
        dropout: on the embeddings, the relative embeddings, each residual branch, inside the feed-forward
            network and before the softmax.
        dropatt: on the attention probabilities.
        tgt_len: the segment length the data is cut into (the model accepts any length; the workload reads it).
        mem_len: hidden states kept per layer as memory for the next segment; 0: no memory.
        clamp_len: relative distances beyond this share one embedding; None: no clamping.
        same_length: every query attends the same number of keys (mem_len + 1).
        cutoffs: adaptive softmax cluster boundaries; [] for a plain softmax.
        tie_weight: the softmax shares the input embedding's word vectors.
        attention_backend: the SDPA kernels the relative attention may use (`ATTENTION_BACKENDS`).

    `tgt_len`, `mem_len`, `clamp_len` and `same_length` are read at every forward; `reset_length` changes them
    between training and evaluation (Transformer-XL evaluates with longer memory than it trains with).
    """

    # The units a sharded run shards one by one (FSDP2's fully_shard): a decoder layer.
    block_types = (TransformerXLLayer,)

    def __init__(
        self,
        vocab_size: int,
        n_layer: int = 16,
        d_model: int = 512,
        n_head: int = 8,
        d_head: int = 64,
        d_inner: int = 2048,
        dropout: float = 0.15,
        dropatt: float = 0.0,
        tgt_len: int = 128,
        mem_len: int = 512,
        clamp_len: int | None = None,
        same_length: bool = False,
        cutoffs: Sequence[int] = (20000, 40000, 200000),
        tie_weight: bool = True,
        attention_backend: str = "auto",
    ) -> None:
        super().__init__()
        if min(vocab_size, n_layer, d_model, n_head, d_head, d_inner) < 1 or d_model % 2:
            raise ValueError(
                f"vocab_size {vocab_size}, n_layer {n_layer}, d_model {d_model}, n_head {n_head}, d_head {d_head} "
                f"and d_inner {d_inner} must be positive, d_model even (sinusoidal embedding)"
            )
        self.d_model = d_model
        self.reset_length(tgt_len=tgt_len, mem_len=mem_len, clamp_len=clamp_len, same_length=same_length)
        self.embedding = nn.Embedding(vocab_size, d_model)
        self.dropout = nn.Dropout(dropout)
        # u and v of the paper (`r_w_bias` and `r_r_bias` in the authors' code), shared by all layers as in
        # DeepLearningExamples' base model: untying them (kimiyoung's `untie_r`) would not give 191.95M.
        self.content_bias = nn.Parameter(torch.empty(n_head, d_head))
        self.position_bias = nn.Parameter(torch.empty(n_head, d_head))
        self.layers = nn.ModuleList(
            TransformerXLLayer(d_model, n_head, d_head, d_inner, dropout, dropatt, attention_backend)
            for _ in range(n_layer)
        )
        self.softmax = AdaptiveLogSoftmax(
            vocab_size, d_model, cutoffs, weight=self.embedding.weight if tie_weight else None
        )
        self.reset_parameters()

    def reset_length(self, *, tgt_len: int, mem_len: int, clamp_len: int | None, same_length: bool) -> None:
        if tgt_len < 1 or mem_len < 0 or (clamp_len is not None and clamp_len < 0):
            raise ValueError(
                f"need tgt_len >= 1, mem_len >= 0, clamp_len >= 0 or None; got {tgt_len}, {mem_len}, {clamp_len}"
            )
        self.tgt_len, self.mem_len, self.clamp_len, self.same_length = tgt_len, mem_len, clamp_len, same_length

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """DeepLearningExamples' `weights_init` (init 'normal', init_std 0.02): every weight matrix, embedding,
        the cluster vectors and u, v ~ N(0, 0.02); LayerNorm gains ~ N(1, 0.02); every bias 0."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, 0.0, INIT_STD)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.normal_(module.weight, 1.0, INIT_STD)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.content_bias, 0.0, INIT_STD)
        nn.init.normal_(self.position_bias, 0.0, INIT_STD)
        if self.softmax.weight is not self.embedding.weight:
            nn.init.normal_(self.softmax.weight, 0.0, INIT_STD)
        nn.init.zeros_(self.softmax.bias)
        if self.softmax.clusters:
            nn.init.normal_(self.softmax.cluster_weight, 0.0, INIT_STD)
            nn.init.zeros_(self.softmax.cluster_bias)

    def init_mems(
        self, batch_size: int, device: torch.device | str, dtype: torch.dtype = torch.float32
    ) -> list[torch.Tensor]:
        """Empty memories (B, 0, d_model), one per layer: the memory of a stream's first segment.

        A layer's memory holds its past *inputs* (layer 0's: the embedding output), so there are n_layer of them,
        as in DeepLearningExamples; kimiyoung's code also keeps the last layer's output, which no layer reads.
        """
        return [torch.empty(batch_size, 0, self.d_model, device=device, dtype=dtype) for _ in self.layers]

    def forward(
        self, tokens: torch.Tensor, targets: torch.Tensor, mems: list[torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """tokens, targets (B, T) int64; mems: one (B, M, d_model) tensor per layer, or None for a fresh start.

        Returns the negative log-likelihood of every target (B, T) float32, and the memories for the next segment:
        per layer, the last `mem_len` of its inputs over [old memory, this segment], detached.
        """
        batch, query_len = tokens.shape
        if targets.shape != tokens.shape:
            raise ValueError(f"targets {tuple(targets.shape)} must have the shape of tokens {tuple(tokens.shape)}")
        if mems is None:
            mems = self.init_mems(batch, tokens.device, self.embedding.weight.dtype)
        if len(mems) != len(self.layers) or any(m.shape != mems[0].shape for m in mems) or (
            mems[0].shape[0] != batch or mems[0].shape[2] != self.d_model
        ):
            raise ValueError(
                f"mems must be {len(self.layers)} tensors (B={batch}, M, {self.d_model}) of one length M, as "
                "returned by the previous forward or init_mems"
            )
        key_len = mems[0].shape[1] + query_len
        mask = attention_mask(query_len, key_len, self.mem_len if self.same_length else None, tokens.device)
        hidden = self.dropout(self.embedding(tokens) * math.sqrt(self.d_model))
        distances = relative_distances(key_len, self.clamp_len, tokens.device)
        relative_embedding = self.dropout(sinusoidal_embedding(distances, self.d_model).to(hidden.dtype))

        layer_inputs = []
        for layer, memory in zip(self.layers, mems):
            layer_inputs.append(hidden)
            hidden = layer(hidden, memory, relative_embedding, mask, self.content_bias, self.position_bias)
        hidden = self.dropout(hidden)

        nll = self.softmax(hidden.reshape(batch * query_len, -1), targets.reshape(-1)).view(batch, query_len)
        return nll, self._update_mems(mems, layer_inputs)

    @torch.no_grad()
    def _update_mems(self, mems: list[torch.Tensor], layer_inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        new_mems = []
        for memory, layer_input in zip(mems, layer_inputs):
            history = torch.cat([memory.to(layer_input.dtype), layer_input], dim=1)
            new_mems.append(history[:, history.shape[1] - min(self.mem_len, history.shape[1]) :].detach())
        return new_mems

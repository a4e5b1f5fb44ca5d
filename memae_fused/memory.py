"""The memory modules on the fused op: FusedMemory (MemAE's, one query per feature position;
a drop-in for the released code's MemModule), BlockMemory (DAAD's, one query per block of
the feature map) and MNADMemory (MNAD's items, read by the op and updated by a rule)."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn

from memae_fused.blocks import block_shape, from_blocks, to_blocks
from memae_fused.ops import check_arguments, memory_read


def _check_count(name: str, value, minimum: int = 1, why: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        wanted = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{name} must be {wanted}{why}, got {value!r}")


class MemoryOutput(dict):
    """The module's result: attributes `output`, `entropy`, `att`, and dict access
    (`res["output"]`, `res["att"]`) like the released MemModule's dict."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __init__(self, output, entropy, att):
        super().__init__(output=output, entropy=entropy, att=att)


class FusedMemory(nn.Module):
    """MemAE memory module over every position of a channel-first feature map.

    Args:
        num_slots: N, the number of memory items.
        dim: C, the feature channels (the channel dimension of the input).
        shrink_thres: hard-shrinkage threshold lambda; None picks 1/num_slots (the low end of
            the paper's [1/N, 3/N]); 0 disables shrinkage and renormalisation.
        similarity: "cosine" (the paper) or "dot" (the released code).
        temperature: logits are divided by it. Cosine logits lie in [-1, 1]; at temperature 1
            the softmax is nearly flat (every weight ~1/N) and any lambda >= ~2.7/N empties
            every row, so the default 0.05 spreads them over [-20, 20].
        backend: "auto", "reference", "triton", "cuda" or "cpp" (see memory_read).

    forward(x, return_att=False) takes x of shape (B, C), (B, C, L), (B, C, H, W) or
    (B, C, T, H, W); every position is one query. It returns a MemoryOutput with `output`
    (x's shape and dtype), `entropy` (the mean addressing entropy over all queries, a
    differentiable scalar: add alpha * entropy to the loss) and `att` ((B, N, *spatial) when
    asked for, else None).
    """

    def __init__(self, num_slots: int, dim: int, shrink_thres: Optional[float] = None,
                 similarity: str = "cosine", temperature: float = 0.05, backend: str = "auto"):
        super().__init__()
        _check_count("num_slots", num_slots)
        _check_count("dim", dim)
        self.num_slots, self.dim = num_slots, dim
        self.shrink_thres = 1.0 / num_slots if shrink_thres is None else shrink_thres
        self.similarity, self.temperature, self.backend = similarity, temperature, backend
        probe = torch.empty(1, dim)
        check_arguments(probe, probe, self.shrink_thres, similarity, temperature, backend)
        self.memory = nn.Parameter(torch.empty(num_slots, dim))
        self.reset_parameters()

    def reset_parameters(self):
        bound = 1.0 / math.sqrt(self.dim)
        nn.init.uniform_(self.memory, -bound, bound)

    @classmethod
    def from_released(cls, weight: torch.Tensor, shrink_thres: float = 0.0025, **kwargs):
        """A FusedMemory computing what the released MemAE code's MemModule computes (dot
        similarity, temperature 1), holding that module's `memory.weight` (N x C)."""
        kwargs.setdefault("similarity", "dot")
        kwargs.setdefault("temperature", 1.0)
        module = cls(weight.shape[0], weight.shape[1], shrink_thres=shrink_thres, **kwargs)
        with torch.no_grad():
            module.memory.copy_(weight)
        return module

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints of the released code's MemModule name the weight "<prefix>memory.weight"
        # (a MemoryUnit inside): accept that name so FusedMemory loads them unchanged.
        released = prefix + "memory.weight"
        if released in state_dict and prefix + "memory" not in state_dict:
            state_dict[prefix + "memory"] = state_dict.pop(released)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self):
        return (f"num_slots={self.num_slots}, dim={self.dim}, shrink_thres={self.shrink_thres:g}, "
                f"similarity={self.similarity!r}, temperature={self.temperature:g}, "
                f"backend={self.backend!r}")

    def forward(self, x: torch.Tensor, return_att: bool = False) -> MemoryOutput:
        if not isinstance(x, torch.Tensor) or x.dim() < 2 or x.dim() > 5:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must be (B, C), (B, C, L), (B, C, H, W) or (B, C, T, H, W), got {shape}")
        if x.shape[1] != self.dim:
            raise ValueError(f"x has {x.shape[1]} channels (dim 1) but the memory has dim={self.dim}")
        batch, spatial = x.shape[0], x.shape[2:]
        # Channel-last view: every position becomes one row of the (Q, C) query.
        query = x.movedim(1, -1).reshape(-1, self.dim)
        memory = self.memory.to(dtype=x.dtype)
        res = memory_read(query, memory, shrink_thres=self.shrink_thres,
                          similarity=self.similarity, temperature=self.temperature,
                          backend=self.backend, return_att=return_att)
        output = res.read.reshape(batch, *spatial, self.dim).movedim(-1, 1)
        entropy = res.entropy.mean() if res.entropy.numel() else res.entropy.sum()
        att = None
        if return_att:
            att = res.att.reshape(batch, *spatial, self.num_slots).movedim(-1, 1)
        return MemoryOutput(output, entropy, att)


def block_memory_backend(backend: str, num_slots: int, dim: int) -> str:
    """What BlockMemory asks memory_read for: "reference" for "auto" when num_slots <= dim."""
    return "reference" if backend == "auto" and num_slots <= dim else backend


class BlockMemory(nn.Module):
    """DAAD's block-wise memory (Hou et al., ICCV 2021) over a (B, C, H, W) feature map.

    The map is cut into r_c x r_h x r_w blocks (memae_fused.blocks.to_blocks gives the
    order), each block flattened into one query of dimension D = (C/r_c)(H/r_h)(W/r_w) that
    addresses this module's memory (num_slots x D) through memory_read; the reads are put
    back in place. Few queries (B * r_c * r_h * r_w) of long D: on a 64 x 64 x 64 map at
    r_h = r_w = 8, r_c = 1 each of the B * 64 queries has D = 4096.

    Args:
        num_slots: N, the memory items.
        feature_shape: (C, H, W) of the maps it will see.
        division: (r_c, r_h, r_w); each must divide its dimension.
        similarity, temperature, shrink_thres, backend: as memory_read's. The defaults follow
            DAAD: cosine similarity, softmax at temperature 1, no shrinkage. backend="auto"
            takes "reference" (eager PyTorch) when num_slots <= D, else memory_read's "auto":
            the eager path keeps a few Q x N tensors for its backward, at most the size of
            the queries themselves when N <= D, and in exchange does 5 units of Q x N x D
            matrix work per training step to the fused kernels' 6 (their backward recomputes
            the logits). bench/block_memory.py measures it: on a 2-core CPU at Q = 512,
            N = 500, D = 4096 and 8192, eager forward + backward took 0.81-0.88 of the
            fused `cpp` op's time.

    forward(x, return_att=False) returns a MemoryOutput with `output` (x's shape and
    dtype), `entropy` (the mean addressing entropy over the blocks) and `att`
    ((B, N, r_c, r_h, r_w) when asked for, else None).
    """

    def __init__(self, num_slots: int, feature_shape: Sequence[int],
                 division: Sequence[int] = (1, 8, 8), similarity: str = "cosine",
                 temperature: float = 1.0, shrink_thres: float = 0.0, backend: str = "auto"):
        super().__init__()
        _check_count("num_slots", num_slots)
        self.feature_shape, self.division = tuple(feature_shape), tuple(division)
        self.block_shape = block_shape(self.feature_shape, self.division)
        self.num_slots = num_slots
        self.dim = math.prod(self.block_shape)
        self.shrink_thres, self.similarity = shrink_thres, similarity
        self.temperature, self.backend = temperature, backend
        probe = torch.empty(1, self.dim)
        check_arguments(probe, probe, shrink_thres, similarity, temperature, backend)
        self.memory = nn.Parameter(torch.empty(num_slots, self.dim))
        self.reset_parameters()

    def reset_parameters(self):
        bound = 1.0 / math.sqrt(self.dim)
        nn.init.uniform_(self.memory, -bound, bound)

    @property
    def resolved_backend(self) -> str:
        """The backend memory_read is asked for (see backend="auto" above)."""
        return block_memory_backend(self.backend, self.num_slots, self.dim)

    def extra_repr(self):
        return (f"num_slots={self.num_slots}, feature_shape={self.feature_shape}, "
                f"division={self.division}, dim={self.dim}, similarity={self.similarity!r}, "
                f"temperature={self.temperature:g}, shrink_thres={self.shrink_thres:g}, "
                f"backend={self.backend!r}")

    def forward(self, x: torch.Tensor, return_att: bool = False) -> MemoryOutput:
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != self.feature_shape:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must be (B, *feature_shape) = (B, {', '.join(map(str, self.feature_shape))}), "
                             f"got {shape}")
        query = to_blocks(x, self.division)
        res = memory_read(query, self.memory.to(dtype=x.dtype), shrink_thres=self.shrink_thres,
                          similarity=self.similarity, temperature=self.temperature,
                          backend=self.resolved_backend, return_att=return_att)
        output = from_blocks(res.read, x.shape, self.division)
        entropy = res.entropy.mean() if res.entropy.numel() else res.entropy.sum()
        att = None
        if return_att:
            att = res.att.reshape(x.shape[0], *self.division, self.num_slots).movedim(-1, 1)
        return MemoryOutput(output, entropy, att)


class MNADOutput(dict):
    """MNADMemory's result: `output`, `compactness`, `separateness`, `usage_balance`,
    `weights` (attributes and dict access)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class MNADMemory(nn.Module):
    """MNAD's memory (Park et al., CVPR 2020), as the authors' code computes it: a few items
    that no optimiser touches, read by a softmax over the items and updated by a rule.

    `items` (num_items x dim) is a buffer, initialised uniform in [0, 1) with L2-normalised
    rows. forward(x, update=True, return_weights=False) takes a channel-first map (B, C, H,
    W), C = dim; every position is a query q, L2-normalised over channels. With the items
    from before the call it computes:

    - compactness: the mean squared error between each query and its top-1 item (mean over
      the N queries and C channels);
    - separateness: the triplet margin loss (margin 1, L2 distances) with the query as
      anchor, its top-1 item as positive and its top-2 item as negative;
    - the read r = softmax over the items of q . items^T (the cosine similarity: both are
      unit rows), times the items, through memory_read (temperature 1, no shrinkage), so
      the read never builds
      Q x num_items; no gradient flows through it (the weights and items are constants in
      MNAD's read), only through q;
    - output: concat(q, r) on channels, (B, 2C, H, W);

    then, when `update` is true and the module is training, the update (update_with). The
    losses train the encoder that produced x; the items change only by the rule.

    Cost: the losses and the update need each query's top-1 and top-2 items and, per item,
    the largest score over the batch's queries; they use one Q x num_items score matrix and
    small PyTorch ops: at MNAD's 10 items, negligible; at num_items in the thousands that
    matrix (4 bytes x Q x num_items in float32) is what memory_read avoids for the read.
    """

    def __init__(self, num_items: int = 10, dim: int = 512, backend: str = "auto"):
        super().__init__()
        _check_count("num_items", num_items, minimum=2, why=" (separateness needs a second item)")
        _check_count("dim", dim)
        self.num_items, self.dim, self.backend = num_items, dim, backend
        probe = torch.empty(1, dim)
        check_arguments(probe, probe, 0.0, "cosine", 1.0, backend)
        self.register_buffer("items", torch.empty(num_items, dim))
        self.reset_items()

    def reset_items(self):
        with torch.no_grad():
            self.items.copy_(nn.functional.normalize(torch.rand(self.num_items, self.dim), dim=1))

    def extra_repr(self):
        return f"num_items={self.num_items}, dim={self.dim}, backend={self.backend!r}"

    def _queries(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != self.dim:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must be (B, {self.dim}, H, W), got {shape}")
        return nn.functional.normalize(x.movedim(1, -1).reshape(-1, self.dim), dim=1)

    def forward(self, x: torch.Tensor, update: bool = True, return_weights: bool = False) -> MNADOutput:
        query = self._queries(x)
        # A copy: the update below rewrites the buffer, and the usage term's backward needs
        # the items it was computed from.
        items = self.items.to(query.dtype, copy=True)
        scores = query.detach() @ items.t()
        top2 = scores.topk(2, dim=1).indices
        first, second = items[top2[:, 0]], items[top2[:, 1]]
        # Usage balance: KL divergence of the batch's mean addressing from uniform (0 when
        # every item is used equally; log K when all queries pick one item). Not in MNAD's
        # code: an optional term against the collapse onto one item (see MNADConfig).
        mean_use = torch.softmax(query @ items.t(), dim=1).mean(dim=0)
        usage_balance = (mean_use * torch.log(mean_use * self.num_items + 1e-12)).sum()
        compactness = nn.functional.mse_loss(query, first)
        # PyTorch's triplet loss, as the authors' code: distances ||a - b + 1e-6||_2.
        separateness = nn.functional.triplet_margin_loss(query, first, second, margin=1.0)
        with torch.no_grad():
            # Queries and items are unit rows, so this is the cosine similarity; "dot" keeps
            # MNAD's q . items^T exactly, without normalising the items once more.
            read = memory_read(query.detach(), items, shrink_thres=0.0, similarity="dot",
                               temperature=1.0, backend=self.backend).read
        batch, _, height, width = x.shape
        output = torch.cat([query, read], dim=1).reshape(batch, height, width, 2 * self.dim).movedim(-1, 1)
        weights = None
        if return_weights:
            weights = torch.softmax(scores, dim=1).reshape(batch, height, width, -1).movedim(-1, 1)
        if update and self.training:
            self._update(query.detach(), scores)
        return MNADOutput(output=output, compactness=compactness, separateness=separateness,
                          usage_balance=usage_balance, weights=weights)

    @torch.no_grad()
    def update_with(self, x: torch.Tensor) -> None:
        """The update rule on the queries of x, whatever the mode (MNAD's test-time update):
        every query goes to its top-1 item; item k moves by the sum of its queries weighted
        by W_q[n, k] / max_n' W_q[n', k], W_q being the softmax over the batch's queries
        (the max over all queries, not only k's); rows are renormalised. An item no query
        picks stays as it is."""
        query = self._queries(x)
        self._update(query, query @ self.items.to(query.dtype).t())

    @torch.no_grad()
    def _update(self, query: torch.Tensor, scores: torch.Tensor) -> None:
        # W_q[n, k] / max_n' W_q[n', k] = exp(s[n, k] - max_n' s[n', k]): the softmax's
        # normaliser cancels, and the exponent is <= 0.
        scale = torch.exp(scores - scores.max(dim=0, keepdim=True).values)
        nearest = scores.argmax(dim=1)
        chosen = torch.zeros_like(scale).scatter_(1, nearest[:, None], 1.0)
        delta = (scale * chosen).t() @ query
        self.items.copy_(nn.functional.normalize(self.items + delta.to(self.items.dtype), dim=1))

"""Sparse execution of masked linear layers on CPU (`train.sparse`), built by the step engine from its mask.

A pruned `StackedLinear` weight (N, out, in) with mask M runs as one block-diagonal CSR matrix of all
N networks: row n*out + o, column n*in + i, one stored value per kept weight. Its values are `vals`
(1-D, the kept weights in the order of `M.flatten().nonzero()`, which is the CSR order); the step
engine's optimizer updates `vals` instead of the dense weight, so it moves only the kept weights.
  forward         out = W_csr @ X, X the stacked inputs (N*in, B): torch.addmm (MKL's sparse kernel)
  weight gradient dW = (gy @ X^T) at the kept positions only: torch.sparse.sampled_addmm
  input gradient  dX = W_csr^T @ gy (a second CSR, of the transpose, sharing the values through a
                  permutation), only where a later layer needs it (not for the network's input)
  dense gradient  gy @ X^T in full, pruned positions included, only on request (`dense_grad`: RigL's growth), from
                  the factors the last backward keeps; a mask that moves gets a new structure (`Step.set_mask`)
  one input for all networks (evaluation, no gradient): out = W1 @ x^T with W1 the same values as an
                  (N*out, in) CSR (the N blocks stacked over the same columns): no copy of the input per network
The step engine switches a layer to its sparse forward only inside `Step.sparse_forward` (`StackedLinear.sparse`):
while it computes a step's losses, and for the training loop's evaluations; any other forward is the dense one,
on the dense weight. The sparse forward does not read the dense weight: `sync` writes the kept values back into
it (its pruned entries stay exactly zero, nothing else writes them), and the training loop calls it before every
read of the model's state (evaluation, early-stop copies, resume points, the end of training); `load` reads them
from it again after a resume point is loaded.
Results equal dense execution up to floating-point summation order (tested in float64 to 1e-12).
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

from .config import ConfigError, TrainConfig
from .masks import Mask
from .models import StackedLinear

# `train.sparse: auto` (CPU, float32, one process) runs a layer sparse when fewer than AUTO_DENSITY of its
# weights are kept and it has at least AUTO_MIN_WEIGHTS weights per network. Measured here with
# `benchmarks/sparse_step.py --layers` (one layer's forward and backward, 15 stacked networks, batch 60,
# 1 thread; benchmarks/results/2026-12-03-sparse-step.txt), dense time / sparse time:
#   784x300  0.4-0.9x at 30-50%, 1.0-1.2x at 20%, 1.6x at 15%, 1.7-2.3x at 10%, 3.6-4.5x at 3.6%
#   300x100  0.4-0.8x at 30-50%, 0.9-1.0x at 20%, 1.25x at 15%, 1.0-1.2x at 10%, 1.7-2.4x at 3.6%
#   100x10   0.4-1.3x at every density (per-call overhead dominates): kept dense
AUTO_DENSITY = 0.15
AUTO_MIN_WEIGHTS = 20_000
warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta state")


def _csr(crow: torch.Tensor, col: torch.Tensor, vals: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    return torch.sparse_csr_tensor(crow, col, vals, shape, check_invariants=False)


def _crow(rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """CSR row pointers (int32) of sorted row indices."""
    crow = torch.zeros(n_rows + 1, dtype=torch.int32)
    crow[1:] = torch.cumsum(torch.bincount(rows, minlength=n_rows), 0)
    return crow


class _SparseLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, vals, bias, x, layer):  # x (N, B, in) -> (N, B, out)
        n, d_out, d_in = layer.shape
        if x.shape[0] != n:
            x = x.expand(n, *x.shape[1:])
        xs = x.transpose(1, 2).reshape(n * d_in, x.shape[1])  # (N*in, B): a view when x is a transposed output
        out = torch.empty(n * d_out, xs.shape[1], dtype=xs.dtype)
        torch.addmm(out, layer.w, xs, beta=0.0, out=out)  # (into `out`: no zero fill and copy of the product)
        ctx.save_for_backward(xs)
        ctx.layer = layer
        return out.view(n, d_out, -1).add_(bias.transpose(1, 2)).transpose(1, 2)

    @staticmethod
    def backward(ctx, grad):  # grad (N, B, out)
        (xs,) = ctx.saved_tensors
        layer = ctx.layer
        n, d_out, d_in = layer.shape
        gy = grad.transpose(1, 2).reshape(n * d_out, grad.shape[1])  # (N*out, B)
        gvals = torch.sparse.sampled_addmm(layer.pattern, gy, xs.t(), beta=0.0).values()
        layer.factors = gy, xs  # (references only: `dense_grad` multiplies them when asked)
        gx = None
        if ctx.needs_input_grad[2]:
            torch.index_select(layer.vals.detach(), 0, layer.perm_t, out=layer.wt.values())
            gx = torch.empty(n * d_in, gy.shape[1], dtype=gy.dtype)
            torch.addmm(gx, layer.wt, gy, beta=0.0, out=gx)
            gx = gx.view(n, d_in, -1).transpose(1, 2)
        return gvals, grad.sum(1, keepdim=True), gx, None


class SparseLinear:
    """The CSR structure of one masked StackedLinear and its kept values `vals` (what the optimizer steps)."""

    def __init__(self, module: nn.Module, keep: torch.Tensor):
        w = module.weight
        self.module, self.shape = module, tuple(w.shape)
        n, d_out, d_in = self.shape
        keep = keep.to(torch.bool).reshape(n * d_out, d_in)
        rows, cols = keep.nonzero(as_tuple=True)  # row-major: the CSR order, and the flat order of the weight
        self.flat = rows * d_in + cols  # index into weight.view(-1)
        cols = cols + (rows // d_out) * d_in  # block-diagonal columns n*in + i
        self.perm_t = torch.argsort(cols * (n * d_out) + rows)  # the transpose's values are vals[perm_t]
        self.vals = nn.Parameter(w.detach().reshape(-1)[self.flat].clone())
        # int32 indices: MKL's kernels take them without a conversion per call. `w` shares the storage of
        # `vals` (the optimizer updates them in place), `wt` (the transpose) is refilled before each use.
        shape, shape_t = (n * d_out, n * d_in), (n * d_in, n * d_out)
        crow, col = _crow(rows, shape[0]), cols.to(torch.int32)
        crow_t, col_t = _crow(cols[self.perm_t], shape_t[0]), rows[self.perm_t].to(torch.int32)
        self.w = _csr(crow, col, self.vals.detach(), shape)
        self.pattern = _csr(crow, col, torch.zeros_like(self.vals, requires_grad=False), shape)
        self.wt = _csr(crow_t, col_t, torch.empty_like(self.vals, requires_grad=False), shape_t)
        self.factors: tuple[torch.Tensor, torch.Tensor] | None = None  # (gy, xs) of the last backward
        self.w1 = _csr(crow, col % d_in, self.vals.detach(), (n * d_out, d_in))  # one input for all networks

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == 1 < self.shape[0] and not torch.is_grad_enabled():  # one input for all networks
            return self.shared(x)
        return _SparseLinearFn.apply(self.vals, self.module.bias, x, self)

    def shared(self, x: torch.Tensor) -> torch.Tensor:
        """The forward of one input (1, B, in) for all N networks, without autograd: (N, B, out)."""
        n, d_out, _ = self.shape
        out = torch.empty(n * d_out, x.shape[1], dtype=x.dtype)
        torch.addmm(out, self.w1, x[0].t(), beta=0.0, out=out)  # (x[0].t() as a view: MKL reads it as it is)
        return out.view(n, d_out, -1).add_(self.module.bias.transpose(1, 2)).transpose(1, 2)

    @torch.no_grad()
    def sync(self) -> None:
        """Write the kept values into the dense weight (its pruned entries are zero and stay so)."""
        self.module.weight.view(-1).index_copy_(0, self.flat, self.vals)

    @torch.no_grad()
    def dense_grad(self) -> torch.Tensor:
        """The gradient of the whole dense weight (N, out, in) in the last backward, pruned positions included (what
        the dense path leaves in `weight.grad`; RigL grows where it is largest): one dense product, computed on request."""
        gy, xs = self.factors
        n, d_out, d_in = self.shape
        return torch.bmm(gy.reshape(n, d_out, -1), xs.reshape(n, d_in, -1).transpose(1, 2))

    @torch.no_grad()
    def take(self, old: SparseLinear, t: torch.Tensor) -> torch.Tensor:
        """`t`, indexed like the kept values of `old` (the same layer under an earlier mask), indexed like this
        layer's, zero where a weight is newly kept: what a change of mask does to a sparse layer's optimizer state."""
        return t.new_zeros(self.module.weight.numel()).index_copy_(0, old.flat, t)[self.flat]

    @torch.no_grad()
    def load(self) -> None:
        """Take the kept values from the dense weight again (after a resume point was loaded into the model)."""
        self.vals.copy_(self.module.weight.reshape(-1)[self.flat])


def _layers(model: nn.Module, names) -> dict[str, nn.Module | None]:
    """Each masked weight's StackedLinear (None where it is something else: a convolution, your own layer)."""
    modules = dict(model.named_modules())
    owner = {name: modules.get(name.rpartition(".")[0]) for name in names}
    return {name: m if isinstance(m, StackedLinear) and name.endswith(".weight") else None for name, m in owner.items()}


def check(model: nn.Module, names, cfg: TrainConfig, device: torch.device | None = None) -> None:
    """`train.sparse: on` where it has no sparse path (a masked layer of `names` that is no fully-connected
    layer, CUDA, bfloat16, several processes): a ConfigError naming it. (`device` None: not known yet.)"""
    if cfg.sparse != "on":
        return
    for why, bad in (("a CUDA device", device is not None and device.type != "cpu"),
                     (f"train.precision {cfg.precision}", cfg.precision != "float32"),
                     (f"train.world_size {cfg.world_size}", cfg.world_size != 1)):
        if bad:
            raise ConfigError(f"train.sparse: on has no sparse path with {why} (CPU, float32, one process only); "
                              "use auto or off")
    for name, m in _layers(model, names).items():
        if m is None:
            raise ConfigError(f"train.sparse: on has no sparse path for layer {name} "
                              f"({type(model.get_submodule(name.rpartition('.')[0])).__name__}); use auto or off")


def plan(model: nn.Module, mask: Mask, cfg: TrainConfig, device: torch.device) -> dict[str, SparseLinear]:
    """The masked layers that run sparse, by weight name: none with `off`, every masked layer with `on`
    (`check`), with `auto` those below AUTO_DENSITY with at least AUTO_MIN_WEIGHTS per network, on CPU,
    float32, one process (elsewhere none)."""
    check(model, mask, cfg, device)
    if cfg.sparse == "off" or device.type != "cpu" or cfg.precision != "float32" or cfg.world_size != 1:
        return {}
    out = {}
    for name, m in _layers(model, mask).items():
        if m is not None:
            density, size = float(mask[name].float().mean()), mask[name][0].numel()
            if cfg.sparse == "on" or (density < AUTO_DENSITY and size >= AUTO_MIN_WEIGHTS):
                out[name] = SparseLinear(m, mask[name])
    return out

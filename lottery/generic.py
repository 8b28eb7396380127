"""Your own network: any `nn.Module` from a factory, stacked N times with `torch.func`.

`load_factory("package.module:callable")` finds the factory, `build(factory, seeds, ...)`
calls it once per seed (network i under `torch.manual_seed(seeds[i])`, exactly as the
factory would initialise it alone) and stacks the copies into a `GenericStack`: one model
with the contract of `lottery.models` (input (N|1, B, ...), output (N, B, classes), every
parameter and buffer with the network as leading dimension) whose forward is
`vmap(functional_call(module, ...))` over the networks. A plain MLP (an nn.Sequential of
Linear, ReLU and Flatten only) skips vmap and runs the hand-stacked `W @ x^T` layout of
`lottery.models`, as fast as the built-in LeNet (benchmarks/generic.py).

BatchNorm: the stacked running statistics are passed through `vmap` as batched tensors, so
BatchNorm's own in-place update writes each network's slice of the stacked buffer (and
`num_batches_tracked` counts per network): a stack of N trained together equals the N
modules trained one by one, bit for bit in float64 (tested), in train and eval mode.
BatchNorm with `momentum=None` (a cumulative average read through `float(num_batches_tracked)`)
does not run under `vmap`: use `vectorize=False` (a loop over the networks) for such modules.
Dropout draws with `randomness="different"`: each network gets its own mask, but not the
mask it would draw alone, so models with dropout are not stack == one-by-one.
"""
from __future__ import annotations

import fnmatch
import importlib
import inspect
from typing import Callable

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from .config import ConfigError

PRUNABLE = (nn.Linear, nn.modules.conv._ConvNd)  # whose `weight` is prunable by default
FAST = (nn.Linear, nn.ReLU, nn.Flatten)  # an nn.Sequential of exactly these types runs without vmap


def load_factory(path: str, key: str = "model.name") -> Callable[..., nn.Module]:
    """'package.module:callable' -> the callable; a ConfigError naming `key` and `path` otherwise."""
    module_name, sep, attr = str(path).partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{key}: {path!r} is not an import path; expected 'package.module:factory'")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # ImportError, or whatever the module raises while importing
        raise ConfigError(f"{key}: {path!r}: module {module_name!r} does not import ({type(e).__name__}: {e})") from e
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"{key}: {path!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"{key}: {path!r} is a {type(obj).__name__}, not a callable returning an nn.Module")
    return obj


def source(factory: Callable) -> str:
    """The import path of a factory, for messages: 'package.module:name'."""
    return f"{getattr(factory, '__module__', '?')}:{getattr(factory, '__qualname__', repr(factory))}"


def _kwargs(factory: Callable, num_classes: int, input_shape: tuple[int, ...]) -> dict:
    """The keywords among num_classes / input_shape that the factory's signature takes."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # no signature (some builtins): call it bare
        return {}
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    offered = {"num_classes": num_classes, "input_shape": tuple(input_shape)}
    return {k: v for k, v in offered.items() if takes_any or k in params}


def build(factory: Callable[..., nn.Module], seeds: list[int], num_classes: int,
          input_shape: tuple[int, ...], key: str = "model.name", vectorize: bool = True) -> GenericStack:
    """A stack of len(seeds) networks: network i is `factory(...)` called under `torch.manual_seed(seeds[i])`.

    The global RNG state is restored afterwards, so building does not disturb other draws.
    """
    kw, nets = _kwargs(factory, num_classes, input_shape), []
    for s in seeds:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s)
            try:
                net = factory(**kw)
            except Exception as e:
                raise ConfigError(f"{key}: {source(factory)}({_call(kw)}) raised {type(e).__name__}: {e}") from e
        if not isinstance(net, nn.Module):
            raise ConfigError(f"{key}: {source(factory)}({_call(kw)}) returned a {type(net).__name__}, "
                              "expected a torch.nn.Module")
        nets.append(net)
    shapes = [{k: v.shape for k, v in net.state_dict().items()} for net in nets]
    for s, net, shape in zip(seeds[1:], nets[1:], shapes[1:]):
        if shape != shapes[0] or net is nets[0]:
            raise ConfigError(f"{key}: {source(factory)}({_call(kw)}) returned a different or the same network for "
                              f"seeds {seeds[0]} and {s}; expected a new network of one architecture per call")
    return GenericStack(nets, source(factory), vectorize)


def _call(kw: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kw.items())


class GenericStack(nn.Module):
    """N copies of one module architecture as stacked parameters and buffers, run with vmap.

    `vectorize=False` runs the networks one after the other on views of the stacked tensors
    instead (gradients and BatchNorm updates land in each network's slice): slower, but it
    runs modules that vmap cannot (data-dependent Python control flow, `.item()`, BatchNorm
    with momentum=None), and uses the very kernels of a module run alone, so it equals the
    plain modules bit for bit. With vmap, linear layers become batched matmuls and
    convolutions grouped ones, which round differently from the single-module kernels in the
    last bits: a stack of N then equals N stacks of 1 bit for bit, and the plain modules to
    rounding (differences of ~1e-16 seen in float64; tested to 1e-12).

    The stacked tensors live in the first copy's own submodules, registered here under their
    own names, so `state_dict()` keys are exactly the single module's keys (values (N, ...)).
    """

    def __init__(self, nets: list[nn.Module], source: str = "", vectorize: bool = True):
        super().__init__()
        params, buffers = stack_module_state(nets)
        net, self.source, self.vectorize = nets[0], source, vectorize
        # every reference to a tensor of the first copy (tied weights included) -> its stack
        stacked = {id(p): nn.Parameter(params[k].detach()) for k, p in net.named_parameters()}
        stacked.update({id(b): buffers[k] for k, b in net.named_buffers()})
        for m in net.modules():
            for d in (m._parameters, m._buffers):
                d.update({leaf: stacked[id(t)] for leaf, t in d.items() if t is not None})
        object.__setattr__(self, "net", net)  # not a child: its children and own tensors are registered here
        for name, child in net.named_children():
            self.add_module(name, child)
        for name, p in net._parameters.items():
            self.register_parameter(name, p)
        for name, b in net._buffers.items():
            self.register_buffer(name, b, persistent=name not in net._non_persistent_buffers_set)
        self.n = len(nets)
        # A plain MLP skips vmap: the hand-stacked layout of lottery.models (see _linear)
        self.fast = vectorize and type(net) is nn.Sequential and all(type(m) in FAST for m in net)

    def train(self, mode: bool = True) -> GenericStack:
        self.net.training = mode
        return super().train(mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, B, ...) (each network its batch) or (1, B, ...) (one batch for all) -> (N, B, ...)."""
        if self.fast:
            return _mlp_forward(self.net, x)
        params, buffers = dict(self.named_parameters()), dict(self.named_buffers())
        shared = x.shape[0] == 1 and self.n > 1
        if not self.vectorize:  # one network at a time, on views of the stacked tensors
            return torch.stack([self._one({k: p[i] for k, p in params.items()}, {k: b[i] for k, b in buffers.items()},
                                          x[0 if shared else i]) for i in range(self.n)])
        run = vmap(self._one, in_dims=(0, 0, None if shared else 0), randomness="different")
        return run(params, buffers, x[0] if shared else x)

    def _one(self, params: dict, buffers: dict, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.net, (params, buffers), (x,))


def _mlp_forward(net: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """A stacked nn.Sequential of Linear / ReLU / Flatten (holding stacked parameters) on (N|1, B, ...)."""
    for m in net:
        if isinstance(m, nn.Linear):
            x = _linear(x, m.weight, m.bias)
        elif isinstance(m, nn.Flatten):
            x = x.flatten(*(d if d < 0 else d + 1 for d in (m.start_dim, m.end_dim)))  # past the network dim
        else:
            x = torch.relu(x)
    return x


def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """(N|1, B, in) -> (N, B, out) with stacked weights (N, out, in), bias (N, out), as W @ x^T.

    The layout of lottery.models.StackedLinear: the weight gradient comes out in the weight's
    own layout, and the next layer takes the transposed view without a copy (vmap's batched
    matmul took 1.3-1.5x the time per LeNet step, 1 and 6 networks, benchmarks/generic.py).
    """
    n, d_out, d_in = w.shape
    if x.shape[0] != n:  # one input for all networks (evaluation): a single GEMM, bias included
        w2, xt = w.reshape(n * d_out, d_in), x[0].t()
        out = (w2 @ xt if b is None else torch.addmm(b.reshape(n * d_out, 1), w2, xt)).view(n, d_out, -1)
    else:
        out = torch.bmm(w, x.transpose(1, 2)) if b is None else torch.baddbmm(b[:, :, None], w, x.transpose(1, 2))
    return out.transpose(1, 2)


def prunable(model: nn.Module, layers: list[str] | None = None, ignore: list[str] | None = None) -> list[str]:
    """Names of the prunable weights, in registration (usually forward) order.

    By default every `weight` of nn.Linear and nn.Conv* layers; `layers` (glob patterns on
    parameter names, fnmatch) chooses the parameters instead, and `ignore` removes some.
    A pattern that matches nothing, or an empty selection, is a ConfigError naming the key.
    """
    names = [name for name, _ in model.named_parameters()]
    if layers is None:
        chosen = [f"{m}.weight" if m else "weight" for m, mod in model.named_modules()
                  if isinstance(mod, PRUNABLE) and getattr(mod, "weight", None) is not None]
    else:
        _unmatched(names, layers, "prune.layers")
        chosen = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in layers)]
    if ignore:
        _unmatched(chosen, ignore, "prune.ignore")
        chosen = [n for n in chosen if not any(fnmatch.fnmatchcase(n, p) for p in ignore)]
    if not chosen:
        how = "no nn.Linear or nn.Conv* weight" if layers is None and not ignore else "nothing left after prune.ignore"
        raise ConfigError(f"prune.layers: the model has no prunable weights ({how}); "
                          f"parameters: {', '.join(names) or 'none'}")
    return chosen


def _unmatched(names: list[str], patterns: list[str], key: str) -> None:
    for p in patterns:
        if not any(fnmatch.fnmatchcase(n, p) for n in names):
            raise ConfigError(f"{key}: pattern {p!r} matches no parameter; parameters: {', '.join(names)}")


def kinds(model: nn.Module, layers: list[str] | None = None, ignore: list[str] | None = None) -> dict[str, str]:
    """Each prunable weight's kind: 'conv' (of an nn.Conv*), 'output' (the last nn.Linear's weight), else 'fc'."""
    modules = dict(model.named_modules())
    linears = [f"{m}.weight" if m else "weight" for m, mod in modules.items() if isinstance(mod, nn.Linear)]
    out = {}
    for name in prunable(model, layers, ignore):
        owner = modules[name.rpartition(".")[0]]
        is_conv = isinstance(owner, nn.modules.conv._ConvNd)
        out[name] = "conv" if is_conv else ("output" if linears and name == linears[-1] else "fc")
    return out


def pattern_rates(kinds: dict[str, str], kind_rates: dict[str, float], patterns: dict[str, float] | None = None,
                  key: str = "prune.layer_rates") -> dict[str, float]:
    """Each prunable weight's rate: its kind's rate, unless a glob pattern (fnmatch on its name) gives its own.

    Where several patterns match a weight, the first one (in the order given) wins. A pattern
    that matches no prunable weight, or a rate outside [0, 1), is a ConfigError naming `key`.
    """
    rates = {k: kind_rates[kind] for k, kind in kinds.items()}
    for p, r in (patterns or {}).items():
        if not isinstance(r, (int, float)) or isinstance(r, bool) or not 0 <= r < 1:
            raise ConfigError(f"{key}: {p!r}: rate {r!r} is not allowed, expected a number in [0, 1)")
        if not any(fnmatch.fnmatchcase(k, p) for k in kinds):
            raise ConfigError(f"{key}: pattern {p!r} matches no prunable weight; prunable: {', '.join(kinds)}")
    for k in kinds:
        rates[k] = next((r for p, r in (patterns or {}).items() if fnmatch.fnmatchcase(k, p)), rates[k])
    return rates


@torch.no_grad()
def check(model: nn.Module, x_batch: torch.Tensor, y: torch.Tensor, num_classes: int, key: str = "model.name") -> None:
    """A dry forward on one batch (B, *input shape) before any training, in eval then in train mode.

    ConfigError naming `key` and the model's import path when the forward fails on this input
    shape, or its output is not (N, B, num_classes), or a label is not below num_classes.
    The model is left as it was: mode, BatchNorm statistics, and the global RNG (dropout).
    """
    where = f"{key}: {getattr(model, 'source', '') or type(model).__name__}"
    n, b = next(model.parameters()).shape[0], x_batch.shape[0]
    was_training, buffers = model.training, {k: v.clone() for k, v in model.named_buffers()}
    try:
        with torch.random.fork_rng(devices=[x_batch.device] if x_batch.is_cuda else []):
            for mode in (False, True):
                model.train(mode)
                out = model(x_batch[None])
    except Exception as e:
        hint = "; it runs one network at a time: build it with vectorize=False" if _loop_runs(model, x_batch) else ""
        raise ConfigError(f"{where}: the forward fails on the dataset's input, one network's batch of shape "
                          f"{tuple(x_batch.shape)} ({type(e).__name__}: {e}){hint}") from e
    finally:
        model.train(was_training)
        for k, v in model.named_buffers():
            v.copy_(buffers[k])
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (n, b, num_classes):
        got = tuple(out.shape[1:]) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"{where}: on a batch of shape {tuple(x_batch.shape)} the output is {got}, expected "
                          f"({b}, {num_classes}): one score per class of the dataset ({num_classes} classes)")
    if len(y) and int(y.max()) >= num_classes:
        raise ConfigError(f"{where}: label {int(y.max())} in the data, expected labels below {num_classes}")

def _loop_runs(model: nn.Module, x_batch: torch.Tensor) -> bool:
    """Whether a vmapped stack that failed runs with vectorize=False (a loop over the networks)."""
    if not getattr(model, "vectorize", False):
        return False
    model.vectorize = False
    try:
        with torch.random.fork_rng(devices=[x_batch.device] if x_batch.is_cuda else []):
            model(x_batch[None])
        return True
    except Exception:
        return False
    finally:
        model.vectorize = True

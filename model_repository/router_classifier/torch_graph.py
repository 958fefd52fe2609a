"""Run a version's exported ONNX graph with PyTorch on a GPU, where onnxruntime has no CUDA provider.

The artefact stays ``model.onnx``: this module interprets that graph node by node with torch
operators, so the GPU computes exactly the graph the export checked (encoder and head), not a
re-implementation of the model. It is the GPU path when the serving environment has torch with
CUDA but only the CPU build of onnxruntime (onnxruntime-gpu must match the CUDA and cuDNN major
versions of the host; torch brings its own). Copied into every version beside ``model.py``,
which loads it only when it serves on a GPU this way; CPU serving never imports torch.

Speed comes from three things, not from the interpreter:
- *Shape plans.* An exported transformer spends most of its nodes on shape arithmetic (Shape,
  Gather, Concat, Reshape targets). For each input shape the graph is run once and every node
  whose inputs are constants or shapes is folded into a constant; the plan keeps only the nodes
  that touch activations, with their constants already on the GPU.
- *Buckets.* Batches are padded up to a few sizes (batch a power of two, sequence a multiple of
  16), so a handful of plans serve all traffic. Padding rows and pad tokens change nothing: pad
  tokens are masked and padded rows are dropped.
- *CUDA graphs.* Each plan is captured once and replayed: one launch per batch instead of one
  per operator (a 6-layer MiniLM plan has a few hundred kernels).
Matrix products run in TF32 by default (``matmul_precision="high"``): on Hopper that is several
times fp32's rate, and scores stay within a few 1e-4 of the CPU's (the benchmark reports it).

The session mirrors the part of ``onnxruntime.InferenceSession`` that ``model.py`` uses:
``run(names, feeds)``, ``get_inputs()``, ``get_outputs()``, ``get_providers()``.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

PROVIDER = "TorchCUDAGraph"  # what get_providers() reports (no onnxruntime provider by that name)
SEQ_STEP = 16  # sequence lengths are padded up to a multiple of this


@dataclass(frozen=True)
class ValueInfo:
    """onnxruntime's NodeArg, as far as model.py reads it."""

    name: str
    shape: list[Any]
    type: str = "tensor(float)"


@dataclass
class _Step:
    """One node of a plan: its op, the env slots or fixed values of its inputs, its output slots."""

    op_type: str
    op: Callable[..., Any]
    args: list[Any]  # ("slot", name) | ("const", value) | None
    attrs: dict[str, Any]
    outputs: list[str]


@dataclass
class _Plan:
    steps: list[_Step]
    inputs: dict[str, Any]  # static input buffers (on the device)
    fixed: dict[str, Any]  # graph outputs folded into constants (none in practice)
    outputs: dict[str, Any] = field(default_factory=dict)  # graph outputs after a run / replay
    graph: Any = None  # torch.cuda.CUDAGraph once captured


def bucket(n: int, limit: int) -> int:
    """The padded size for a batch of ``n`` rows: the next power of two, at most ``limit``."""
    return min(limit, 1 << max(0, math.ceil(math.log2(max(n, 1)))))


def seq_bucket(n: int, limit: int) -> int:
    return min(limit, SEQ_STEP * max(1, math.ceil(n / SEQ_STEP)))


class TorchGraphSession:
    """An ONNX graph run by torch, with a shape plan (and on CUDA a CUDA graph) per bucket."""

    def __init__(self, path: str | Path, device: str = "cuda", max_batch: int = 256, max_length: int = 512,
                 cuda_graphs: bool = True, matmul_precision: str = "high"):
        import onnx
        import torch
        from onnx import numpy_helper

        self.torch = torch
        self.device = torch.device(device)
        self.on_cuda = self.device.type == "cuda"
        if self.on_cuda:
            # "cuda" names no GPU: pin the index, so tensors' devices compare equal to it, and make it
            # current, so captures and replays run on it (a Triton instance on the second GPU).
            self.device = torch.device("cuda", torch.cuda.current_device() if self.device.index is None
                                       else self.device.index)
            torch.cuda.set_device(self.device)
        self.max_batch, self.max_length = max_batch, max_length
        self.cuda_graphs = cuda_graphs and self.on_cuda
        if self.on_cuda:  # on a CPU, "high" may pick bf16 kernels, slow without AMX
            torch.backends.cuda.matmul.allow_tf32 = matmul_precision != "highest"
            torch.set_float32_matmul_precision(matmul_precision)
        model = onnx.load(str(path))
        graph = model.graph
        unknown = sorted({n.op_type for n in graph.node} - set(_OPS) - {"Constant"})
        if unknown:
            raise NotImplementedError(f"{path}: ONNX operators without a torch mapping: {unknown}")
        # Float constants live on the device; integer ones (shapes, axes, indices) stay on the host,
        # so that shape arithmetic never waits for the GPU.
        self.constants: dict[str, Any] = {}
        for init in graph.initializer:
            self.constants[init.name] = self._tensor(numpy_helper.to_array(init))
        self.nodes = []
        for node in graph.node:
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            if node.op_type == "Constant":
                value = attrs.get("value")
                array = numpy_helper.to_array(value) if value is not None else np.asarray(
                    attrs.get("value_float", attrs.get("value_int", attrs.get("value_ints"))))
                self.constants[node.output[0]] = self._tensor(np.asarray(array))
                continue
            self.nodes.append((node.op_type, list(node.input), list(node.output), attrs))
        initializers = {i.name for i in graph.initializer}
        self._inputs = [ValueInfo(i.name, _dims(i), _type_name(i)) for i in graph.input if i.name not in initializers]
        self._outputs = [ValueInfo(o.name, _dims(o), _type_name(o)) for o in graph.output]
        self._dtypes = {i.name: _NP_DTYPES.get(i.type.tensor_type.elem_type, np.float32) for i in graph.input}
        self.plans: dict[tuple[tuple[str, tuple[int, ...]], ...], _Plan] = {}
        self._pool = torch.cuda.graph_pool_handle() if self.cuda_graphs else None
        self._lock = threading.Lock()

    # -- onnxruntime's surface ------------------------------------------------------------------------
    def get_inputs(self) -> list[ValueInfo]:
        return list(self._inputs)

    def get_outputs(self) -> list[ValueInfo]:
        return list(self._outputs)

    def get_providers(self) -> list[str]:
        return [f"{PROVIDER}({self.device}{', CUDA graphs' if self.cuda_graphs else ''})"]

    def run(self, names: Sequence[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The named outputs for ``feeds`` (numpy, [batch, ...]); rows and tokens are padded to a
        bucket and the padding dropped from the outputs, which must keep the batch axis first."""
        torch = self.torch
        names = list(names or [o.name for o in self._outputs])
        n = next(iter(feeds.values())).shape[0]
        if n > self.max_batch:  # larger than any bucket: in parts
            parts = [self.run(names, {k: v[i:i + self.max_batch] for k, v in feeds.items()})
                     for i in range(0, n, self.max_batch)]
            return [np.concatenate([p[j] for p in parts]) for j in range(len(names))]
        padded = self._pad(feeds)
        key = tuple(sorted((k, v.shape) for k, v in padded.items()))
        # One run at a time: a replay writes the plan's fixed buffers (Triton runs one batch per
        # instance at a time anyway; evaluation may use threads).
        with self._lock, torch.inference_mode():
            plan = self.plans.get(key)
            if plan is None:
                plan = self.plans[key] = self._build(padded)
            else:
                for k, v in padded.items():
                    plan.inputs[k].copy_(torch.from_numpy(v), non_blocking=False)
                if plan.graph is not None:
                    plan.graph.replay()
                else:
                    plan.outputs = self._execute(plan)
            return [self._crop(plan.outputs[name], n, feeds).cpu().numpy() for name in names]

    @staticmethod
    def _crop(value: Any, n: int, feeds: dict[str, np.ndarray]) -> Any:
        """An output without the padding: its first n rows, and per-token outputs (the encoder-only
        graph's hidden states) without the padded tokens."""
        value = value[:n]
        length = max((v.shape[1] for v in feeds.values() if v.ndim == 2 and v.dtype.kind == "i"), default=None)
        if value.dim() == 3 and length is not None:
            value = value[:, :length]
        return value

    def warmup(self, progress: Callable[[str], None] = print) -> int:
        """Build (and capture) the plan of every bucket now, so that no request pays for one; returns
        how many. A pod does this while Triton loads the model, before it reports ready."""
        started = time.monotonic()
        lengths = range(SEQ_STEP, self.max_length + SEQ_STEP, SEQ_STEP)
        rows = [1 << i for i in range(int(math.log2(self.max_batch)) + 1)]
        for length in lengths:
            for n in rows:
                feeds = {}
                for value in self._inputs:
                    dtype = self._dtypes.get(value.name, np.float32)
                    shape = (n, min(length, self.max_length)) if len(value.shape) == 2 else (n,)
                    feeds[value.name] = (np.ones if value.name == "attention_mask" else np.zeros)(shape, dtype)
                self.run(None, feeds)
        progress(f"torch_graph: {len(self.plans)} plans ready in {time.monotonic() - started:.1f}s")
        return len(self.plans)

    # -- plans ----------------------------------------------------------------------------------------
    def _pad(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Rows up to a power of two; the token axis (every 2-D integer input shares it) up to a
        multiple of SEQ_STEP. Padded tokens are 0 with attention 0, padded rows all 0."""
        n = next(iter(feeds.values())).shape[0]
        rows = bucket(n, self.max_batch)
        out = {}
        for name, value in feeds.items():
            value = np.asarray(value, dtype=self._dtypes.get(name, value.dtype))
            width = [(0, rows - n)] + [(0, 0)] * (value.ndim - 1)
            if value.ndim == 2 and value.dtype.kind == "i":
                width[1] = (0, seq_bucket(value.shape[1], self.max_length) - value.shape[1])
            out[name] = np.pad(value, width) if any(w[1] for w in width) else np.ascontiguousarray(value)
        return out

    def _build(self, feeds: dict[str, np.ndarray]) -> _Plan:
        """Run the graph once on ``feeds``' shapes, folding every node whose inputs are known
        without the activations (constants, shapes) into a constant; then capture the plan."""
        torch = self.torch
        inputs = {k: torch.from_numpy(v).to(self.device) for k, v in feeds.items()}
        env: dict[str, Any] = dict(self.constants)
        env.update(inputs)
        static = set(self.constants)
        steps: list[_Step] = []
        for op_type, ins, outs, attrs in self.nodes:
            args = [env[i] if i else None for i in ins]
            results = _OPS[op_type](args, attrs, self)
            results = results if isinstance(results, tuple) else (results,)
            for name, value in zip(outs, results):
                env[name] = value
            # Shape depends on the input's shape alone, which the plan fixes.
            if op_type == "Shape" or all(i in static for i in ins if i):
                static.update(outs)
                continue
            host = _HOST_ARGS.get(op_type, ())
            plan_args: list[Any] = []
            for k, name in enumerate(ins):
                if not name:  # an optional input left out
                    plan_args.append(None)
                elif name not in static:
                    plan_args.append(("slot", name))
                else:  # folded: fixed now, and on the device it meets unless read as a shape
                    plan_args.append(("const", env[name] if k in host else self._for_device(env[name], args)))
            steps.append(_Step(op_type, _OPS[op_type], plan_args, attrs, outs))
        out_names = [o.name for o in self._outputs]
        plan = _Plan(steps, inputs, {k: env[k] for k in out_names if k in static}, {k: env[k] for k in out_names})
        if self.cuda_graphs:
            plan.graph = self._capture(plan)
        return plan

    def _for_device(self, value: Any, args: list[Any]) -> Any:
        """A folded constant as its consumer will use it: moved to the device where it meets
        device tensors (done here once, not per run), unless it is a scalar or a shape."""
        torch = self.torch
        if (isinstance(value, torch.Tensor) and value.device.type == "cpu" and value.dim() > 0
                and any(isinstance(a, torch.Tensor) and a.device.type != "cpu" for a in args)):
            return value.to(self.device)
        return value

    def host_copies(self, plan: _Plan) -> list[str]:
        """Steps that would copy a host tensor to the device on every run (a CUDA graph capture
        forbids that): a folded constant left on the host where it is data, not a shape or a scalar."""
        torch = self.torch
        return [f"{step.op_type} input {k}" for step in plan.steps for k, a in enumerate(step.args)
                if a is not None and a[0] == "const" and isinstance(a[1], torch.Tensor) and a[1].device.type == "cpu"
                and a[1].dim() > 0 and k not in _HOST_ARGS.get(step.op_type, ())]

    def _execute(self, plan: _Plan) -> dict[str, Any]:
        env: dict[str, Any] = {**plan.inputs, **plan.fixed}
        for step in plan.steps:
            args = [None if a is None else (env[a[1]] if a[0] == "slot" else a[1]) for a in step.args]
            results = step.op(args, step.attrs, self)
            results = results if isinstance(results, tuple) else (results,)
            for name, value in zip(step.outputs, results):
                env[name] = value
        return {o.name: env[o.name] for o in self._outputs}

    def _capture(self, plan: _Plan) -> Any:
        torch = self.torch
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up on a side stream, as CUDA graphs ask
            self._execute(plan)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            plan.outputs = self._execute(plan)
        graph.replay()
        return graph

    def _tensor(self, array: np.ndarray) -> Any:
        torch = self.torch
        t = torch.from_numpy(np.array(array, copy=True))
        # Scalars stay on the host too: torch reads a 0-dim host tensor as a number in device ops.
        return t.to(self.device) if t.is_floating_point() and t.dim() > 0 else t


# -- operators ----------------------------------------------------------------------------------------
# Each takes (inputs, attributes, session) and returns a tensor or a tuple of tensors; integer inputs
# that give shapes or axes are read on the host (they are host tensors, see TorchGraphSession).
def _ints(t: Any) -> list[int]:
    return [int(v) for v in (t.tolist() if hasattr(t, "tolist") else t)]


def _same_device(a: Any, b: Any) -> tuple[Any, Any]:
    """Binary operators: a host tensor meeting a device tensor moves there (scalars need not)."""
    if a.device != b.device:
        if a.device.type == "cpu" and a.dim() > 0:
            a = a.to(b.device)
        elif b.device.type == "cpu" and b.dim() > 0:
            b = b.to(a.device)
    return a, b


def _binary(fn: Callable[[Any, Any], Any]) -> Callable[..., Any]:
    def op(args: list[Any], attrs: dict[str, Any], s: TorchGraphSession) -> Any:
        return fn(*_same_device(args[0], args[1]))
    return op


def _unary(fn: Callable[[Any], Any]) -> Callable[..., Any]:
    return lambda args, attrs, s: fn(args[0])


def _axes(args: list[Any], attrs: dict[str, Any], index: int = 1) -> list[int] | None:
    if len(args) > index and args[index] is not None:
        return _ints(args[index])
    return list(attrs["axes"]) if "axes" in attrs else None


def _reduce(fn: Callable[..., Any]) -> Callable[..., Any]:
    def op(args: list[Any], attrs: dict[str, Any], s: TorchGraphSession) -> Any:
        x, keep = args[0], bool(attrs.get("keepdims", 1))
        axes = _axes(args, attrs)
        if not axes:
            if attrs.get("noop_with_empty_axes", 0):
                return x
            axes = list(range(x.dim()))
        return fn(x, dim=axes, keepdim=keep)
    return op


def _reshape(args: list[Any], attrs: dict[str, Any], s: TorchGraphSession) -> Any:
    x, shape = args[0], _ints(args[1])
    if not attrs.get("allowzero", 0):
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return x.reshape(shape)


def _unsqueeze(args: list[Any], attrs: dict[str, Any], s: TorchGraphSession) -> Any:
    x = args[0]
    axes = sorted(a % (x.dim() + len(_axes(args, attrs) or [])) for a in (_axes(args, attrs) or []))
    for a in axes:
        x = x.unsqueeze(a)
    return x


def _squeeze(args: list[Any], attrs: dict[str, Any], s: TorchGraphSession) -> Any:
    x, axes = args[0], _axes(args, attrs)
    if axes is None:
        return x.squeeze()
    for a in sorted((a % x.dim() for a in axes), reverse=True):
        x = x.squeeze(a)
    return x


def _gather(args: list[Any], attrs: dict[str, Any], s: TorchGraphSession) -> Any:
    x, idx, axis = args[0], args[1], int(attrs.get("axis", 0)) % args[0].dim()
    if idx.dim() == 0 and idx.device.type == "cpu":  # a position known on the host: no copy, no sync
        return x.select(axis, int(idx))
    if idx.device != x.device:
        idx = idx.to(x.device)
    picked = x.index_select(axis, idx.reshape(-1).long())
    return picked.reshape(x.shape[:axis] + idx.shape + x.shape[axis + 1:])


def _slice(args: list[Any], attrs: dict[str, Any], s: TorchGraphSession) -> Any:
    x = args[0]
    starts, ends = _ints(args[1]), _ints(args[2])
    axes = _ints(args[3]) if len(args) > 3 and args[3] is not None else list(range(len(starts)))
    steps = _ints(args[4]) if len(args) > 4 and args[4] is not None else [1] * len(starts)
    index: list[Any] = [slice(None)] * x.dim()
    for start, end, axis, step in zip(starts, ends, axes, steps):
        if step != 1:
            raise NotImplementedError("Slice with a step other than 1")
        size = x.shape[axis]
        start = max(0, min(size, start + size if start < 0 else start))
        end = max(0, min(size, end + size if end < 0 else end))
        index[axis] = slice(start, end)
    return x[tuple(index)]


def _concat(args: list[Any], attrs: dict[str, Any], s: TorchGraphSession) -> Any:
    parts = [a for a in args if a is not None and a.numel() > 0] or [args[0]]
    device = next((p.device for p in parts if p.device.type != "cpu"), parts[0].device)
    return s.torch.cat([p.to(device) for p in parts], dim=int(attrs["axis"]))


def _expand(args: list[Any], attrs: dict[str, Any], s: TorchGraphSession) -> Any:
    x, shape = args[0], _ints(args[1])
    # ONNX Expand broadcasts both ways (a 1 in the target keeps the input's size).
    out = list(np.broadcast_shapes(tuple(x.shape), tuple(shape)))
    return x.expand(out)


def _constant_of_shape(args: list[Any], attrs: dict[str, Any], s: TorchGraphSession) -> Any:
    from onnx import numpy_helper

    value = numpy_helper.to_array(attrs["value"]) if "value" in attrs else np.zeros(1, np.float32)
    fill = s.torch.from_numpy(np.array(value).reshape(-1))
    return fill.expand(_ints(args[0])).clone() if args[0].numel() else fill.reshape(())


def _cast(args: list[Any], attrs: dict[str, Any], s: TorchGraphSession) -> Any:
    return args[0].to(_torch_dtype(s.torch, int(attrs["to"])))


def _softmax(args: list[Any], attrs: dict[str, Any], s: TorchGraphSession) -> Any:
    return s.torch.softmax(args[0], dim=int(attrs.get("axis", -1)))


def _transpose(args: list[Any], attrs: dict[str, Any], s: TorchGraphSession) -> Any:
    perm = attrs.get("perm") or list(reversed(range(args[0].dim())))
    return args[0].permute(*perm)


def _gemm(args: list[Any], attrs: dict[str, Any], s: TorchGraphSession) -> Any:
    a, b = args[0], args[1]
    a = a.t() if attrs.get("transA", 0) else a
    b = b.t() if attrs.get("transB", 0) else b
    out = float(attrs.get("alpha", 1.0)) * (a @ b)
    if len(args) > 2 and args[2] is not None:
        out = out + float(attrs.get("beta", 1.0)) * args[2]
    return out


def _layer_norm(args: list[Any], attrs: dict[str, Any], s: TorchGraphSession) -> Any:
    x, axis = args[0], int(attrs.get("axis", -1)) % args[0].dim()
    bias = args[2] if len(args) > 2 else None
    return s.torch.nn.functional.layer_norm(x, x.shape[axis:], args[1], bias, float(attrs.get("epsilon", 1e-5)))


def _topk(args: list[Any], attrs: dict[str, Any], s: TorchGraphSession) -> Any:
    values, indices = s.torch.topk(args[0], _ints(args[1])[0], dim=int(attrs.get("axis", -1)),
                                   largest=bool(attrs.get("largest", 1)), sorted=bool(attrs.get("sorted", 1)))
    return values, indices


def _clip(args: list[Any], attrs: dict[str, Any], s: TorchGraphSession) -> Any:
    low = args[1] if len(args) > 1 and args[1] is not None else attrs.get("min")
    high = args[2] if len(args) > 2 and args[2] is not None else attrs.get("max")
    return s.torch.clamp(args[0], min=_bound(low, args[0]), max=_bound(high, args[0]))


def _bound(value: Any, like: Any) -> Any:
    """A Clip bound as clamp takes it: a number when known on the host, else a device tensor."""
    if value is None or not hasattr(value, "device"):
        return value
    return float(value.reshape(-1)[0]) if value.device.type == "cpu" else value.reshape(()).to(like.dtype)


def _where(args: list[Any], attrs: dict[str, Any], s: TorchGraphSession) -> Any:
    device = next((t.device for t in args if t.device.type != "cpu"), args[0].device)
    cond, a, b = (t.to(device) if t.device != device and t.dim() > 0 else t for t in args)
    # 0-dim host values as numbers (no copy); torch.where takes them for either branch
    a, b = (t.item() if t.device != device else t for t in (a, b))
    return s.torch.where(cond.to(device), a, b)


def _range(args: list[Any], attrs: dict[str, Any], s: TorchGraphSession) -> Any:
    start, limit, delta = (a.item() for a in args)
    return s.torch.arange(start, limit, delta, dtype=args[0].dtype)


def _max_min(fn: Callable[[Any, Any], Any]) -> Callable[..., Any]:
    def op(args: list[Any], attrs: dict[str, Any], s: TorchGraphSession) -> Any:
        out = args[0]
        for other in args[1:]:
            out = fn(*_same_device(out, other))
        return out
    return op


def _pow(args: list[Any], attrs: dict[str, Any], s: TorchGraphSession) -> Any:
    base, exponent = args
    if exponent.device.type == "cpu" and exponent.numel() == 1:  # the usual x ** 2 of a layer norm
        e = float(exponent.reshape(-1)[0])
        return base * base if e == 2.0 else s.torch.pow(base, e)
    return s.torch.pow(*_same_device(base, exponent))


def _shape(args: list[Any], attrs: dict[str, Any], s: TorchGraphSession) -> Any:
    shape = list(args[0].shape)[int(attrs.get("start", 0)):attrs.get("end")]
    return s.torch.tensor(shape, dtype=s.torch.int64)


_OPS: dict[str, Callable[..., Any]] = {
    "Add": _binary(lambda a, b: a + b), "Sub": _binary(lambda a, b: a - b), "Mul": _binary(lambda a, b: a * b),
    "Div": _binary(lambda a, b: a / b if a.is_floating_point() or b.is_floating_point() else a // b),
    "Equal": _binary(lambda a, b: a == b), "Greater": _binary(lambda a, b: a > b), "Less": _binary(lambda a, b: a < b),
    "GreaterOrEqual": _binary(lambda a, b: a >= b), "LessOrEqual": _binary(lambda a, b: a <= b),
    "And": _binary(lambda a, b: a & b), "Or": _binary(lambda a, b: a | b),
    "Pow": _pow, "MatMul": _binary(lambda a, b: a @ b), "Gemm": _gemm, "Max": _max_min(lambda a, b: a.maximum(b)),
    "Min": _max_min(lambda a, b: a.minimum(b)),
    "Sqrt": _unary(lambda x: x.sqrt()), "Erf": _unary(lambda x: x.erf()), "Exp": _unary(lambda x: x.exp()),
    "Log": _unary(lambda x: x.log()),
    "Neg": _unary(lambda x: -x), "Abs": _unary(lambda x: x.abs()), "Reciprocal": _unary(lambda x: x.reciprocal()),
    "Tanh": _unary(lambda x: x.tanh()), "Sigmoid": _unary(lambda x: x.sigmoid()), "Relu": _unary(lambda x: x.relu()),
    "Not": _unary(lambda x: x.logical_not()), "Identity": _unary(lambda x: x), "Cast": _cast, "Shape": _shape,
    "Softmax": _softmax, "LayerNormalization": _layer_norm, "Transpose": _transpose,
    "Reshape": _reshape, "Unsqueeze": _unsqueeze, "Squeeze": _squeeze, "Gather": _gather, "Slice": _slice,
    "Concat": _concat, "Expand": _expand, "ConstantOfShape": _constant_of_shape, "Where": _where, "Range": _range,
    "ReduceMean": _reduce(lambda x, dim, keepdim: x.mean(dim=dim, keepdim=keepdim)),
    "ReduceSum": _reduce(lambda x, dim, keepdim: x.sum(dim=dim, keepdim=keepdim)),
    "ReduceMax": _reduce(lambda x, dim, keepdim: x.amax(dim=dim, keepdim=keepdim)),
    "ReduceMin": _reduce(lambda x, dim, keepdim: x.amin(dim=dim, keepdim=keepdim)),
    "ReduceL2": _reduce(lambda x, dim, keepdim: x.square().sum(dim=dim, keepdim=keepdim).sqrt()),
    "TopK": _topk, "Clip": _clip,
}

# Inputs read as shapes, axes or counts: they stay on the host even where their node meets device
# tensors (reading a device tensor would wait for the GPU, which a CUDA graph capture forbids).
_HOST_ARGS: dict[str, tuple[int, ...]] = {
    "Reshape": (1,), "Expand": (1,), "Slice": (1, 2, 3, 4), "Unsqueeze": (1,), "Squeeze": (1,), "TopK": (1,),
    "ReduceMean": (1,), "ReduceSum": (1,), "ReduceMax": (1,), "ReduceMin": (1,), "ReduceL2": (1,),
    "ConstantOfShape": (0,), "Range": (0, 1, 2),
}

# ONNX TensorProto element types this graph family uses -> numpy / torch
_NP_DTYPES = {1: np.float32, 6: np.int32, 7: np.int64, 9: np.bool_, 10: np.float16, 11: np.float64}


def _torch_dtype(torch: Any, onnx_type: int) -> Any:
    table = {1: torch.float32, 6: torch.int32, 7: torch.int64, 9: torch.bool, 10: torch.float16,
             11: torch.float64, 16: torch.bfloat16}
    if onnx_type not in table:
        raise NotImplementedError(f"Cast to ONNX type {onnx_type}")
    return table[onnx_type]


def _dims(value: Any) -> list[Any]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def _type_name(value: Any) -> str:
    names = {1: "float", 6: "int32", 7: "int64", 9: "bool", 10: "float16", 11: "double"}
    return f"tensor({names.get(value.type.tensor_type.elem_type, 'float')})"

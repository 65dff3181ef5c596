"""Fused inference paths of :class:`~distill.flows.wavenet.CausalWaveNet` (no autograd).

They compute exactly the function of the plain code in ``wavenet.py`` (tests check it to 1e-12
in float64), rearranged because these small convolutions are bound by memory traffic and
per-operator overhead rather than arithmetic:

* **one pass** (:func:`run`): ``h_i = h~_i + offset_i`` with the constant offsets folded into
  the layer biases, so every residual, skip, conditioning and bias term is accumulated inside a
  matrix product (``addmm``/``baddbmm`` with ``beta``/``alpha``) and nothing else touches the
  activations but one in-place sigmoid and one ``addcmul`` per layer (``tanh(a) =
  2 sigmoid(2a) - 1``, the ``a`` rows pre-scaled). The per-layer conditioning is interpolated
  from the frame rate by a 3-tap matrix product per frame. On CPU, time is processed in blocks
  that stay in cache, one item at a time with 2-D products; on GPU in one batched pass.
* **one step** (:func:`start` / :func:`step`): the current column of every layer depends
  linearly on the gates of the layers before it, so those maps are folded forward into one
  mixing matrix per layer: a step is one batched product for all past taps (ring buffers, one
  slot per time step), then three small operators per layer (tanh, addcmul, addmm), then the
  output head; ``sigmoid(b) = (1 + tanh(b / 2)) / 2`` lets one tanh serve the gate.

Under autocast to a half dtype (:mod:`distill.precision`) both follow autocast's rule for the
plain code: the one pass runs its body in that dtype and its ``out`` layer in float32 (on CPU
in the layout of :mod:`distill.flows.wavenet_lowp`, built for the bf16 matrix units), and the
step runs wholly in the model's dtype (a column per step: half precision buys no speed).

Rearranged weights are cached on the module and rebuilt whenever a parameter changes (pointer
or version counter), folded in float32 for half-precision models.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from distill.flows import wavenet_lowp
from distill.flows.interpolation import frame_kernel
from distill.precision import HALF_DTYPES

__all__ = ["enabled", "run", "start", "step", "derived_weights", "lowp_weights", "autocast_dtype"]

_SQRT_HALF = math.sqrt(0.5)


def enabled() -> bool:
    """The fused paths run when autograd is off and no compiler is tracing."""
    return not torch.is_grad_enabled() and not torch.compiler.is_compiling()


def derived_weights(net, lowp: torch.dtype | None = None) -> Derived:
    """Weights rearranged for the fused paths; rebuilt when any parameter changes.

    ``lowp``: the dtype of an autocast run, for every weight but the ``out`` layer's, which
    keeps the model's own dtype (as ``full_precision`` keeps it in the plain code).
    """

    def build() -> Derived:
        dtype = net.front.weight.dtype
        if dtype in HALF_DTYPES:  # fold in float32, then cast
            derived = _cast(Derived.build(copy.deepcopy(net).float()), dtype)
        else:
            derived = Derived.build(net)
        if lowp is None:
            return derived
        return dataclasses.replace(_cast(derived, lowp), out=derived.out, out_b=derived.out_b)

    return _cached(net, ("fused", lowp), build)


def lowp_weights(net, lowp: torch.dtype) -> wavenet_lowp.LowpWeights:
    """The weights of the CPU half-precision path (:mod:`distill.flows.wavenet_lowp`)."""
    return _cached(net, ("lowp", lowp), lambda: wavenet_lowp.LowpWeights.build(net, lowp))


def _cached(net, slot: tuple, build):
    """``build()`` under no_grad, cached on ``net._derived[slot]`` until a parameter changes.

    Changes are noticed through each parameter's storage pointer and version counter, which
    optimizers, ``load_state_dict``, ``.to()`` and in-place updates under ``no_grad`` all move.
    Writing through ``param.data`` bypasses the version counter: set ``net._derived = None``
    after doing that.
    """
    key = parameter_key(net)
    cache = net._derived or {}
    if slot not in cache or cache[slot][0] != key:
        with torch.no_grad():
            value = build()
        cache = {s: v for s, v in cache.items() if v[0] == key}  # stale slots go
        cache[slot] = (key, value)
        net._derived = cache
    return cache[slot][1]


def parameter_key(net) -> tuple:
    """What changes when any parameter of ``net`` changes: storage, version, dtype, device."""
    return tuple(
        (p.data_ptr(), 0 if p.is_inference() else p._version, p.dtype, p.device)
        for p in net.parameters()
    )


def run(net, u, frames=None, c=None, batched: bool | None = None):
    """One pass without autograd; conditioning at the frame rate (frames) or sample rate (c).

    ``batched``: batched products over all items (the GPU layout) or 2-D products one item at a
    time (faster on CPU); None picks by device.

    Under autocast to bf16/fp16 the body runs in that dtype and the input, the ``out`` layer
    and the results stay float32 (as the plain code under autocast): on CPU through the
    time-major stacked-tap path of :mod:`distill.flows.wavenet_lowp`, in the batched layout
    here otherwise.
    """
    lowp = autocast_dtype(u.device)
    flat = u.device.type == "cpu" if batched is None else not batched
    if lowp is None:
        return _run(net, u, frames, c, flat, derived_weights(net))
    with _no_autocast(u.device):
        if flat:
            return wavenet_lowp.run(net, u, lowp_weights(net, lowp), frames, c)
        frames, c = (None if t is None else t.to(lowp) for t in (frames, c))
        return _run(net, u.to(lowp), frames, c, flat, derived_weights(net, lowp))


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The half-precision dtype autocast runs ``device``'s matrix products in, or None."""
    if not torch.is_autocast_enabled(device.type):
        return None
    dtype = torch.get_autocast_dtype(device.type)
    return dtype if dtype in HALF_DTYPES else None


def _run(net, u, frames, c, flat: bool, w: Derived):
    batch, length = u.shape
    if flat and batch > 1:
        outs = [
            _run(
                net,
                u[b : b + 1],
                None if frames is None else frames[b : b + 1],
                None if c is None else c[b : b + 1],
                flat,
                w,
            )
            for b in range(batch)
        ]
        return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])
    cpu = u.device.type == "cpu"
    L, R, G = len(net.dilations), net.residual_channels, net.gate_channels
    k, half = net.kernel_size, G // 2
    spans = [(k - 1) * d for d in net.dilations]
    lead = () if flat else (batch,)
    block = min(length, net.cpu_block) if cpu else length
    if frames is not None:
        hop = length // frames.shape[-1]
        m = max(1, block // hop)  # frames per block
        block = m * hop
        # projection + bias at the frame rate, edge-padded (= clamped interpolation), as
        # 3-frame windows laid out so each (block, layer) slice is contiguous
        cf = F.conv1d(frames, w.cond_w, w.cond_b)  # (B, L * G, F)
        win = F.pad(cf, (1, 1), mode="replicate").unfold(2, 3, 1)  # (B, L * G, F, 3)
        nblk = -(-frames.shape[-1] // m)
        win = F.pad(win, (0, 0, 0, nblk * m - frames.shape[-1]))
        win = win.view(batch, L, G, nblk, m, 3).permute(0, 3, 1, 2, 4, 5).contiguous()
        kernel = frame_kernel(hop, u.dtype, u.device)  # (3, hop)
    single = block >= length
    if single:
        top = max(spans)
        pair = [u.new_empty(*lead, R, top + length) for _ in range(min(L, 2))]
        bufs = [pair[i % 2][..., top - spans[i] :] for i in range(L)]
    else:
        bufs = [u.new_empty(*lead, R, spans[i] + block) for i in range(L)]
        for i in range(L):
            bufs[i][..., : spans[i]] = w.pad[i]
    out = u.new_empty(*lead, 2, length, dtype=w.out.dtype)
    u_prev = F.pad(u, (1, 0))[:, None, :-1]  # (B, 1, T): position t holds u_{t-1}
    if flat:
        u_prev = u_prev[0]
    for t0 in range(0, length, block):
        n = min(block, length - t0)
        torch.mul(w.front_w, u_prev[..., t0 : t0 + n], out=bufs[0][..., spans[0] :][..., :n])
        skips = None
        for i in range(L):
            buf, span = bufs[i], spans[i]
            if single and span:
                buf[..., :span] = w.pad[i]
            cur = buf[..., span : span + n]
            if frames is not None:
                x = win[:, t0 // block, i, :, : n // hop]  # (B, G, n / hop, 3)
                x = torch.mm(x.reshape(-1, 3), kernel).view(*lead, G, n)
            else:
                x = torch.addcmul(w.bias[i], c[:, i * G : (i + 1) * G, t0 : t0 + n], w.gate2)
                if flat:
                    x = x[0]
            _mm_(x, w.taps[i][k - 1], cur)
            for j in range(k - 1):
                back = (k - 1 - j) * net.dilations[i]
                _mm_(x, w.taps[i][j], buf[..., span - back : span - back + n])
            a, b = x.sigmoid_().split(half, dim=-2)
            z = b.addcmul_(a, b, value=-2.0)  # -tanh(a) sigmoid(b): a was scaled by 2
            if skips is None:
                skips = _mm(w.skip_b, w.skip[i], z)
            else:
                _mm_(skips, w.skip[i], z)
            if i < L - 1:
                nxt = bufs[i + 1][..., spans[i + 1] : spans[i + 1] + n]
                _mm(cur, w.res[i], z, beta=_SQRT_HALF, alpha=_SQRT_HALF, out=nxt)
            if not single and span:
                tail = buf[..., n : n + span]
                buf[..., :span] = tail.clone() if n < span else tail
        hid = _mm(w.head_b, w.head, skips.relu_()).relu_()
        _mm(w.out_b, w.out, hid.to(w.out.dtype), out=out[..., t0 : t0 + n])
    if flat:
        out = out[None]
    return out[:, 0], out[:, 1]


def start(net, cond: torch.Tensor, length: int) -> FusedStep:
    """State for cached generation of ``length`` samples; conditioning computed once.

    The step runs in the model's own dtype even under autocast: its products are single
    columns, where half precision buys no speed (the float32 products are faster on CPU) and
    would cost the shift and log-scale their accuracy.
    """
    w = derived_weights(net)
    f = w.step
    with _no_autocast(cond.device):
        c = net.condition(cond.to(net.front.weight.dtype), length)  # (B, L * G, T)
    batch = c.shape[0]
    L, R, G, S = len(net.dilations), net.residual_channels, net.gate_channels, f.skip_dim
    # time-major gate conditioning, sigmoid halves pre-scaled: (T, L, B, G)
    rows = c.view(batch, L, G, length) * f.gate_scale[:, None]
    rows = rows.permute(3, 1, 0, 2).contiguous()
    width = L * (R + G) + S
    x = c.new_zeros(batch, width)
    blocks = x[:, : L * (R + G)].view(batch, L, R + G)
    layers = []
    for j in range(L):
        xj = blocks[:, j, R:]
        layers.append((xj, xj[:, : G // 2], xj[:, G // 2 :], x[:, (j + 1) * (R + G) :], f.mix[j]))
    return FusedStep(
        rows=rows,
        x=x,
        gates=blocks[:, :, R:],
        hidden=blocks[:, :, :R],
        skips=x[:, L * (R + G) :],
        layers=layers,
        u_prev=c.new_zeros(batch, 1),
        ring=c.new_zeros(L, max(f.span, 1), batch, R),
        derived=f,
    )


def step(s: FusedStep, t: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Shift and raw log-scale (B,) at time ``t``; ``s.u_prev`` holds the input at ``t - 1``."""
    if torch.is_autocast_enabled(s.x.device.type):
        with _no_autocast(s.x.device):
            return _step(s, t)
    return _step(s, t)


def _no_autocast(device: torch.device):
    return torch.autocast(device.type, enabled=False)


def _step(s: FusedStep, t: int) -> tuple[torch.Tensor, torch.Tensor]:
    f = s.derived
    torch.addmm(f.const, s.u_prev, f.u_row, out=s.x)
    cond = s.rows[t]  # (L, B, G)
    if f.span:
        taps = s.ring[f.layer_index, f.tap_index[t % f.span]]  # (L, k - 1, B, R)
        taps = taps.transpose(1, 2).reshape(taps.shape[0], taps.shape[2], -1)
        cond = torch.baddbmm(cond, taps, f.past)
    s.gates.add_(cond.transpose(0, 1))
    for x, a, b, rest, mix in s.layers:
        x.tanh_()
        a.addcmul_(a, b)  # 2 * tanh(a) * sigmoid(2 b): the b half is pre-scaled by 1/2
        rest.addmm_(a, mix)
    if f.span:
        s.ring[:, t % f.span] = s.hidden.transpose(0, 1)
    hid = torch.addmm(f.head_b, s.skips.relu(), f.head).relu_()
    out = torch.addmm(f.out_b, hid, f.out)
    return out[:, 0], out[:, 1]


def _cast(obj, dtype):
    """Floating tensors inside a (nested) dataclass / list / tuple, cast to ``dtype``."""
    if torch.is_tensor(obj):
        return obj.to(dtype) if obj.is_floating_point() else obj
    if isinstance(obj, list | tuple):
        return type(obj)(_cast(v, dtype) for v in obj)
    if dataclasses.is_dataclass(obj):
        return dataclasses.replace(
            obj, **{f.name: _cast(getattr(obj, f.name), dtype) for f in dataclasses.fields(obj)}
        )
    return obj


def _mm(inp, w, x, beta=1.0, alpha=1.0, out=None):
    """``beta * inp + alpha * w @ x`` for x (C, T) or a batch (B, C, T)."""
    if x.dim() == 2:
        return torch.addmm(inp, w, x, beta=beta, alpha=alpha, out=out)
    return torch.baddbmm(inp, w.expand(x.shape[0], -1, -1), x, beta=beta, alpha=alpha, out=out)


def _mm_(acc, w, x) -> None:
    """``acc += w @ x`` in place."""
    if x.dim() == 2:
        acc.addmm_(w, x)
    else:
        acc.baddbmm_(w.expand(x.shape[0], -1, -1), x)


@dataclass
class FusedStep:
    rows: torch.Tensor  # (T, L, B, G) gate conditioning, sigmoid halves scaled by 1/2
    x: torch.Tensor  # (B, W) the current column: [h_0 x'_0 | h_1 x'_1 | ... | skips]
    gates: torch.Tensor  # (B, L, G) view of the x'_i
    hidden: torch.Tensor  # (B, L, R) view of the h_i
    skips: torch.Tensor  # (B, S) view
    layers: list  # per layer: (x'_i, a view, b view, columns after block i, mixing matrix)
    u_prev: torch.Tensor  # (B, 1)
    ring: torch.Tensor  # (L, span, B, R): h_i at past times, slot t % span
    derived: StepWeights


@dataclass
class StepWeights:
    """The step's current column as ``x = const + u_{t-1} u_row + rows[t] + taps @ past``, then per
    layer ``z'_j = tanh(a) (1 + tanh(b / 2))`` (= 2 z_j) and ``x[after j] += z'_j @ mix[j]``."""

    u_row: torch.Tensor  # (1, W)
    const: torch.Tensor  # (W,)
    gate_scale: torch.Tensor  # (G,): 1 on the tanh half, 1/2 on the sigmoid half
    mix: list[torch.Tensor]  # per layer (G / 2, W - (j + 1)(R + G))
    past: torch.Tensor  # (L, (k - 1) R, G)
    tap_index: torch.Tensor  # (span, L, k - 1) ring slots of the past taps at t % span
    layer_index: torch.Tensor  # (L, 1)
    span: int
    skip_dim: int
    head: torch.Tensor
    head_b: torch.Tensor
    out: torch.Tensor
    out_b: torch.Tensor


@dataclass
class Derived:
    """Parameters rearranged for the fused paths (built under no_grad, cached per version).

    One pass tracks ``h_i = h~_i + offset_i`` with the constant ``offset_i`` folded into the
    layer's bias, so the residual update is one ``baddbmm``; ``pad[i] = -offset_i`` makes the
    causal zero padding of ``h_i`` exact. The gate uses ``tanh(a) = 2 sigmoid(2 a) - 1``: the
    ``a`` rows of taps, bias and conditioning are doubled (``gate2``) so one in-place sigmoid
    serves both halves, and ``b + (-2) a b`` gives ``-z``, which the negated ``res``/``skip``
    weights undo.
    """

    taps: list[list[torch.Tensor]]  # per layer, per tap (G, R), oldest first, a rows doubled
    bias: list[torch.Tensor]  # per layer (G, 1): gate2 * (conv bias + taps @ offset)
    gate2: torch.Tensor  # (G, 1): 2 on the tanh half, 1 on the sigmoid half
    cond_w: torch.Tensor  # (L * G, C, 1): cond_proj weight, a rows doubled
    cond_b: torch.Tensor  # (L * G,): cond_proj bias + layer biases, a rows doubled
    pad: list[torch.Tensor]  # per layer (R, 1): -offset_i
    front_w: torch.Tensor  # (R, 1)
    res: list[torch.Tensor]  # (R, G / 2), negated
    skip: list[torch.Tensor]  # (S, G / 2), negated
    skip_b: torch.Tensor  # (S, 1): all skip biases summed
    head: torch.Tensor
    head_b: torch.Tensor
    out: torch.Tensor
    out_b: torch.Tensor
    step: StepWeights

    @staticmethod
    def build(net) -> Derived:
        k, L = net.kernel_size, len(net.dilations)
        R, G = net.residual_channels, net.gate_channels
        half = G // 2
        s = _SQRT_HALF
        taps = [[conv.weight[:, :, j] for j in range(k)] for conv in net.dilated]
        offsets = [net.front.bias]
        for i in range(L - 1):
            offsets.append(s * (offsets[-1] + net.res[i].bias))
        bias = [
            conv.bias + sum(tap @ offsets[i] for tap in taps[i])
            for i, conv in enumerate(net.dilated)
        ]
        skip = [m.weight[:, :, 0] for m in net.skip]
        res = [m.weight[:, :, 0] for m in net.res]
        S = skip[0].shape[0]
        skip_b = sum(m.bias for m in net.skip)
        head, out = net.head.weight[:, :, 0], net.out.weight[:, :, 0]

        # --- the step: current-column maps folded forward --------------------------------------
        ref = net.front.weight.new_zeros(())
        gate_scale = torch.cat([ref.new_ones(half), ref.new_full((half,), 0.5)])
        blk = R + G
        width = L * blk + S
        u_row = ref.new_zeros(width)
        const = ref.new_zeros(width)
        w_f, b_f = net.front.weight[:, 0, 0], net.front.bias
        # h_i = s^i h_0 + sum_{j<i} s^(i-j) (res_j z_j + rb_j), h_0 = w_f u + b_f
        for i in range(L):
            h_u = s**i * w_f
            h_c = s**i * b_f + sum(s ** (i - j) * net.res[j].bias for j in range(i))
            u_row[i * blk : i * blk + R] = h_u
            const[i * blk : i * blk + R] = h_c
            cur = taps[i][k - 1]
            u_row[i * blk + R : (i + 1) * blk] = gate_scale * (cur @ h_u)
            const[i * blk + R : (i + 1) * blk] = gate_scale * (cur @ h_c + net.dilated[i].bias)
        const[L * blk :] = skip_b
        mix = []
        for j in range(L):
            cols = []
            for i in range(j + 1, L):
                to_h = s ** (i - j) * res[j]  # (R, half)
                cols += [to_h.T, (gate_scale[:, None] * (taps[i][k - 1] @ to_h)).T]
            cols.append(skip[j].T)
            mix.append(0.5 * torch.cat(cols, dim=1).contiguous())  # z' = 2 z
        span = (k - 1) * max(net.dilations)
        past = (
            torch.stack(
                [torch.cat([taps[i][j].T for j in range(k - 1)], dim=0) for i in range(L)]
                if k > 1
                else [ref.new_zeros(0, G)] * L
            )
            * gate_scale
        )
        steps = torch.arange(max(span, 1))[:, None, None]
        backs = torch.tensor(
            [[(k - 1 - j) * d for j in range(k - 1)] for d in net.dilations], dtype=torch.long
        ).view(1, L, k - 1)
        step = StepWeights(
            u_row=u_row[None],
            const=const,
            gate_scale=gate_scale,
            mix=mix,
            past=past.contiguous(),
            tap_index=((steps - backs) % max(span, 1)).to(ref.device),
            layer_index=torch.arange(L, device=ref.device)[:, None],
            span=span,
            skip_dim=S,
            head=head.T.contiguous(),
            head_b=net.head.bias,
            out=out.T.contiguous(),
            out_b=net.out.bias,
        )
        gate2 = torch.cat([ref.new_full((half,), 2.0), ref.new_ones(half)])[:, None]
        bias = [gate2 * b[:, None] for b in bias]
        return Derived(
            taps=[[gate2 * tap for tap in layer] for layer in taps],
            bias=bias,
            gate2=gate2,
            cond_w=net.cond_proj.weight * gate2.repeat(L, 1)[:, :, None],
            cond_b=(net.cond_proj.bias[:, None] * gate2.repeat(L, 1) + torch.cat(bias))[:, 0],
            pad=[-o[:, None] for o in offsets],
            front_w=w_f[:, None],
            res=[-r for r in res],
            skip=[-w for w in skip],
            skip_b=skip_b[:, None],
            head=head,
            head_b=net.head.bias[:, None],
            out=out,
            out_b=net.out.bias[:, None],
            step=step,
        )

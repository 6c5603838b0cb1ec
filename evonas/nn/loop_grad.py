"""The time loop of a compiled cell's plan as one autograd node, with hand-written derivatives.

Why: at the search's sizes (hidden 32-64, batch 8-32, T=35) a step's tensors are tiny, so a training step's
time is per-operator overhead: autograd records one node per operator per step and its engine walks them one
by one. Here the plan's per-step instructions (`Plan.steps` of `evonas.nn.fast`) become straight-line Python,
generated once per plan (`LoopCode`): the forward runs the steps without autograd, keeping only the values the
derivatives need; the backward runs the steps in reverse with each operator's derivative written out. What
lies outside the loop gets its gradient for all steps at once: each product's additive term (biases, hoisted
MMs) and each static value one `[T, B, n]` tensor (autograd then does one op over all steps for them), each
recurrent weight one product over all T*B rows, and a product into a static value's gradient one product
after the loop. Operators it does not know make `LoopCode.supported` False,
and the plan runs as before (`evonas.nn.fast`), as it also does with `module.loop_grad = False`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from evonas.nn.ops import DIV_EPS, LEAKY_SLOPE, gate3

SELU_ALPHA, SELU_SCALE = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946
ACT_FORWARD = {"Sigmoid": "sigmoid", "Tanh": "tanh", "ReLU": "relu"}
ACT_BACKWARD = {"Sigmoid": "sigmoid_bw({g}, {y})", "Tanh": "tanh_bw({g}, {y})", "ReLU": "threshold_bw({g}, {y}, 0)"}
UNARY = {"Sin": "torch.sin", "Cos": "torch.cos", "SELU": "selu", "LeakyReLU": "leaky_relu"}
BINARY = {"Add": "{0} + {1}", "Sub": "{0} - {1}", "Mult": "{0} * {1}"}
KNOWN = {"group", "Diag", "LayerNorm", "PosEnc", "Div", "Gate3", *ACT_FORWARD, *UNARY, *BINARY}


def _aten(name: str) -> Callable[..., Any]:
    """An aten operator without the Python frame of `OpOverload.__call__` (~1 us a call, hundreds a step)."""
    op = getattr(torch.ops.aten, name).default
    return getattr(op, "_op", op)


NAMESPACE: dict[str, Any] = {
    "torch": torch, "addmm": torch.addmm, "sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu,
    "selu": torch.nn.functional.selu, "leaky_relu": lambda a: torch.nn.functional.leaky_relu(a, LEAKY_SLOPE),
    "gate3": gate3, "cat": torch.cat, "addcmul": torch.addcmul, "layer_norm": torch.native_layer_norm,
    "sigmoid_bw": _aten("sigmoid_backward"), "tanh_bw": _aten("tanh_backward"),
    "threshold_bw": _aten("threshold_backward"),
    "leaky_bw": _aten("leaky_relu_backward"), "elu_bw": _aten("elu_backward"),
    "layer_norm_bw": _aten("native_layer_norm_backward"),
    "DIV_EPS": DIV_EPS, "LEAKY_SLOPE": LEAKY_SLOPE, "SELU_ALPHA": SELU_ALPHA, "SELU_SCALE": SELU_SCALE,
}


class _Backward:
    """Emits one step's backward: gradient accumulation per slot, first contribution assigns."""

    def __init__(self, feeds: list[int], consts: list[int]) -> None:
        self.lines: list[str] = []
        self.assigned: set[int] = set()
        self.needed: set[str] = set()  # forward names the backward reads (saved per step)
        self.feeds, self.consts = feeds, {f"s{c}" for c in consts}
        self.deferred: list[list[int]] = [[] for _ in feeds]  # per feed: products computed after the loop

    def use(self, name: str) -> str:
        """A forward value the backward reads: the forward then saves it per step."""
        self.needed.add(name)
        return name

    def acc(self, slot: int, kind: str, *e: str) -> None:
        """g[slot] += contribution; kind: id (e), mm (e0 @ e1), neg (-e), mul (e0*e1), negmul (-e0*e1)."""
        if kind == "mul" and slot in self.feeds and all(n.isidentifier() and n not in self.consts for n in e):
            # a product into a static value's gradient: one product over all steps after the loop
            d = sum(map(len, self.deferred))
            self.deferred[self.feeds.index(slot)].append(d)
            self.lines += [f"DA[{d}].append({e[0]})", f"DB[{d}].append({e[1]})"]
            return
        g, first = f"g{slot}", slot not in self.assigned
        self.assigned.add(slot)
        if kind == "id":
            code = e[0] if first else f"{g} + {e[0]}"
        elif kind == "mm":
            code = f"{e[0]}.mm({e[1]})" if first else f"addmm({g}, {e[0]}, {e[1]})"
        elif kind == "neg":
            code = f"torch.neg({e[0]})" if first else f"{g} - {e[0]}"
        elif kind == "mul":
            code = f"{e[0]} * {e[1]}" if first else f"addcmul({g}, {e[0]}, {e[1]})"
        else:
            code = f"torch.mul({e[0]}, {e[1]}).neg_()" if first else f"addcmul({g}, {e[0]}, {e[1]}, value=-1)"
        self.lines.append(f"{g} = {code}")

    def grad(self, slot: int) -> str:
        """The gradient of a slot's value, zeros when nothing reached it."""
        return f"g{slot}" if slot in self.assigned else "Z"


class LoopCode:
    """A plan's time loop as generated Python: `forward_save`, `forward` (no saving) and `backward`."""

    def __init__(self, plan: Any):  # an evonas.nn.fast.Plan (which imports this module)
        """Generate and compile the loop of `plan` (once per plan); `supported` False leaves it to autograd."""
        steps = plan.steps
        self.plan = plan
        self.supported = (all(s[0] in KNOWN for s in steps) and plan.root_slot not in (plan.h_slot, plan.c_slot)
                          and len(plan.group_slots) == sum(s[0] == "group" for s in steps))
        if not self.supported:
            return
        self.static_memory = plan.memory is not None and plan.memory_slot is None
        self.feed_slots = [slot for slot, _, _ in plan.feeds] + ([plan.c_slot] if self.static_memory else [])
        self.const_slots: list[int] = []
        for slot, kind, _ in plan.consts:
            self.const_slots += [slot] if kind == "diag" else [slot, slot + 1]
        self.n_groups = len(plan.group_slots)
        self.groups = {s[3][0]: s for s in steps if s[0] == "group"}
        # a product whose additive term is its bias alone gets the bias `[k*H]`, not `[T, B, k*H]`
        self.bias_only = [operand not in plan.paired and all(f is None for f in plan.dynamic_groups[operand].fold)
                          for operand, _ in plan.group_slots]
        fwd, bwd = self._forward(steps), self._backward(steps)
        saved = sorted(self._needed)
        self.source = "\n".join([*self._function(fwd, saved, True), *self._function(fwd, saved, False), *bwd])
        namespace = dict(NAMESPACE)
        exec(compile(self.source, f"<loop of {plan.root_slot}>", "exec"), namespace)  # noqa: S102
        self.forward_save: Callable[..., tuple] = namespace["forward_save"]
        self.forward: Callable[..., tuple] = namespace["forward"]
        self.backward: Callable[..., tuple] = namespace["backward"]

    def _forward(self, steps: list[tuple]) -> list[str]:
        """One step's forward statements (slot values `s<slot>`, activation outputs `q<group>_<run>`)."""
        plan, lines = self.plan, []
        for k, slot in enumerate(self.feed_slots):
            lines.append(f"s{slot} = f{k}[t]")
        for op, out, args, extra in steps:
            s = [f"s{a}" for a in args]
            if op == "group":
                j, k, runs = extra
                lines.append(f"p = addmm(tm{j}{'' if self.bias_only[j] else '[t]'}, {s[0]}, wt{j})")
                if len(runs) > 1:
                    lines.append(f"ps = p.split_with_sizes({[n * plan.hidden for _, n in runs]}, 1)")
                first = out
                for r, (act, n) in enumerate(runs):
                    part = "p" if len(runs) == 1 else f"ps[{r}]"
                    if act is not None:
                        lines.append(f"q{j}_{r} = {ACT_FORWARD[act]}({part})")
                        part = f"q{j}_{r}"
                    names = ", ".join(f"s{first + i}" for i in range(n))
                    lines.append(f"{names}, = {part}.chunk({n}, 1)" if n > 1 else f"{names} = {part}")
                    first += n
            elif op == "Diag":
                lines.append(f"s{out} = s{extra} * {s[0]}")
            elif op == "LayerNorm":
                lines.append(f"s{out}, m{out}, r{out} = layer_norm({s[0]}, [{s[0]}.shape[-1]], s{extra}, "
                             f"s{extra + 1}, 1e-5)")
            elif op == "PosEnc":
                lines.append(f"s{out} = {s[0]} + s{extra}")
            elif op == "Div":
                lines.append(f"d{out} = {s[1]} + DIV_EPS * (({s[1]} >= 0).to({s[1]}.dtype) * 2.0 - 1.0)")
                lines.append(f"s{out} = {s[0]} / d{out}")
            elif op == "Gate3":
                lines.append(f"s{out} = gate3({', '.join(s)})")
            else:
                fn = ACT_FORWARD.get(op) or UNARY.get(op)
                lines.append(f"s{out} = {fn}({', '.join(s)})" if fn else f"s{out} = {BINARY[op].format(*s)}")
        return lines

    def _function(self, body: list[str], saved: list[str], save: bool) -> list[str]:
        """`forward_save` / `forward`: the loop over steps; returns outputs, saved values, operands, h_T, c_T."""
        plan = self.plan
        head = [f"def {'forward_save' if save else 'forward'}(T, F, TM, WT, C, h, c):",
                f"    {''.join(f'f{k}, ' for k in range(len(self.feed_slots)))}_ = *F, None",
                f"    {''.join(f'tm{j}, ' for j in range(self.n_groups))}_ = *TM, None",
                f"    {''.join(f'wt{j}, ' for j in range(self.n_groups))}_ = *WT, None",
                f"    {''.join(f's{slot}, ' for slot in self.const_slots)}_ = *C, None",
                "    outs, S = [], []",
                f"    O = {[[] for _ in range(self.n_groups)]}",
                f"    s{plan.h_slot}, s{plan.c_slot} = h, c",
                "    for t in range(T):"]
        lines = [f"        {line}" for line in body]
        if save:
            lines += [f"        O[{j}].append(s{g[2][0]})" for j, g in sorted(self.groups.items())]
            lines.append(f"        S.append(({''.join(f'{n}, ' for n in saved)}))")
        lines.append(f"        outs.append(s{plan.root_slot})")
        if plan.memory_slot is not None:  # read c_t before h_t replaces h_prev (c_t may be h_prev itself)
            lines.append(f"        s{plan.c_slot} = s{plan.memory_slot}")
        lines.append(f"        s{plan.h_slot} = s{plan.root_slot}")
        return [*head, *lines, f"    return outs, S, O, s{plan.h_slot}, s{plan.c_slot}", ""]

    def _backward(self, steps: list[tuple]) -> list[str]:
        """`backward`: the steps in reverse; returns the gradients of h0, c0, feeds, terms, constants."""
        plan, b = self.plan, _Backward(self.feed_slots, self.const_slots)
        # h_t's gradient is carried (gh); h_{t-1}'s starts as its output gradient GN[t] (zeros at t = 0), so
        # every contribution to it accumulates: a product's becomes one addmm instead of an mm and an add
        b.assigned.update((plan.root_slot, plan.h_slot))
        if plan.memory_slot is not None:
            b.acc(plan.memory_slot, "id", "gc")
        for op, out, args, extra in reversed(steps):
            self._derivative(b, op, out, args, extra)
        uses_c = plan.c_slot in b.assigned
        self._needed = b.needed
        lines = [f"{''.join(f'{n}, ' for n in sorted(b.needed))}= S[t]"] if b.needed else []
        lines += [f"g{plan.root_slot} = gh", f"g{plan.h_slot} = GN[t]", *b.lines]
        lines += [f"GF[{k}].append({b.grad(slot)})" for k, slot in enumerate(self.feed_slots) if slot in b.assigned]
        lines.append(f"gh = g{plan.h_slot}")
        lines += [f"gc = {b.grad(plan.c_slot)}"] if plan.memory_slot is not None else []
        head = ["def backward(T, S, GO, W, C, Z, gc):",
                "    GN, gh = (Z, *GO[:-1]), GO[-1]",
                f"    {''.join(f'w{j}, ' for j in range(self.n_groups))}_ = *W, None",
                f"    {''.join(f's{slot}, ' for slot in self.const_slots)}_ = *C, None",
                f"    GF = {[[] for _ in self.feed_slots]}",
                f"    GP = {[[] for _ in range(self.n_groups)]}",
                f"    A = {dict.fromkeys(self.const_slots)}",
                f"    DA, DB = {[[] for _ in range(sum(map(len, b.deferred)))]}, "
                f"{[[] for _ in range(sum(map(len, b.deferred)))]}",
                "    for t in range(T - 1, -1, -1):"]
        carried_c = uses_c and plan.memory_slot is not None
        self.deferred = b.deferred
        tail = f"    return gh, {'gc' if carried_c else 'None'}, GF, GP, A, DA, DB"
        return [*head, *(f"        {line}" for line in lines), tail, ""]

    def _derivative(self, b: _Backward, op: str, out: int, args: tuple[int, ...], extra: Any) -> None:
        """Emit the backward of one instruction (its output gradients are complete here)."""
        s = [b.use(f"s{a}") if op in ("Mult", "Gate3", "Sin", "Cos", "SELU", "LeakyReLU", "LayerNorm", "Diag")
             else f"s{a}" for a in args]
        gy = b.grad(out)
        if op == "group":
            j, k, runs = extra
            pieces, first = [], out
            for r, (act, n) in enumerate(runs):
                gs = [b.grad(first + i) for i in range(n)]
                if act is None:
                    pieces += gs
                else:
                    y = b.use(f"q{j}_{r}")
                    pieces.append(ACT_BACKWARD[act].format(g=gs[0] if n == 1 else f"cat([{', '.join(gs)}], 1)", y=y))
                first += n
            b.lines.append(f"gp = {pieces[0]}" if len(pieces) == 1 else f"gp = cat([{', '.join(pieces)}], 1)")
            b.lines.append(f"GP[{j}].append(gp)")
            b.acc(args[0], "mm", "gp", f"w{j}")
        elif op in ("Add", "Sub"):
            b.acc(args[0], "id", gy)
            b.acc(args[1], "id" if op == "Add" else "neg", gy)
        elif op == "Mult":
            b.acc(args[0], "mul", gy, s[1])
            b.acc(args[1], "mul", gy, s[0])
        elif op == "Div":
            b.lines.append(f"dq = {gy} / {b.use(f'd{out}')}")
            b.acc(args[0], "id", "dq")
            b.acc(args[1], "negmul", "dq", b.use(f"s{out}"))
        elif op == "Gate3":  # y = g * a + (1 - g) * b
            b.lines.append(f"gm = {gy} * {s[2]}")
            b.acc(args[0], "id", "gm")
            b.acc(args[1], "id", f"({gy} - gm)")
            b.acc(args[2], "mul", gy, f"({s[0]} - {s[1]})")
        elif op in ACT_BACKWARD:
            b.acc(args[0], "id", ACT_BACKWARD[op].format(g=gy, y=b.use(f"s{out}")))
        elif op == "Sin":
            b.acc(args[0], "mul", gy, f"torch.cos({s[0]})")
        elif op == "Cos":
            b.acc(args[0], "negmul", gy, f"torch.sin({s[0]})")
        elif op == "SELU":
            b.acc(args[0], "id", f"elu_bw({gy}, SELU_ALPHA, SELU_SCALE, 1.0, False, {s[0]})")
        elif op == "LeakyReLU":
            b.acc(args[0], "id", f"leaky_bw({gy}, {s[0]}, LEAKY_SLOPE, False)")
        elif op == "PosEnc":
            b.acc(args[0], "id", gy)
        elif op == "Diag":
            b.acc(args[0], "mul", gy, f"s{extra}")
            b.lines.append(f"A[{extra}] = {gy} * {s[0]} if A[{extra}] is None else addcmul(A[{extra}], {gy}, {s[0]})")
        elif op == "LayerNorm":
            m, r = b.use(f"m{out}"), b.use(f"r{out}")
            b.lines.append(f"ga, gw, gb = layer_norm_bw({gy}, {s[0]}, [{s[0]}.shape[-1]], {m}, {r}, s{extra}, "
                           f"s{extra + 1}, [True, True, True])")
            b.lines.append(f"A[{extra}] = gw if A[{extra}] is None else A[{extra}] + gw")
            b.lines.append(f"A[{extra + 1}] = gb if A[{extra + 1}] is None else A[{extra + 1}] + gb")
            b.acc(args[0], "id", "ga")


class _Loop(torch.autograd.Function):
    """The whole time loop as one node: inputs h0, c0, feeds, terms, weights, constants (see `run_loop`)."""

    @staticmethod
    def forward(ctx: Any, code: LoopCode, steps: int, h0: Tensor, c0: Tensor | None,  # type: ignore[override]
                *tensors: Tensor) -> Any:
        """Run the steps without autograd, saving per step what `backward` reads; return all h (and c_T)."""
        feeds, terms, weights, consts = code_split(code, tensors)
        terms_per_step = _per_step(code, terms, h0.shape[0])
        outs, saved, operands, _, c = code.forward_save(steps, [f.unbind(0) for f in feeds], terms_per_step,
                                                        [w.t() for w in weights], consts, h0, c0)
        ctx.code, ctx.steps, ctx.saved, ctx.operands = code, steps, saved, operands
        ctx.save_for_backward(*weights, *consts)
        out = torch.stack(outs)
        ctx.out_shape = out.shape
        if code.plan.memory_slot is not None:
            return out, c.clone()  # a fresh tensor: c_T itself may be saved for the backward
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, gout: Tensor, gc: Tensor | None = None) -> tuple:  # type: ignore[override]
        """Run the steps in reverse; stack per-step gradients of what lies outside the loop into one each."""
        code: LoopCode = ctx.code
        n_w = code.n_groups
        params = ctx.saved_tensors
        weights, consts = params[:n_w], params[n_w:]
        steps, batch, hidden = ctx.out_shape
        zeros = gout.new_zeros(batch, hidden)
        gh, gc0, gf, gp, acc, da, db = code.backward(steps, ctx.saved, gout.unbind(0), weights, consts, zeros,
                                             gc if gc is not None else zeros)
        gfeeds = []
        for g, deferred in zip(gf, code.deferred, strict=True):
            parts = [torch.stack(g[::-1])] if g else []
            parts += [torch.stack(da[d][::-1]) * torch.stack(db[d][::-1]) for d in deferred]
            gfeeds.append(sum(parts[1:], parts[0]) if parts else None)
        gterms, gweights = [], []
        for j, (g, ops) in enumerate(zip(gp, ctx.operands, strict=True)):
            rows = torch.stack(g[::-1]).view(-1, g[0].shape[-1])  # [T*B, k*H], in step order
            gweights.append(rows.t().mm(torch.cat(ops)))
            gterms.append(rows.sum(0) if code.bias_only[j] else rows.view(steps, batch, -1))
        gconsts = []
        for slot in code.const_slots:
            a = acc[slot]
            gconsts.append(a.sum(0) if a is not None and a.dim() == 2 else a)
        return (None, None, gh, gc0, *gfeeds, *gterms, *gweights, *gconsts)


def _per_step(code: LoopCode, terms: list[Tensor], batch: int) -> list[Tensor | tuple[Tensor, ...]]:
    """The additive terms as the generated loop reads them: per step, or the bias repeated over the batch
    (an `addmm` of a `[B, n]` term is cheaper than of a broadcast `[n]` one, with the same result)."""
    return [t.expand(batch, t.shape[0]).contiguous() if bias else t.unbind(0)
            for t, bias in zip(terms, code.bias_only, strict=True)]


def code_split(code: LoopCode, tensors: tuple[Tensor, ...]) -> tuple[list, list, list, list]:
    """Cut `_Loop`'s flat tensor inputs into feeds, terms, weights and constants."""
    nf, ng = len(code.feed_slots), code.n_groups
    return (list(tensors[:nf]), list(tensors[nf:nf + ng]), list(tensors[nf + ng:nf + 2 * ng]),
            list(tensors[nf + 2 * ng:]))


def run_loop(code: LoopCode, steps: int, h: Tensor, c: Tensor | None, feeds: list[Tensor], terms: list[Tensor],
             weights: list[Tensor], consts: list[Tensor]) -> tuple[Tensor, Tensor | None]:
    """All h `[T, B, H]` and the carried c_T (None without a per-step Memory), through `_Loop` when a gradient
    is wanted, else the forward alone. `feeds[k]` are `[T, ...]` values of `code.feed_slots`, `terms[j]` and
    `weights[j]` the additive term `[T, B, k*H]` and the weights `[k*H, n]` of the j-th recurrent product."""
    tensors = [*feeds, *terms, *weights, *consts]
    if torch.is_grad_enabled() and any(t.requires_grad for t in (h, c, *tensors) if t is not None):
        result = _Loop.apply(code, steps, h, c, *tensors)
        return (result[0], result[1]) if code.plan.memory_slot is not None else (result, None)
    outs, _, _, _, c = code.forward(steps, [f.unbind(0) for f in feeds], _per_step(code, terms, h.shape[0]),
                                    [w.t() for w in weights], consts, h, c)
    return torch.stack(outs), (c if code.plan.memory_slot is not None else None)

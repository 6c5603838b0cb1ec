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
The generated source is valid TorchScript as well as Python: TorchScript runs it by default (no Python
statement per operator and step, in inference mode, see `evonas.nn.loop_runtime`); `module.loop_script = False`,
or a source TorchScript refuses, runs it as Python. Both run the same operators in the same order, so they give
equal results.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor

from evonas.nn.loop_runtime import FUNCTIONS, NAMESPACE, Functions, Stores, compile_source, unoptimized
from evonas.nn.ops import DIV_EPS, LEAKY_SLOPE

SELU_ALPHA, SELU_SCALE = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946
ACT_FORWARD = {"Sigmoid": "torch.sigmoid", "Tanh": "torch.tanh", "ReLU": "torch.relu"}
ACT_BACKWARD = {"Sigmoid": "sigmoid_bw({g}, {y})", "Tanh": "tanh_bw({g}, {y})", "ReLU": "threshold_bw({g}, {y}, 0)"}
UNARY = {"Sin": "torch.sin", "Cos": "torch.cos", "SELU": "torch.selu", "LeakyReLU": "leaky_relu"}
BINARY = {"Add": "{0} + {1}", "Sub": "{0} - {1}", "Mult": "{0} * {1}"}
KNOWN = {"group", "Diag", "LayerNorm", "PosEnc", "Div", "Gate3", *ACT_FORWARD, *UNARY, *BINARY}


class _Backward:
    """Emits one step's backward: gradient accumulation per slot, first contribution assigns."""

    def __init__(self, feeds: list[int], consts: list[int]) -> None:
        self.lines: list[str] = []
        self.assigned: set[int] = set()
        self.needed: set[str] = set()  # forward names the backward reads (saved per step)
        self.feeds, self.consts = feeds, {f"s{c}" for c in consts}
        self.deferred: list[list[int]] = [[] for _ in feeds]  # per feed: products computed after the loop

    @property
    def n_deferred(self) -> int:
        """How many products into static values' gradients are computed after the loop (numbered 0..n-1)."""
        return sum(map(len, self.deferred))

    def use(self, name: str) -> str:
        """A forward value the backward reads: the forward then saves it per step."""
        self.needed.add(name)
        return name

    def acc(self, slot: int, kind: str, *e: str) -> None:
        """g[slot] += contribution; kind: id (e), mm (e0 @ e1), neg (-e), mul (e0*e1), negmul (-e0*e1)."""
        if kind == "mul" and slot in self.feeds and all(n.isidentifier() and n not in self.consts for n in e):
            # a product into a static value's gradient: one product over all steps after the loop
            d = self.n_deferred
            self.deferred[self.feeds.index(slot)].append(d)
            self.lines += [f"DA{d}.append({e[0]})", f"DB{d}.append({e[1]})"]
            return
        g, first = f"g{slot}", slot not in self.assigned
        self.assigned.add(slot)
        if kind == "id":
            code = e[0] if first else f"{g} + {e[0]}"
        elif kind == "mm":
            code = f"{e[0]}.mm({e[1]})" if first else f"torch.addmm({g}, {e[0]}, {e[1]})"
        elif kind == "neg":
            code = f"torch.neg({e[0]})" if first else f"{g} - {e[0]}"
        elif kind == "mul":
            code = f"{e[0]} * {e[1]}" if first else f"torch.addcmul({g}, {e[0]}, {e[1]})"
        else:
            code = f"torch.mul({e[0]}, {e[1]}).neg_()" if first else f"torch.addcmul({g}, {e[0]}, {e[1]}, value=-1)"
        self.lines.append(f"{g} = {code}")

    def grad(self, slot: int) -> str:
        """The gradient of a slot's value, zeros when nothing reached it."""
        return f"g{slot}" if slot in self.assigned else "Z"


class LoopCode:
    """A plan's time loop as generated source (TorchScript and Python): `forward_save`, `forward` (no saving),
    `backward` (the steps in reverse) and `finish` (the gradients of what lies outside the loop)."""

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
        # a product whose additive term is its bias alone gets the bias (repeated to `[B, k*H]`), not `[T, B, k*H]`
        self.bias_only = [operand not in plan.paired and all(f is None for f in plan.dynamic_groups[operand].fold)
                          for operand, _ in plan.group_slots]
        fwd, bwd = self._forward(steps), self._backward(steps)
        saved = sorted(self._needed)
        self.source = "\n".join([*self._function(fwd, saved, True), *self._function(fwd, saved, False), *bwd])
        self._scripted: Functions | None = None
        self.script_error: str | None = None  # why TorchScript refused the source, when it did

    @functools.cached_property
    def _python(self) -> Functions:
        """The source run as Python (made when first needed: the scripted run is the usual one)."""
        namespace = dict(NAMESPACE)
        exec(compile(self.source, f"<loop of {self.plan.root_slot}>", "exec"), namespace)  # noqa: S102
        return Functions(*(namespace[name] for name in FUNCTIONS), None)

    def functions(self, script: bool = True) -> Functions:
        """The loop's functions: the source compiled by TorchScript (default; the loop then runs without a
        Python statement per operator, ~1.6x faster at the search's sizes, same operators, same results), or
        run as Python (`script=False`, or when TorchScript refuses the source, with the reason in
        `script_error`)."""
        if not script or self.script_error is not None:
            return self._python
        if self._scripted is None:
            try:
                unit = compile_source(self.source)
            except RuntimeError as e:  # TorchScript's compile errors are RuntimeErrors
                self.script_error = f"{type(e).__name__}: {str(e).strip().splitlines()[0]}"
                return self._python
            self._scripted = Functions(*(unoptimized(getattr(unit, name)) for name in FUNCTIONS), Stores())
        return self._scripted

    def _forward(self, steps: list[tuple]) -> list[str]:
        """One step's forward statements (slot values `s<slot>`, activation outputs `q<group>_<run>`)."""
        plan, lines = self.plan, []
        for k, slot in enumerate(self.feed_slots):
            lines.append(f"s{slot} = f{k}[t]")
        for op, out, args, extra in steps:
            s = [f"s{a}" for a in args]
            if op == "group":
                j, k, runs = extra
                lines.append(f"p = torch.addmm(tm{j}{'' if self.bias_only[j] else '[t]'}, {s[0]}, wt{j})")
                if len(runs) > 1:
                    lines.append(f"ps = p.split_with_sizes({[n * plan.hidden for _, n in runs]}, 1)")
                first = out
                for r, (act, n) in enumerate(runs):
                    part = "p" if len(runs) == 1 else f"ps[{r}]"
                    if act is not None:
                        lines.append(f"q{j}_{r} = {ACT_FORWARD[act]}({part})")
                        part = f"q{j}_{r}"
                    if n > 1:
                        lines.append(f"ch = {part}.chunk({n}, 1)")
                        lines += [f"s{first + i} = ch[{i}]" for i in range(n)]
                    else:
                        lines.append(f"s{first} = {part}")
                    first += n
            elif op == "Diag":
                lines.append(f"s{out} = s{extra} * {s[0]}")
            elif op == "LayerNorm":
                lines.append(f"s{out}, m{out}, r{out} = layer_norm({s[0]}, [{s[0]}.shape[-1]], s{extra}, "
                             f"s{extra + 1}, 1e-5)")
            elif op == "PosEnc":
                lines.append(f"s{out} = {s[0]} + s{extra}")
            elif op == "Div":
                lines.append(f"d{out} = {s[1]} + {DIV_EPS!r} * (({s[1]} >= 0).to({s[1]}.dtype) * 2.0 - 1.0)")
                lines.append(f"s{out} = {s[0]} / d{out}")
            elif op == "Gate3":
                lines.append(f"s{out} = gate3({', '.join(s)})")
            else:
                fn = ACT_FORWARD.get(op) or UNARY.get(op)
                lines.append(f"s{out} = {fn}({', '.join(s)})" if fn else f"s{out} = {BINARY[op].format(*s)}")
        return lines

    def _inputs(self) -> list[str]:
        """Statements binding the loop's inputs to names: feeds, additive terms, weights, constants."""
        per_step = [j for j in range(self.n_groups) if not self.bias_only[j]]
        bias = [j for j in range(self.n_groups) if self.bias_only[j]]
        return ([f"f{k} = F[{k}].unbind(0)" for k in range(len(self.feed_slots))]
                + [f"tm{j} = TS[{i}].unbind(0)" for i, j in enumerate(per_step)]
                + [f"tm{j} = TB[{i}]" for i, j in enumerate(bias)]
                + [f"s{slot} = C[{i}]" for i, slot in enumerate(self.const_slots)])

    def _function(self, body: list[str], saved: list[str], save: bool) -> list[str]:
        """`forward_save` / `forward`: the loop over steps; writes all outputs into `OUT` `[T, B, H]` and returns
        it, h_T and c_T. `forward_save` also appends to `SO` the values the backward reads (one list per name),
        then each product's operands (one list per product)."""
        plan = self.plan
        head = [f"def {'forward_save' if save else 'forward'}(T: int, F: List[Tensor], TS: List[Tensor],"
                " TB: List[Tensor], WT: List[Tensor], C: List[Tensor], h: Tensor, c: Tensor, OUT: Tensor"
                f"{', SO: List[List[Tensor]]' if save else ''}) -> Tuple[Tensor, Tensor, Tensor]:",
                *(f"    {line}" for line in self._inputs()),
                *(f"    wt{j} = WT[{j}]" for j in range(self.n_groups)),
                "    outs: List[Tensor] = []",
                *(f"    o{j}: List[Tensor] = []" for j in range(self.n_groups)),
                *(f"    sv{i}: List[Tensor] = []" for i in range(len(saved))),
                f"    s{plan.h_slot} = h",
                f"    s{plan.c_slot} = c",
                "    for t in range(T):"]
        lines = [f"        {line}" for line in body]
        if save:
            lines += [f"        o{j}.append(s{g[2][0]})" for j, g in sorted(self.groups.items())]
            lines += [f"        sv{i}.append({name})" for i, name in enumerate(saved)]
        lines.append(f"        outs.append(s{plan.root_slot})")
        if plan.memory_slot is not None:  # read c_t before h_t replaces h_prev (c_t may be h_prev itself)
            lines.append(f"        s{plan.c_slot} = s{plan.memory_slot}")
        lines.append(f"        s{plan.h_slot} = s{plan.root_slot}")
        tail = [f"    SO.append({name})" for name in [f"sv{i}" for i in range(len(saved))]
                + [f"o{j}" for j in range(self.n_groups)]] if save else []
        tail += ["    torch.stack(outs, 0, out=OUT)", f"    return OUT, s{plan.h_slot}, s{plan.c_slot}", ""]
        return [*head, *lines, *tail]

    def _backward(self, steps: list[tuple]) -> list[str]:
        """`backward`: the steps in reverse; returns the gradients of h0, c0, feeds, terms, constants."""
        plan, b = self.plan, _Backward(self.feed_slots, self.const_slots)
        # h_t's gradient is carried (gh); h_{t-1}'s starts as its output gradient GO[t - 1] (zeros at t = 0), so
        # every contribution to it accumulates: a product's becomes one addmm instead of an mm and an add
        b.assigned.update((plan.root_slot, plan.h_slot))
        if plan.memory_slot is not None:
            b.acc(plan.memory_slot, "id", "gc")
        for op, out, args, extra in reversed(steps):
            self._derivative(b, op, out, args, extra)
        uses_c = plan.c_slot in b.assigned
        self._needed = b.needed
        saved = sorted(b.needed)
        lines = [f"{name} = sv{i}[t]" for i, name in enumerate(saved)]
        lines += [f"g{plan.root_slot} = gh", f"g{plan.h_slot} = GO[t - 1] if t > 0 else Z", *b.lines]
        lines += [f"GF{k}.append({b.grad(slot)})" for k, slot in enumerate(self.feed_slots) if slot in b.assigned]
        lines.append(f"gh = g{plan.h_slot}")
        lines += [f"gc = {b.grad(plan.c_slot)}"] if plan.memory_slot is not None else []
        head = ["def backward(T: int, SO: List[List[Tensor]], G: List[List[Tensor]], gout: Tensor, W: List[Tensor],"
                " C: List[Tensor], Z: Tensor, gc: Tensor) -> Tuple[Tensor, Tensor, List[Optional[Tensor]]]:",
                "    GO = gout.unbind(0)",
                "    gh = GO[T - 1]",
                *(f"    w{j} = W[{j}]" for j in range(self.n_groups)),
                *(f"    s{slot} = C[{i}]" for i, slot in enumerate(self.const_slots)),
                *(f"    sv{i} = SO[{i}]" for i in range(len(saved))),
                *(f"    GF{k}: List[Tensor] = []" for k in range(len(self.feed_slots))),
                *(f"    GP{j}: List[Tensor] = []" for j in range(self.n_groups)),
                *(f"    a{slot}: Optional[Tensor] = None" for slot in self.const_slots),
                *(f"    {name}{d}: List[Tensor] = []" for d in range(b.n_deferred) for name in ("DA", "DB")),
                "    for t in range(T - 1, -1, -1):"]
        self.carried_c = uses_c and plan.memory_slot is not None
        return [*head, *(f"        {line}" for line in lines), *self._epilogue(b), "", *self._finish(b)]

    def _epilogue(self, b: _Backward) -> list[str]:
        """The end of `backward`: each per-step gradient list (collected last step first) put in step order and
        handed over in `G`: the feeds' (those reached), the deferred products' factors, the products'."""
        lines = []
        for k, slot in enumerate(self.feed_slots):
            if slot in b.assigned:
                lines += [f"GF{k}.reverse()", f"G.append(GF{k})"]
        for d in range(b.n_deferred):
            lines += [f"DA{d}.reverse()", f"DB{d}.reverse()", f"G.append(DA{d})", f"G.append(DB{d})"]
        for j in range(self.n_groups):
            lines += [f"GP{j}.reverse()", f"G.append(GP{j})"]
        lines += [f"A: List[Optional[Tensor]] = [{', '.join(f'a{slot}' for slot in self.const_slots)}]",
                  "return gh, gc, A"]
        return [f"    {line}" for line in lines]

    def _finish(self, b: _Backward) -> list[str]:
        """`finish`: the per-step gradients of `G` stacked into the gradients of what lies outside the loop:
        feeds `[T, ...]`, each product's term (`[T, B, k*H]`, or `[k*H]` for a bias alone) and weights (one
        product over all T*B rows), constants (Diag's per-row products summed over the batch)."""
        n_saved, lines, feeds = len(b.needed), [], []
        reached = [k for k, slot in enumerate(self.feed_slots) if slot in b.assigned]  # G: their lists first,
        at = len(reached) + 2 * b.n_deferred  # then each deferred product's two, then the products'
        for k in range(len(self.feed_slots)):
            parts = [f"torch.stack(G[{reached.index(k)}])"] if k in reached else []
            for d in b.deferred[k]:
                da = len(reached) + 2 * d
                parts.append(f"torch.stack(G[{da}]) * torch.stack(G[{da + 1}])")
            lines.append(f"gf{k}: Optional[Tensor] = {' + '.join(parts) if parts else 'None'}")
            feeds.append(f"gf{k}")
        for j in range(self.n_groups):
            lines += [f"rows = torch.stack(G[{at + j}]).flatten(0, 1)",  # [T*B, k*H], step order
                      f"gw{j} = rows.t().mm(torch.cat(SO[{n_saved + j}]))",
                      f"gt{j} = rows.sum(0)" if self.bias_only[j] else f"gt{j} = rows.view(T, B, -1)"]
        for i in range(len(self.const_slots)):
            lines += [f"a = A[{i}]", "if a is not None:", f"    A[{i}] = a.sum(0) if a.dim() == 2 else a.clone()"]
        lines += [f"GF: List[Optional[Tensor]] = [{', '.join(feeds)}]",
                  f"GT: List[Tensor] = [{', '.join(f'gt{j}' for j in range(self.n_groups))}]",
                  f"GW: List[Tensor] = [{', '.join(f'gw{j}' for j in range(self.n_groups))}]",
                  "return GF, GT, GW, A"]
        head = ["def finish(T: int, B: int, SO: List[List[Tensor]], G: List[List[Tensor]], A: List[Optional[Tensor]])"
                " -> Tuple[List[Optional[Tensor]], List[Tensor], List[Tensor], List[Optional[Tensor]]]:"]
        return [*head, *(f"    {line}" for line in lines), ""]

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
                    pieces.append(ACT_BACKWARD[act].format(g=gs[0] if n == 1 else f"torch.cat([{', '.join(gs)}], 1)",
                                                            y=y))
                first += n
            b.lines.append(f"gp = {pieces[0]}" if len(pieces) == 1 else f"gp = torch.cat([{', '.join(pieces)}], 1)")
            b.lines.append(f"GP{j}.append(gp)")
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
            b.acc(args[0], "id", f"elu_bw({gy}, {SELU_ALPHA!r}, {SELU_SCALE!r}, 1.0, False, {s[0]})")
        elif op == "LeakyReLU":
            b.acc(args[0], "id", f"leaky_bw({gy}, {s[0]}, {LEAKY_SLOPE!r}, False)")
        elif op == "PosEnc":
            b.acc(args[0], "id", gy)
        elif op == "Diag":
            b.acc(args[0], "mul", gy, f"s{extra}")
            b.lines += [f"if a{extra} is None:", f"    a{extra} = {gy} * {s[0]}", "else:",
                        f"    a{extra} = torch.addcmul(a{extra}, {gy}, {s[0]})"]
        elif op == "LayerNorm":
            m, r = b.use(f"m{out}"), b.use(f"r{out}")
            b.lines.append(f"ga, gw, gb = layer_norm_bw({gy}, {s[0]}, [{s[0]}.shape[-1]], {m}, {r}, s{extra}, "
                           f"s{extra + 1}, [True, True, True])")
            for slot, g in ((extra, "gw"), (extra + 1, "gb")):
                b.lines += [f"if a{slot} is None:", f"    a{slot} = {g}", "else:", f"    a{slot} = a{slot} + {g}"]
            b.acc(args[0], "id", "ga")


class _Loop(torch.autograd.Function):
    """The whole time loop as one node: inputs h0, c0, feeds, terms, weights, constants (see `run_loop`)."""

    @staticmethod
    def forward(ctx: Any, code: LoopCode, fns: Functions, steps: int, h0: Tensor,  # type: ignore[override]
                c0: Tensor | None, *tensors: Tensor) -> Any:
        """Run the steps without autograd, saving per step what `backward` reads; return all h (and c_T)."""
        feeds, terms, weights, consts = code_split(code, tensors)
        store = fns.store(ctx)
        out = h0.new_empty(steps, h0.shape[0], h0.shape[1])  # an ordinary tensor: autograd's output
        with fns.mode():
            _, _, c = fns.forward_save(steps, *_loop_inputs(code, feeds, terms, h0), [w.t() for w in weights],
                                       consts, h0, h0 if c0 is None else c0, out, store)
        ctx.code, ctx.fns, ctx.store = code, fns, store
        ctx.save_for_backward(*weights, *consts)
        ctx.out_shape = out.shape
        if code.plan.memory_slot is not None:
            return out, c.clone()  # a fresh, ordinary tensor: c_T itself may be saved for the backward
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, gout: Tensor, gc: Tensor | None = None) -> tuple:  # type: ignore[override]
        """Run the steps in reverse, then stack the per-step gradients of what lies outside the loop into one
        each (`finish`, outside inference mode: what autograd gets back are ordinary tensors)."""
        code: LoopCode = ctx.code
        fns: Functions = ctx.fns
        n_w = code.n_groups
        params = ctx.saved_tensors
        weights, consts = list(params[:n_w]), list(params[n_w:])
        steps, batch, hidden = ctx.out_shape
        zeros = gout.new_zeros(batch, hidden)
        grads = fns.store()
        with fns.mode():
            gh, gc0, acc = fns.backward(steps, ctx.store, grads, gout, weights, consts, zeros,
                                        gc if gc is not None else zeros)
        gfeeds, gterms, gweights, gconsts = fns.finish(steps, batch, ctx.store, grads, acc)
        fns.release(grads)
        return (None, None, None, gh.clone(), gc0.clone() if code.carried_c else None, *gfeeds, *gterms,
                *gweights, *gconsts)


def _loop_inputs(code: LoopCode, feeds: list[Tensor], terms: list[Tensor],
                 h: Tensor) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    """The feeds and additive terms as the generated loop reads them: `[T, ...]` tensors (the loop takes them
    apart per step), and each bias-only term repeated over the batch (an `addmm` of a `[B, n]` term is cheaper
    than of a broadcast `[n]` one, with the same result)."""
    per_step = [t for t, bias in zip(terms, code.bias_only, strict=True) if not bias]
    biases = [t.expand(h.shape[0], t.shape[0]).contiguous() for t, bias in zip(terms, code.bias_only, strict=True)
              if bias]
    return list(feeds), per_step, biases


def code_split(code: LoopCode, tensors: tuple[Tensor, ...]) -> tuple[list, list, list, list]:
    """Cut `_Loop`'s flat tensor inputs into feeds, terms, weights and constants."""
    nf, ng = len(code.feed_slots), code.n_groups
    return (list(tensors[:nf]), list(tensors[nf:nf + ng]), list(tensors[nf + ng:nf + 2 * ng]),
            list(tensors[nf + 2 * ng:]))


def run_loop(code: LoopCode, steps: int, h: Tensor, c: Tensor | None, feeds: list[Tensor], terms: list[Tensor],
             weights: list[Tensor], consts: list[Tensor], script: bool = True) -> tuple[Tensor, Tensor | None]:
    """All h `[T, B, H]` and the carried c_T (None without a per-step Memory), through `_Loop` when a gradient
    is wanted, else the forward alone. `feeds[k]` are `[T, ...]` values of `code.feed_slots`, `terms[j]` and
    `weights[j]` the additive term `[T, B, k*H]` and the weights `[k*H, n]` of the j-th recurrent product.
    `script`: run the TorchScript compilation of the loop (see `LoopCode.functions`)."""
    fns = code.functions(script)
    tensors = [*feeds, *terms, *weights, *consts]
    if torch.is_grad_enabled() and any(t.requires_grad for t in (h, c, *tensors) if t is not None):
        result = _Loop.apply(code, fns, steps, h, c, *tensors)
        return (result[0], result[1]) if code.plan.memory_slot is not None else (result, None)
    out, _, c = fns.forward(steps, *_loop_inputs(code, feeds, terms, h), [w.t() for w in weights], consts,
                            h, h if c is None else c, h.new_empty(steps, h.shape[0], h.shape[1]))
    return out, (c if code.plan.memory_slot is not None else None)

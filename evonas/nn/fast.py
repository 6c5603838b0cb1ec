"""The fast evaluator of a compiled cell: a plan built once per module, run once per `forward`.

What makes it fast (DESIGN.md "Compiled cells"):
- values are shared by structure: equal subtrees without weights (e.g. `h_prev`) are computed once;
- every value that depends only on `x`/`x_prev` (and the step index, for `PosEnc`) is computed for all
  steps at once, outside the time loop; MMs reading the same such operand are one matrix product;
- per step, all MMs reading the same operand are one `addmm` with their weights concatenated; an
  `Add(static, MM(dynamic))` is folded into that `addmm` as its additive term, so the LSTM's step is
  one `addmm` plus its pointwise operators, as in PyTorch's own LSTM;
- the weight gradient of those per-step products is one product over all steps (`weight_gradient_tap`),
  instead of a thin product per step plus the sum of T full-size matrices.
The weights are concatenated from `module.mm` inside each forward, so gradients reach the contract's
parameters. The plan itself holds no tensors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from evonas.cells import Node
from evonas.cells.ops import INPUT_SOURCES
from evonas.nn.loop_grad import LoopCode, run_loop
from evonas.nn.ops import ELEMENTWISE, finish_operands, position_encoding, weight_gradient_tap

PARAM_OPS = ("MM", "Diag", "LayerNorm")
ACTIVATIONS = ("Sigmoid", "Tanh", "ReLU")  # applied by a group's step to a slice of its product (one call)
Slots = list  # the per-forward value table: slot index -> tensor


@dataclass
class Value:
    """One distinct value of the cell (structurally shared); `param` indexes module.mm/diag/layernorm."""

    op: str
    param: int
    args: tuple[int, ...]
    size: int
    static: bool


@dataclass
class Group:
    """MMs (value ids) reading one operand, concatenated into one product; `fold[i]` is an Add folded in."""

    operand: int
    members: list[int]
    fold: list[int | None]  # per member: the static addend's value id, or None
    adds: list[int | None]  # per member: the folded Add's value id, or None


class Plan:
    """The cell as shared values, static/dynamic split, MM groups and the per-step instruction list."""

    def __init__(self, cell: Node, input_size: int, hidden_size: int):
        self.hidden = hidden_size
        self.values: list[Value] = []
        self.memory: int | None = None
        keys: dict[tuple, int] = {}
        counters = dict.fromkeys(PARAM_OPS, 0)

        def visit(n: Node) -> int:
            param = -1
            if n.op in counters:  # numbered on entry: pre-order, the order of module.mm/diag/layernorm
                param = counters[n.op]
                counters[n.op] += 1
            args = tuple(visit(c) for c in n.children)
            key = (n.op, param, args)
            if key not in keys:
                if n.is_source:
                    size = input_size if n.op in INPUT_SOURCES else hidden_size
                    static = n.op in INPUT_SOURCES
                else:
                    size = hidden_size if n.op == "MM" else self.values[args[0]].size
                    static = all(self.values[a].static for a in args)
                keys[key] = len(self.values)
                self.values.append(Value(n.op, param, args, size, static))
            if n.op == "Memory":
                self.memory = keys[key]
            return keys[key]

        self.root = visit(cell)
        self._group()
        self._schedule()
        self._code: LoopCode | None = None

    def loop_code(self) -> LoopCode:
        """The time loop as generated code with hand-written derivatives (`evonas.nn.loop_grad`), built once."""
        if self._code is None:
            self._code = LoopCode(self)
        return self._code

    def _group(self) -> None:
        """Group MMs by operand (static and dynamic apart) and fold `Add(static, MM(dynamic))`."""
        consumers: dict[int, list[int]] = {}
        for vid, v in enumerate(self.values):
            for a in v.args:
                consumers.setdefault(a, []).append(vid)
        self.static_groups: dict[int, Group] = {}
        self.dynamic_groups: dict[int, Group] = {}
        for vid, v in enumerate(self.values):
            if v.op != "MM":
                continue
            groups = self.static_groups if v.static else self.dynamic_groups
            group = groups.setdefault(v.args[0], Group(v.args[0], [], [], []))
            group.members.append(vid)
            addend = add = None
            parents = consumers.get(vid, [])
            if not v.static and len(parents) == 1 and self.values[parents[0]].op == "Add":
                other = [a for a in self.values[parents[0]].args if a != vid]
                if len(other) == 1 and self.values[other[0]].static:
                    addend, add = other[0], parents[0]
            group.fold.append(addend)
            group.adds.append(add)
        self.acts: dict[int, int] = {}  # a dynamic MM (or folded Add) -> its only consumer, an activation
        for g in self.dynamic_groups.values():
            self._order_by_activation(g, consumers)
        # A dynamic group whose addends are all members of one static group (the LSTM/GRU case): compute its
        # additive term directly as one product (biases summed in), weights ordered like the dynamic group, and
        # leave the static group the rest (the GRU's candidate MM(x) pairs with its own recurrent product).
        self.paired: dict[int, Group] = {}  # dynamic operand -> static group producing its additive term
        for op_vid, g in self.dynamic_groups.items():
            if any(f is None for f in g.fold):
                continue
            sg = self.static_groups.get(self.values[g.fold[0]].args[0]) if self.values[g.fold[0]].op == "MM" else None
            if sg is None or not set(g.fold) <= set(sg.members):  # a folded static MM has no other consumer
                continue
            self.paired[op_vid] = Group(sg.operand, list(g.fold), [None] * len(g.fold), [None] * len(g.fold))
            sg.members = [m for m in sg.members if m not in g.fold]
            sg.fold, sg.adds = [None] * len(sg.members), [None] * len(sg.members)
            if not sg.members:
                del self.static_groups[sg.operand]

    def _order_by_activation(self, g: Group, consumers: dict[int, list[int]]) -> None:
        """Record members whose value feeds only one activation, and put equal activations side by side.

        One step then applies each activation once to a contiguous slice of the group's product (the GRU's
        two sigmoid gates are one sigmoid) instead of once per member.
        """
        for m, add in zip(g.members, g.adds, strict=True):
            out = add if add is not None else m
            users = consumers.get(out, [])
            if len(users) == 1 and self.values[users[0]].op in ACTIVATIONS and out not in (self.root, self.memory):
                self.acts[out] = users[0]

        def key(i: int) -> tuple[str, int]:
            out = g.adds[i] if g.adds[i] is not None else g.members[i]
            return (self.values[self.acts[out]].op if out in self.acts else "~", i)

        order = sorted(range(len(g.members)), key=key)
        g.members, g.fold, g.adds = ([seq[i] for i in order] for seq in (g.members, g.fold, g.adds))

    def _schedule(self) -> None:
        """Per-step instructions (closures over slot numbers) in dependency order."""
        self.slot_of: dict[int, int] = {}
        self.instructions: list[Callable[[Slots], None]] = []
        self.feeds: list[tuple[int, str, int]] = []  # (slot, kind, id): per-step inputs from static tensors
        self.consts: list[tuple[int, str, int]] = []  # (slot, kind, id): per-forward tensors (weights)
        self.group_slots: list[tuple[int, int]] = []  # (operand, first of 3 slots: term, weight.T, operands)
        self.steps: list[tuple] = []  # the instructions as data, for evonas.nn.loop_grad: (op, out, args, extra)
        self.n_slots = 0
        self.h_slot = self._new_slot()
        self.c_slot = self._new_slot()
        for vid, v in enumerate(self.values):
            if v.op == "h_prev":
                self.slot_of[vid] = self.h_slot
            elif v.op == "c_prev":
                self.slot_of[vid] = self.c_slot
        self.root_slot = self._emit(self.root)
        self.memory_slot = None
        if self.memory is not None and not self.values[self.memory].static:
            self.memory_slot = self._emit(self.memory)

    def _new_slot(self, count: int = 1) -> int:
        self.n_slots += count
        return self.n_slots - count

    def _const(self, kind: str, ident: int) -> int:
        slot = self._new_slot()
        self.consts.append((slot, kind, ident))
        return slot

    def _emit(self, vid: int) -> int:
        """The slot holding value `vid` during a step, emitting the instructions that compute it."""
        if vid in self.slot_of:
            return self.slot_of[vid]
        v = self.values[vid]
        if v.static:
            slot = self._new_slot()
            self.feeds.append((slot, "static", vid))
        elif v.op == "MM" or (v.op == "Add" and self._folded_group(vid) is not None):
            self._emit_group(self.dynamic_groups[self._group_operand(vid)])
            return self.slot_of[vid]
        elif v.op == "Memory":
            slot = self._emit(v.args[0])
        else:
            args = [self._emit(a) for a in v.args]
            if vid in self.slot_of:  # an activation applied by its group (see _order_by_activation)
                return self.slot_of[vid]
            slot = self._emit_op(v, args)
        self.slot_of[vid] = slot
        return slot

    def _folded_group(self, add_vid: int) -> Group | None:
        for g in self.dynamic_groups.values():
            if add_vid in g.adds:
                return g
        return None

    def _group_operand(self, vid: int) -> int:
        v = self.values[vid]
        if v.op == "MM":
            return v.args[0]
        group = self._folded_group(vid)
        assert group is not None
        return group.operand

    def _emit_group(self, g: Group) -> None:
        """One addmm per step for all MMs reading `g.operand`: slots term (per step), weight.T and store.

        Members whose value only feeds an activation get the activation's value instead (one call per run of
        equal activations); their own value gets no slot (-1).
        """
        a = self._emit(g.operand)
        k, hidden = len(g.members), self.hidden
        term = self._new_slot(3)
        w, store = term + 1, term + 2
        self.group_slots.append((g.operand, term))
        out = self._new_slot(k)
        runs: list[tuple[Callable[[Tensor], Tensor] | None, int]] = []  # (activation or None, members)
        for i, (m, add) in enumerate(zip(g.members, g.adds, strict=True)):
            value = add if add is not None else m
            act = self.acts.get(value)
            if act is None:
                self.slot_of[value] = out + i
            else:
                self.slot_of[value], self.slot_of[act] = -1, out + i
            fn = ELEMENTWISE[self.values[act].op] if act is not None else None
            if runs and runs[-1][0] is fn:
                runs[-1] = (fn, runs[-1][1] + 1)
            else:
                runs.append((fn, 1))
        names = [(None if fn is None else next(n for n in ACTIVATIONS if ELEMENTWISE[n] is fn), n) for fn, n in runs]
        self.steps.append(("group", out, (a,), (len(self.group_slots) - 1, k, names)))
        addmm = torch.addmm
        if len(runs) == 1 and runs[0][0] is None and k == 1:

            def run(s: Slots) -> None:
                operand = s[a]
                s[store].append(operand)
                s[out] = addmm(s[term], operand, s[w])

        elif len(runs) == 1 and runs[0][0] is None:

            def run(s: Slots) -> None:
                operand = s[a]
                s[store].append(operand)
                s[out : out + k] = addmm(s[term], operand, s[w]).chunk(k, 1)  # chunk: no Python-level split

        elif len(runs) == 1:  # one activation over the whole product
            fn = runs[0][0]
            assert fn is not None

            def run(s: Slots) -> None:
                operand = s[a]
                s[store].append(operand)
                value = fn(addmm(s[term], operand, s[w]))
                s[out : out + k] = value.chunk(k, 1) if k > 1 else (value,)

        else:
            sizes = [n * hidden for _, n in runs]

            def run(s: Slots) -> None:
                operand = s[a]
                s[store].append(operand)
                product = addmm(s[term], operand, s[w])
                parts = product.split_with_sizes(sizes, 1) if len(sizes) > 1 else (product,)
                first = out
                for (fn, n), part in zip(runs, parts, strict=True):
                    if fn is not None:
                        part = fn(part)
                    s[first : first + n] = part.chunk(n, 1) if n > 1 else (part,)
                    first += n

        self.instructions.append(run)

    def _emit_op(self, v: Value, args: list[int]) -> int:
        out = self._new_slot()
        if v.op == "Diag":
            w, (i,) = self._const("diag", v.param), args

            self.steps.append(("Diag", out, (i,), w))

            def run(s: Slots) -> None:
                s[out] = s[w] * s[i]

        elif v.op == "LayerNorm":
            wb, (i,), shape = self._new_slot(2), args, (v.size,)
            self.consts.append((wb, "layernorm", v.param))
            layer_norm = F.layer_norm
            self.steps.append(("LayerNorm", out, (i,), wb))

            def run(s: Slots) -> None:
                s[out] = layer_norm(s[i], shape, s[wb], s[wb + 1])

        elif v.op == "PosEnc":
            p, (i,) = self._new_slot(), args
            self.feeds.append((p, "posenc", v.size))
            self.steps.append(("PosEnc", out, (i,), p))

            def run(s: Slots) -> None:
                s[out] = s[i] + s[p]

        else:
            run = _pointwise(ELEMENTWISE[v.op], args, out)
            self.steps.append((v.op, out, tuple(args), None))
        self.instructions.append(run)
        return out


def _pointwise(fn: Callable[..., Tensor], args: list[int], out: int) -> Callable[[Slots], None]:
    """An instruction applying a parameter-free operator to slots."""
    if len(args) == 1:
        (i,) = args

        def run(s: Slots) -> None:
            s[out] = fn(s[i])

    elif len(args) == 2:
        i, j = args

        def run(s: Slots) -> None:
            s[out] = fn(s[i], s[j])

    else:
        i, j, k = args

        def run(s: Slots) -> None:
            s[out] = fn(s[i], s[j], s[k])

    return run


def _cat(parts: list[Tensor]) -> Tensor:
    """Concatenate along dim 0, skipping the copy for a single part."""
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def fast_forward(
    plan: Plan, module: torch.nn.Module, x: Tensor, h: Tensor, c: Tensor | None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Run the plan over `x[T, B, I]` (T >= 1) from state (h, c); return all h, h_T and c_T."""
    steps, batch = x.shape[0], x.shape[1]
    values, hidden = plan.values, plan.hidden
    weights = [lin.weight for lin in module.mm]
    biases = [lin.bias for lin in module.mm]
    cache: dict[int, Tensor] = {}
    pe_cache: dict[int, Tensor] = {}

    def posenc(size: int) -> Tensor:
        if size not in pe_cache:
            pe_cache[size] = position_encoding(steps, size, x.dtype, x.device)
        return pe_cache[size]

    def mm_product(operand: int, members: list[int], extra_bias: list[int] | None = None) -> Tensor:
        """One product of a static operand with the concatenated weights of `members` (all steps at once)."""
        w = _cat([weights[values[m].param] for m in members])
        bs = [biases[values[m].param] for m in members]
        if extra_bias is not None:
            bs = [b + biases[values[e].param] for b, e in zip(bs, extra_bias, strict=True)]
        return F.linear(static(operand), w, _cat(bs))

    def static(vid: int) -> Tensor:
        """A static value for all steps at once, `[T, B, size]`."""
        if vid in cache:
            return cache[vid]
        v = values[vid]
        if v.op == "x":
            r = x
        elif v.op == "x_prev":
            r = torch.cat([x.new_zeros(1, batch, x.shape[2]), x[:-1]])
        elif v.op == "MM":
            g = plan.static_groups[v.args[0]]
            out = mm_product(g.operand, g.members)
            for m, part in zip(g.members, out.split(hidden, -1), strict=True):
                cache[m] = part
            return cache[vid]
        elif v.op == "Diag":
            r = module.diag[v.param] * static(v.args[0])
        elif v.op == "LayerNorm":
            r = module.layernorm[v.param](static(v.args[0]))
        elif v.op == "PosEnc":
            r = static(v.args[0]) + posenc(v.size).unsqueeze(1)
        else:
            r = ELEMENTWISE[v.op](*[static(a) for a in v.args])
        cache[vid] = r
        return r

    def group_term(operand: int) -> Tensor:
        """The additive term of a dynamic group's addmm for all steps: folded static addends plus biases."""
        g = plan.dynamic_groups[operand]
        if operand in plan.paired:
            sg = plan.paired[operand]
            return mm_product(sg.operand, sg.members, extra_bias=g.members)
        bias = _cat([biases[values[m].param] for m in g.members])
        if all(f is None for f in g.fold):
            return bias.expand(steps, batch, bias.shape[0])
        zeros = x.new_zeros(steps, batch, hidden)
        return torch.cat([static(f) if f is not None else zeros for f in g.fold], -1) + bias

    code = plan.loop_code() if getattr(module, "loop_grad", True) else None
    if code is not None and code.supported:
        feeds = [static(ident) if kind == "static" else posenc(ident) for _, kind, ident in plan.feeds]
        memory = static(plan.memory) if code.static_memory else None
        if memory is not None:  # c_prev of each step, as one more static feed
            feeds.append(torch.cat([c.unsqueeze(0), memory[:-1]]) if c is not None else memory)
        terms = [_cat([biases[values[m].param] for m in plan.dynamic_groups[operand].members]) if bias_only
                 else group_term(operand) for (operand, _), bias_only in zip(plan.group_slots, code.bias_only,
                                                                              strict=True)]
        group_weights = [_cat([weights[values[m].param] for m in plan.dynamic_groups[operand].members])
                         for operand, _ in plan.group_slots]
        consts: list[Tensor] = []
        for _, kind, ident in plan.consts:
            consts += [module.diag[ident]] if kind == "diag" else [module.layernorm[ident].weight,
                                                                   module.layernorm[ident].bias]
        out, c_t = run_loop(code, steps, h, c if plan.memory_slot is not None else None, feeds, terms,
                            group_weights, consts, script=getattr(module, "loop_script", True))
        return out, out[-1], c_t if memory is None else memory[-1]
    slots: list = [None] * plan.n_slots
    for slot, kind, ident in plan.consts:
        if kind == "diag":
            slots[slot] = module.diag[ident]
        else:  # layernorm: weight and bias in two slots
            ln = module.layernorm[ident]
            slots[slot], slots[slot + 1] = ln.weight, ln.bias
    feeds: list[tuple[int, tuple[Tensor, ...]]] = []
    for slot, kind, ident in plan.feeds:
        feeds.append((slot, (static(ident) if kind == "static" else posenc(ident)).unbind(0)))
    tapped: list[list[Tensor]] = []
    for operand, term_slot in plan.group_slots:
        weight = _cat([weights[values[m].param] for m in plan.dynamic_groups[operand].members])
        term = group_term(operand)
        operands: list[Tensor] = []  # filled by the steps
        if torch.is_grad_enabled() and weight.requires_grad:
            term = weight_gradient_tap(term, weight, operands)
            weight = weight.detach()  # the steps compute no weight gradient of their own
            tapped.append(operands)
        slots[term_slot + 1], slots[term_slot + 2] = weight.t(), operands
        feeds.append((term_slot, term.unbind(0)))
    memory_seq = None
    if plan.memory is not None and values[plan.memory].static:
        memory_seq = static(plan.memory).unbind(0)

    instructions, root, h_slot, c_slot, mem_slot = (
        plan.instructions,
        plan.root_slot,
        plan.h_slot,
        plan.c_slot,
        plan.memory_slot,
    )
    slots[h_slot], slots[c_slot] = h, c
    outs: list[Tensor] = []
    for t in range(steps):
        for slot, seq in feeds:
            slots[slot] = seq[t]
        for run in instructions:
            run(slots)
        h = slots[root]
        outs.append(h)
        if mem_slot is not None:  # read c_t before h_t replaces h_prev (c_t may be h_prev itself)
            slots[c_slot] = slots[mem_slot]
        elif memory_seq is not None:
            slots[c_slot] = memory_seq[t]
        slots[h_slot] = h
    for operands in tapped:
        finish_operands(operands)
    return torch.stack(outs), h, slots[c_slot] if plan.memory is not None else None

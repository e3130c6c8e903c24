"""Performance RNN: event embedding -> (optional controls) -> multi-layer GRU -> logits over 388 ids.

After the conditional Performance RNN of Magenta (Simon & Oore, 2017) and its PyTorch port
djosix/Performance-RNN-PyTorch (docs/performance-rnn.md). Differences from the port, on purpose:
- training runs the whole window through one `nn.GRU` call (cuDNN on GPU) instead of a Python loop
  per event; generation steps one event at a time with the hidden state carried;
- the head reads the top GRU layer only, and there is no random initial-state network (h0 = 0);
- controls are computed from the (augmented) events themselves (`amadeus.controls`), so transposition
  can never roll the wrong channels (the port's bug, docs/performance-rnn.md#controls).

Layout of a training window of W+1 events e_0..e_W: the inputs are [start, e_0, ..., e_{W-1}] and
the targets e_0..e_W, so every event of the window is predicted; the start id is a fixed event (the
1 s time shift, as the port feeds its largest shift). `controls[:, t]` describes the 2 s ahead of
target e_t, i.e. it travels with the input that predicts e_t (as in Magenta).

For `amadeus.quant`: the GRU is only ever called as `out, h = self.gru(x, h)` and the output
projection is the plain `nn.Linear` `self.head`, so both can be swapped for int8 drop-ins. Generation
steps through `amadeus.models.gru_step` instead, which reads either form (nn.GRU or DecomposedGRU).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from amadeus.controls import CONTROL_DIM
from amadeus.models.gru_step import GRUStepPlan
from amadeus.params import knob
from amadeus.vocab import SHIFT_1S, VOCAB_SIZE


@dataclass
class PerformanceRNNConfig:
    embed_dim: int = knob(256, min=1, help="event embedding width")
    input_size: int = knob(512, min=1, help="GRU input width (Linear + LeakyReLU from embedding+controls)")
    hidden_size: int = knob(768, min=1, help="GRU hidden width")
    num_layers: int = knob(2, min=1, max=16)
    dropout: float = knob(0.1, min=0.0, lt=1.0, help="between GRU layers and before the head")
    controls: bool = knob(True, help="condition on pitch-class histogram + note density of the next 2 s")
    control_dropout: float = knob(0.5, min=0.0, max=1.0,
                                  help="fraction of training windows shown without controls")
    start_id: int = knob(SHIFT_1S, min=0, max=VOCAB_SIZE - 1, help="event fed before the first one")


class RNNState(NamedTuple):
    """Generation state. `h`: per layer [B,H]; `controls`: held [B,24] or None. In eval mode also what
    the fast step needs (amadeus.models.gru_step): each layer's hidden gates for the next step, the
    first layer's input gates for every event id given the held controls ([V,3H] shared by all rows,
    or [B*V,3H] row by row when rows hold different controls), and the plan itself."""

    h: tuple[torch.Tensor, ...]
    controls: torch.Tensor | None
    gates_h: tuple[torch.Tensor, ...] | None = None
    input_gates: torch.Tensor | None = None
    plan: GRUStepPlan | None = None


class _PlanCache(NamedTuple):
    """What `_generation_plan` built, and from which weights (by identity and version) and controls."""

    tensors: list[torch.Tensor]
    versions: list[int]
    held: torch.Tensor | None
    plan: GRUStepPlan
    table: torch.Tensor


def _same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    return a is b or (a is not None and b is not None and torch.equal(a, b))


class PerformanceRNN(nn.Module):
    Config = PerformanceRNNConfig
    family = "performance_rnn"

    def __init__(self, config: PerformanceRNNConfig):
        super().__init__()
        self.config = config
        self.uses_controls = config.controls  # the training loop passes controls only when True
        c = config
        self.embed = nn.Embedding(VOCAB_SIZE, c.embed_dim)
        # +1: the "no control" flag (Magenta's optional_multiconditioned disable flag,
        # docs/performance-rnn.md#magenta-performance-rnn)
        in_dim = c.embed_dim + (1 + CONTROL_DIM if c.controls else 0)
        self.proj = nn.Linear(in_dim, c.input_size)
        self.act = nn.LeakyReLU(0.1)  # as the port's concat_input_fc activation
        self.gru = nn.GRU(c.input_size, c.hidden_size, c.num_layers, batch_first=True,
                          dropout=c.dropout if c.num_layers > 1 else 0.0)
        self.drop = nn.Dropout(c.dropout)
        self.head = nn.Linear(c.hidden_size, VOCAB_SIZE)
        self._plan_cache: _PlanCache | None = None  # generation's step plan and table (see _generation_plan)

    # --- the core: inputs -> logits, hidden state in and out -------------------------------------

    def _inputs(self, ids: torch.Tensor, controls: torch.Tensor | None,
                hide: torch.Tensor | None = None) -> torch.Tensor:
        """GRU inputs [B,T,input_size]; `hide` [B] bool marks rows shown without their controls."""
        x = self.embed(ids)
        if self.config.controls:
            B, T = ids.shape
            if controls is None:
                ctrl = x.new_zeros(B, T, CONTROL_DIM)
                flag = x.new_ones(B, T, 1)
            else:
                if controls.dim() == 2:  # one control vector per sequence
                    controls = controls[:, None, :].expand(B, T, CONTROL_DIM)
                ctrl = controls.to(x.dtype)
                flag = x.new_zeros(B, T, 1)
                if hide is not None:
                    ctrl = ctrl.masked_fill(hide[:, None, None], 0.0)
                    flag = hide[:, None, None].to(x.dtype).expand(B, T, 1)
            x = torch.cat([x, flag, ctrl], dim=-1)
        return self.act(self.proj(x))

    def run(self, ids: torch.Tensor, controls: torch.Tensor | None = None,
            h: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """ids [B,T] (inputs) -> (logits [B,T,388] for the next event at each position, h [L,B,H])."""
        out, h = self.gru(self._inputs(ids, controls), h)
        return self.head(self.drop(out)), h

    def forward(self, ids: torch.Tensor, controls: torch.Tensor | None = None,
                h: torch.Tensor | None = None) -> torch.Tensor:
        return self.run(ids, controls, h)[0]

    def shifted_inputs(self, ids: torch.Tensor) -> torch.Tensor:
        """[start, ids[:, :-1]]: the inputs that predict every event of `ids`."""
        start = ids.new_full((ids.shape[0], 1), self.config.start_id)
        return torch.cat([start, ids[:, :-1]], dim=1)

    def loss(self, ids: torch.Tensor, controls: torch.Tensor | None = None) -> torch.Tensor:
        """Mean NLL (nats/event) of all W+1 events of `ids` [B,W+1]; controls [B,W+1,24] or None.

        In train mode each window hides its controls with probability `control_dropout`, so the same
        model also generates without controls. In eval mode nothing is random.
        """
        if not self.config.controls:
            controls = None
        hide = None
        if controls is not None and self.training and self.config.control_dropout > 0:
            hide = torch.rand(ids.shape[0], device=ids.device) < self.config.control_dropout
        out, _ = self.gru(self._inputs(self.shifted_inputs(ids), controls, hide), None)
        logits = self.head(self.drop(out))
        return F.cross_entropy(logits.float().reshape(-1, VOCAB_SIZE), ids.reshape(-1))

    @torch.no_grad()
    def score(self, ids: torch.Tensor, controls: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced logits [N, 388] for every event of one long sequence ids [N] (one pass)."""
        logits, _ = self.run(self.shifted_inputs(ids.long()[None]), controls)
        return logits[0]

    # --- generation protocol (used by amadeus.sampling) -------------------------------------------

    def prefill(self, ids: torch.Tensor, controls: torch.Tensor | None = None) -> tuple[torch.Tensor, RNNState]:
        """Feed the start event and the prompt ids [B,T] (T may be 0).

        Returns the logits [B,388] for the event after the prompt and the state. `controls` is None
        (unconditioned), [B,24] (held for the whole generation) or [B,T+1,24] (per prompt position;
        the last row is held afterwards).
        """
        start = ids.new_full((ids.shape[0], 1), self.config.start_id)
        inputs = torch.cat([start, ids.long()], dim=1)
        if controls is not None and not self.config.controls:
            controls = None
        logits, h = self.run(inputs, controls)
        held = controls[:, -1] if controls is not None and controls.dim() == 3 else controls
        layers = tuple(h.unbind(0))
        if self.training or not GRUStepPlan.supports(self.gru):  # e.g. dropout between layers: step via run()
            return logits[:, -1], RNNState(layers, held)
        plan, table = self._generation_plan(held)
        return logits[:, -1], RNNState(layers, held, plan.start(layers), table, plan)

    def _generation_plan(self, held: torch.Tensor | None) -> tuple[GRUStepPlan, torch.Tensor]:
        """The step plan and the input-gate table, reused while no weight and not the held controls
        changed (a tensor's `_version` counts its in-place updates, e.g. optimizer steps)."""
        tensors = [t for m in (self.embed, self.proj, self.gru, self.head) for t in (*m.parameters(), *m.buffers())]
        versions = [t._version for t in tensors]
        c = self._plan_cache
        stale = (c is None or len(c.tensors) != len(tensors)
                 or any(a is not b for a, b in zip(c.tensors, tensors, strict=True))
                 or c.versions != versions or not _same(c.held, held))
        if stale:
            plan = GRUStepPlan(self.gru, self.head)
            c = self._plan_cache = _PlanCache(tensors, versions, None if held is None else held.clone(), plan,
                                              self._input_gate_table(plan, held))
        return c.plan, c.table

    def _input_gate_table(self, plan: GRUStepPlan, held: torch.Tensor | None) -> torch.Tensor:
        """The first GRU layer's input gates for every event id: [V,3H], or [B*V,3H] when the rows
        hold different controls."""
        rows = 1
        if held is not None and not bool((held == held[:1]).all()):
            rows = held.shape[0]
        ids = torch.arange(VOCAB_SIZE, device=self.head.weight.device).expand(rows, VOCAB_SIZE)
        x = self._inputs(ids, None if held is None else held[:rows])
        return plan.input_gates(x.reshape(rows * VOCAB_SIZE, -1))

    def step(self, ids: torch.Tensor, state: RNNState) -> tuple[torch.Tensor, RNNState]:
        """One event per row: ids [B] -> (logits [B,388], new state)."""
        if state.plan is None:
            logits, h = self.run(ids.long()[:, None], state.controls, torch.stack(state.h))
            return logits[:, 0], RNNState(tuple(h.unbind(0)), state.controls)
        table = state.input_gates
        if table.shape[0] > VOCAB_SIZE:  # a table per row
            ids = ids + torch.arange(0, table.shape[0], VOCAB_SIZE, device=ids.device)
        logits, h, gates_h = state.plan.step(F.embedding(ids, table), state.h, state.gates_h)
        return logits, RNNState(h, state.controls, gates_h, table, state.plan)

    def reorder_state(self, state: RNNState, index: torch.Tensor) -> RNNState:
        def pick(layers):
            return None if layers is None else tuple(t.index_select(0, index) for t in layers)

        ctrl = state.controls.index_select(0, index) if state.controls is not None else None
        table = state.input_gates
        if table is not None and table.shape[0] > VOCAB_SIZE:
            table = table.view(-1, VOCAB_SIZE, table.shape[1]).index_select(0, index).flatten(0, 1)
        return RNNState(pick(state.h), ctrl, pick(state.gates_h), table, state.plan)

    # --- int8 (amadeus.quant) -------------------------------------------------------------------

    @property
    def quant_shared_inputs(self) -> list[list[str]]:
        """Linears of the decomposed GRU that read the same tensor, a layer's new hidden state: the
        next layer's input projection (the head at the top) and the layer's own hidden projection at
        the next step. amadeus.quant gives each group one input range, so generation quantizes that
        state once and multiplies it with both weights in one int8 matmul (gru_step)."""
        own = [f"gru.cells.{i}.fc_gate_h" for i in range(self.config.num_layers)]
        readers = [f"gru.cells.{i}.fc_gate_x" for i in range(1, self.config.num_layers)] + ["head"]
        return [[a, b] for a, b in zip(own, readers, strict=True)]

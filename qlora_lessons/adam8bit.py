"""8-bit optimizer state: AdamW whose moments are stored blockwise in one byte per element.

AdamW keeps m and v in float32, 8 bytes per parameter. 8-bit Adam (Dettmers et al. 2022, "8-bit
Optimizers via Block-wise Quantization") stores each moment as uint8 codes of a 256-value *dynamic* map,
one float32 absmax per block of 256 elements: 2 * (1 + 4 / 256) = 2.03 bytes per parameter, a quarter.
Every step of every tensor:

    m, v    <- code_m[q_m] * absmax_m,  code_v[q_v] * absmax_v     dequantize (float32)
    W, m, v <- AdamW update with the gradient g                     ``adamw.adamw_update_``, exact arithmetic
    q_m, absmax_m <- quantize(m, signed map);  q_v, absmax_v <- quantize(v, unsigned map)   store again

m takes both signs, so it uses the signed map (``double_quant.dynamic_map(True)``); v, a running mean of
g * g, is never negative, so it uses the unsigned map, whose 256 levels all lie in [0, 1] (the signed map
would waste half of them). Tensors with fewer than ``min_8bit_size`` elements (norms, biases) keep float32
moments, as bitsandbytes does. The update itself is exact; only what is stored between steps is rounded.

Where 8 bits bite: the unsigned map's smallest positive level is 3.25e-7, so rounded to the nearest level a v
below 1.6e-7 of its block's largest is stored as 0 while its m is not. If that element's next gradients are
smaller still (an embedding row whose token is absent from the batch; a unit that went quiet), the update is
about lr * m_hat / eps: hundreds of times lr. bitsandbytes' CUDA kernel (``kOptimizer8bit2StateBlockwise``)
rounds v to the nearest level; its CPU path rounds through a table that sends tiny values to a small positive
level. ``v_floor=True`` (the default) is this course's own choice, not a bitsandbytes option: it stores a
positive v at least as the smallest positive level, never as 0: a larger v, hence a smaller, safe update.
``v_floor=False`` is the nearest rounding of bitsandbytes' CUDA kernel. transformers' Trainer also keeps the
state of every ``nn.Embedding`` in 32 bits with bitsandbytes (``GlobalOptimManager`` override
``{"optim_bits": 32}``); a parameter group with ``"optim_bits": 32`` does so here.

8-bit state is an add-on to QLoRA, not one of its ideas: the paper's reference code trains with
``paged_adamw_32bit``, and with LoRA the state is the adapters' only, a few hundred MB for a 7B model.

Left out: stochastic rounding, percentile clipping, the sign fix bitsandbytes' CUDA kernel applies to m
(a code whose sign differs from m's is moved one level), and the fused kernel (one pass over the codes).
bitsandbytes' CPU path rounds through a 65,536-slot table instead of to the nearest level (lesson 06), which
rounds the tiniest v up to a positive level; tests/test_adam8bit.py reproduces its results with that table.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from qlora_lessons.adamw import adamw_update_, check_adamw_hyperparameters
from qlora_lessons.blockwise import blockwise_absmax_scale, check_blocksize, nearest_code
from qlora_lessons.double_quant import Blockwise8bitState, dequantize_blockwise_8bit, dynamic_map
from qlora_lessons.nf4_kernels import level_table, nearest_levels
from qlora_lessons.paging_state import BLOCKSIZE_8BIT, MIN_8BIT_SIZE

__all__ = ["AdamW8bit"]


class AdamW8bit(torch.optim.Optimizer):
    """AdamW with m and v stored in 8 bits, blockwise: dequantized for each update, re-quantized after it.

    Per parameter p of at least ``min_8bit_size`` elements, ``state[p]`` holds ``exp_avg_codes`` and
    ``exp_avg_sq_codes`` (uint8, p's shape) and ``exp_avg_absmax``, ``exp_avg_sq_absmax`` (float32, one per
    block of ``blocksize``); a smaller p, or one in a group with ``"optim_bits": 32``, holds float32
    ``exp_avg`` and ``exp_avg_sq`` as torch's AdamW does. The update runs in float32 (a bfloat16 parameter
    is updated in float32 and rounded back). With all state in 32 bits it is torch.optim.AdamW, bit for bit.
    ``v_floor=False`` rounds v to the nearest level like m (and like bitsandbytes' CUDA kernel): see the module
    docstring for what that does to elements whose v rounds to 0.

    State bytes: 8 n for a 32-bit tensor; 2 * (n + 4 * ceil(n / 256)) for an 8-bit one; plus the two
    256-entry float32 code tables once: ``optimizer_state_bytes(numels, "adamw8bit")`` (bitsandbytes'
    ``Optimizer2State.init_state`` layout, same defaults: blocksize 256, min_8bit_size 4096).
    Shapes: codes as p; absmax (ceil(p.numel() / blocksize),).
    Example: one 65,536-element matrix -> 131,072 code bytes + 2 * 256 * 4 absmax bytes + 2,048 bytes of
    code tables = 135,168 bytes of state, against 524,288 for AdamW (3.9x less).
    ``AdamW8bit([{"params": blocks}, {"params": [embedding.weight], "optim_bits": 32}], lr=1e-3)`` keeps
    the embedding's state in float32, as transformers' Trainer does with bitsandbytes.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        *,
        blocksize: int = BLOCKSIZE_8BIT,
        min_8bit_size: int = MIN_8BIT_SIZE,
        v_floor: bool = True,
    ) -> None:
        defaults = {**check_adamw_hyperparameters(lr, betas, eps, weight_decay), "optim_bits": 8}
        check_blocksize(blocksize)
        if isinstance(min_8bit_size, bool) or not isinstance(min_8bit_size, int) or min_8bit_size < 1:
            raise ValueError(f"min_8bit_size must be a positive int, got {min_8bit_size!r}")
        if not isinstance(v_floor, bool):
            raise TypeError(f"v_floor must be a bool, got {v_floor!r}")
        self.blocksize, self.min_8bit_size, self.v_floor = blocksize, min_8bit_size, v_floor
        self.code_m, self.code_v = dynamic_map(signed=True), dynamic_map(signed=False)  # (256,) each, shared
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict) -> None:
        """Add a group of floating-point parameters; ``"optim_bits"`` (8 or 32) picks the group's state."""
        params = param_group["params"]
        params = [params] if torch.is_tensor(params) else list(params)
        for p in params:
            if p.dtype not in (torch.float32, torch.bfloat16, torch.float16):
                raise TypeError(f"AdamW8bit needs float32, bfloat16 or float16 parameters, got {p.dtype}")
        if param_group.get("optim_bits", 8) not in (8, 32):
            raise ValueError(f"optim_bits must be 8 or 32, got {param_group['optim_bits']!r}")
        super().add_param_group({**param_group, "params": params})

    def is_8bit(self, p: torch.Tensor, group: dict | None = None) -> bool:
        """Whether p's moments are stored in 8 bits: at least ``min_8bit_size`` elements, group not 32-bit."""
        if group is None:
            group = next(g for g in self.param_groups if any(q is p for q in g["params"]))
        return group["optim_bits"] == 8 and p.numel() >= self.min_8bit_size

    @property
    def state_bytes(self) -> int:
        """Bytes of state now held: codes, absmax and float32 moments, plus the two code tables if any is 8-bit.

        Step counters are left out, as ``optimizer_state_bytes`` leaves them out."""
        tensors = [value for state in self.state.values() for key, value in state.items() if key != "step"]
        tables = self.code_m.nbytes + self.code_v.nbytes if any(t.dtype == torch.uint8 for t in tensors) else 0
        return sum(t.nbytes for t in tensors) + tables

    def moments(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """p's moments (m, v) as float32, dequantized if they are stored in 8 bits (zeros before the first step).

        Shapes: p (any) -> m, v of p's shape."""
        state = self.state[p]
        if not state:
            return torch.zeros_like(p, dtype=torch.float32), torch.zeros_like(p, dtype=torch.float32)
        if "exp_avg" in state:
            return state["exp_avg"].clone(), state["exp_avg_sq"].clone()
        m, v = (
            dequantize_blockwise_8bit(
                state[f"{name}_codes"],
                Blockwise8bitState(state[f"{name}_absmax"], code.to(p.device), self.blocksize, tuple(p.shape),
                                   torch.float32),
            )
            for name, code in (("exp_avg", self.code_m), ("exp_avg_sq", self.code_v))
        )
        return m, v

    def _init_state(self, p: torch.Tensor, group: dict) -> None:
        """Zero moments: float32 for a 32-bit tensor; else zero codes and absmax (code[q] * 0 = 0), as bitsandbytes."""
        state = self.state[p]
        state["step"] = torch.tensor(0.0)
        if not self.is_8bit(p, group):  # small tensors keep float32 moments, like torch's AdamW
            state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(state["exp_avg"])
            return
        blocks = -(-p.numel() // self.blocksize)
        for name in ("exp_avg", "exp_avg_sq"):
            state[f"{name}_codes"] = torch.zeros(p.shape, dtype=torch.uint8, device=p.device)
            state[f"{name}_absmax"] = torch.zeros(blocks, dtype=torch.float32, device=p.device)

    def _nearest(self, scaled: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        """uint8 index of the nearest level of ``code`` for each scaled value (ties to the lower level).

        The same codes as ``blockwise.nearest_code``; on the CPU found with ``nf4_kernels``' lookup table (one
        table read and one compare per value instead of a binary search, ~10x faster: each 16-bit float interval
        holds at most one midpoint of either dynamic map, which ``level_table`` checks)."""
        if scaled.device.type == "cpu":
            return nearest_levels(scaled, level_table(code))
        return nearest_code(scaled, code.to(scaled.device)).to(torch.uint8)  # a search, as bitsandbytes' CUDA kernel

    def _store(self, p: torch.Tensor, m: torch.Tensor, v: torch.Tensor) -> None:
        """Quantize m with the signed map and v with the unsigned map, blocks of ``blocksize``: the codes and
        absmax of ``double_quant.quantize_blockwise_8bit(m, blocksize, code=...)``; with ``v_floor`` a positive
        v that would round to level 0 gets level 1 (3.25e-7 x absmax) instead."""
        state = self.state[p]
        for name, moment, code in (("exp_avg", m, self.code_m), ("exp_avg_sq", v, self.code_v)):
            absmax, scaled = blockwise_absmax_scale(moment, self.blocksize)  # (blocks,), (n,) in [-1, 1]
            codes = self._nearest(scaled, code)
            if name == "exp_avg_sq" and self.v_floor:  # a positive v keeps at least the smallest positive level
                codes = torch.where((codes == 0) & (scaled > 0), torch.ones_like(codes), codes)
            state[f"{name}_codes"] = codes.view(p.shape)
            state[f"{name}_absmax"] = absmax

    @torch.no_grad()
    def step(self, closure=None):
        """One AdamW update of every parameter that has a gradient: dequantize, update, re-quantize."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            hyper = {key: group[key] for key in ("lr", "betas", "eps", "weight_decay")}
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("AdamW8bit does not support sparse gradients")
                state = self.state[p]
                if not state:
                    self._init_state(p, group)
                state["step"] += 1
                eight_bit = "exp_avg_codes" in state
                if eight_bit:
                    m, v = self.moments(p)  # 1. dequantize: float32 copies of this tensor's moments
                else:
                    m, v = state["exp_avg"], state["exp_avg_sq"]  # float32, updated in place
                weights = p if p.dtype == torch.float32 else p.float()
                adamw_update_(weights, p.grad.float(), m, v, step=state["step"].item(), **hyper)  # 2. update
                if weights is not p:
                    p.copy_(weights)
                if eight_bit:
                    self._store(p, m, v)  # 3. re-quantize; the float32 copies are dropped
        return loss

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a state dict of this optimizer: copies of its tensors, the codes kept uint8, the absmax float32.

        (torch's loader casts every floating-point state tensor to its parameter's dtype, and may share the
        step counters with the optimizer the state dict came from.)"""
        super().load_state_dict(state_dict)
        saved_ids = [i for group in state_dict["param_groups"] for i in group["params"]]
        params = [p for group in self.param_groups for p in group["params"]]
        for saved_id, p in zip(saved_ids, params):
            for key, value in state_dict["state"].get(saved_id, {}).items():
                self.state[p][key] = torch.as_tensor(value).to("cpu" if key == "step" else p.device, copy=True)

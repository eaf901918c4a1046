"""The 4-bit quantize and dequantize loops of ``nf4``, made fast in plain torch.

The textbook computation (``blockwise.blockwise_absmax_scale``, ``nf4.nearest_4bit``, ``nf4.pack_4bit``)
scales each block by 1 / absmax, finds the nearest of 16 levels with ``torch.bucketize`` and packs two
codes per byte. That is exact but slow on a CPU: a binary search per value, and every step writes a
full-size temporary tensor. ``nf4.quantize_4bit`` and ``dequantize_4bit`` call this module instead on
CPU; it computes the same bytes (tests/test_nf4.py checks them against the textbook steps and against
bitsandbytes) in three ways that a CPU likes better:

- **Chunks.** The tensor is processed 2^15 values at a time, a whole number of blocks, so the
  temporaries stay in the CPU cache instead of travelling to memory and back. The chunks are spread
  over ``torch.get_num_threads()`` Python threads, each taking one contiguous run of chunks, and torch
  is set to one thread meanwhile, so every op runs on its worker alone: no thread waits at a barrier
  after every small op, and no worker starts threads of its own on a machine that has no cores to spare.
- **A lookup table instead of a search.** The top 16 bits of a float32 (sign, exponent and 7 mantissa
  bits) split [-1, 1] into 65,536 narrow intervals. 4-bit levels are far apart, so each interval
  holds at most one midpoint between levels. For every interval we store ``base`` (how many midpoints
  lie below it) and ``threshold`` (the midpoint inside it, or +inf): the level index of x is then
  ``base[h] + (x > threshold[h])`` with h = the top 16 bits of x: two table reads and one compare,
  the same strict comparison against the same float32 midpoints as the search.
- Dequantization reads a 256-entry table that maps a byte to its two levels at once.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

import torch

from qlora_lessons.env import torch_threads

CHUNK = 2**15  # values per chunk: a multiple of every blocksize; small enough that each torch op runs serially
# Dequantizing to a 16-bit dtype fills a float32 buffer and rounds it into the output: with larger chunks the
# per-op overhead is paid less often (about 2x faster for bfloat16 with 2^18 than 2^15; benchmarks/bench_nf4.py).
WIDE_CHUNK = 2**18


@dataclass(frozen=True, eq=False)
class LevelTable:
    """Lookup tables that find the nearest of a few sorted levels from the top 16 bits of a float32."""

    base: torch.Tensor  # uint8 (65536,): midpoints below the interval
    threshold: torch.Tensor  # float32 (65536,): the midpoint inside the interval, or +inf
    order: torch.Tensor | None  # uint8 (16,): bit pattern of the k-th smallest level (None if sorted)
    pairs: torch.Tensor  # int64 (256,): the two float32 levels of a byte, high nibble first in memory


@lru_cache(maxsize=8)
def _level_table(code_key: tuple[float, ...]) -> LevelTable:
    code = torch.tensor(code_key, dtype=torch.float32)
    levels, order = code.sort(stable=True)
    midpoints = (levels[:-1] + levels[1:]) / 2
    top = torch.arange(65536, dtype=torch.int32) << 16  # (65536,) bit patterns with 16 low bits zero
    ends = torch.stack([top, top | 0xFFFF]).view(torch.float32)  # (2, 65536): both ends of each interval
    low, high = ends.min(dim=0).values, ends.max(dim=0).values  # negative floats count down
    below_low, below_high = torch.bucketize(low, midpoints), torch.bucketize(high, midpoints)
    finite = torch.isfinite(low) & torch.isfinite(high)
    if bool((below_high - below_low)[finite].max() > 1):
        raise ValueError("two midpoints share one 16-bit interval; use blockwise.nearest_code for this code")
    threshold = torch.where(below_high > below_low, midpoints[below_low.clamp(max=len(midpoints) - 1)],
                            torch.tensor(float("inf")))
    identity = bool(torch.equal(order, torch.arange(len(code))))
    pairs = torch.stack([code.repeat_interleave(16), code.repeat(16)], dim=1)  # (256, 2): byte -> (hi, lo)
    return LevelTable(below_low.to(torch.uint8), threshold, None if identity else order.to(torch.uint8),
                      pairs.contiguous().view(torch.int64).view(-1))


def level_table(code: torch.Tensor) -> LevelTable:
    """The lookup tables for a code of 16 levels (cached per code). Shapes: code (16,) -> tables.

    ``base``/``threshold`` also serve any code of up to 256 levels with at most one midpoint per 16-bit interval
    (``adam8bit`` uses them for the 8-bit dynamic maps; ``pairs`` is then meaningless)."""
    return _level_table(tuple(code.cpu().tolist()))


def nearest_levels(scaled: torch.Tensor, table: LevelTable) -> torch.Tensor:
    """Bit pattern of the nearest level for each scaled value (ties to the lower level).

    Equation: k = base[h] + (x > threshold[h]), h = top 16 bits of x; pattern = order[k].
    Shapes: scaled (n,) float32 -> (n,) uint8.
    Example: with the NF4 table, scaled [-1.0, 0.0, 0.03, 1.0] -> [0, 7, 7, 15].
    """
    h = (scaled.view(torch.int32) >> 16).bitwise_and_(0xFFFF)
    k = table.base.index_select(0, h)
    k += scaled > table.threshold.index_select(0, h)
    return k if table.order is None else table.order.index_select(0, k.int())


def for_each_chunk(work, n: int, chunk: int = CHUNK) -> None:
    """Call work(start) for start = 0, chunk, 2 chunk, ... < n, on torch's number of threads.

    Each thread gets one contiguous run of chunks (the chunks are equal work), so there is one task per
    thread instead of one per chunk, and each thread writes its own stretch of memory.
    Example: n = 5 CHUNK on 2 threads -> one thread does starts 0, 1, 2 (x CHUNK), the other 3, 4.
    """
    starts = range(0, n, chunk)
    workers = min(torch.get_num_threads(), len(starts))
    if workers <= 1:
        for start in starts:
            work(start)
        return
    per_worker = -(-len(starts) // workers)  # ceil
    runs = [starts[i * per_worker: (i + 1) * per_worker] for i in range(workers)]

    def run(starts_of_one_worker: range) -> None:
        for start in starts_of_one_worker:
            work(start)

    # torch on one thread meanwhile: each worker runs its ops alone, with no second level of threads inside them
    with torch_threads(1), ThreadPoolExecutor(workers) as pool:
        for _ in pool.map(run, runs):  # re-raises the first error of any chunk
            pass


def quantize_packed(flat: torch.Tensor, blocksize: int, table: LevelTable) -> tuple[torch.Tensor, torch.Tensor]:
    """Blockwise absmax, scaling and nearest levels, packed two per byte, one cache-sized chunk at a time.

    Same arithmetic as ``blockwise.blockwise_absmax_scale`` followed by the nearest level: full blocks
    are multiplied by 1 / absmax, the partial last block divided by its absmax; an odd count is padded
    with the value 0.
    Shapes: flat (n,) float -> packed (ceil(n / 2),) uint8, absmax (ceil(n / blocksize),) float32.
    """
    n = flat.numel()
    full = n - n % blocksize
    absmax = torch.empty(-(-n // blocksize), dtype=torch.float32, device=flat.device)
    packed = torch.empty((n + 1) // 2, dtype=torch.uint8, device=flat.device)

    def one_chunk(start: int) -> None:
        stop = min(start + CHUNK, full)
        x = flat[start:stop].float().view(-1, blocksize)  # (blocks in chunk, blocksize)
        block_max = torch.amax(x.abs(), dim=1, out=absmax[start // blocksize: stop // blocksize])
        scaled = (x * (1.0 / block_max.clamp(min=1e-38)).unsqueeze(1)).view(-1)
        q = nearest_levels(scaled, table).view(-1, 2)  # (pairs, 2)
        torch.add(q[:, 1], q[:, 0] << 4, out=packed[start // 2: stop // 2])

    for_each_chunk(one_chunk, full)
    if full < n:  # the partial last block: divided, not multiplied, as bitsandbytes does
        tail = flat[full:].float()
        absmax[-1] = tail.abs().amax()
        scaled = tail / absmax[-1].clamp(min=1e-38)
        if scaled.numel() % 2:
            scaled = torch.cat([scaled, scaled.new_zeros(1)])
        q = nearest_levels(scaled, table).view(-1, 2)
        packed[full // 2:] = q[:, 1] + (q[:, 0] << 4)
    return packed, absmax


def dequantize_packed(packed: torch.Tensor, absmax: torch.Tensor, blocksize: int, n: int, table: LevelTable,
                      dtype: torch.dtype) -> torch.Tensor:
    """w_i = code[q_i] * absmax_b in float32, cast to dtype, one cache-sized chunk at a time.

    Shapes: packed (ceil(n / 2),) uint8, absmax (ceil(n / blocksize),) float32 -> (n,) of dtype.
    """
    out = torch.empty(n, dtype=dtype, device=packed.device)
    full = n - n % blocksize
    pairs = table.pairs.to(packed.device)
    scale = absmax.unsqueeze(1)  # (blocks, 1)
    direct = dtype == torch.float32  # look the levels up straight into the output, else into a float32 buffer
    chunk = CHUNK if direct else WIDE_CHUNK
    buffers = threading.local()  # per thread: the byte indices and (16-bit dtypes) the float32 levels, reused

    def one_chunk(start: int) -> None:
        stop = min(start + chunk, full)
        if not hasattr(buffers, "index"):
            buffers.index = torch.empty(chunk // 2, dtype=torch.int32, device=packed.device)
            buffers.levels = None if direct else torch.empty(chunk // 2, dtype=torch.int64, device=packed.device)
        index = buffers.index[: (stop - start) // 2].copy_(packed[start // 2: stop // 2])
        levels = out[start:stop].view(torch.int64) if direct else buffers.levels[: (stop - start) // 2]
        torch.index_select(pairs, 0, index, out=levels)  # two float32 levels per byte
        values = levels.view(torch.float32).view(-1, blocksize)  # (blocks in chunk, blocksize)
        values.mul_(scale[start // blocksize: stop // blocksize])
        if not direct:  # round the float32 products once to dtype, as bitsandbytes does
            out[start:stop].view(-1, blocksize).copy_(values)

    for_each_chunk(one_chunk, full, chunk)
    if full < n:
        levels = pairs.index_select(0, packed[full // 2:].int()).view(torch.float32)[: n - full]
        out[full:] = levels * absmax[-1]
    return out

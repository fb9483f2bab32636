"""Batching: padding-free packing (default) or padded batches grouped by length.

Labels are shifted per conversation *before* packing (target[t] = label[t+1]), so no token ever
learns to predict the first token of the next conversation in its row. Packed rows carry
`position_ids` that restart at 0 for each conversation and no attention mask; transformers then
builds a block-diagonal causal mask (sdpa/eager/flex, any number of rows) or, for flash-attention,
runs varlen kernels — but only on a batch of one row, so `one_row=True` joins a packed micro-batch
into a single row (`models/attention.py` decides when, and checks isolation at start).

An epoch plan is a pure function of (lengths, seed, epoch): resuming at step k replays it exactly.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from weitiao.data.chat import IGNORE, Encoded


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, L)
    targets: torch.Tensor  # (B, L) next-token targets, IGNORE where no loss
    position_ids: torch.Tensor  # (B, L)
    attention_mask: torch.Tensor | None  # (B, L) for padded batches, None for packed rows
    seq_index: torch.Tensor | None = None  # (B, L) which example of the micro-batch (row-major), -1 = pad

    @property
    def n_target_tokens(self) -> int:
        return int((self.targets != IGNORE).sum())

    def to(self, device: torch.device | str) -> Batch:
        mask = None if self.attention_mask is None else self.attention_mask.to(device)
        seq = None if self.seq_index is None else self.seq_index.to(device)
        return Batch(self.input_ids.to(device), self.targets.to(device), self.position_ids.to(device), mask, seq)


def shifted_targets(labels: list[int]) -> list[int]:
    """Targets for next-token prediction within one conversation."""
    return labels[1:] + [IGNORE]


def example_lengths(examples: Sequence[Encoded]) -> list[int]:
    """Token count of each example; memory-mapped rows (`cache.EncodedRows`) read them without decoding rows."""
    fast = getattr(examples, "lengths", None)
    return fast() if fast is not None else [len(e) for e in examples]


def n_targets(ex: Encoded) -> int:
    return sum(1 for x in ex.labels[1:] if x != IGNORE)


def pack_first_fit(indices: list[int], lengths: list[int], capacity: int, window: int = 64) -> list[list[int]]:
    """Pack examples into rows of at most `capacity` tokens, each into the first row with room.

    Only the last `window` open rows are searched, so packing is O(n·window) on large data sets
    (full first-fit is O(n·rows)); rows that fall out of the window are closed.
    """
    rows: list[list[int]] = []
    room: list[int] = []
    first_open = 0
    for i in indices:
        n = lengths[i]
        for r in range(first_open, len(rows)):
            if n <= room[r]:
                rows[r].append(i)
                room[r] -= n
                break
        else:
            rows.append([i])
            room.append(capacity - n)
            first_open = max(first_open, len(rows) - window)
    return rows


def process_share(n: int, rank: int, world: int) -> tuple[list[int], int]:
    """Indices of n eval items this process takes (rank::world) and how many every process must run.

    DDP/FSDP forwards are collective, so a process with fewer items runs uncounted fillers up to
    ceil(n / world) and every process stays in step.
    """
    return list(range(n))[rank::world], -(-n // world)


def plan_epoch(
    lengths: list[int],
    *,
    seed: int,
    epoch: int,
    micro_batch_size: int,
    packing: bool,
    capacity: int,
) -> list[list[list[int]]]:
    """Micro-batches for one epoch; each micro-batch is a list of rows, each row a list of examples.

    Packing: shuffle, first-fit into rows of `capacity` tokens, `micro_batch_size` rows per batch.
    Padding: shuffle, sort within mega-batches of 32 micro-batches by length (less padding),
    then shuffle the micro-batches; one example per row.
    """
    rng = random.Random(seed * 100_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if packing:
        rows = pack_first_fit(order, lengths, capacity)
    else:
        mega = micro_batch_size * 32
        rows = []
        for k in range(0, len(order), mega):
            chunk = sorted(order[k : k + mega], key=lambda i: -lengths[i])
            rows.extend([i] for i in chunk)
    batches = [rows[k : k + micro_batch_size] for k in range(0, len(rows), micro_batch_size)]
    if not packing:
        rng.shuffle(batches)
    return batches


def collate(
    examples: list[Encoded], batch_rows: list[list[int]], pad_id: int, packing: bool, one_row: bool = False
) -> Batch:
    """Build tensors for one micro-batch (rows of example indices); `one_row` joins packed rows into one."""
    if packing and one_row:
        batch_rows = [[i for row in batch_rows for i in row]]
    seqs, tgts, poss, segs = [], [], [], []
    k = 0
    for row in batch_rows:
        ids, tgt, pos, seg = [], [], [], []
        for i in row:
            ex = examples[i]
            ids += ex.input_ids
            tgt += shifted_targets(ex.labels)
            pos += range(len(ex.input_ids))
            seg += [k] * len(ex.input_ids)
            k += 1
        seqs.append(ids)
        tgts.append(tgt)
        poss.append(pos)
        segs.append(seg)
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    targets = torch.full((len(seqs), width), IGNORE, dtype=torch.long)
    position_ids = torch.zeros((len(seqs), width), dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    seq_index = torch.full((len(seqs), width), -1, dtype=torch.long)
    for r, (s, t, p, g) in enumerate(zip(seqs, tgts, poss, segs)):
        seq_index[r, : len(g)] = torch.tensor(g)
        input_ids[r, : len(s)] = torch.tensor(s)
        targets[r, : len(t)] = torch.tensor(t)
        position_ids[r, : len(p)] = torch.tensor(p)
        # Padding in a packed row becomes its own segment (positions from 0): it attends only to itself.
        position_ids[r, len(p) :] = torch.arange(width - len(p))
        mask[r, : len(s)] = 1
    return Batch(input_ids, targets, position_ids, None if packing else mask, seq_index)


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, attention mask, position ids) [rows, longest], each row right-aligned: generation appends to every
    row at the same column. Positions count only a row's real tokens (as HF generate does with left padding),
    so its logits do not depend on how much padding the batch needs."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, s in enumerate(seqs):
        if s:
            ids[r, width - len(s) :] = torch.tensor(list(s))
            mask[r, width - len(s) :] = 1
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)

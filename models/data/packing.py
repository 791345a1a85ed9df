"""Padding-free batches: a batch's examples packed into a few rows (`training.packing`).

A padded batch spends compute on pad tokens: every row is as long as the longest example. A
packed batch puts several examples back to back in one row, with `position_ids` restarting at 0
for every example and no `attention_mask`. From such position ids transformers (masking_utils:
`find_packed_sequence_indices`, per batch row) builds a block-diagonal causal mask for sdpa and
eager attention, so a token attends only to earlier tokens of its own example, and rotary
positions are the same as the example would get alone. The per-token logits are then those of
the examples run one by one (tests/models/data/test_packing.py checks this).

Rows, not one row: attention costs row_len^2 per row whatever the mask, so one row holding the
whole batch pays for all the cross-example pairs it then masks out. Examples are therefore
bin-packed (first-fit decreasing, deterministic) into rows of at most `row_len` tokens (the
pipeline passes max_seq_len, the longest a padded row can be). Rows are right-padded to the
longest row; the pad tail gets its own restarting positions, so it is one more sequence of the
block-diagonal mask that no real token attends to, and its labels are -100.

Loss: causal LM loss shifts labels by one, so the last token of an example would be trained to
predict the first token of the next one. The first label of every example is therefore -100
(it is a prompt token in loraflow data anyway, so the loss is the padded batch's loss).

Not every architecture builds that mask: some take positions and mask from the attention mask
alone (OPT; ALiBi models) and would let packed examples see each other. The check stage runs the
base itself packed and alone and refuses packing there (base_model.probes.check_packing). The mask
is also only built without a KV cache, which is how the Trainer trains (use_cache=False).
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100


def first_fit_decreasing(lengths: list[int], row_len: int) -> list[list[int]]:
    """Example indices per row: longest first, each into the first row it fits (an example
    longer than row_len gets a row of its own)."""
    rows: list[list[int]] = []
    loads: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for r, load in enumerate(loads):
            if load + lengths[i] <= row_len:
                rows[r].append(i)
                loads[r] += lengths[i]
                break
        else:
            rows.append([i])
            loads.append(lengths[i])
    return rows


def pack_batch(
    features: list[dict[str, list[int]]], row_len: int, pad_id: int = 0
) -> dict[str, torch.Tensor]:
    """Rows of <= row_len tokens: input_ids, labels (-100 at every example's start and on the
    pad tail) and position_ids restarting per example and for the pad tail."""
    lengths = [len(f["input_ids"]) for f in features]
    rows = first_fit_decreasing(lengths, row_len)
    width = max(sum(lengths[i] for i in row) for row in rows)
    ids, labels, positions = [], [], []
    for row in rows:
        row_ids: list[int] = []
        row_labels: list[int] = []
        row_positions: list[int] = []
        for i in row:
            n = lengths[i]
            row_ids.extend(features[i]["input_ids"])
            row_labels.append(IGNORE_INDEX)
            row_labels.extend(features[i]["labels"][1:n])
            row_positions.extend(range(n))
        pad = width - len(row_ids)
        row_ids.extend([pad_id] * pad)
        row_labels.extend([IGNORE_INDEX] * pad)
        row_positions.extend(range(pad))
        ids.append(row_ids)
        labels.append(row_labels)
        positions.append(row_positions)
    return {
        "input_ids": torch.tensor(ids, dtype=torch.long),
        "labels": torch.tensor(labels, dtype=torch.long),
        "position_ids": torch.tensor(positions, dtype=torch.long),
    }

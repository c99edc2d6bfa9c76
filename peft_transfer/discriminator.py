"""The discriminator: train it (the discriminator stage), score candidates with it and filter them (synthesis).

It is a PEFT adapter on an LLM that answers `{x}\\nIs the above question from the {task} dataset?` with "yes" for
real task inputs and "no" for inputs the source base made up. Filtering never samples a reply: one forward pass per
candidate, batched (the opening that every candidate's question shares read once a batch), compares the logits of
the first token where " yes" and " no" differ (for byte- or character-level tokenizers that is after a shared leading
space). The score is the log-odds `log p(yes) - log p(no)`, which equals that logit difference since the softmax
normaliser cancels.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from .data import discriminator_prompt

YES, NO = " yes", " no"


@dataclass
class EncodedQuestion:
    prefix_ids: list[int]  # prompt plus the answer's shared first tokens: the model is scored after these
    yes_id: int
    no_id: int
    yes_ids: list[int]  # full sequences, for training
    no_ids: list[int]


def encode_question(tokenizer, text: str, task_name: str) -> EncodedQuestion:
    prompt = discriminator_prompt(tokenizer, text, task_name)
    yes = tokenizer(prompt + YES, add_special_tokens=True)["input_ids"]
    no = tokenizer(prompt + NO, add_special_tokens=True)["input_ids"]
    common = 0
    while common < min(len(yes), len(no)) and yes[common] == no[common]:
        common += 1
    if common >= min(len(yes), len(no)):
        raise ValueError("The tokenizer encodes ' yes' and ' no' identically after the prompt; it cannot discriminate.")
    return EncodedQuestion(yes[:common], yes[common], no[common], yes, no)


def training_rows(tokenizer, positives: list[str], negatives: list[str], task_name: str, seed: int = 0) -> list[dict]:
    """Pre-tokenised rows: the loss falls on the answer word only (`completion_mask`)."""
    rows = []
    for texts, label in ((positives, True), (negatives, False)):
        for text in texts:
            q = encode_question(tokenizer, text, task_name)
            ids = q.yes_ids if label else q.no_ids
            start = len(q.prefix_ids)
            rows.append({"input_ids": ids, "completion_mask": [0] * start + [1] * (len(ids) - start)})
    random.Random(seed).shuffle(rows)
    return rows


def train_discriminator(model, tokenizer, positives: list[str], negatives: list[str], *, task_name: str, args,
                        peft_config=None, train=None):
    """Train the yes/no adapter on `model` with `trl.SFTTrainer`; returns the trained `PeftModel` in eval mode.

    Args:
        args (`SFTConfig`): training settings; `completion_only_loss` is forced on so that the loss falls on the
            answer word only.
        train (`Callable[[Trainer], None]`, *optional*): runs the training (the pipeline's resumes from a
            checkpoint); defaults to `trainer.train()`.
    """
    from datasets import Dataset
    from trl import SFTTrainer

    args.completion_only_loss = True
    rows = training_rows(tokenizer, positives, negatives, task_name, seed=args.seed)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         peft_config=peft_config)
    (train or (lambda t: t.train()))(trainer)
    trainer.model.eval()
    return trainer.model


@torch.no_grad()
def score(model, tokenizer, texts: list[str], task_name: str, *, batch_size: int = 64,
          desc: str | None = None, show_progress: bool = True) -> np.ndarray:
    """Log-odds `log p(yes) - log p(no)` for each text, one forward pass each, batched.

    Returns:
        `np.ndarray` of shape `(len(texts),)`, float32.
    """
    if not texts:
        return np.zeros(0, dtype=np.float32)
    from .generation import logits_at, right_padded
    from .modeling import prepare_output_layer

    prepare_output_layer(model)  # logits_to_keep slices the hidden states (see there)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    questions = [encode_question(tokenizer, t, task_name) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: len(questions[i].prefix_ids))
    out = np.zeros(len(texts), dtype=np.float32)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    bar = tqdm(total=len(texts), desc=desc, disable=not show_progress or desc is None, leave=False)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        # Right padding: every row starts at position 0, and the opening the questions share is read once.
        input_ids, attention = right_padded([questions[i].prefix_ids for i in idx], pad)
        logits = torch.stack([lg[0] for lg in logits_at(
            model, input_ids.to(device), attention.to(device), [[len(questions[i].prefix_ids) - 1] for i in idx])])
        yes = torch.tensor([questions[i].yes_id for i in idx], device=logits.device)
        no = torch.tensor([questions[i].no_id for i in idx], device=logits.device)
        diff = logits.gather(1, yes[:, None]) - logits.gather(1, no[:, None])
        out[idx] = diff.squeeze(1).cpu().numpy()
        bar.update(len(idx))
    bar.close()
    model.train(was_training)
    return out

"""`DistillationTrainer`, the trainer of the target_adapter stage: a fresh adapter on the target base learns from the
teacher (source base + adapter).

Why a subclass of `trl.SFTTrainer`: the paper's loss is sequence-level KD, i.e. cross-entropy on the teacher's
completions, which *is* SFT on a prompt/completion dataset with the loss on completion tokens only. `SFTTrainer`
already does that tokenisation, masking, packing, PEFT wrapping (any PEFT type) and model cards, and it works across
tokenizers because the teacher's text is re-tokenised by the student. TRL's own `trl.DistillationTrainer` is
on-policy only, refuses differing vocabularies and prompt-learning adapters, so it cannot run the paper's method.

Token-level KD (forward KL, reverse KL, JSD, or a mix with the sequence CE) is added on top when teacher and student
share a vocabulary. Both models run their ordinary `forward` (so PEFT's prompt and prefix tuning do their work); the
input of each `lm_head` is captured by a pre-hook that also cuts the head's own work to the last position, and the
loss is computed chunk by chunk from those hidden states (`chunked.chunked_token_divergence`), so no full
(batch × length × vocab) logits tensor is ever built.
"""

from __future__ import annotations

import json
import os

import torch
from trl import SFTTrainer

from ..citation import CITATION
from . import LINEAGE_FILE
from .config import DistillationConfig
from .models import (
    adapter_active,
    add_student_adapter,
    final_hidden,
    freeze,
    freeze_adapter,
    logit_softcap,
    refuse_adapter_on_lm_head,
    refuse_shared_parameters,
    save_only_student_adapters,
    unwrap,
    unwrapped_peft,
)


class DistillationTrainer(SFTTrainer):
    """Distil a teacher into a student adapter; usable on its own inside any HF training script.

    Example:

    ```python
    trainer = DistillationTrainer(
        model=student,                      # a base model (with `peft_config`) or a `PeftModel`
        teacher_model=teacher,              # `PeftModel`, merged model, or a path / Hub id (+ `teacher_adapter`)
        args=DistillationConfig(output_dir="out", kd_loss="forward_kl"),
        train_dataset=dataset,              # {"prompt": ..., "completion": <teacher's answer>} rows
        peft_config=LoraConfig(r=8, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    trainer.train()
    ```

    With `kd_loss="sequence"` the teacher is not needed during training (its completions are the labels) and may
    be left out; the loss is SFT's cross-entropy, computed like the token-level losses from the final hidden states
    at the completion positions only (the output layer never sees the prompt). Token-level losses need the teacher, and need the same vocabulary on both sides, id for id: this is checked
    when the trainer is built.

    When teacher and student share the base weights, one model holds both adapters: pass a `PeftModel` that has the
    teacher's adapter loaded under `teacher_adapter_name` (plus `peft_config` for a fresh student adapter, or the
    student adapter already added and active). The teacher's forward runs with its adapter active, in eval mode and
    without gradients; only the student's adapter is trainable, and `save_pretrained` on that model writes only the
    student's adapter unless `selected_adapters` says otherwise.

    Args:
        model (`PreTrainedModel`, `PeftModel` or `str`):
            The student, as for [`SFTTrainer`].
        teacher_model (`PreTrainedModel`, `PeftModel` or `str`, *optional*):
            The teacher: base + adapter as a `PeftModel` (any PEFT type), a merged model, or a path / Hub id of a base
            model (`user/repo@revision` works) with `teacher_adapter`. It is put in eval mode and its parameters are
            frozen; training never changes it.
        args ([`DistillationConfig`], *optional*):
            Training and distillation settings.
        teacher_adapter (`str`, *optional*):
            Path or Hub id of the teacher's adapter, when `teacher_model` is a path or Hub id.
        teacher_adapter_name (`str`, *optional*):
            Name of the teacher's adapter on the student `PeftModel` (one base, two adapters).
        teacher_processing_class (`PreTrainedTokenizerBase`, *optional*):
            The teacher's tokenizer for the vocabulary check; loaded from the teacher's path when not given.
        lineage (`dict`, *optional*):
            Where the transfer comes from (source base and adapter, discriminator, sample counts, ...), written into
            the model card. When not given, `transfer.json` in `args.output_dir` is used if it exists.
        **kwargs:
            Everything else [`SFTTrainer`] takes (`train_dataset`, `processing_class`, `peft_config`, ...).
    """

    _tag_names = ["trl", "peft-transfer", "trans-lora", "distillation"]
    _name = "Trans-LoRA distillation"
    _paper = {
        "title": "Trans-LoRA: towards data-free Transferable Parameter Efficient Finetuning",
        "id": "2405.17258",
        "citation": CITATION,
    }

    def __init__(self, model=None, teacher_model=None, args: DistillationConfig | None = None, *,
                 teacher_adapter: str | None = None, teacher_adapter_name: str | None = None,
                 teacher_processing_class=None, lineage: dict | None = None, **kwargs):
        if args is None:
            args = DistillationConfig(output_dir="distillation-output")
        elif not isinstance(args, DistillationConfig):
            raise TypeError("`args` must be a DistillationConfig (an SFTConfig with the distillation settings).")
        self.lineage = lineage
        # A token-level loss with sequence_weight=1 is plain CE computed chunk-wise: it does not need the teacher.
        self._uses_teacher = args.kd_loss != "sequence" and args.sequence_weight < 1.0
        self.teacher_adapter_name = teacher_adapter_name
        if teacher_adapter_name is not None:
            if teacher_model is not None:
                raise ValueError("Pass either `teacher_model` or `teacher_adapter_name` (the teacher's adapter on the "
                                 "student model), not both.")
            # The student's adapter is added here, so SFTTrainer gets no `peft_config` of its own.
            add_student_adapter(model, teacher_adapter_name, kwargs.pop("peft_config", None))
        elif isinstance(teacher_model, torch.nn.Module) and isinstance(model, torch.nn.Module):
            refuse_shared_parameters(model, teacher_model)
        if self._uses_teacher and getattr(args, "deepspeed_plugin", None) is not None \
                and args.deepspeed_plugin.zero_stage == 3:
            raise NotImplementedError(
                "Token-level KD reads both lm_head weights outside the forward pass, which ZeRO-3 partitions. Use "
                "ZeRO-2 (or kd_loss='sequence') with DeepSpeed."
            )

        super().__init__(model=model, args=args, **kwargs)

        self.teacher_model = None
        self.teacher_name = None
        if teacher_adapter_name is not None:
            self.teacher_name = f"adapter {teacher_adapter_name!r} on the student's base"
            freeze_adapter(self.model, teacher_adapter_name)
            save_only_student_adapters(self.model, teacher_adapter_name)
        elif isinstance(teacher_model, str):
            self.teacher_name = teacher_model + (f" + {teacher_adapter}" if teacher_adapter else "")
            if self._uses_teacher:  # the sequence loss never runs the teacher: do not load it
                self.teacher_model = self._load_teacher(teacher_model, teacher_adapter)
        elif teacher_model is not None:
            if teacher_adapter:
                raise ValueError("`teacher_adapter` is only used with a teacher given as a path or Hub id.")
            self.teacher_name = getattr(teacher_model, "name_or_path", None)
            self.teacher_model = freeze(teacher_model)

        self._softcaps = (None, None)
        if self._uses_teacher:
            if self.teacher_model is None and teacher_adapter_name is None:
                raise ValueError(
                    f"kd_loss={args.kd_loss!r} needs a teacher: pass `teacher_model` (or `teacher_adapter_name`), or "
                    "use kd_loss='sequence' (the teacher's completions are then the labels)."
                )
            if self.teacher_model is not None:
                self._check_vocabulary(self.teacher_model, teacher_processing_class)
                self.teacher_model = self._prepare_teacher(self.teacher_model)
        if args.kd_loss != "sequence":
            teacher = self.teacher_model if self.teacher_model is not None else self.model
            self._softcaps = (logit_softcap(self.model), logit_softcap(teacher))
            refuse_adapter_on_lm_head(unwrap(teacher), "teacher")

    # -- teacher ---------------------------------------------------------------------------------------------------

    def _load_teacher(self, ref: str, adapter: str | None):
        from ..modeling import load_adapter, load_base

        dtype = str(self.model.dtype).removeprefix("torch.")
        teacher = load_base(ref, dtype=dtype, device=self.accelerator.device)
        if adapter:
            teacher = load_adapter(teacher, adapter, ref)
        return freeze(teacher)

    def _prepare_teacher(self, teacher):
        if self.is_deepspeed_enabled:
            from trl.models import prepare_deepspeed

            return prepare_deepspeed(teacher, self.accelerator)
        # evaluation_mode: placed on the device, never wrapped for DDP (it receives no gradient).
        return self.accelerator.prepare_model(teacher, evaluation_mode=True)

    def _check_vocabulary(self, teacher, teacher_processing_class):
        from .losses import assert_same_vocabulary

        teacher_tok = teacher_processing_class
        if teacher_tok is None:
            from transformers import AutoTokenizer

            name = getattr(teacher, "name_or_path", None)
            try:
                teacher_tok = AutoTokenizer.from_pretrained(name)
            except Exception as e:
                raise ValueError(
                    f"Could not load the teacher's tokenizer from {name!r} to check that teacher and student share a "
                    "vocabulary: pass `teacher_processing_class`."
                ) from e
        student_tok = getattr(self.processing_class, "tokenizer", self.processing_class)
        teacher_tok = getattr(teacher_tok, "tokenizer", teacher_tok)
        assert_same_vocabulary(
            teacher_tok,
            student_tok,
            teacher_vocab_size=teacher.get_output_embeddings().weight.shape[0],
            student_vocab_size=self.model.get_output_embeddings().weight.shape[0],
        )

    # -- loss ------------------------------------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # Every loss, the sequence CE included, goes through the chunked path: the output layer is applied only at
        # the positions that carry loss (the completion), never to the prompt. For a large vocabulary (Gemma's
        # 262k) the output layer is most of a small model's compute, and the prompt most of each row.
        from .chunked import chunked_token_divergence

        sequence_only = self.args.kd_loss == "sequence"

        mode = "train" if self.model.training else "eval"
        labels = inputs["labels"]
        model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
        model_inputs["use_cache"] = False
        length = labels.shape[1]
        student = unwrap(model)
        student_head = student.get_output_embeddings()
        # Prompt-learning adapters prepend virtual tokens: keep the positions of the real sequence (the last L).
        student_hidden = final_hidden(model, student_head, model_inputs)[:, -length:]
        teacher_hidden = teacher_head = None
        if self._uses_teacher:
            with torch.no_grad():
                teacher_hidden, teacher_head = self._teacher_forward(model, model_inputs)
            device = student_hidden.device
            teacher_hidden = teacher_hidden[:, -length:].to(device)
            teacher_head = tuple(None if t is None else t.to(device) for t in teacher_head)
        loss, divergence, cross_entropy = chunked_token_divergence(
            student_hidden,
            student_head,
            teacher_hidden,
            teacher_head,
            labels,
            kind="forward_kl" if sequence_only else self.args.kd_loss,  # no divergence when sequence_weight is 1
            beta=self.args.beta,
            temperature=self.args.kd_temperature,
            chunk_size=self.args.kd_chunk_size,
            sequence_weight=1.0 if sequence_only else self.args.sequence_weight,
            logit_softcap=self._softcaps,
            num_items_in_batch=num_items_in_batch,
            return_components=True,
        )
        # Like `SFTTrainer`: `num_items_in_batch` counts the tokens of every rank, and DDP averages the gradients.
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        self._log_kd_metrics(mode, inputs, None if sequence_only else divergence, cross_entropy)
        if return_outputs:
            with torch.no_grad():
                outputs = model(**model_inputs)
            return loss, outputs
        return loss

    def _teacher_forward(self, model, model_inputs):
        """Final hidden states `(B, L[+P], H_t)` and `(weight, bias)` of the teacher's `lm_head`, without gradients.

        The head's tensors are read while the teacher's adapter is active: with `modules_to_save=["lm_head"]`, PEFT's
        wrapper answers `.weight` with the *active* adapter's copy.
        """
        if self.teacher_adapter_name is None:
            head = unwrap(self.teacher_model).get_output_embeddings()
            return final_hidden(self.teacher_model, head, model_inputs), (head.weight, getattr(head, "bias", None))
        # One base, two adapters: run the unwrapped model (not DDP's forward) with the teacher's adapter.
        peft_model = self.accelerator.unwrap_model(model)
        head = unwrap(peft_model).get_output_embeddings()
        with adapter_active(peft_model, self.teacher_adapter_name):
            return final_hidden(peft_model, head, model_inputs), (head.weight, getattr(head, "bias", None))

    def _log_kd_metrics(self, mode, inputs, divergence, cross_entropy):
        gather = self.accelerator.gather_for_metrics
        if divergence is not None:
            self._metrics[mode]["kd/divergence"].append(gather(divergence.detach()).mean().item())
        self._metrics[mode]["kd/cross_entropy"].append(gather(cross_entropy.detach()).mean().item())
        if mode == "train":
            if "attention_mask" in inputs:
                tokens = inputs["attention_mask"].sum()
            else:
                tokens = torch.tensor(inputs["input_ids"].numel(), device=inputs["input_ids"].device)
            self._total_train_tokens += gather(tokens).sum().item() // self._tp_size
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]

    # -- model card ------------------------------------------------------------------------------------------------

    def create_model_card(self, model_name: str | None = None, dataset_name: str | None = None,
                          tags: str | list[str] | None = None):
        """TRL's model card (tags, citation of arXiv 2405.17258), plus the transfer's lineage when it is known."""
        super().create_model_card(model_name=model_name, dataset_name=dataset_name, tags=tags)
        if not self.is_world_process_zero():
            return
        rows = dict(self._card_lineage())
        rows.update({"teacher": self.teacher_name, "distillation loss": self.args.kd_loss})
        if self.args.kd_loss != "sequence":
            rows.update({"sequence weight": self.args.sequence_weight, "temperature": self.args.kd_temperature})
            if self.args.kd_loss == "jsd":
                rows["beta"] = self.args.beta
        peft_config = getattr(unwrapped_peft(self.model), "active_peft_config", None)
        if peft_config is not None:
            rows["student PEFT type"] = str(peft_config.peft_type.value)
        lines = ["", "## Transfer lineage", "", "| | |", "|---|---|"]
        lines += [f"| {k} | {_card_value(v)} |" for k, v in rows.items() if v not in (None, "", [], {})]
        with open(os.path.join(self.args.output_dir, "README.md"), "a") as f:
            f.write("\n".join(lines) + "\n")

    def _card_lineage(self) -> dict:
        if self.lineage is not None:
            return self.lineage
        path = os.path.join(self.args.output_dir, LINEAGE_FILE)
        if os.path.exists(path):
            with open(path) as f:
                return json.load(f)
        return {}


def _card_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return f"`{json.dumps(value)}`"
    return f"`{value}`" if isinstance(value, str) and ("/" in value or "@" in value) else str(value)

"""`DistillationTrainer`: stage 6, a fresh adapter on the target base learns from the teacher (source base + adapter).

Why a subclass of `trl.SFTTrainer`: the paper's loss is sequence-level KD, i.e. cross-entropy on the teacher's
completions, which *is* SFT on a prompt/completion dataset with the loss on completion tokens only. `SFTTrainer`
already does that tokenisation, masking, packing, PEFT wrapping (any PEFT type) and model cards, and it works across
tokenizers because the teacher's text is re-tokenised by the student. TRL's own `trl.DistillationTrainer` is
on-policy only and refuses differing vocabularies, so it cannot run the paper's method. Token-level KD (forward KL,
reverse KL, JSD, or a mix with the sequence CE) is added on top when teacher and student share a vocabulary, computed
chunk by chunk from the final hidden states so that no full (batch × length × vocab) logits tensor is kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from trl import SFTConfig, SFTTrainer

KD_LOSSES = ("sequence", "forward_kl", "reverse_kl", "jsd")


@dataclass
class DistillationConfig(SFTConfig):
    r"""
    [`SFTConfig`] plus the distillation settings.

    Parameters:
        kd_loss (`str`, *optional*, defaults to `"sequence"`):
            `"sequence"` (cross-entropy on the teacher's completions, the paper's loss), `"forward_kl"`,
            `"reverse_kl"` or `"jsd"` (on the teacher's next-token distribution; need a shared vocabulary).
        sequence_weight (`float`, *optional*, defaults to `0.0`):
            For token-level losses, the weight of the sequence CE in `w * CE + (1 - w) * divergence`.
        beta (`float`, *optional*, defaults to `0.5`):
            JSD interpolation: 0 is forward KL, 1 is reverse KL (TRL's GKD convention).
        kd_temperature (`float`, *optional*, defaults to `1.0`):
            Softmax temperature of both distributions in token-level KD.
        kd_chunk_size (`int`, *optional*, defaults to `1024`):
            Completion positions per chunk of token-level KD; bounds the memory of the logits.
    """

    kd_loss: str = field(default="sequence", metadata={"help": f"One of {KD_LOSSES}."})
    sequence_weight: float = field(default=0.0, metadata={"help": "Weight of the sequence CE in token-level KD."})
    beta: float = field(default=0.5, metadata={"help": "JSD interpolation (0: forward KL, 1: reverse KL)."})
    kd_temperature: float = field(default=1.0, metadata={"help": "Softmax temperature of token-level KD."})
    kd_chunk_size: int = field(default=1024, metadata={"help": "Positions per chunk of token-level KD."})

    def __post_init__(self):
        if self.kd_loss not in KD_LOSSES:
            raise ValueError(f"kd_loss={self.kd_loss!r} is not one of {KD_LOSSES}.")
        if not 0.0 <= self.sequence_weight <= 1.0:
            raise ValueError(f"sequence_weight must lie in [0, 1] (got {self.sequence_weight}).")
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"beta must lie in [0, 1] (got {self.beta}).")
        if self.kd_temperature <= 0:
            raise ValueError(f"kd_temperature must be positive (got {self.kd_temperature}).")
        if self.kd_chunk_size < 1:
            raise ValueError(f"kd_chunk_size must be at least 1 (got {self.kd_chunk_size}).")
        super().__post_init__()


class DistillationTrainer(SFTTrainer):
    """Distil a teacher into a student adapter; usable on its own inside any HF training script.

    Example:

    ```python
    trainer = DistillationTrainer(
        model=student,                      # a base model (with `peft_config`) or a `PeftModel`
        teacher_model=teacher,              # `PeftModel`, merged model, or a path / Hub id (+ `teacher_adapter`)
        args=DistillationConfig(output_dir="out", kd_loss="sequence"),
        train_dataset=dataset,              # {"prompt": ..., "completion": <teacher's answer>} rows
        peft_config=LoraConfig(r=8, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    trainer.train()
    ```

    With `kd_loss="sequence"` the teacher is not needed during training (its completions are the labels) and may
    be left out. Token-level losses need it, and need the same vocabulary on both sides: this is checked when the
    trainer is built.
    """

    _tag_names = ["trl", "peft-transfer", "trans-lora", "distillation"]
    _name = "Trans-LoRA distillation"
    _paper = {
        "title": "Trans-LoRA: towards data-free Transferable Parameter Efficient Finetuning",
        "id": "2405.17258",
        "citation": (
            "@inproceedings{wang2024translora,\n"
            "    title     = {{Trans-LoRA: towards data-free Transferable Parameter Efficient Finetuning}},\n"
            "    author    = {Runqian Wang and Soumya Ghosh and David Cox and Diego Antognini and Aude Oliva and "
            "Rogerio Feris and Leonid Karlinsky},\n"
            "    booktitle = {Advances in Neural Information Processing Systems},\n"
            "    year      = 2024,\n"
            "    eprint    = {arXiv:2405.17258}\n"
            "}"
        ),
    }

    def __init__(self, model=None, teacher_model=None, args: DistillationConfig | None = None, *,
                 teacher_adapter: str | None = None, teacher_processing_class=None, **kwargs):
        if args is None:
            args = DistillationConfig(output_dir="distillation-output")
        elif not isinstance(args, DistillationConfig):
            raise TypeError("`args` must be a DistillationConfig (an SFTConfig with the distillation settings).")
        self.kd_loss = args.kd_loss
        super().__init__(model=model, args=args, **kwargs)
        self.teacher_model = None
        if args.kd_loss != "sequence":
            if teacher_model is None:
                raise ValueError(
                    f"kd_loss={args.kd_loss!r} needs a teacher: pass `teacher_model`, or use kd_loss='sequence' "
                    "(the teacher's completions are then the labels)."
                )
            teacher_model = self._load_teacher(teacher_model, teacher_adapter)
            self._check_vocabulary(teacher_model, teacher_processing_class)
            self.teacher_model = self._prepare_teacher(teacher_model)
        elif teacher_model is not None:
            # Kept for the model card and for callers; not used by the sequence loss.
            self.teacher_model = self._freeze(self._load_teacher(teacher_model, teacher_adapter))

    # -- teacher ---------------------------------------------------------------------------------------------------

    def _load_teacher(self, teacher, adapter):
        if isinstance(teacher, str):
            from .modeling import load_adapter, load_base

            ref = teacher
            teacher = load_base(ref, dtype="auto", device=self.accelerator.device)
            if adapter:
                teacher = load_adapter(teacher, adapter, ref)
        elif adapter:
            raise ValueError("`teacher_adapter` is only used with a teacher given as a path or Hub id.")
        return teacher

    @staticmethod
    def _freeze(teacher):
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        return teacher

    def _prepare_teacher(self, teacher):
        teacher = self._freeze(teacher)
        if self.is_deepspeed_enabled:
            from trl.models import prepare_deepspeed

            return prepare_deepspeed(teacher, self.accelerator)
        return self.accelerator.prepare_model(teacher, evaluation_mode=True)

    def _check_vocabulary(self, teacher, teacher_processing_class):
        from transformers import AutoTokenizer

        from .losses import assert_same_vocabulary

        student_tok = self.processing_class
        teacher_tok = teacher_processing_class
        if teacher_tok is None:
            name = getattr(teacher, "name_or_path", None) or teacher.config._name_or_path
            teacher_tok = AutoTokenizer.from_pretrained(name)
        assert_same_vocabulary(
            teacher_tok,
            student_tok,
            teacher_vocab_size=teacher.get_output_embeddings().weight.shape[0],
            student_vocab_size=self.model.get_output_embeddings().weight.shape[0],
        )

    # -- loss ------------------------------------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.kd_loss == "sequence":
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        from .losses import chunked_token_divergence

        labels = inputs["labels"]
        model_inputs = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "position_ids")}
        student_out = model(**model_inputs, output_hidden_states=True, use_cache=False)
        with torch.no_grad():
            teacher_out = self.teacher_model(**model_inputs, output_hidden_states=True, use_cache=False)
        # Prompt-learning adapters prepend virtual tokens: keep the positions of the real sequence.
        length = labels.shape[1]
        student_hidden = student_out.hidden_states[-1][:, -length:]
        teacher_hidden = teacher_out.hidden_states[-1][:, -length:]
        student_head = _unwrap(model).get_output_embeddings()
        teacher_head = _unwrap(self.teacher_model).get_output_embeddings()
        loss = chunked_token_divergence(
            student_hidden,
            student_head.weight,
            teacher_hidden,
            teacher_head.weight,
            labels,
            kind=self.args.kd_loss,
            beta=self.args.beta,
            temperature=self.args.kd_temperature,
            chunk_size=self.args.kd_chunk_size,
            sequence_weight=self.args.sequence_weight,
            student_bias=getattr(student_head, "bias", None),
            teacher_bias=getattr(teacher_head, "bias", None),
        )
        return (loss, student_out) if return_outputs else loss


def _unwrap(model):
    while hasattr(model, "module"):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model

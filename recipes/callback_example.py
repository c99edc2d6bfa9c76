"""Your own `transformers.Trainer` script, plus one callback: the Trans-LoRA curriculum without the pipeline.

    python recipes/callback_example.py --output_dir runs/callback_example
    python recipes/callback_example.py --output_dir runs/callback_example --pretrain_steps 30 --num_samples 32 \
        --num_train_epochs 2 --report_to tensorboard

It runs on the tiny demo models (`peft_transfer.worlds.tiny_models.build_demo_assets`; built and pretrained locally when they
are not committed), on one CPU in minutes. The first part stands for what the data owner did once while the real
data was there (a source adapter and a discriminator, made here with the pipeline's first two stages, skipped when
`--source_adapter` and `--discriminator_adapter` are given). The second part is an ordinary training script:
models loaded with `from_pretrained`, a LoRA student, a plain `Trainer`, and a `SyntheticFilterCallback` that
fills the training set with generated, filtered, teacher-labelled inputs and refreshes it every epoch (or every
`--refresh_steps` steps). Its metrics (`synthetic/acceptance_rate`, `synthetic/candidates`, ...) are logged with the
loss, to `report_to`.
"""

import logging
import os
from dataclasses import dataclass, field

from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, HfArgumentParser, Trainer, TrainingArguments

from peft_transfer import SyntheticFilterCallback, Transfer, TransferConfig
from peft_transfer.data import load_seeds
from peft_transfer.worlds.tiny_models import build_demo_assets


@dataclass
class ScriptArguments:
    assets_dir: str = field(default="runs/demo_assets", metadata={"help": "Where the tiny demo models are built."})
    pretrain_steps: int = field(default=300, metadata={"help": "Pretraining steps of each tiny base, when built."})
    source_adapter: str | None = field(default=None, metadata={"help": "Trained source adapter (else one is made)."})
    discriminator_adapter: str | None = field(default=None, metadata={"help": "Trained discriminator (else made)."})
    num_samples: int = field(default=64, metadata={"help": "Rows of the synthetic training set."})
    candidate_budget: int = field(default=2000, metadata={"help": "Most candidates generated per refresh."})
    refresh_steps: int | None = field(default=None, metadata={"help": "Refresh every N steps (default: every epoch)."})


def data_owner_part(script_args, assets, output_dir):
    """Source adapter and discriminator, trained once on the real data (what a user usually already has)."""
    if script_args.source_adapter and script_args.discriminator_adapter:
        return script_args.source_adapter, script_args.discriminator_adapter
    config = TransferConfig(
        source_model=assets["source_model"], target_model=assets["target_model"], train_file=assets["train_file"],
        seed_file=assets["seed_file"], task_name=assets["task_name"], output_dir=os.path.join(output_dir, "owner"),
        source_epochs=4, source_learning_rate=2e-3, discriminator_epochs=2, discriminator_learning_rate=1e-3,
        max_candidate_tokens=48, label_max_new_tokens=24, report_to=["none"],
        source_adapter=script_args.source_adapter, discriminator_adapter=script_args.discriminator_adapter,
    )
    transfer = Transfer(config)
    transfer.run(stages=("source_adapter", "discriminator"))  # a stage whose adapter is given is skipped
    return transfer.source_adapter, transfer.discriminator_adapter


def main(script_args, training_args):
    assets = build_demo_assets(script_args.assets_dir, pretrain_steps=script_args.pretrain_steps)
    source_adapter, discriminator_adapter = data_owner_part(script_args, assets, training_args.output_dir)
    seeds = load_seeds(assets["seed_file"], 5)

    # --- an ordinary script from here on --------------------------------------------------------------------------
    source_tok = AutoTokenizer.from_pretrained(assets["source_model"])
    target_tok = AutoTokenizer.from_pretrained(assets["target_model"])
    teacher = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(assets["source_model"]), source_adapter)
    discriminator = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(assets["source_model"]),
                                              discriminator_adapter)
    generator = AutoModelForCausalLM.from_pretrained(assets["target_model"])  # a copy: the student wraps its own
    student = get_peft_model(AutoModelForCausalLM.from_pretrained(assets["target_model"]),
                             LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))

    callback = SyntheticFilterCallback(
        seeds=seeds,
        generator=generator, generator_tokenizer=target_tok,
        discriminator=discriminator, discriminator_tokenizer=source_tok,
        teacher=teacher, teacher_tokenizer=source_tok,
        student_tokenizer=target_tok,
        refresh_steps=script_args.refresh_steps,
        # Any TransferConfig field: sampling, filter margin, labelling, the seed of the refreshes...
        task_name=assets["task_name"], num_samples=script_args.num_samples,
        candidate_budget=script_args.candidate_budget, max_candidate_tokens=48, label_max_new_tokens=24,
        generation_batch_size=64, seed=training_args.seed,
    )
    trainer = Trainer(model=student, args=training_args, train_dataset=callback.dataset,
                      data_collator=callback.data_collator)
    callback.attach(trainer)
    trainer.train()
    trainer.save_model(os.path.join(training_args.output_dir, "target_adapter"))
    for entry in trainer.state.log_history:
        if "synthetic/acceptance_rate" in entry:
            print({k.removeprefix("synthetic/"): round(v, 3) for k, v in entry.items() if k.startswith("synthetic/")})


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = HfArgumentParser((ScriptArguments, TrainingArguments))
    # This recipe's defaults (the paper's schedule at tiny scale); flags given on the command line win.
    parser.set_defaults(output_dir="runs/callback_example", num_train_epochs=3, per_device_train_batch_size=8,
                        learning_rate=2e-3, lr_scheduler_type="linear", weight_decay=0.0, logging_steps=5,
                        save_strategy="no", report_to="none")
    script_args, training_args = parser.parse_args_into_dataclasses()
    main(script_args, training_args)

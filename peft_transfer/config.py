"""`TransferConfig`: every setting of one transfer, validated.

Parsed the TRL way: `TrlParser` over `TransferConfig` and the training fields of `DistillationConfig` (TRL's
`SFTConfig`, so `TrainingArguments`), one help text per field, so a flat YAML recipe (`--config recipe.yaml`) and
command-line flags both work and unknown keys are refused with the closest valid names. The training settings every
training of the run shares, and those whose defaults are the paper's, are fields here under their `TrainingArguments`
names (`learning_rate`, `num_train_epochs`, `per_device_train_batch_size`, `seed`, `report_to`, ...); any other
`DistillationConfig` field (`lr_scheduler_type`, `warmup_ratio`, `optim`, `max_grad_norm`, ...) is taken by its own
name into `training_kwargs`. The defaults are the paper's hyper-parameters (Trans-LoRA, §4 and Appendix): AdamW
without weight decay, linear schedule without warm-up, lr 2e-5, effective batch 8, LoRA r=8 / alpha=8, 5 seeds,
margin 0 — with two measured exceptions, both better on the real-model benchmark: LoRA goes on every linear layer
(`all-linear`), not on q_proj and v_proj only; and N = 1,000 accepted samples for 5 epochs instead of 250 for 20
(the same number of training steps over four times the inputs; the candidate budget grows with it, 20,000 instead
of 5,000). The recipes of the paper's pairs name the paper's settings.

The module is long because the fields are: each is declared once, with the help text `--help` shows; the reading
of recipes and the names of settings are in `recipe`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from .distillation import LOSS_TYPES
from .errors import ConfigError

PEFT_TYPES = ("lora", "dora", "prompt_tuning", "prefix_tuning", "ia3")
FILTER_MODES = ("discriminator", "none")
GENERATION_BACKENDS = ("hf", "vllm")
EVALUATION_BACKENDS = ("exact_match", "lm_eval")


@dataclass
class TransferConfig:
    r"""
    Configuration of a Trans-LoRA transfer: source base + adapter → target base + new adapter.

    Model settings take a local path or a Hub repo id with an optional revision (`user/repo@rev`).
    """

    # Models
    source_model: str | None = field(default=None, metadata={"help": "Source base model Ms (path or Hub id)."})
    source_adapter: str | None = field(
        default=None,
        metadata={"help": "Source adapter θs (path or Hub id). Left empty, one is trained on `train_file`."},
    )
    target_model: str | None = field(default=None, metadata={"help": "Target base model Mt (path or Hub id)."})
    generator_model: str | None = field(
        default=None, metadata={"help": "Model that writes candidate inputs; defaults to the target base."}
    )
    generate_with_source_adapter: bool = field(
        default=False,
        metadata={"help": "The source base with the source adapter writes the candidate inputs (TiTok's curriculum) "
                          "instead of `generator_model`."},
    )
    discriminator_model: str | None = field(
        default=None, metadata={"help": "Base of the discriminator; defaults to the source base."}
    )
    discriminator_adapter: str | None = field(
        default=None,
        metadata={"help": "Trained discriminator adapter (path or Hub id). Left empty, one is trained on `train_file`."},
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom modelling code from the Hub."})
    dtype: str = field(default="auto", metadata={"help": "'auto' (bf16 where the hardware computes in it: a bf16 GPU, or a CPU with AVX512-BF16/AMX; else float32), 'bfloat16', 'float16' or 'float32'."})
    attn_implementation: str | None = field(default=None, metadata={"help": "e.g. 'sdpa', 'eager', 'flash_attention_2'."})
    keep_models_loaded: bool = field(
        default=True,
        metadata={"help": "Load each base once per run and share it between stages (adapters are stripped after "
                          "use); off: load per stage. Always off under DeepSpeed."},
    )
    cache_implementation: str | None = field(
        default=None,
        metadata={"help": "KV cache for generation, e.g. 'static' (transformers compiles the decode step on GPU: "
                          "faster after a one-time compile); None: the model's default."},
    )
    generation_backend: str = field(
        default="hf",
        metadata={"help": "Who writes the candidates and the teacher labels: 'hf' (batched `generate`) or 'vllm' (a "
                          "vLLM server per stage, in its own environment: `bash scripts/setup.sh --vllm`; LoRA source "
                          "adapters only, one process; its 20-70 s start-up on CPU pays off on large runs)."},
    )
    vllm_python: str | None = field(
        default=None,
        metadata={"help": "Python of the vLLM environment; default: $PEFT_TRANSFER_VLLM_PYTHON, else ./.venv-vllm."},
    )
    vllm_kv_cache_gb: int = field(default=2, metadata={"help": "KV-cache memory of the vLLM server on CPU, in whole GiB."})
    hub_token: str | None = field(default=None, metadata={"help": "Hub token for private repos (never logged)."})

    # Task data
    task_name: str = field(default="task", metadata={"help": "Task name used in the discriminator prompt."})
    seed_file: str | None = field(
        default=None, metadata={"help": "JSONL of seed examples ({'input': ...}); defaults to the first of `train_file`."}
    )
    num_seeds: int = field(default=5, metadata={"help": "Seeds shown per generation prompt (paper: 5; 15 helps some tasks)."})
    train_file: str | None = field(
        default=None,
        metadata={"help": "JSONL of real task data ({'input', 'target'}), only needed to train the source adapter or discriminator."},
    )
    eval_file: str | None = field(default=None, metadata={"help": "JSONL of held-out real data for the final report."})
    prompt_template: str = field(
        default="{input}\nAnswer:", metadata={"help": "How a task input is shown to a model without a chat template."}
    )
    max_eval_samples: int | None = field(default=None, metadata={"help": "Cap on evaluated examples."})
    evaluation_backend: str = field(
        default="exact_match",
        metadata={"help": "How the three models are evaluated: 'exact_match' on eval_file, or 'lm_eval' "
                          "(lm-evaluation-harness: eval_file as a generated local task, scored the same way, and the "
                          "tasks of `lm_eval_tasks`; `pip install \"peft-transfer[lm_eval]\"`)."},
    )
    lm_eval_tasks: list[str] = field(
        default_factory=list, metadata={"help": "lm-eval task or group names evaluated beside eval_file (lm_eval backend)."})
    lm_eval_include_path: str | None = field(
        default=None, metadata={"help": "A folder of your own lm-eval task YAMLs (lm_eval backend)."})
    lm_eval_num_fewshot: int | None = field(default=None, metadata={"help": "Few-shot examples for lm_eval_tasks."})
    lm_eval_limit: int | None = field(
        default=None, metadata={"help": "At most this many documents per lm-eval task (max_eval_samples caps eval_file)."})
    evaluation_cache_dir: str | None = field(
        default=None,
        metadata={"help": "Reuse the source-adapter and target-base evaluations across runs that share them "
                          "(same models, adapter files, eval data and decoding), e.g. in a sweep."},
    )

    # Adapters
    source_peft_type: str = field(
        default="lora", metadata={"help": f"Type of the source adapter when one is trained here: one of {PEFT_TYPES}."}
    )
    peft_type: str = field(default="lora", metadata={"help": f"Type of the new adapter: one of {PEFT_TYPES}."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=8, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["all-linear"],
        metadata={"help": "Modules that get LoRA/DoRA/IA3 layers (of the new adapter, and of the source adapter and "
                          "discriminator when they are trained here), or `all-linear`: every linear layer but the "
                          "output head (the paper's: [q_proj, v_proj])."},
    )
    num_virtual_tokens: int = field(default=20, metadata={"help": "Virtual tokens for prompt and prefix tuning."})
    prompt_tuning_init_text: str | None = field(
        default="Answer the following question correctly:",
        metadata={"help": "Initial text for prompt tuning (None: random init)."},
    )

    # Synthesis: generate -> filter
    num_samples: int = field(
        default=2000,
        metadata={"help": "Accepted synthetic inputs to collect (paper: |D| = 250); label_selection_ratio of them are "
                          "distilled. On the real-model benchmark the surer 1,000 of 2,000 transferred better than "
                          "1,000 or 250 at the same steps."},
    )
    candidate_budget: int = field(
        default=40000,
        metadata={"help": "Most candidates to generate before giving up with an error; it comes early once a quarter "
                          "of them shows that the rest would not bring 80% of num_samples."},
    )
    generation_batch_size: int = field(default=64, metadata={"help": "Prompts per generate call."})
    max_candidate_tokens: int = field(default=96, metadata={"help": "New tokens per candidate; longer ones are dropped."})
    max_candidate_chars: int = field(default=1000, metadata={"help": "Candidates longer than this are dropped."})
    do_sample: bool = field(default=True, metadata={"help": "Sample candidates (greedy would repeat itself)."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature for candidates."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling for candidates."})
    top_k: int = field(default=0, metadata={"help": "Top-k sampling for candidates (0: off)."})
    filter_mode: str = field(
        default="discriminator", metadata={"help": "'discriminator' (the method) or 'none' (unfiltered ablation)."}
    )
    filter_margin: float = field(
        default=0.0, metadata={"help": "Accept when log p(yes) - log p(no) > margin (0 reproduces the paper)."}
    )
    target_false_accept_rate: float | None = field(
        default=None,
        metadata={"help": "Calibrate the margin instead: at most this fraction of the discriminator's held-out "
                          "negatives pass (needs the held-out scores of a discriminator trained in this run)."},
    )
    filter_batch_size: int = field(default=64, metadata={"help": "Candidates per discriminator forward pass."})
    near_duplicate_similarity: float | None = field(
        default=None,
        metadata={"help": "Drop a candidate that passed the filter when the cosine similarity of its embedding to an "
                          "already accepted one is at least this (e.g. 0.95), for more diverse inputs at the same "
                          "cost; embeddings as for MMD (`embedding_model`, else the generator's hidden states). "
                          "None: off (the paper's)."})
    leak_threshold: float | None = field(
        default=0.8,
        metadata={"help": "Drop candidates whose character 4-gram overlap with a seed or held-out real input is at "
                          "least this (privacy guard; None: off). Raised for a task whose real inputs already overlap one "
                          "another more than this (short-alphabet inputs): then only candidates nearer to a real "
                          "input than the median real input is to its nearest other one, and verbatim copies, go."},
    )

    # Labelling with the teacher
    label_max_new_tokens: int = field(default=64, metadata={"help": "New tokens per teacher answer."})
    label_do_sample: bool = field(default=False, metadata={"help": "Sample teacher answers (default greedy)."})
    label_votes: int = field(
        default=1,
        metadata={"help": "Teacher answers per input (self-consistency): above 1, label_votes - 1 answers are sampled "
                          "at label_temperature beside the first, and the most frequent answer is the label (ties: the "
                          "first). 1 is the paper's single answer."},
    )
    label_temperature: float = field(default=0.7, metadata={"help": "Sampling temperature of the extra votes."})
    label_min_agreement: float = field(
        default=0.0,
        metadata={"help": "With label_votes > 1: drop the inputs whose label won less than this share of the votes."},
    )
    label_selection_ratio: float = field(
        default=0.5,
        metadata={"help": "Keep this share of the labelled inputs, those whose answer the teacher is surest of (mean "
                          "log-probability of its answer tokens); the rest are dropped before distillation. 1: all "
                          "(the paper's)."},
    )
    label_selection_strata: int = field(
        default=1,
        metadata={"help": "With label_selection_ratio < 1: cut the labelled inputs into this many groups at the "
                          "quantiles of their length (characters; inputs of one length stay together) and keep the "
                          "surest share within each, so that the kept inputs keep the lengths of the accepted ones. "
                          "1: one ranking over all."},
    )
    answer_stop: str | None = field(default="\n", metadata={"help": "Answers are cut at this string (None: keep all)."})

    # Distillation (the target_adapter stage) and the other trainings
    kd_loss: str = field(default="sequence", metadata={"help": f"One of {LOSS_TYPES}; token-level ones need a shared vocabulary."})
    sequence_weight: float = field(
        default=0.0,
        metadata={"help": "For token-level losses: weight of the sequence CE in the mix (1 - weight on the divergence)."},
    )
    beta: float = field(default=0.5, metadata={"help": "JSD interpolation (0: forward KL, 1: reverse KL)."})
    token_selection_ratio: float = field(
        default=1.0,
        metadata={"help": "Below 1: the loss only on this share of each completion's tokens, those where the source "
                          "adapter raises the teacher's log-probability most over the source base (TiTok-style token "
                          "selection), and on the end of sequence. 1: every completion token (the paper's)."},
    )
    kd_temperature: float = field(default=1.0, metadata={"help": "Softmax temperature of token-level KD."})
    learning_rate: float | None = field(
        default=None,
        metadata={"help": "Learning rate of the new adapter; default the paper's: 2e-5, or 2e-3 for prompt and prefix tuning."},
    )
    num_train_epochs: float = field(
        default=5,
        metadata={"help": "Epochs over the synthetic set (the paper's 20 over 250 inputs: the same steps over 1,000)."},
    )
    per_device_train_batch_size: int = field(default=8, metadata={"help": "Batch size per device."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Gradient accumulation."})
    max_length: int = field(default=512, metadata={"help": "Longest training sequence (prompt + answer) in tokens."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Trade compute for memory."})
    logging_steps: int = field(default=10, metadata={"help": "Log every N steps."})
    report_to: list[str] = field(
        default_factory=lambda: ["none"],
        metadata={"help": "Trackers every stage reports to, through transformers' integrations (tensorboard, trackio, "
                          "wandb, mlflow, ...): the training curves and each stage's figures, under one run name."})
    run_name: str | None = field(
        default=None, metadata={"help": "The run's name in the trackers; defaults to the output directory's name."})
    training_kwargs: dict = field(
        default_factory=dict,
        metadata={"help": "Further `DistillationConfig` / `TrainingArguments` fields for every training of the run "
                          "(e.g. {lr_scheduler_type: cosine, warmup_ratio: 0.1, optim: adamw_torch_fused}). On the "
                          "command line and at the top of a recipe they go by their own names (`--lr_scheduler_type "
                          "cosine`); the fields above, and those the run sets itself (output folders, checkpoints, "
                          "evaluation during training, the Hub), are not among them."})
    source_learning_rate: float = field(default=2e-4, metadata={"help": "When training the source adapter."})
    source_epochs: float = field(default=20, metadata={"help": "When training the source adapter."})
    discriminator_learning_rate: float = field(default=2e-4, metadata={"help": "When training the discriminator."})
    discriminator_epochs: float = field(default=5, metadata={"help": "When training the discriminator."})
    discriminator_negatives: int | None = field(
        default=None, metadata={"help": "Synthetic negatives for the discriminator; defaults to the number of real inputs."}
    )
    discriminator_format_negatives: float = field(
        default=0.0,
        metadata={"help": "Share of the discriminator's negatives made from real train inputs perturbed in format "
                          "(truncated, shortened, shuffled, spliced, doubled); the others are the source's imitations. "
                          "0: only imitations (the paper's)."},
    )

    # Diagnostics
    compute_mmd: bool = field(
        default=True, metadata={"help": "Report MMD of accepted and of unfiltered candidates to real inputs."}
    )
    embedding_model: str | None = field(
        default=None,
        metadata={"help": "sentence-transformers model for MMD; default: mean-pooled hidden states of the generator (the target base "
                 "unless `generator_model` is set)."},
    )
    plot_projection: bool = field(default=False, metadata={"help": "Write a 2-D PCA plot of real/accepted/rejected."})

    # Hub
    push_to_hub: bool = field(default=False, metadata={"help": "Push the transferred adapter with its model card."})
    hub_model_id: str | None = field(default=None, metadata={"help": "Repo id of the transferred adapter."})
    hub_private_repo: bool | None = field(
        default=None, metadata={"help": "Make the adapter's repo private (None: the Hub's default)."}
    )
    hub_discriminator_id: str | None = field(
        default=None, metadata={"help": "Also push the discriminator trained here to this repo (private by default)."}
    )
    hub_discriminator_private: bool = field(
        default=True, metadata={"help": "Discriminators derive from private data: keep their repos private."}
    )
    hub_dataset_id: str | None = field(
        default=None, metadata={"help": "Also push the labelled synthetic set to this dataset repo (private)."}
    )

    # Chained transfers (A -> B -> C, reusing the first hop's discriminator; paper Table 7)
    chain_targets: list[str] | None = field(
        default=None,
        metadata={"help": "Further targets after `target_model`: each hop's adapter is the next hop's source; hop k "
                          "runs in output_dir/hop-k and only the last hop is pushed."},
    )

    # Run
    output_dir: str = field(default="runs/transfer", metadata={"help": "Run directory: every stage's artifacts."})
    overwrite: bool = field(
        default=False,
        metadata={"help": "Redo every stage (the synthesis progress file included) instead of resuming or reusing."},
    )
    reuse_stages_from: str | None = field(
        default=None,
        metadata={"help": "An earlier run directory: each of its finished stages that this run would make the same "
                          "(equal fingerprints: the same settings, inputs and earlier stages) is copied here instead "
                          "of made again, e.g. a new output_dir with another label_selection_ratio keeps that run's "
                          "synthesis; the log says why each other stage is made here."},
    )
    save_steps: float = field(
        default=0.1,
        metadata={"help": "Checkpoint each training every N optimizer steps (below 1: that fraction of its steps), so "
                          "that a killed run resumes mid-training; 0: no checkpoints."},
    )
    seed: int = field(default=42, metadata={"help": "Seed of every random choice."})

    def __post_init__(self):
        if isinstance(self.lora_target_modules, str):  # `lora_target_modules: all-linear` in a recipe or from Python
            self.lora_target_modules = [self.lora_target_modules]
        if self.learning_rate is None:
            self.learning_rate = 2e-3 if self.peft_type in ("prompt_tuning", "prefix_tuning") else 2e-5
        self._validate(require_paths=True)

    @classmethod
    def check_settings(cls, values: dict) -> None:
        """Validate `values` (every field) as a config is validated, without the models and files a transfer needs:
        for settings used outside a transfer (`SyntheticFilterCallback` in a user's own script)."""
        config = object.__new__(cls)
        config.__dict__.update(values)
        config._validate(require_paths=False)

    def _validate(self, *, require_paths: bool) -> None:
        from .recipe import training_kwargs_problems

        problems = []
        for name in ("peft_type", "source_peft_type"):
            if getattr(self, name) not in PEFT_TYPES:
                problems.append(f"{name}={getattr(self, name)!r} is not one of {PEFT_TYPES}.")
        problems += training_kwargs_problems(self.training_kwargs)
        if self.kd_loss not in LOSS_TYPES:
            problems.append(f"kd_loss={self.kd_loss!r} is not one of {LOSS_TYPES}.")
        if self.filter_mode not in FILTER_MODES:
            problems.append(f"filter_mode={self.filter_mode!r} is not one of {FILTER_MODES}.")
        for name in ("num_seeds", "num_samples", "candidate_budget", "generation_batch_size", "max_candidate_tokens",
                     "filter_batch_size", "label_max_new_tokens", "per_device_train_batch_size",
                     "gradient_accumulation_steps", "max_length"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1 (got {getattr(self, name)}).")
        if self.candidate_budget < self.num_samples:
            problems.append(
                f"candidate_budget ({self.candidate_budget}) is smaller than num_samples ({self.num_samples}): "
                "raise candidate_budget, since at most one sample is accepted per candidate."
            )
        if not 0.0 <= self.sequence_weight <= 1.0:
            problems.append(f"sequence_weight must lie in [0, 1] (got {self.sequence_weight}).")
        if not 0.0 <= self.beta <= 1.0:
            problems.append(f"beta must lie in [0, 1] (got {self.beta}).")
        if not 0.0 <= self.discriminator_format_negatives <= 1.0:
            problems.append("discriminator_format_negatives must lie in [0, 1] "
                            f"(got {self.discriminator_format_negatives}).")
        if not 0.0 < self.token_selection_ratio <= 1.0:
            problems.append(f"token_selection_ratio must lie in (0, 1] (got {self.token_selection_ratio}).")
        if self.label_selection_strata < 1:
            problems.append(f"label_selection_strata must be at least 1 (got {self.label_selection_strata}).")
        if not 0.0 < self.label_selection_ratio <= 1.0:
            problems.append(f"label_selection_ratio must lie in (0, 1] (got {self.label_selection_ratio}).")
        if self.temperature <= 0 or self.kd_temperature <= 0:
            problems.append("temperature and kd_temperature must be positive.")
        if self.label_votes < 1 or self.label_temperature <= 0:
            problems.append(f"label_votes must be at least 1 and label_temperature positive (got {self.label_votes}, "
                            f"{self.label_temperature}).")
        if not 0.0 <= self.label_min_agreement <= 1.0:
            problems.append(f"label_min_agreement must lie in [0, 1] (got {self.label_min_agreement}).")
        elif self.label_min_agreement > 0 and self.label_votes == 1:
            problems.append("label_min_agreement needs label_votes > 1 (a single answer always agrees with itself).")
        if not 0.0 < self.top_p <= 1.0:
            problems.append(f"top_p must lie in (0, 1] (got {self.top_p}).")
        if "{input}" not in self.prompt_template:
            problems.append("prompt_template must contain '{input}'.")
        if self.evaluation_backend not in EVALUATION_BACKENDS:
            problems.append(f"evaluation_backend={self.evaluation_backend!r} is not one of {EVALUATION_BACKENDS}.")
        elif self.evaluation_backend != "lm_eval" and (self.lm_eval_tasks or self.lm_eval_include_path):
            problems.append("lm_eval_tasks and lm_eval_include_path are read by `evaluation_backend: lm_eval` only: "
                            "set it, or leave them out.")
        if self.generation_backend not in GENERATION_BACKENDS:
            problems.append(f"generation_backend={self.generation_backend!r} is not one of {GENERATION_BACKENDS}.")
        if self.vllm_kv_cache_gb < 1:
            problems.append(f"vllm_kv_cache_gb must be at least 1 (got {self.vllm_kv_cache_gb}).")
        if self.dtype not in ("auto", "bfloat16", "float16", "float32"):
            problems.append(f"dtype={self.dtype!r}: use 'auto', 'bfloat16', 'float16' or 'float32'.")
        if require_paths:
            for name in ("source_model", "target_model"):
                if not getattr(self, name):
                    problems.append(f"{name} is required (a local path, a Hub id or a packaged model), or run "
                                    "`peft-transfer demo`.")
            if not self.source_adapter and not self.train_file:
                problems.append("Give `source_adapter`, or `train_file` so that one can be trained.")
            if not self.discriminator_adapter and not self.train_file and self.filter_mode == "discriminator":
                problems.append(
                    "Give `discriminator_adapter`, or `train_file` so that one can be trained, "
                    "or set `filter_mode: none` (the unfiltered ablation)."
                )
            if not self.seed_file and not self.train_file:
                problems.append("Give `seed_file` (JSONL with an 'input' per line) or `train_file` to take seeds from.")
        if self.generate_with_source_adapter and self.generator_model not in (None, self.source_model):
            problems.append("generate_with_source_adapter writes the candidates with the source model: leave "
                            f"generator_model unset (it is {self.generator_model!r}).")
        if self.push_to_hub and not self.hub_model_id:
            problems.append("push_to_hub needs `hub_model_id` (e.g. 'my-org/gemma-7b-task-translora').")
        if self.hub_discriminator_id and self.discriminator_adapter:
            problems.append(
                "hub_discriminator_id pushes a discriminator trained in this run, but `discriminator_adapter` is "
                "given: push that one from where it was trained, or leave hub_discriminator_id empty."
            )
        if self.target_false_accept_rate is not None:
            if not 0.0 <= self.target_false_accept_rate <= 1.0:
                problems.append(f"target_false_accept_rate must lie in [0, 1] (got {self.target_false_accept_rate}).")
            if self.discriminator_adapter:
                problems.append(
                    "target_false_accept_rate calibrates on the held-out negatives of a discriminator trained in this "
                    "run; with `discriminator_adapter` given, set `filter_margin` instead (see "
                    "peft_transfer.metrics.calibrate_margin)."
                )
        if self.save_steps < 0:
            problems.append(f"save_steps must be 0 (off) or positive (got {self.save_steps}).")
        if self.near_duplicate_similarity is not None:
            if not -1.0 < self.near_duplicate_similarity <= 1.0:
                problems.append("near_duplicate_similarity is a cosine similarity: it must lie in (-1, 1] or be None "
                                f"(got {self.near_duplicate_similarity}).")
            if self.generation_backend == "vllm" and not self.embedding_model:
                problems.append("near_duplicate_similarity with generation_backend: vllm embeds with "
                                "`embedding_model` (the vLLM server has no hidden states to give): set it, e.g. "
                                "packaged:all-minilm-l6-v2.")
        if self.leak_threshold is not None and not 0.0 < self.leak_threshold <= 1.0:
            problems.append(f"leak_threshold must lie in (0, 1] or be None (got {self.leak_threshold}).")
        if problems:
            raise ConfigError("Invalid TransferConfig:\n- " + "\n- ".join(problems))

    # -- helpers ---------------------------------------------------------------------------------------------------

    def to_dict(self, redact: bool = True) -> dict:
        """The settings as a plain dict; the Hub token is never written out."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if redact and out.get("hub_token"):
            out["hub_token"] = "***"
        return out

    @property
    def generator(self) -> str:
        if self.generate_with_source_adapter:
            return self.source_model
        return self.generator_model or self.target_model

    @property
    def discriminator_base(self) -> str:
        return self.discriminator_model or self.source_model

    @classmethod
    def from_yaml(cls, path: str, **overrides) -> "TransferConfig":
        """Read a flat YAML recipe (unknown keys refused, with the closest valid names), with keyword overrides."""
        from .recipe import check_setting_names, gather_training_settings, read_recipe

        data = gather_training_settings({**read_recipe(path), **overrides})
        check_setting_names(data, where=f"in {path}")
        return cls(**data)


SETTING_NAMES = tuple(f.name for f in fields(TransferConfig))

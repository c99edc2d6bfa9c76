"""The data owner's half of the real-model demo: train the source adapter and the discriminator while the task data
is still there, and ship them as small files for the demo (which then does the transfer-time stages only).

    python recipes/demo_owner.py                      # writes peft_transfer/demo_models/smollm2-addition/
    python recipes/demo_owner.py --out /tmp/owner --work runs/demo-owner

Task: three-digit addition (`benchmarks/real_tasks.py`), 250 real train inputs, 300 test, 5 seeds. Source base:
SmolLM2-135M-Instruct (`packaged:smollm2-135m-instruct`, from the `real` extra). What is written:
`source_adapter/` and `discriminator/` (LoRA adapters, safetensors, with the discriminator's held-out metrics),
`seeds.jsonl` (the 5 seeds a transfer may use) and `test.jsonl` (held-out real data for the report). The train
split is never written there: a transfer never sees it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks` from a plain checkout

from benchmarks.real_tasks import make_real_task  # noqa: E402
from peft_transfer import TransferConfig  # noqa: E402
from peft_transfer.pipeline import Transfer  # noqa: E402
from peft_transfer.worlds.tasks import write_task  # noqa: E402

DEMO_DIR = Path(__file__).resolve().parents[1] / "peft_transfer" / "demo_models" / "smollm2-addition"
OWNER_SETTINGS = dict(
    source_model="packaged:smollm2-135m-instruct",
    target_model="packaged:gemma-3-270m",  # not used by these two stages; the config names a transfer
    task_name="three-digit addition",
    # Source adapter: LoRA r=8 on q/v (the paper's shape) at a higher learning rate, as a 135M base needs.
    lora_target_modules=["q_proj", "v_proj"],  # and the discriminator's: the shipped files, whatever the default
    source_learning_rate=2e-3,
    source_epochs=10,
    per_device_train_batch_size=16,
    # Discriminator: 250 real inputs against 250 the source base writes from the generator prompt.
    discriminator_learning_rate=1e-3,
    discriminator_epochs=3,
    generation_batch_size=64,
    max_candidate_tokens=32,
    label_max_new_tokens=8,
    logging_steps=20,
    seed=0,
)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(DEMO_DIR), help="Where the shipped files go.")
    parser.add_argument("--work", default="runs/demo-owner", help="Run directory of the two training stages.")
    args = parser.parse_args(argv)
    task = make_real_task("addition", n_train=250, n_test=300, n_seeds=5, seed=0)
    data = write_task(task, Path(args.work) / "data")
    config = TransferConfig(**OWNER_SETTINGS, train_file=str(data / "train.jsonl"),
                            seed_file=str(data / "seeds.jsonl"), output_dir=args.work)
    start = time.perf_counter()
    Transfer(config).run(stages=("source_adapter", "discriminator"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("source_adapter", "discriminator"):
        shutil.rmtree(out / name, ignore_errors=True)
        shutil.copytree(Path(args.work) / name, out / name,
                        ignore=shutil.ignore_patterns("stage.json", "README.md", "trainer"))
    for split in ("seeds", "test"):
        shutil.copy(data / f"{split}.jsonl", out / f"{split}.jsonl")
    metrics = json.loads((out / "discriminator" / "metrics.json").read_text())
    (out / "owner.json").write_text(json.dumps({
        "settings": OWNER_SETTINGS, "task": "addition", "n_train": 250, "n_test": 300, "n_seeds": 5,
        "seconds": round(time.perf_counter() - start, 1),
        "discriminator": {k: metrics.get(k) for k in ("accuracy", "roc_auc", "num_positives", "num_negatives")},
        "command": "python recipes/demo_owner.py",
    }, indent=2) + "\n")
    print(f"wrote {out} in {time.perf_counter() - start:.0f} s; discriminator held-out AUC {metrics.get('roc_auc')}")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()

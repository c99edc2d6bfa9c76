"""Run a Trans-LoRA transfer from a recipe.

    accelerate launch recipes/transfer.py --config recipes/demo.yaml
    python recipes/transfer.py --config recipes/demo.yaml --output_dir runs/demo-2

Any `TransferConfig` field can be given as a flag and overrides the YAML. A run started again with the same
`output_dir` resumes after its last finished stage; `--overwrite true` redoes everything.
"""

from peft_transfer import TransferConfig, run_transfer
from peft_transfer.cli import make_parser, quiet_libraries


def main(config: TransferConfig):
    return run_transfer(config)


if __name__ == "__main__":
    quiet_libraries()  # one line per stage and the progress bars, as `peft-transfer run` prints
    (config,) = make_parser().parse_args_and_config()
    main(config)

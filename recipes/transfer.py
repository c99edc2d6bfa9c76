"""Run a Trans-LoRA transfer from a recipe.

    accelerate launch recipes/transfer.py --config recipes/demo.yaml
    python recipes/transfer.py --config recipes/demo.yaml --output_dir runs/demo-2

Any `TransferConfig` field can be given as a flag and overrides the YAML. A run started again with the same
`output_dir` resumes after its last finished stage; `--overwrite true` redoes everything. A mistake in the settings
or files ends with one line `error: <message>` and exit status 2 (`--debug` shows the traceback); with
`accelerate launch -q` a one-process or DeepSpeed launch adds no traceback of its own (see the README, Errors).
"""

import sys

from peft_transfer import TransferConfig, run_transfer
from peft_transfer.cli import quiet_libraries, run_cli


def main(config: TransferConfig):
    return run_transfer(config)


if __name__ == "__main__":
    quiet_libraries()  # one line per stage and the progress bars, as `peft-transfer run` prints
    sys.exit(run_cli(main))  # exit 2 with one `error:` line for a mistake the user can fix, 130 on Ctrl-C

"""Splitting the inference stages across processes (`accelerate launch`), and main-process-only writing.

Generation, filtering, labelling and evaluation are embarrassingly parallel: each process takes a contiguous
shard of the items, and the results are gathered back in the original order, so every process ends up with the
same list — nothing lost, nothing duplicated, and for a given number of processes deterministic with the seed.
Training is left to `Trainer` (DDP / DeepSpeed). On a machine without a GPU, processes started with
`accelerate launch --multi_gpu --num_processes N` talk over gloo (`PartialState(cpu=True)`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def state():
    from accelerate import PartialState

    # Without `cpu=True`, accelerate does not form a process group between CPU-only processes.
    return PartialState(cpu=not torch.cuda.is_available())


def is_main_process() -> bool:
    """Whether this is the main process. Before the process group exists it answers from the launcher's rank
    variables instead of building `PartialState`: under `accelerate launch` with several processes that would call
    `init_process_group`, a rendezvous with every rank that hangs when the question comes before the ranks met (a
    bad recipe) or after some of them died."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return state().is_main_process
    from accelerate.utils import get_cpu_distributed_information

    return get_cpu_distributed_information().rank == 0  # RANK (torchrun) or the MPI ranks, as accelerate reads them


def wait_for_everyone() -> None:
    state().wait_for_everyone()


def map_across_processes(fn: Callable[[list], list], items: list) -> list:
    """`fn(items)` computed shard by shard on every process and gathered in order on all of them.

    `fn` must return one result per item. With one process this is just `fn(items)`.
    """
    st = state()
    if st.num_processes == 1:
        return list(fn(items))
    from accelerate.utils import gather_object

    per = math.ceil(len(items) / st.num_processes)
    shard = items[st.process_index * per : (st.process_index + 1) * per]
    results = list(fn(shard)) if shard else []
    if len(results) != len(shard):
        raise RuntimeError(f"map_across_processes: {len(results)} results for {len(shard)} items.")
    gathered = gather_object([results])  # one list per process, in rank order = the original order
    return [r for part in gathered for r in part]

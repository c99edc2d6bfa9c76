"""Pull models and adapters from the Hugging Face Hub, and push transferred adapters, discriminators and
synthetic datasets back with model cards that record their lineage.

Everything goes through the ordinary `huggingface_hub` client (`snapshot_download`, `create_repo`,
`upload_folder`), so `HF_ENDPOINT`, `HF_TOKEN`, `hf auth login`, offline mode and the cache behave as a
Hugging Face user expects. Notable choices:

- Pushes upload an allow-list (adapter config, safetensors weights, tokenizer files, our README.md) from a
  staging folder of links, never the folder itself: seed files and anything else lying next to the adapter
  are never sent. Pickle weights (`*.bin`, `*.pt`) are neither pushed nor pulled.
- Discriminators and synthetic datasets derive from the private task data: they are pushed private unless
  `private=False` is given, and pushing them into an existing public repo is refused.
- Cards are merged, not overwritten: the user's metadata keys, tags and text outside our marked section
  survive a re-push. Cards carry names, revisions and counts only, never seed or task text.
- The card travels in the same `upload_folder` commit as the weights, so every revision is self-describing.
  (`ModelCard.push_to_hub` is not used: before huggingface_hub 2.2 it validated against huggingface.co
  directly, whatever `HF_ENDPOINT` said.)
"""

from __future__ import annotations

from ..citation import CITATION
from .cards import adapter_card, discriminator_card, merge_card, synthetic_dataset_card
from .common import (
    ADAPTER_FILES,
    DATASET_KEYS,
    DISCRIMINATOR_KEYS,
    EVALUATION_KEYS,
    LINEAGE_KEYS,
    PICKLE_PATTERNS,
    SECTION_END,
    SECTION_START,
    TAGS,
    HubError,
)
from .pull import resolve_pretrained, split_revision
from .push import push_adapter, push_discriminator, push_run, push_synthetic_dataset

__all__ = [
    "adapter_card",
    "discriminator_card",
    "merge_card",
    "synthetic_dataset_card",
    "ADAPTER_FILES",
    "CITATION",
    "DATASET_KEYS",
    "DISCRIMINATOR_KEYS",
    "EVALUATION_KEYS",
    "LINEAGE_KEYS",
    "PICKLE_PATTERNS",
    "SECTION_END",
    "SECTION_START",
    "TAGS",
    "HubError",
    "resolve_pretrained",
    "split_revision",
    "push_adapter",
    "push_discriminator",
    "push_run",
    "push_synthetic_dataset",
]

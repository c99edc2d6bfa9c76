"""`embed_texts`: sentence embeddings of texts with a model (a causal LM's mean-pooled hidden states, or a
sentence-transformers encoder such as the packaged MiniLM), the input of `mmd2` and the projection."""

from __future__ import annotations

import inspect
from typing import Sequence

import numpy as np
import torch


def embed_texts(
    texts: Sequence[str],
    *,
    sentence_model: str | None = None,
    model=None,
    tokenizer=None,
    batch_size: int = 32,
    max_length: int = 256,
) -> np.ndarray:
    """
    Embeds texts for `mmd2`, `self_similarity` and `plot_projection`.

    With `sentence_model`, a sentence-transformers model (the paper's choice for Table 9) encodes the texts.
    Otherwise the given language model's last hidden states are averaged over each text's real tokens (weighted
    by the attention mask, so padding never enters). Texts are sorted by length before batching, which wastes
    less compute on padding; the output keeps the input order.

    Args:
        texts (`Sequence[str]`):
            The texts to embed.
        sentence_model (`str`, *optional*):
            Name or path of a `sentence_transformers.SentenceTransformer` model. Needs
            `pip install sentence-transformers`.
        model (`transformers.PreTrainedModel` or `peft.PeftModel`, *optional*):
            A causal LM (plain or with an adapter), used when `sentence_model` is not given. It stays on its
            device, runs without gradients, and is returned to its training mode afterwards.
        tokenizer (`transformers.PreTrainedTokenizerBase`, *optional*):
            The model's tokenizer. Without a pad token the EOS token pads (padded positions are masked anyway).
        batch_size (`int`, *optional*, defaults to `32`):
            Texts per forward pass.
        max_length (`int`, *optional*, defaults to `256`):
            Longer texts are truncated to this many tokens (model path only).

    Returns:
        `np.ndarray` of shape `(len(texts), hidden_size)`, dtype float32.
    """
    texts = list(texts)
    if not texts:
        raise ValueError("`texts` is empty.")
    if batch_size < 1 or max_length < 1:
        raise ValueError(f"`batch_size` and `max_length` must be positive, got {batch_size} and {max_length}.")

    if sentence_model is not None:
        from ..hub import resolve_pretrained

        folder = resolve_pretrained(sentence_model)  # a path, a Hub id, or `packaged:all-minilm-l6-v2`
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            # Without sentence-transformers: its mean-pooling + L2-normalise recipe on the plain encoder, which is
            # what all-MiniLM-L6-v2 and the other mean-pooled sentence embedders are.
            from transformers import AutoModel, AutoTokenizer

            encoder = AutoModel.from_pretrained(folder, use_safetensors=True, dtype=torch.float32)
            pooled = embed_texts(texts, model=encoder, tokenizer=AutoTokenizer.from_pretrained(folder),
                                 batch_size=batch_size, max_length=max_length)
            norms = np.linalg.norm(pooled, axis=1, keepdims=True)
            return (pooled / np.maximum(norms, 1e-12)).astype(np.float32)
        encoder = SentenceTransformer(folder)
        embeddings = encoder.encode(texts, batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(embeddings, dtype=np.float32)

    if model is None or tokenizer is None:
        raise ValueError("Pass either `sentence_model=` or both `model=` and `tokenizer=`.")
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_token_id is None:
        raise ValueError("The tokenizer has neither a pad token nor an EOS token to pad with.")

    from ..modeling import prepare_output_layer

    prepare_output_layer(model)
    device = next(model.parameters()).device
    # `logits_to_keep=1` skips the (batch, length, vocab) logits that a causal LM computes but we never read;
    # only pass it where the underlying model's forward declares it (PEFT wraps the model and takes **kwargs).
    base_model = model.get_base_model() if hasattr(model, "get_base_model") else model
    extra_kwargs = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(base_model.forward).parameters else {}

    encoded = [
        tokenizer(text, truncation=True, max_length=max_length)["input_ids"] for text in texts
    ]
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
    embeddings: list[np.ndarray | None] = [None] * len(texts)
    was_training = model.training
    model.eval()  # dropout would make embeddings random
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                batch = order[start : start + batch_size]
                length = max(max(len(encoded[i]) for i in batch), 1)
                input_ids = torch.full((len(batch), length), pad_token_id, dtype=torch.long)
                attention_mask = torch.zeros((len(batch), length), dtype=torch.long)
                # Right padding, built by hand rather than with the tokenizer's `padding_side`: real tokens keep
                # positions 0..L-1 exactly as when the text is embedded alone, and in a causal model they never
                # attend to the pads after them, so a text's embedding does not depend on its batch.
                for row, index in enumerate(batch):
                    ids = encoded[index]
                    input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
                    attention_mask[row, : len(ids)] = 1
                outputs = model(
                    input_ids=input_ids.to(device),
                    attention_mask=attention_mask.to(device),
                    output_hidden_states=True,
                    **extra_kwargs,
                )
                hidden = outputs.hidden_states[-1].float()
                # Prompt-learning adapters (prompt tuning, prefix tuning) prepend virtual tokens to the hidden
                # states; the texts' own tokens are the last `length` positions.
                hidden = hidden[:, -length:, :]
                mask = attention_mask.to(hidden.device, hidden.dtype).unsqueeze(-1)
                # An empty text (no tokens at all) gets a zero vector instead of a division by zero.
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
                pooled = pooled.cpu().numpy()
                for row, index in enumerate(batch):
                    embeddings[index] = pooled[row]
    finally:
        model.train(was_training)
    return np.stack(embeddings).astype(np.float32)

"""Tests for peft_transfer.metrics: every metric against an independent reference (scikit-learn, a float64
double loop, a brute-force set comparison) or a hand-computed value, and embeddings on a tiny local model."""

import math
import sys

import numpy as np
import pytest
import torch

from peft_transfer import metrics
from peft_transfer.metrics import (
    NEAR_CHANCE_AUC,
    binary_accuracy,
    calibrate_margin,
    discriminator_report,
    distance,
    distinct_n,
    embed_texts,
    filter_leaks,
    leaks,
    median_heuristic_bandwidth,
    mmd2,
    near_duplicates,
    plot_projection,
    roc_auc,
    self_similarity,
)

# ---------------------------------------------------------------------------------------------------------------
# Discriminator quality
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("decimals", [None, 0])  # 0 decimals: many ties between and within the two sets
def test_roc_auc_matches_sklearn(seed, decimals):
    roc_auc_score = pytest.importorskip("sklearn.metrics").roc_auc_score
    rng = np.random.default_rng(seed)
    positives = rng.normal(0.7, 1.5, size=57)
    negatives = rng.normal(-0.3, 1.5, size=83)
    if decimals is not None:
        positives, negatives = positives.round(decimals), negatives.round(decimals)
    expected = roc_auc_score(np.r_[np.ones(57), np.zeros(83)], np.r_[positives, negatives])
    assert roc_auc(positives, negatives) == pytest.approx(expected, abs=1e-12)


def test_roc_auc_extremes_and_ties():
    assert roc_auc([3.0, 4.0], [1.0, 2.0]) == 1.0
    assert roc_auc([1.0, 2.0], [3.0, 4.0]) == 0.0
    assert roc_auc([1.0, 1.0], [1.0, 1.0, 1.0]) == 0.5  # every pair tied counts one half
    # One tie out of four pairs: (1 + 1 + 0.5 + 0) / 4.
    assert roc_auc([2.0, 1.0], [1.0, 3.0]) == pytest.approx((1 + 0.5 + 0) / 4)
    assert roc_auc(torch.tensor([2.0, 5.0]), np.array([0.0])) == 1.0


def test_scores_are_validated():
    with pytest.raises(ValueError, match="empty"):
        roc_auc([], [1.0])
    with pytest.raises(ValueError, match="NaN"):
        binary_accuracy([float("nan")], [1.0])


def test_binary_accuracy_uses_a_strict_margin():
    positives = [2.0, 0.5, 0.0, -1.0]
    negatives = [-2.0, 0.0, 1.0]
    # margin 0: positives 2.0, 0.5 accepted (0.0 is not > 0); negatives -2.0, 0.0 rejected.
    assert binary_accuracy(positives, negatives) == pytest.approx(4 / 7)
    # margin 0.5: only 2.0 accepted; negatives -2, 0 rejected, 1.0 accepted.
    assert binary_accuracy(positives, negatives, margin=0.5) == pytest.approx(3 / 7)
    assert binary_accuracy(positives, negatives, margin=-5.0) == pytest.approx(4 / 7)


@pytest.mark.parametrize("rate", [0.0, 0.05, 0.1, 0.29, 0.5, 0.99])
@pytest.mark.parametrize("decimals", [None, 1])
def test_calibrate_margin_is_the_smallest_that_meets_the_rate(rate, decimals):
    rng = np.random.default_rng(3)
    negatives = rng.normal(size=100)
    if decimals is not None:
        negatives = negatives.round(decimals)
    margin = calibrate_margin(negatives, rate)
    assert np.mean(negatives > margin) <= rate + 1e-12
    # Any smaller margin that changes anything lets in one more negative and breaks the rate.
    below = negatives[negatives < margin]
    if below.size:
        assert np.mean(negatives > below.max()) > rate
    assert margin in negatives


def test_calibrate_margin_edge_cases():
    negatives = [-1.0, 0.5, 2.0, 2.0]
    assert calibrate_margin(negatives, 0.0) == 2.0
    assert not any(score > calibrate_margin(negatives, 0.0) for score in negatives)
    assert calibrate_margin(negatives, 1.0) == -math.inf
    assert calibrate_margin(negatives, 0.25) == 2.0  # the two 2.0s are accepted together: only rate 0.5 frees them
    assert calibrate_margin(negatives, 0.5) == 0.5
    with pytest.raises(ValueError, match="false_accept_rate"):
        calibrate_margin(negatives, 1.5)


def test_discriminator_report():
    report = discriminator_report([2.0, 1.0, -1.0], [-2.0, -3.0, 0.5, -1.0])
    assert report["accuracy"] == pytest.approx(5 / 7)
    assert report["true_accept_rate"] == pytest.approx(2 / 3)
    assert report["false_accept_rate"] == pytest.approx(1 / 4)
    assert (report["n_positive"], report["n_negative"], report["margin"]) == (3, 4, 0.0)
    # Pairs: 2.0 beats 4, 1.0 beats 4, -1.0 beats -2, -3 and ties -1: (4 + 4 + 2.5) / 12.
    assert report["roc_auc"] == pytest.approx(10.5 / 12)
    assert report["near_chance"] is False
    # Strictly serializable: no numpy scalars.
    assert all(type(value) in (float, int, bool) for value in report.values())


def test_discriminator_report_flags_near_chance():
    rng = np.random.default_rng(0)
    chance = discriminator_report(rng.normal(size=250), rng.normal(size=250))
    assert chance["roc_auc"] < NEAR_CHANCE_AUC and chance["near_chance"] is True
    good = discriminator_report(rng.normal(2.0, 1.0, size=250), rng.normal(size=250))
    assert good["near_chance"] is False


# ---------------------------------------------------------------------------------------------------------------
# MMD
# ---------------------------------------------------------------------------------------------------------------


def _mmd2_reference(x, y, bandwidth, unbiased):
    """Plain double loops in float64, straight from the definition."""

    def k(a, b):
        return math.exp(-float(np.sum((a - b) ** 2)) / (2.0 * bandwidth**2))

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if not (unbiased and i == j))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if not (unbiased and i == j))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n))
    if unbiased:
        return xx / (m * (m - 1)) + yy / (n * (n - 1)) - 2 * xy / (m * n)
    return xx / m**2 + yy / n**2 - 2 * xy / (m * n)


def _median_distance_reference(points):
    distances = [
        float(np.sqrt(np.sum((points[i] - points[j]) ** 2)))
        for i in range(len(points))
        for j in range(i + 1, len(points))
    ]
    return float(np.median(distances))


@pytest.mark.parametrize("unbiased", [True, False])
@pytest.mark.parametrize("bandwidth", [None, 0.7, 3.0])
def test_mmd2_matches_double_loop(unbiased, bandwidth):
    rng = np.random.default_rng(11)
    x = rng.normal(size=(9, 5))
    y = rng.normal(0.5, 1.2, size=(13, 5))
    width = _median_distance_reference(np.concatenate([x, y])) if bandwidth is None else bandwidth
    expected = _mmd2_reference(x, y, width, unbiased)
    assert mmd2(x, y, bandwidth=bandwidth, unbiased=unbiased) == pytest.approx(expected, rel=1e-10, abs=1e-13)
    # float32 torch input is promoted to float64 before any arithmetic.
    assert mmd2(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32), bandwidth=bandwidth,
                unbiased=unbiased) == pytest.approx(expected, rel=1e-5)


def test_mmd2_blocks_give_the_same_sum(monkeypatch):
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(23, 3)), rng.normal(size=(17, 3))
    whole = mmd2(x, y, bandwidth=1.3)
    monkeypatch.setattr(distance, "_KERNEL_BLOCK_ROWS", 4)  # the diagonal must be dropped in every block
    assert mmd2(x, y, bandwidth=1.3) == pytest.approx(whole, rel=1e-12)
    assert whole == pytest.approx(_mmd2_reference(x, y, 1.3, True), rel=1e-10)


def test_median_heuristic_bandwidth():
    rng = np.random.default_rng(2)
    points = rng.normal(size=(30, 4))
    assert median_heuristic_bandwidth(points) == pytest.approx(_median_distance_reference(points), rel=1e-12)
    assert median_heuristic_bandwidth(np.ones((5, 3))) == 1.0
    # Mostly duplicates: the median distance is 0, so the typical non-zero distance is used instead.
    duplicates = np.array([[0.0], [0.0], [0.0], [0.0], [2.0]])
    assert median_heuristic_bandwidth(duplicates) == 2.0


def test_mmd2_on_known_distributions():
    rng = np.random.default_rng(0)
    dim = 8
    real = rng.normal(size=(200, dim))
    same = rng.normal(size=(200, dim))
    small_shift = rng.normal(size=(200, dim)) + 0.5
    large_shift = rng.normal(size=(200, dim)) + 1.5
    # One bandwidth for all three, as when comparing filtered against unfiltered sets.
    width = median_heuristic_bandwidth(real)
    d_same = mmd2(real, same, bandwidth=width)
    d_small = mmd2(real, small_shift, bandwidth=width)
    d_large = mmd2(real, large_shift, bandwidth=width)
    assert abs(d_same) < 0.01
    assert d_small > 5 * max(abs(d_same), 1e-3)
    assert d_large > 2 * d_small
    assert mmd2(real, small_shift) == pytest.approx(mmd2(small_shift, real), rel=1e-12)
    assert mmd2(real, same, unbiased=False) > 0  # the biased estimate is positive even for equal distributions


def test_mmd2_validates_inputs():
    with pytest.raises(ValueError, match="dimension"):
        mmd2(np.zeros((3, 2)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="at least 2"):
        mmd2(np.zeros((1, 2)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="bandwidth"):
        mmd2(np.zeros((3, 2)), np.ones((3, 2)), bandwidth=0.0)


# ---------------------------------------------------------------------------------------------------------------
# Embeddings
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_lm():
    """A 2-layer Llama with a word-level tokenizer trained here (no download)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    corpus = [
        "sort the following words alphabetically",
        "what is seven plus five give only the number",
        "is the following sentence plausible the cat sat on the mat",
        "translate to french the dog barks at night",
    ]
    backend = Tokenizer(models.WordLevel(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=["<unk>", "<pad>", "<s>", "</s>"]))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2, intermediate_size=64,
        vocab_size=len(tokenizer), max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    return model, tokenizer


SHORT = "the cat sat"
LONG = " ".join(["what is seven plus five give only the number"] * 4)


def _mean_hidden_reference(model, tokenizer, text):
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[-1]
    return hidden[0].mean(0).numpy()


def test_embed_texts_padding_does_not_change_an_embedding(tiny_lm):
    model, tokenizer = tiny_lm
    alone = embed_texts([SHORT], model=model, tokenizer=tokenizer)
    texts = [SHORT, LONG, "translate to french", SHORT]
    batched = embed_texts(texts, model=model, tokenizer=tokenizer, batch_size=4)
    assert batched.shape == (4, model.config.hidden_size) and batched.dtype == np.float32
    np.testing.assert_allclose(batched[0], alone[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(batched[3], alone[0], rtol=1e-4, atol=1e-5)
    # The mean over the text's own tokens, computed without any padding, in the caller's order.
    np.testing.assert_allclose(batched[1], _mean_hidden_reference(model, tokenizer, LONG), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(batched[2], _mean_hidden_reference(model, tokenizer, "translate to french"),
                               rtol=1e-4, atol=1e-5)
    assert not np.allclose(batched[0], batched[1])
    # Batch size changes nothing either.
    np.testing.assert_allclose(embed_texts(texts, model=model, tokenizer=tokenizer, batch_size=1), batched,
                               rtol=1e-4, atol=1e-5)


def test_embed_texts_truncates_and_restores_training_mode(tiny_lm):
    model, tokenizer = tiny_lm
    model.train()
    try:
        truncated = embed_texts([LONG], model=model, tokenizer=tokenizer, max_length=3)
        assert model.training
    finally:
        model.eval()
    first_three = " ".join(LONG.split()[:3])
    np.testing.assert_allclose(truncated[0], _mean_hidden_reference(model, tokenizer, first_three),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("adapter", ["lora", "prompt_tuning"])
def test_embed_texts_with_a_peft_model(tiny_lm, adapter):
    peft = pytest.importorskip("peft")
    model, tokenizer = tiny_lm
    if adapter == "lora":
        config = peft.LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    else:
        # Virtual tokens are prepended to the hidden states: pooling must use only the text's own positions.
        config = peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)
    peft_model = peft.get_peft_model(model, config)
    try:
        alone = embed_texts([SHORT], model=peft_model, tokenizer=tokenizer)
        batched = embed_texts([LONG, SHORT], model=peft_model, tokenizer=tokenizer)
        np.testing.assert_allclose(batched[1], alone[0], rtol=1e-4, atol=1e-5)
        # Against a forward pass of the text alone, averaging only the text's own positions (after any virtual
        # tokens, which prompt tuning prepends to the hidden states).
        ids = torch.tensor([tokenizer(LONG)["input_ids"]])
        with torch.no_grad():
            hidden = peft_model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0]
        assert hidden.shape[0] == ids.shape[1] + (3 if adapter == "prompt_tuning" else 0)
        np.testing.assert_allclose(batched[0], hidden[-ids.shape[1] :].mean(0).numpy(), rtol=1e-4, atol=1e-5)
        with peft_model.disable_adapter():
            plain = embed_texts([SHORT], model=peft_model, tokenizer=tokenizer)
        assert not np.allclose(alone, plain, atol=1e-4)  # the adapter is really in the forward pass
    finally:
        peft_model.unload() if adapter == "lora" else None


def test_embed_texts_needs_a_model_or_a_reachable_sentence_model(tiny_lm, monkeypatch):
    from peft_transfer.hub import HubError

    with pytest.raises(ValueError, match="sentence_model"):
        embed_texts(["a text"])
    with pytest.raises(ValueError, match="empty"):
        embed_texts([], model=tiny_lm[0], tokenizer=tiny_lm[1])
    # Without sentence-transformers the plain encoder is used (tests/test_real_models.py embeds with MiniLM so);
    # a sentence model that is neither local nor reachable is a clear error before any import is tried.
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # import now fails, as when not installed
    with pytest.raises(HubError, match="Could not reach the Hub"):
        embed_texts(["a text"], sentence_model="sentence-transformers/all-MiniLM-L6-v2")


# ---------------------------------------------------------------------------------------------------------------
# Diversity
# ---------------------------------------------------------------------------------------------------------------


def test_distinct_n():
    # Bigrams: (a b) (b c) | (a b) (b d) -> 3 unique of 4; case is ignored.
    assert distinct_n(["a b c", "A B d"], n=2) == pytest.approx(3 / 4)
    assert distinct_n(["a b c", "A B d"], n=1) == pytest.approx(4 / 6)
    assert distinct_n(["x y", "x y", "x y"], n=2) == pytest.approx(1 / 3)
    assert distinct_n(["one"], n=2) == 0.0  # too short to have a bigram


def test_self_similarity():
    assert self_similarity(np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]])) == pytest.approx((1 + 0 + 0) / 3)
    assert self_similarity(np.array([[1.0, 1.0], [-1.0, -1.0]])) == pytest.approx(-1.0)
    rng = np.random.default_rng(0)
    points = rng.normal(size=(7, 4))
    unit = points / np.linalg.norm(points, axis=1, keepdims=True)
    cosines = unit @ unit.T
    assert self_similarity(points) == pytest.approx(cosines[~np.eye(7, dtype=bool)].mean(), rel=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# Privacy guard
# ---------------------------------------------------------------------------------------------------------------

REFERENCES = [
    "What is 17 plus 25? Give only the number.",
    "Sort the following words alphabetically: List: oven costume counterpart",
    "Is the following sentence plausible? Joao Moutinho caught the screen pass in the NFC championship.",
]


@pytest.mark.parametrize(
    "candidate, reference_index",
    [
        ("What is 17 plus 25? Give only the number.", 0),  # verbatim
        ("What is 17 plus 26? Give only the number.", 0),  # a changed number
        ("What is 17 plus 25? Give only the exact number.", 0),  # an extra word inside
        ("What is 17 plus 25? Give only the number. Then explain how you got it.", 0),  # the copy plus more
        ("  WHAT is 17 plus\t25?\n give ONLY the number. ", 0),  # case and whitespace
        ("Sort the following words alphabetically: List: oven costume counterparts", 1),
    ],
)
def test_near_copies_are_dropped(candidate, reference_index):
    (match,) = near_duplicates([candidate], REFERENCES)
    assert match.is_duplicate and match.reference_index == reference_index
    kept, dropped = filter_leaks([candidate], REFERENCES)
    assert (kept, dropped) == ([], [candidate])


@pytest.mark.parametrize(
    "candidate",
    [
        "The quick brown fox jumps over the lazy dog.",
        "What is 3 times 9? Answer with a word.",
        "Sort the following words alphabetically: List: banana zebra apple",  # same template, new content
        "Is the following sentence plausible? Lionel Messi scored a touchdown in the Stanley Cup.",
        "Wie viel ist siebzehn plus fünfundzwanzig?",
    ],
)
def test_unrelated_candidates_are_kept(candidate):
    (match,) = near_duplicates([candidate], REFERENCES)
    assert not match.is_duplicate and match.overlap < 0.8
    assert filter_leaks([candidate], REFERENCES) == ([candidate], [])


def test_filter_leaks_keeps_order_and_threshold():
    candidates = ["hello there, general kenobi", REFERENCES[2], "completely different words", REFERENCES[0]]
    kept, dropped = filter_leaks(candidates, REFERENCES)
    assert kept == [candidates[0], candidates[2]] and dropped == [REFERENCES[2], REFERENCES[0]]
    # Threshold 0 drops everything, threshold above any overlap keeps everything but verbatim copies.
    assert filter_leaks(candidates, REFERENCES, threshold=0.0) == ([], candidates)
    assert near_duplicates(["nothing"], []) == [metrics.NearDuplicate(0.0, None, False)]
    assert near_duplicates(["zzzzzz"], REFERENCES)[0].reference_index is None
    # Texts shorter than n match only verbatim.
    assert near_duplicates(["abc"], ["ABC", "xabcx"], n=4)[0] == metrics.NearDuplicate(1.0, 0, True)
    assert not near_duplicates(["abc"], ["xabcx yabcy"], n=4)[0].is_duplicate


def _overlap_brute_force(candidate, reference, n):
    c, r = leaks._char_ngrams(candidate, n), leaks._char_ngrams(reference, n)
    return len(c & r) / min(len(c), len(r)) if c and r else 0.0


@pytest.mark.parametrize("n", [3, 4])
def test_near_duplicates_match_brute_force(n):
    rng = np.random.default_rng(7)
    words = "the cat dog sat on mat what is plus give number sort list red blue one two".split()

    def sentence():
        return " ".join(rng.choice(words, size=rng.integers(1, 9)))

    references = [sentence() for _ in range(23)]
    candidates = [sentence() for _ in range(41)] + [references[4], ""]
    # A small chunk size exercises the chunk boundaries of the vectorized count.
    results = near_duplicates(candidates, references, n=n, threshold=0.6, chunk_size=8)
    for candidate, result in zip(candidates, results):
        overlaps = [_overlap_brute_force(candidate, reference, n) for reference in references]
        assert result.overlap == pytest.approx(max(overlaps), abs=1e-12)
        assert result.is_duplicate == (max(overlaps) >= 0.6)
        if result.reference_index is not None:
            assert overlaps[result.reference_index] == pytest.approx(max(overlaps), abs=1e-12)
        else:
            assert max(overlaps) == 0.0


def test_exclude_self_compares_each_reference_with_the_others_only():
    rng = np.random.default_rng(3)
    words = "the cat dog sat on mat what is plus give number sort list".split()
    references = [" ".join(rng.choice(words, size=rng.integers(2, 8))) for _ in range(19)]
    references.append(references[5])  # a repeated reference overlaps its twin fully
    results = near_duplicates(references, references, exclude_self=True, chunk_size=6)
    for i, result in enumerate(results):
        others = [_overlap_brute_force(references[i], r, 4) for j, r in enumerate(references) if j != i]
        assert result.overlap == pytest.approx(max(others), abs=1e-12)
        assert result.reference_index != i
    assert results[5].overlap == results[-1].overlap == 1.0
    with pytest.raises(ValueError, match="same texts"):
        near_duplicates(references, references[:3], exclude_self=True)


def _boolean_expressions(rng, count):
    def term():
        return " ".join(["not"] * int(rng.integers(0, 3)) + [str(rng.choice(["True", "False"]))])

    def op():
        return str(rng.choice(["and", "or"]))

    return [f"( {term()} {op()} {term()} ) {op()} ( {term()} {op()} {term()} ) is" for _ in range(count)]


def test_the_leak_threshold_rises_only_where_real_inputs_overlap_each_other():
    rng = np.random.default_rng(0)
    booleans = list(dict.fromkeys(_boolean_expressions(rng, 400)))[:300]
    assert len(booleans) == 300
    sums = list(dict.fromkeys(f"What is {rng.integers(100, 999)} + {rng.integers(100, 999)}?" for _ in range(300)))
    # Every boolean expression of this grammar shares its 4-grams with another one; sums of random numbers do not.
    assert metrics.chance_overlap(booleans) == 1.0
    assert metrics.chance_overlap(sums) < 0.8
    assert metrics.leak_threshold_for(sums, 0.8) == 0.8
    raised = metrics.leak_threshold_for(booleans, 0.8)
    assert raised > 1.0
    # At the fixed threshold almost any new expression is a "near-copy"; at the raised one only verbatim copies go.
    real, new = booleans[:150], booleans[150:]
    _, dropped_fixed = filter_leaks(new, real, threshold=0.8)
    assert len(dropped_fixed) > 0.9 * len(new)
    kept, dropped = filter_leaks(new + [real[3], real[7].upper()], real, threshold=raised)
    assert kept == new and dropped == [real[3], real[7].upper()]
    assert metrics.chance_overlap(booleans[:1]) == 0.0


def test_near_duplicates_scale():
    """10k candidates x 300 references must be a matter of seconds, not of a Python triple loop."""
    import time

    rng = np.random.default_rng(0)
    vocabulary = np.array([f"w{i}" for i in range(400)] + ["the", "of", "and", "is", "what"] * 20)

    def sentence():
        return " ".join(rng.choice(vocabulary, size=rng.integers(10, 25)))

    references = [sentence() for _ in range(300)]
    candidates = [sentence() for _ in range(10_000)]
    start = time.perf_counter()
    results = near_duplicates(candidates, references)
    elapsed = time.perf_counter() - start
    assert len(results) == 10_000
    assert elapsed < 15.0, f"near_duplicates took {elapsed:.1f} s for 10k x 300"


# ---------------------------------------------------------------------------------------------------------------
# Picture
# ---------------------------------------------------------------------------------------------------------------


def test_plot_projection_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    rng = np.random.default_rng(0)
    real, accepted, rejected = rng.normal(size=(20, 16)), rng.normal(size=(30, 16)), rng.normal(2, 1, size=(25, 16))
    path = plot_projection(real, accepted, rejected, tmp_path / "figs" / "projection.png", title="word sorting")
    data = path.read_bytes()
    assert path == tmp_path / "figs" / "projection.png"
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    # An empty group is left out rather than failing; a 1-D embedding still plots.
    assert plot_projection(real, accepted, np.zeros((0, 16)), tmp_path / "b.png").stat().st_size > 1000
    assert plot_projection(real[:, :1], accepted[:, :1], rejected[:, :1], tmp_path / "c.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="dimensions"):
        plot_projection(real, accepted[:, :8], rejected, tmp_path / "d.png")


def test_pca_2d_matches_sklearn():
    decomposition = pytest.importorskip("sklearn.decomposition")
    rng = np.random.default_rng(4)
    groups = [rng.normal(size=(15, 6)) * [5, 3, 1, 1, 0.5, 0.1], rng.normal(1.0, 1.0, size=(9, 6))]
    expected = decomposition.PCA(n_components=2).fit_transform(np.concatenate(groups))
    projected = np.concatenate(metrics.pca_2d(groups))
    # Principal axes are defined up to sign.
    signs = np.sign((projected * expected).sum(0))
    np.testing.assert_allclose(projected * signs, expected, rtol=1e-8, atol=1e-8)
    assert np.all(projected.var(0) > 0)


def test_plot_projection_without_matplotlib(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        plot_projection(np.zeros((2, 3)), np.ones((2, 3)), np.ones((2, 3)), tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_near_duplicates_ignore_a_shared_template_but_not_copies():
    from peft_transfer.metrics import near_duplicates

    refs = [f"Sort these letters: {x}" for x in ("q d m a x", "b k z f", "r v t l p e", "c h j u", "w o n s g")]
    new = ["Sort these letters: e y i k", "Sort these letters: q d m a y", "sort these  LETTERS: b k z f"]
    with_template = near_duplicates(new, refs)
    assert [m.is_duplicate for m in with_template] == [False, True, True]
    assert with_template[2].overlap == 1.0 and with_template[2].reference_index == 1
    # Counting the template, a genuinely new input looks like a near-copy of a real one.
    assert near_duplicates(new[:1], refs, ignore_template=False, threshold=0.6)[0].is_duplicate

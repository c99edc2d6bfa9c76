"""The synthesis progress file: resuming gives exactly the uninterrupted run, whatever cut the run short.

The models are tiny and untrained, as in `test_callbacks.py`: the generator treats a quarter of its vocabulary as
end-of-sequence, so its candidates are short random strings that parse, and often repeat (duplicates). The
references are a few such short strings, so some candidates are leaks (short texts match only verbatim), and a
leaked string comes back in later rounds. The discriminator is random too; its scores only need to be spread
around `filter_margin` so that some candidates fail, and the run takes four rounds.
"""

import json
import logging
import types
from dataclasses import MISSING, fields

import pytest
import torch

SEEDS = ["sort the letters: b a c", "sort the letters: z y x", "sort the letters: q w e r", "sort the letters: m n o",
         "sort the letters: k j i"]
REFERENCES = ["t", "k", "!", "_", "s", "a", "e", "ar", "er:"]
SETTINGS = {"task_name": "sort_letters", "num_samples": 60, "candidate_budget": 400, "generation_batch_size": 8,
            "filter_batch_size": 16, "max_candidate_tokens": 12, "num_seeds": 3, "seed": 0, "filter_margin": -0.1}
KEY = {"generator": "tiny-gemma", "seeds": "sha256:0123", "seed": 0}


def make_cfg(**overrides):
    from peft_transfer import TransferConfig

    values = {f.name: f.default if f.default is not MISSING else f.default_factory() for f in fields(TransferConfig)}
    return types.SimpleNamespace(**{**values, **SETTINGS, **overrides})


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # These models are so small that a second intra-op thread only waits on the first: about 8x slower on a busy
    # two-core machine. Restored for the other modules (conftest asks for two).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models(untrained):
    return {"generator": untrained["generator"], "generator_tokenizer": untrained["target_tok"],
            "discriminator": untrained["discriminator"], "discriminator_tokenizer": untrained["source_tok"]}


def run(models, path, cfg=None, **kwargs):
    from peft_transfer.synthesis import synthesize

    return synthesize(cfg or make_cfg(), models["generator"], models["generator_tokenizer"], SEEDS,
                      discriminator=models["discriminator"], discriminator_tokenizer=models["discriminator_tokenizer"],
                      progress_path=str(path), show_progress=False,
                      **{"progress_key": KEY, "references": REFERENCES, **kwargs})


@pytest.fixture(scope="module")
def full(models, tmp_path_factory):
    """The uninterrupted run: its rows, stats and progress file."""
    path = tmp_path_factory.mktemp("full") / "progress.jsonl"
    rows, stats = run(models, path)
    return rows, stats, path.read_bytes()


def lines_of(data: bytes) -> list[bytes]:
    return data.splitlines(keepends=True)


def end_of_round(data: bytes, k: int) -> int:
    """Index of the line after round `k`'s stats line (`k = 0`: after the header)."""
    stats_lines = [i for i, line in enumerate(lines_of(data)) if b'"stats"' in line[:10]]
    return stats_lines[k - 1] + 1 if k else 1


def kill_generate_after(monkeypatch, calls: int):
    from peft_transfer import synthesis

    real, count = synthesis.generate, [0]

    def generate(*args, **kwargs):
        count[0] += 1
        if count[0] > calls:
            raise KeyboardInterrupt  # what a Ctrl-C or a preempted job looks like from inside the loop
        return real(*args, **kwargs)

    monkeypatch.setattr(synthesis, "generate", generate)
    return count


def test_the_run_has_leaks_duplicates_and_failures(full):
    _, stats, data = full
    assert stats.rounds == 4 and stats.leaks > 0 and stats.duplicates > 0 and stats.scored > stats.passed
    leaks = [json.loads(line) for line in lines_of(data) if line.startswith(b'{"leak"')]
    assert len(leaks) == stats.leaks and {r["round"] for r in leaks} <= set(range(stats.rounds))
    assert json.loads(lines_of(data)[0]) == {"progress_key": KEY}


@pytest.mark.parametrize("killed_after", [1, 2, 3])
def test_a_run_killed_between_rounds_resumes_to_the_same_result(models, full, tmp_path, monkeypatch, killed_after):
    path = tmp_path / "progress.jsonl"
    kill_generate_after(monkeypatch, killed_after)
    with pytest.raises(KeyboardInterrupt):
        run(models, path)
    monkeypatch.undo()
    assert path.read_bytes() == b"".join(lines_of(full[2])[: end_of_round(full[2], killed_after)])
    rows, stats = run(models, path)
    assert rows == full[0] and stats == full[1]
    assert path.read_bytes() == full[2]  # nothing written twice, nothing missing


@pytest.mark.parametrize("cut", ["header+torn", "mid-round", "mid-round+torn", "torn", "newline lost"])
def test_a_file_cut_mid_round_or_torn_resumes_to_the_same_result(models, full, tmp_path, caplog, cut):
    lines = lines_of(full[2])
    k = {"header+torn": 0, "mid-round": 1, "mid-round+torn": 2, "torn": 3, "newline lost": 2}[cut]
    end = end_of_round(full[2], k)
    kept = lines[:end]
    if cut.startswith("mid-round"):
        kept += lines[end : end + 3]  # rows of the next round, each whole, but not its stats line
        end += 3
    if cut.endswith("torn"):
        kept += [lines[end][: len(lines[end]) // 2]]
    if cut == "newline lost":
        kept[-1] = kept[-1].rstrip(b"\n")
    path = tmp_path / "progress.jsonl"
    path.write_bytes(b"".join(kept))
    with caplog.at_level(logging.WARNING, logger="peft_transfer"):
        rows, stats = run(models, path)
    assert rows == full[0] and stats == full[1]
    assert path.read_bytes() == full[2]
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    if cut.endswith("torn"):
        assert "cut off mid-write" in warned
    if cut.startswith("mid-round"):
        assert "interrupted after 3 of its records" in warned


def test_a_damaged_line_in_the_middle_is_a_clear_error(models, full, tmp_path):
    from peft_transfer.synthesis import SynthesisError

    lines = lines_of(full[2])
    lines[4] = b'{"input": "x", "sco\n'
    path = tmp_path / "progress.jsonl"
    path.write_bytes(b"".join(lines))
    with pytest.raises(SynthesisError, match=r"progress\.jsonl is damaged: line 5 .*Delete the file.*overwrite"):
        run(models, path)
    assert path.read_bytes() == b"".join(lines)  # left as it was, for the user to look at


def test_a_resumed_run_says_so(models, full, tmp_path, monkeypatch, caplog):
    path = tmp_path / "progress.jsonl"
    path.write_bytes(b"".join(lines_of(full[2])[: end_of_round(full[2], 2)]))
    saved = json.loads(lines_of(full[2])[end_of_round(full[2], 2) - 1])["stats"]
    with caplog.at_level(logging.INFO, logger="peft_transfer"):
        run(models, path)
    assert f"synthesis resumed from {path}: 2 rounds, {saved['accepted']} of 60 accepted, " \
           f"{saved['candidates']} candidates spent" in [r.getMessage() for r in caplog.records]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="peft_transfer"):
        run(models, tmp_path / "new.jsonl")
    assert not any("resumed" in r.getMessage() for r in caplog.records)


def test_a_file_made_with_other_settings_is_moved_aside(models, full, tmp_path, caplog):
    path = tmp_path / "progress.jsonl"
    old = b"".join(lines_of(full[2])[: end_of_round(full[2], 2)])
    path.write_bytes(old)
    other = {**KEY, "generator": "tiny-llama", "num_seeds": 5}
    with caplog.at_level(logging.WARNING, logger="peft_transfer"):
        rows, stats = run(models, path, progress_key=other)
    assert rows == full[0] and stats == full[1]  # started afresh (the key itself does not change the candidates)
    assert (tmp_path / "progress.jsonl.stale-1").read_bytes() == old
    assert json.loads(lines_of(path.read_bytes())[0]) == {"progress_key": other}
    assert '(generator: "tiny-gemma" → "tiny-llama", num_seeds: (unset) → 5)' in caplog.text  # only what differs

    # A file without a header was made by settings nobody recorded: not reused either, and the first stale file stays.
    path.write_bytes(b"".join(lines_of(full[2])[1 : end_of_round(full[2], 1)]))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="peft_transfer"):
        assert run(models, path) == (full[0], full[1])
    assert "no settings key" in caplog.text and (tmp_path / "progress.jsonl.stale-2").exists()
    assert path.read_bytes() == full[2]


def test_fresh_deletes_the_progress_file(models, full, tmp_path, monkeypatch, caplog):
    path = tmp_path / "progress.jsonl"
    path.write_bytes(b"".join(lines_of(full[2])[: end_of_round(full[2], 3)]))
    calls = kill_generate_after(monkeypatch, 100)
    with caplog.at_level(logging.INFO, logger="peft_transfer"):
        rows, stats = run(models, path, fresh=True)
    assert calls[0] == full[1].rounds  # every round generated again
    assert rows == full[0] and stats == full[1] and path.read_bytes() == full[2]
    assert not any("resumed" in r.getMessage() for r in caplog.records)


def test_a_budget_that_cannot_reach_num_samples_stops_at_a_quarter_and_keeps_what_it_made(models, tmp_path,
                                                                                            monkeypatch):
    from peft_transfer.synthesis import SynthesisError

    path = tmp_path / "progress.jsonl"
    strict = make_cfg(filter_margin=0.0, candidate_budget=2000)  # a few pass: far fewer than 60 in 2,000
    with pytest.raises(SynthesisError, match=r"were accepted from the first \d+ of the candidate_budget of 2000, "
                       r"at a rate that would give about \d+ by its end, so synthesis stopped there") as error:
        run(models, path, cfg=strict)
    stats = error.value.stats
    assert 500 <= stats.candidates < 2000 and stats.rounds >= 2 and 0 < stats.accepted * 2000 / stats.candidates < 48
    assert [json.loads(line) for line in path.read_text().splitlines()][-1]["stats"]["candidates"] == stats.candidates

    # A lower margin continues from the stored candidates and reaches num_samples without the early stop.
    rows, stats = run(models, path, cfg=make_cfg(candidate_budget=2000))
    assert stats.accepted == 60 and len(rows) >= len(error.value.rows)


def test_the_early_stop_waits_for_a_quarter_of_the_budget_and_two_rounds():
    from peft_transfer.synthesis import SynthesisStats, _out_of_reach

    def stats(candidates, accepted, rounds=3):
        return SynthesisStats(candidates=candidates, accepted=accepted, rounds=rounds)

    assert _out_of_reach(stats(250, 0), 250, 1000)
    assert not _out_of_reach(stats(249, 0), 250, 1000)  # under a quarter spent
    assert not _out_of_reach(stats(500, 0, rounds=1), 250, 1000)  # one round is not a rate
    assert not _out_of_reach(stats(250, 50), 250, 1000)  # 200 projected: 80% of 250
    assert _out_of_reach(stats(250, 49), 250, 1000)
    assert not _out_of_reach(stats(250, 250), 250, 1000)


def test_another_margin_rescores_the_stored_candidates_and_reports_their_pass_rate(models, full, tmp_path,
                                                                                   monkeypatch):
    path = tmp_path / "progress.jsonl"
    path.write_bytes(full[2])
    kill_generate_after(monkeypatch, 0)  # enough pass under the lower margin: nothing may be generated
    rows, stats = run(models, path, cfg=make_cfg(filter_margin=-0.15))
    scores = [r["score"] for r in full[0]]
    assert stats.passed == sum(s > -0.15 for s in scores) > stats.accepted == 60
    assert stats.acceptance_rate == pytest.approx(stats.passed / len(scores))
    assert [r["passed"] for r in rows] == [s > -0.15 for s in scores]
    assert full[1].acceptance_rate == pytest.approx(sum(s > -0.1 for s in scores) / len(scores))

    # A stats line from before `passed` was stored: the count is rebuilt from the rows.
    old = [json.loads(line) for line in lines_of(full[2])]
    for record in old:
        record.get("stats", {}).pop("passed", None)
    path.write_text("".join(json.dumps(record) + "\n" for record in old))
    assert run(models, path) == (full[0], full[1])


def test_a_raised_leak_threshold_is_part_of_the_key(models, full, tmp_path, caplog):
    """References that overlap one another fully (here each one twice, in two cases) raise the guard's threshold
    above 1 (verbatim copies only); a file made under the fixed threshold is then not reused."""
    assert full[1].leak_threshold_raised is None
    path = tmp_path / "progress.jsonl"
    path.write_bytes(full[2])
    twins = [text for reference in REFERENCES for text in (reference, reference.upper())]
    with caplog.at_level(logging.WARNING, logger="peft_transfer"):
        _, stats = run(models, path, references=twins)
    assert stats.leak_threshold_raised > 1.0 and stats.leaks > 0
    assert (tmp_path / "progress.jsonl.stale-1").read_bytes() == full[2]
    header = json.loads(lines_of(path.read_bytes())[0])["progress_key"]
    assert header == {**KEY, "leak_threshold_for_these_inputs": stats.leak_threshold_raised}


def test_near_duplicates_in_embedding_space_are_dropped_and_a_resumed_run_agrees(models, full, tmp_path,
                                                                                 monkeypatch):
    import numpy as np

    cfg = make_cfg(near_duplicate_similarity=0.7)
    calls = []

    def embed(texts):  # a stand-in embedding: character counts (texts of the same letters point the same way)
        calls.append(len(texts))
        return _fixed_alphabet(texts)

    path = tmp_path / "progress.jsonl"
    rows, stats = run(models, path, cfg=cfg, embed=embed)
    accepted = [r["input"] for r in rows if r["accepted"]]
    dropped = [r for r in rows if r["near_duplicate"]]
    assert stats.accepted == len(accepted) == 60 and stats.near_duplicates == len(dropped) > 0
    assert all(r["passed"] and not r["accepted"] for r in dropped)
    unit = lambda v: v / np.linalg.norm(v, axis=-1, keepdims=True)  # noqa: E731
    kept = unit(_fixed_alphabet(accepted))
    similarity = kept @ kept.T
    assert (similarity[np.triu_indices(len(kept), 1)] < 0.7).all()  # no two accepted ones are near-duplicates
    position = {text: i for i, text in enumerate(r["input"] for r in rows)}
    for r in dropped:  # each dropped one is that near an input accepted before it
        earlier = [t for t in accepted if position[t] < position[r["input"]]]
        assert (unit(_fixed_alphabet(earlier)) @ unit(_fixed_alphabet([r["input"]]))[0]).max() >= 0.7
    assert stats.rounds > full[1].rounds or stats.candidates >= full[1].candidates  # the drops cost candidates
    assert len(calls) == stats.rounds  # one batch per round

    killed = tmp_path / "killed.jsonl"
    kill_generate_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        run(models, killed, cfg=cfg, embed=embed)
    monkeypatch.undo()
    assert run(models, killed, cfg=cfg, embed=embed) == (rows, stats)
    assert killed.read_bytes() == path.read_bytes()

    # The paper run's file, read with the setting on: the stored candidates' verdicts are re-taken.
    reread = tmp_path / "paper.jsonl"
    reread.write_bytes(full[2])
    rows2, stats2 = run(models, reread, cfg=cfg, embed=embed)
    stored = len(full[0])
    assert [r["input"] for r in rows2[:stored]] == [r["input"] for r in full[0]]
    assert stats2.near_duplicates > 0 and stats2.accepted == 60

    with pytest.raises(ValueError, match="needs an embedding function"):
        run(models, tmp_path / "none.jsonl", cfg=cfg)


ALPHABET = [chr(i) for i in range(32, 127)]


def _fixed_alphabet(texts):
    import numpy as np

    return np.array([[t.count(c) for c in ALPHABET] + [1e-3] for t in texts], dtype=float)


def test_near_duplicate_similarity_is_validated_and_in_the_synthesis_fingerprint():
    from peft_transfer import TransferConfig
    from peft_transfer.errors import ConfigError
    from peft_transfer.pipeline import PROGRESS_EXEMPT
    from peft_transfer.stages import stage

    base = dict(source_model="s", target_model="t", train_file="x.jsonl")
    on = TransferConfig(**base, near_duplicate_similarity=0.95)
    assert "near_duplicate_similarity" in stage("synthesis").settings(on)
    assert "near_duplicate_similarity" not in stage("synthesis").settings(TransferConfig(**base))
    assert "near_duplicate_similarity" in PROGRESS_EXEMPT  # the stored candidates are re-verdicted, not redone
    with pytest.raises(ConfigError, match="cosine similarity"):
        TransferConfig(**base, near_duplicate_similarity=1.5)
    with pytest.raises(ConfigError, match="embedding_model"):
        TransferConfig(**base, near_duplicate_similarity=0.9, generation_backend="vllm")

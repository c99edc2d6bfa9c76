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

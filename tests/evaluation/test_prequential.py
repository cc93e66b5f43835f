import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from freshrec.evaluation.prequential import PrequentialEvaluator, ranks_of_targets


@given(
    scores=arrays(np.float32, (4, 7), elements=st.sampled_from([0.0, 0.5, 1.0, 2.0, np.nan])),
    targets=arrays(np.int64, 4, elements=st.integers(-1, 6)),
    excluded=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 6)), max_size=10),
)
@settings(max_examples=200, deadline=None)
def test_rank_matches_a_stable_sort(scores, targets, excluded):
    rows = np.array([r for r, _ in excluded], dtype=np.int64)
    cols = np.array([c for _, c in excluded], dtype=np.int64)
    ranks = ranks_of_targets(scores, targets, rows, cols)
    for r in range(4):
        if targets[r] < 0 or (r, int(targets[r])) in set(excluded):
            assert ranks[r] == -1
            continue
        allowed = [c for c in range(7) if (r, c) not in set(excluded)]
        key = {c: (-np.inf if np.isnan(scores[r, c]) else float(scores[r, c])) for c in allowed}
        ordered = sorted(allowed, key=lambda c: (-key[c], c))
        assert ranks[r] == ordered.index(int(targets[r]))


def test_nan_scores_never_count_as_hits():
    scores = np.full((1, 5), np.nan, dtype=np.float32)
    assert ranks_of_targets(scores, np.array([3]), np.empty(0, np.int64), np.empty(0, np.int64)).tolist() == [
        3
    ]


def test_metrics_blocks_windows_and_final_fraction():
    evaluator = PrequentialEvaluator(k=2, block_size=10)
    ranks = np.array([0] * 50 + [5] * 40 + [1] * 10)  # 50 hits at rank 0, 40 misses, 10 hits at rank 1
    evaluator.add(ranks[:33])
    evaluator.add(ranks[33:])
    assert evaluator.events == 100
    overall = evaluator.summary()
    assert overall.hr == pytest.approx(0.6)
    assert overall.ndcg == pytest.approx((50 + 10 / np.log2(3)) / 100)
    assert evaluator.running().hr == pytest.approx(0.6)
    last = evaluator.final_fraction(0.2)
    assert last.events == 20 and last.hr == pytest.approx(0.5)
    windows = evaluator.windows(50)
    assert [w.hr for w in windows] == pytest.approx([1.0, 0.2])


def test_rating_errors():
    evaluator = PrequentialEvaluator(k=1, block_size=4)
    evaluator.add(np.array([-1, -1, -1]), np.array([3.0, 4.0, 5.0]), np.array([4.0, np.nan, 3.0]))
    summary = evaluator.summary()
    assert summary.rmse == pytest.approx(np.sqrt((1 + 4) / 2))
    assert summary.mae == pytest.approx(1.5)


@given(
    scores=arrays(np.float32, (6, 9), elements=st.sampled_from([0.0, 0.5, 1.0, 2.0, np.nan])),
    targets=arrays(np.int64, 6, elements=st.integers(-1, 8)),
    excluded=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 8)), max_size=15),
    chosen=st.sets(st.integers(0, 5)),
)
@settings(max_examples=100, deadline=None)
def test_a_task_of_some_rows_ranks_them_as_the_whole_task_does(scores, targets, excluded, chosen):
    from freshrec.evaluation.prequential import rank_candidates
    from freshrec.features.catalogue import CandidateSet
    from freshrec.interactions import Query

    class FixedScores:
        def score(self, query, candidates):
            return scores[query.user_keys.astype(np.int64)]

    rows = np.array(sorted(chosen), dtype=np.int64)
    task = CandidateSet(
        np.arange(1, 10, dtype=np.uint64),
        targets,
        np.array([r for r, _ in excluded], dtype=np.int64),
        np.array([c for _, c in excluded], dtype=np.int64),
    )
    query = Query.without_history(np.arange(6, dtype=np.uint64), np.zeros(6))
    whole = rank_candidates(FixedScores(), query, task)
    assert rank_candidates(FixedScores(), query.take(rows), task.take(rows)).tolist() == whole[rows].tolist()

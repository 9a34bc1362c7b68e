"""The ProsQA-style generator against the real validation + test splits (800 graphs)."""

from __future__ import annotations

import collections
import re
import statistics

import pytest

from coconut.data import find_data_dir, load_prosqa
from coconut.generate import CONCEPT_NAMES, PERSON_NAMES, GraphSize, generate_dataset


def _children(ex: dict) -> dict[int, list[int]]:
    ch: dict[int, list[int]] = collections.defaultdict(list)
    for a, b in ex["edges"]:
        ch[a].append(b)
    return ch


def _dist(ch: dict[int, list[int]], start: int) -> dict[int, int]:
    dist, queue = {start: 0}, [start]
    for u in queue:
        for v in ch[u]:
            if v not in dist:
                dist[v] = dist[u] + 1
                queue.append(v)
    return dist


def graph_stats(data: list[dict]) -> dict[str, float]:
    n = len(data)
    nodes = [len(ex["idx_to_symbol"]) for ex in data]
    edges = [len(ex["edges"]) for ex in data]
    people, max_indeg = [], []
    for ex in data:
        indeg = collections.Counter(b for _, b in ex["edges"])
        people.append(sum(1 for i in range(len(ex["idx_to_symbol"])) if indeg[i] == 0))
        max_indeg.append(max(indeg.values()))
    steps = collections.Counter(len(ex["steps"]) for ex in data)
    # Which of the two first people (nodes 0 and 1) reach each concept: the real splits are lopsided.
    worlds: collections.Counter = collections.Counter()
    for ex in data:
        ch, indeg = _children(ex), collections.Counter(b for _, b in ex["edges"])
        reach = [_dist(ch, 0), _dist(ch, 1)]
        worlds.update((v in reach[0], v in reach[1]) for v in range(len(ex["idx_to_symbol"])) if indeg[v])
    n_concepts = sum(worlds.values())
    return {
        "nodes_mean": statistics.mean(nodes), "nodes_sd": statistics.pstdev(nodes),
        "edges_mean": statistics.mean(edges), "edges_sd": statistics.pstdev(edges),
        "people_mean": statistics.mean(people), "two_people": sum(p == 2 for p in people) / n,
        "max_indeg_mean": statistics.mean(max_indeg),
        **{f"path{k}": steps[k] / n for k in (3, 4, 5, 6)},
        "question_chars": statistics.mean(len(ex["question"]) for ex in data),
        "root_is_1": sum(ex["root"] == 1 for ex in data) / n,
        "only_0": worlds[True, False] / n_concepts, "only_1": worlds[False, True] / n_concepts,
        "both": worlds[True, True] / n_concepts,
    }


# Absolute tolerances: generous enough for 800 samples of a look-alike process, tight enough that a
# change of the growth rules (e.g. Poisson zeros all becoming people, or no depth weighting) fails.
TOLERANCE = {
    "nodes_mean": 0.8, "nodes_sd": 0.8, "edges_mean": 2.0, "edges_sd": 1.5, "people_mean": 0.25,
    "two_people": 0.1, "max_indeg_mean": 0.25, "path3": 0.06, "path4": 0.06, "path5": 0.05, "path6": 0.025,
    "question_chars": 50, "root_is_1": 0.06, "only_0": 0.04, "only_1": 0.04, "both": 0.03,
}


@pytest.fixture(scope="module")
def real() -> list[dict]:
    d = find_data_dir()
    return load_prosqa(d / "prosqa_valid.json") + load_prosqa(d / "prosqa_test.json")


@pytest.fixture(scope="module")
def generated() -> list[dict]:
    return generate_dataset(800, seed=123)


def test_statistics_match_real_splits(real, generated):
    want, got = graph_stats(real), graph_stats(generated)
    off = {k: (round(got[k], 3), round(want[k], 3)) for k in TOLERANCE if abs(got[k] - want[k]) > TOLERANCE[k]}
    assert not off, f"generated vs real out of tolerance (got, want): {off}"


def test_ranges_and_names_like_real(real, generated):
    for ex in generated:
        names = ex["idx_to_symbol"]
        indeg = collections.Counter(b for _, b in ex["edges"])
        people = [names[i] for i in range(len(names)) if indeg[i] == 0]
        assert 14 <= len(names) <= 28 and 2 <= len(people) <= 6 and max(indeg.values()) <= 9
        assert set(people) <= set(PERSON_NAMES) and len(set(names)) == len(names)
        assert all(n.endswith("pus") and n in CONCEPT_NAMES for n in names if n not in people)
        assert ex["root"] in (0, 1) and indeg[0] == indeg[1] == 0
    real_people = {ex["idx_to_symbol"][i] for ex in real for i in (0, 1)}
    assert real_people == set(PERSON_NAMES)


def test_examples_are_well_formed(generated):
    for ex in generated[:200]:
        names, root, tgt, neg = ex["idx_to_symbol"], ex["root"], ex["target"], ex["neg_target"]
        ch = _children(ex)
        from_root, from_other = _dist(ch, root), _dist(ch, 1 - root)
        assert not ch[tgt] and not ch[neg]                            # both options are leaves
        assert tgt in from_root and tgt not in from_other             # only the root reaches the target
        assert neg in from_other and neg not in from_root
        assert from_root[tgt] == len(ex["steps"])                     # the steps are a shortest path
        assert all(a < b for a, b in ex["edges"])                     # nodes grown in order
        # facts = one sentence per edge, people as "P is a X.", concepts as "Every X is a Y."
        people = {i for i in range(len(names)) if all(b != i for _, b in ex["edges"])}
        facts = {f"{names[a]} is a {names[b]}." if a in people else f"Every {names[a]} is a {names[b]}."
                 for a, b in ex["edges"]}
        sentences = re.findall(r"[^.?]+[.?]", ex["question"])
        assert {s.strip() for s in sentences[:-1]} == facts and len(sentences) == len(ex["edges"]) + 1
        assert sentences[-1].strip() in (f"Is {names[root]} a {names[tgt]} or {names[neg]}?",
                                         f"Is {names[root]} a {names[neg]} or {names[tgt]}?")
        assert set(ex["steps"]) <= facts and ex["steps"][0].startswith(f"{names[root]} is a ")
        assert ex["answer"] == f"{names[root]} is a {names[tgt]}."


def test_deterministic_in_seed():
    assert generate_dataset(20, seed=5) == generate_dataset(20, seed=5)
    assert generate_dataset(20, seed=5) != generate_dataset(20, seed=6)


# -- ProsQA-mini: the size knobs ------------------------------------------------------------------------

def test_default_size_is_the_calibrated_generator():
    """The knobs default to the constants the statistics test above pins (same draws, same data)."""
    assert generate_dataset(15, seed=3, size=GraphSize()) == generate_dataset(15, seed=3)
    assert GraphSize().problems() == []


def test_mini_graphs_respect_their_size():
    size = GraphSize(min_nodes=7, max_nodes=9, min_path=2, max_path=3)
    data = generate_dataset(150, seed=4, size=size)
    assert all(len(ex["idx_to_symbol"]) <= 9 for ex in data)
    assert {len(ex["steps"]) for ex in data} == {2, 3}
    full = generate_dataset(150, seed=4)
    assert statistics.mean(len(ex["question"]) for ex in data) < 0.5 * statistics.mean(len(ex["question"]) for ex in full)


def test_exclude_keeps_splits_disjoint():
    size = GraphSize(min_nodes=6, max_nodes=7, min_path=2, max_path=2)
    stream = generate_dataset(60, seed=[0, 1], size=size)
    banned = {ex["question"] for ex in stream[::2]}
    other = generate_dataset(60, seed=[0, 1], size=size, exclude=banned)
    assert len({ex["question"] for ex in other}) == 60 and not banned & {ex["question"] for ex in other}
    # the same stream, with the banned questions skipped: what was not excluded comes out in order
    assert [ex for ex in other if ex in stream] == stream[1::2]


def test_infeasible_size_is_reported_not_looped():
    assert [p.split(":")[0] for p in GraphSize(5, 6, 5, 6).problems(prefix="graph_")] == ["graph_min_path"]
    assert [p.split(":")[0] for p in GraphSize(9, 8, 2, 3).problems()] == ["min_nodes"]
    assert [p.split(":")[0] for p in GraphSize(3, 40, 2, 3).problems()] == ["max_nodes"]
    with pytest.raises(ValueError, match="in a row"):
        generate_dataset(5, seed=0, size=GraphSize(20, 21, 6, 6), max_rejects=50)  # 6 steps in 21 nodes: rare

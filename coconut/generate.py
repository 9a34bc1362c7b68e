"""A ProsQA-style generator: the training split of ProsQA is not public here, so we make our own.

Each example is a random DAG of "is-a" facts. Nodes 0 and 1 are people; every other node is added one
at a time and draws its parents (a Poisson(1.5) number of them, weighted towards deep nodes by
``depth * 1.5 + 1``). A node that draws no parent is another person. With probability 0.35 a new node
may only hang under nodes that do not descend from node 1, with 0.47 only under nodes that do not descend
from node 0, otherwise anywhere — so most concepts belong to exactly one of the two people's worlds.

Deviation from issue 4, which gives 0.35 for both: the real splits are not symmetric. Of their concepts
40% descend from node 0 only, 53% from node 1 only and 6% from both, and the root is node 1 in 64% of
the questions; 0.35 / 0.35 gives 44% / 43% / 12% and root node 1 in 50%. 0.35 / 0.47 (so "anywhere"
0.18) reproduces the three shares, and with them the root-is-node-1 rate (~64%), without moving the
other statistics; ``tests/coconut/test_generate.py`` checks all of them.

The question asks whether the root person (node 0 or 1) is a ``target`` or a ``neg_target``: ``target`` is
the leaf farthest from the root among the leaves only the root reaches, ``neg_target`` a leaf only the
other person reaches. The reasoning steps are one shortest path from the root to the target.

These rules and the constants below were measured on the real validation and test splits (800 graphs);
``tests/coconut/test_generate.py`` compares the statistics of generated data with them. The exact
upstream generator is not public, so this is a calibrated look-alike, not a byte-for-byte clone.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

PERSON_NAMES = [
    "Alex", "Bob", "Carol", "Davis", "Eva", "Fae", "Gabriel", "Jack", "Max", "Oliver", "Polly", "Rex",
    "Sally", "Sam", "Stella", "Tom", "Wren",
]
# The 38 concept names that occur in the real splits.
CONCEPT_NAMES = [
    "bompus", "boompus", "brimpus", "chorpus", "dumpus", "felpus", "fompus", "gerpus", "gorpus", "grimpus",
    "gwompus", "hilpus", "impus", "jelpus", "jompus", "kerpus", "lempus", "lorpus", "numpus", "quimpus",
    "rempus", "rompus", "rorpus", "scrompus", "shumpus", "sterpus", "storpus", "terpus", "timpus", "tumpus",
    "vumpus", "worpus", "wumpus", "yerpus", "yimpus", "yumpus", "zhorpus", "zumpus",
]

# graph_names "single_token": names that GPT-2's BPE encodes as ONE token each (people also at the start
# of a line, where they have no leading space; concepts always follow a space). The multi-token made-up
# names above take 2-3 tokens each, and a small model trained from scratch must then bind a name spread
# over several tokens to its fact. Same list lengths as above, so a seed draws the same graphs and only
# the names differ; tests/coconut/test_prosqa_mini.py checks the one-token property with the tokenizer.
SINGLE_TOKEN_PEOPLE = [
    "Alex", "Bob", "Davis", "Eva", "Jack", "Max", "Rex", "Sam", "Tom", "Ben", "Dan", "Joe", "Tim", "Kim",
    "Anna", "Amy", "Mark",
]
SINGLE_TOKEN_CONCEPTS = [
    "dog", "cat", "bird", "fish", "horse", "cow", "pig", "sheep", "goat", "wolf", "fox", "bear", "lion",
    "tiger", "mouse", "rat", "frog", "snake", "duck", "goose", "hawk", "bee", "worm", "deer", "rabbit",
    "monkey", "whale", "shark", "crab", "tree", "flower", "rock", "star", "moon", "sun", "king", "queen",
    "doctor",
]
# graph_names -> (people, concepts). "prosqa" (the default) is the real splits' names.
NAME_SETS = {
    "prosqa": (PERSON_NAMES, CONCEPT_NAMES),
    "single_token": (SINGLE_TOKEN_PEOPLE, SINGLE_TOKEN_CONCEPTS),
}
DEFAULT_NAMES = "prosqa"

MEAN_PARENTS = 1.5        # Poisson mean of the number of parents of a new node
DEPTH_WEIGHT = 1.5        # parent weight = depth * DEPTH_WEIGHT + 1 (deep nodes attract children)
P_NOT_FROM_1 = 0.35       # the new node must not descend from node 1
P_NOT_FROM_0 = 0.47       # ... must not descend from node 0 (not the 0.35: see the docstring)
# A node that draws no parent becomes a new person only this often (else it redraws): the real
# graphs have 2-6 people, mostly 2 (extra people ~ Poisson(0.5)), far fewer than Poisson(1.5) zeros give.
P_PERSON_IF_NO_PARENT = 0.25
MIN_GROWN, MAX_GROWN = 21, 26   # nodes grown before pruning (uniform); tuned so kept nodes average ~23
MIN_PATH, MAX_PATH = 3, 6       # shortest root -> target distance allowed (the real splits: 3..6)
MAX_NODES = 28                  # the real splits have at most 28 nodes
# Consecutive rejected graphs after which a size setting is declared infeasible (the defaults reject
# about 1 graph in 3; a mini setting that cannot make questions should fail fast, not spin forever).
MAX_REJECTS = 10_000


@dataclass(frozen=True)
class GraphSize:
    """The generator's size knobs (ProsQA-mini). The defaults are the real splits' calibration above,
    pinned by tests/coconut/test_generate.py; smaller values give smaller graphs and shorter paths."""

    min_nodes: int = MIN_GROWN    # nodes grown before pruning: uniform in [min_nodes, max_nodes]
    max_nodes: int = MAX_GROWN
    min_path: int = MIN_PATH      # shortest root -> target distance (= number of reasoning steps)
    max_path: int = MAX_PATH

    def problems(self, prefix: str = "") -> list[str]:
        """``<field>: <problem>`` for every value that cannot make questions (fields named ``prefix + field``,
        as a spec names them)."""
        p, out = prefix, []
        if not 3 <= self.min_nodes <= self.max_nodes:
            out.append(f"{p}min_nodes: must be in [3, {p}max_nodes={self.max_nodes}], got {self.min_nodes}")
        if self.max_nodes > MAX_NODES:  # larger graphs are rejected after pruning (the real splits' largest)
            out.append(f"{p}max_nodes: must be at most {MAX_NODES}, got {self.max_nodes}")
        if not 1 <= self.min_path <= self.max_path:
            out.append(f"{p}min_path: must be in [1, {p}max_path={self.max_path}], got {self.min_path}")
        # The root, min_path concepts on the way to the target and the other person's own leaf.
        if self.min_path + 3 > self.max_nodes:
            out.append(f"{p}min_path: needs at least {p}min_path + 3 = {self.min_path + 3} nodes, "
                       f"{p}max_nodes is {self.max_nodes}")
        return out


DEFAULT_SIZE = GraphSize()


def _grow_graph(rng: np.random.Generator, size: GraphSize = DEFAULT_SIZE) -> list[list[int]]:
    """Parents of each node, nodes in creation order (so every edge goes from a lower to a higher id)."""
    n_nodes = int(rng.integers(size.min_nodes, size.max_nodes + 1))
    parents: list[list[int]] = [[], []]
    descends = [{0}, {1}]          # which of the two first people reach each node
    depth = [0, 0]
    for _ in range(2, n_nodes):
        n_parents = int(rng.poisson(MEAN_PARENTS))
        if n_parents == 0 and rng.random() >= P_PERSON_IF_NO_PARENT:
            while n_parents == 0:  # zero-truncated Poisson: a concept has at least one parent
                n_parents = int(rng.poisson(MEAN_PARENTS))
        r = rng.random()
        if r < P_NOT_FROM_1:
            candidates = [i for i in range(len(parents)) if 1 not in descends[i]]
        elif r < P_NOT_FROM_1 + P_NOT_FROM_0:
            candidates = [i for i in range(len(parents)) if 0 not in descends[i]]
        else:
            candidates = list(range(len(parents)))
        n_parents = min(n_parents, len(candidates))
        weights = np.array([depth[c] * DEPTH_WEIGHT + 1 for c in candidates], dtype=float)
        chosen = sorted(int(c) for c in rng.choice(candidates, size=n_parents, replace=False,
                                                   p=weights / weights.sum())) if n_parents else []
        parents.append(chosen)
        descends.append(set().union(*(descends[p] for p in chosen)) if chosen else set())
        depth.append(max(depth[p] for p in chosen) + 1 if chosen else 0)
    return parents


def _reach(children: list[list[int]], start: int) -> dict[int, int]:
    """Shortest distance from ``start`` to every node it reaches (BFS)."""
    dist = {start: 0}
    queue = deque([start])
    while queue:
        u = queue.popleft()
        for v in children[u]:
            if v not in dist:
                dist[v] = dist[u] + 1
                queue.append(v)
    return dist


def _prune(parents: list[list[int]]) -> list[list[int]]:
    """Keep what people 0 and 1 reach, plus the ancestors of those nodes (people who feed into them);
    a person with no child never appears in a fact, so it goes. Ids are renumbered in order."""
    children: list[list[int]] = [[] for _ in parents]
    for v, ps in enumerate(parents):
        for p in ps:
            children[p].append(v)
    keep = set(_reach(children, 0)) | set(_reach(children, 1))
    stack = list(keep)
    while stack:
        for p in parents[stack.pop()]:
            if p not in keep:
                keep.add(p)
                stack.append(p)
    new_id = {old: new for new, old in enumerate(sorted(keep))}
    return [[new_id[p] for p in parents[old]] for old in sorted(keep)]


def generate_example(rng: np.random.Generator, size: GraphSize = DEFAULT_SIZE,
                     name_set: str = DEFAULT_NAMES) -> dict[str, Any] | None:
    """One ProsQA-style example, or None when this graph does not make a valid question. ``name_set``
    picks the name lists (``NAME_SETS``); it changes the names only, never the graph."""
    person_names, concept_names = NAME_SETS[name_set]
    parents = _prune(_grow_graph(rng, size))
    n = len(parents)
    if n > MAX_NODES:
        return None
    children: list[list[int]] = [[] for _ in range(n)]
    for v, ps in enumerate(parents):
        for p in ps:
            children[p].append(v)
    dist = [_reach(children, 0), _reach(children, 1)]
    leaves = [v for v in range(n) if not children[v] and parents[v]]
    only = [[v for v in leaves if v in dist[r] and v not in dist[1 - r]] for r in (0, 1)]
    deepest = [max((dist[r][v] for v in only[r]), default=-1) for r in (0, 1)]
    # The root is the person whose exclusive world goes deeper (ties at random).
    root = int(rng.integers(2)) if deepest[0] == deepest[1] else int(np.argmax(deepest))
    other = 1 - root
    if not (size.min_path <= deepest[root] <= size.max_path) or not only[other]:
        return None
    farthest = [v for v in only[root] if dist[root][v] == deepest[root]]
    target = int(rng.choice(farthest))
    neg_target = int(rng.choice(only[other]))

    # One shortest path root -> target, walking back through a random parent one step closer.
    path = [target]
    while path[-1] != root:
        v = path[-1]
        closer = [p for p in parents[v] if dist[root].get(p) == dist[root][v] - 1]
        path.append(int(rng.choice(closer)))
    path.reverse()

    n_people = sum(1 for ps in parents if not ps)
    people = [person_names[i] for i in rng.permutation(len(person_names))[:n_people]]
    concepts = [concept_names[i] for i in rng.permutation(len(concept_names))[: n - n_people]]
    names, next_person, next_concept = [], iter(people), iter(concepts)
    for ps in parents:
        names.append(next(next_concept) if ps else next(next_person))

    def fact(a: int, b: int) -> str:
        return f"{names[a]} is a {names[b]}." if not parents[a] else f"Every {names[a]} is a {names[b]}."

    edges = [[p, v] for v in range(n) for p in parents[v]]
    facts = [fact(a, b) for a, b in edges]
    facts = [facts[i] for i in rng.permutation(len(facts))]
    options = [names[target], names[neg_target]]
    if rng.random() < 0.5:
        options.reverse()
    question = " ".join(facts) + f" Is {names[root]} a {options[0]} or {options[1]}?"
    return {
        "question": question,
        "answer": f"{names[root]} is a {names[target]}.",
        "steps": [fact(a, b) for a, b in zip(path[:-1], path[1:], strict=True)],
        "idx_to_symbol": names,
        "edges": edges,
        "root": root,
        "target": target,
        "neg_target": neg_target,
    }


def generate_dataset(n_examples: int, seed: int | list[int], size: GraphSize = DEFAULT_SIZE,
                     exclude: set[str] | frozenset[str] = frozenset(), max_rejects: int = MAX_REJECTS,
                     name_set: str = DEFAULT_NAMES) -> list[dict[str, Any]]:
    """``n_examples`` examples, deterministic in ``seed``; questions are unique and none is in
    ``exclude`` (the questions of another split, to keep generated splits disjoint).
    Raises ValueError when ``size`` rejects ``max_rejects`` graphs in a row (it cannot make questions,
    or the small graphs have run out of distinct questions). ``name_set``: see generate_example."""
    if name_set not in NAME_SETS:
        raise ValueError(f"name_set: {name_set!r} is not one of {', '.join(NAME_SETS)}")
    rng = np.random.default_rng(seed)
    out: list[dict[str, Any]] = []
    seen: set[str] = set(exclude)
    rejects = 0
    while len(out) < n_examples:
        ex = generate_example(rng, size, name_set)
        if ex is not None and ex["question"] not in seen:
            seen.add(ex["question"])
            out.append(ex)
            rejects = 0
        else:
            rejects += 1
            if rejects >= max_rejects:
                raise ValueError(f"{size} rejected {max_rejects} graphs in a row after {len(out)} examples: "
                                 "it cannot make (enough distinct) questions")
    return out


def main() -> None:  # python -m coconut.generate N SEED OUT.json
    import sys

    n, seed, out = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    out.write_text(json.dumps(generate_dataset(n, seed), indent=1))


if __name__ == "__main__":
    main()

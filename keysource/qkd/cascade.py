"""Cascade reconciliation, vectorised, as a sans-I/O pair of state machines.

Bob (who corrects his bits towards Alice's) drives; Alice only answers parity questions. A
question names dyadic sub-blocks of one pass: in pass j the frame is permuted by a public
permutation and node (level l, index i) covers permuted positions [i 2^l, (i+1) 2^l). Alice
answers each with one parity bit; every answered bit counts as leaked.

Parameters follow Martinez-Mateo, Pacher, Peev, Ciurana & Martin, "Demystifying the information
reconciliation protocol Cascade" (QIC 15, 2015), option (8): 14 passes; block sizes 2^ceil(a),
2^ceil((a+12)/2), 4096, then n/2, with a = log2(1/p) - 0.5; and sub-block reuse: every parity
Alice ever revealed (top-level blocks, the halves asked during binary searches, and those implied
by them) stays known, so when a correction makes any known sub-block odd Bob searches the smallest
one, and a binary search step whose half is already known costs nothing.

Vectorisation: all odd blocks of a pass are searched in parallel (one question per round for all
of them); Bob's parities are computed by gathering whole sub-blocks with numpy; Alice answers from
a prefix-parity array per pass. Corrections update the parity mismatch of every known ancestor
node in every pass at once.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

N_PASSES = 14
MIN_QBER = 1e-4


@dataclass(frozen=True)
class ParityQuery:
    """Ask for the parities of nodes ``ids`` at ``level`` of pass ``pass_index``."""

    pass_index: int
    level: int
    ids: np.ndarray  # int64


@dataclass
class CascadeResult:
    bits: np.ndarray
    leaked_bits: int
    rounds: int  # question/answer round trips
    corrected: int


def block_levels(qber: float, n: int, passes: int = N_PASSES) -> list[int]:
    """log2 of the top-level block size of each pass (Demystifying Cascade, option 8)."""
    p = min(max(qber, MIN_QBER), 0.25)
    alpha = math.log2(1.0 / p) - 0.5
    half = max(1, math.ceil(math.log2(max(n, 2) / 2)))
    levels = [math.ceil(alpha), math.ceil((alpha + 12.0) / 2.0), 12]
    levels += [half] * (passes - len(levels))
    return [max(1, min(lv, half)) for lv in levels[:passes]]


@lru_cache(maxsize=4)
def _tables(n: int, seed: int, passes: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    perms = np.empty((passes, n), np.int32)
    perms[0] = np.arange(n, dtype=np.int32)
    for j in range(1, passes):
        perms[j] = rng.permutation(n)
    inverses = np.empty_like(perms)
    rows = np.arange(passes)[:, None]
    inverses[rows, perms] = np.arange(n, dtype=np.int32)[None, :]
    perms.flags.writeable = False
    inverses.flags.writeable = False
    return perms, inverses


def permutations(n: int, seed: int, passes: int = N_PASSES) -> tuple[tuple[np.ndarray, ...],
                                                                    tuple[np.ndarray, ...]]:
    """The public per-pass permutations (pass 0 is the identity) and their inverses.

    Cached: a link uses one seed and a fixed frame size, so this is paid once.
    """
    perms, inverses = _tables(n, seed, passes)
    return tuple(perms), tuple(inverses)


def permutation_matrix(n: int, seed: int, passes: int = N_PASSES) -> np.ndarray:
    """Row j: permuted position -> frame position in pass j (read-only, cached)."""
    return _tables(n, seed, passes)[0]


def inverse_matrix(n: int, seed: int, passes: int = N_PASSES) -> np.ndarray:
    """Row j: frame position -> permuted position in pass j (read-only, cached)."""
    return _tables(n, seed, passes)[1]


def _sorted_unique(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values and their multiplicities (sort-based; faster than np.unique here)."""
    if values.size == 0:
        return values, values
    ordered = np.sort(values)
    starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
    counts = np.diff(np.append(starts, ordered.size))
    return ordered[starts], counts


def _node_bounds(n: int, level: int, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lo = np.minimum(ids << level, n)
    hi = np.minimum((ids + 1) << level, n)
    return lo, hi


class CascadeAlice:
    """Alice's side: answers parity questions from prefix parities (her bits never change)."""

    def __init__(self, bits: np.ndarray, seed: int, passes: int = N_PASSES) -> None:
        self.bits = np.ascontiguousarray(bits, dtype=np.uint8)
        self.n = self.bits.size
        self.seed = seed
        self.passes = passes
        self._prefix: dict[int, np.ndarray] = {}
        self.leaked_bits = 0

    def _prefix_of(self, pass_index: int) -> np.ndarray:
        prefix = self._prefix.get(pass_index)
        if prefix is None:
            perms = permutation_matrix(self.n, self.seed, self.passes)
            prefix = np.zeros(self.n + 1, np.int32)
            np.cumsum(self.bits[perms[pass_index]], out=prefix[1:])
            self._prefix[pass_index] = prefix
        return prefix

    def answer(self, queries: list[ParityQuery]) -> np.ndarray:
        """Parity bits for every node asked, concatenated in query order."""
        out = []
        for query in queries:
            if not 0 <= query.pass_index < self.passes or not 0 <= query.level < 40:
                raise ValueError("cascade query out of range")
            if query.ids.size and (query.ids.min() < 0 or (int(query.ids.max()) << query.level)
                                   >= self.n):
                raise ValueError("cascade query names a node outside the frame")
            prefix = self._prefix_of(query.pass_index)
            lo, hi = _node_bounds(self.n, query.level, query.ids)
            out.append(((prefix[hi] - prefix[lo]) & 1).astype(np.uint8))
        answer = np.concatenate(out) if out else np.zeros(0, np.uint8)
        self.leaked_bits += int(answer.size)
        return answer


class _Forest:
    """Known Alice parities and current mismatches for every node of every pass's dyadic tree,
    in flat arrays shared by all passes (so one numpy call serves searches in several passes),
    and Bob's own parities of left children (even ids), kept in step with every correction.

    Node (pass p, level l, id i) is flat index ``off[p, l] + i``. Bob's parity of a left child
    (l, 2m) sits in ``left[lbase[p] + ((2m + 1) << l)]``: the layout of a Fenwick tree, where the
    entry at 1-based index j holds the parity of (j - lowbit(j), j]; a flipped bit at permuted
    position k changes the one left child containing it at each level.
    """

    def __init__(self, n: int, tops: list[int]) -> None:
        self.n = n
        self.tops = np.array(tops, np.int64)
        height = max(tops) + 1
        self.off = np.zeros((len(tops), height + 1), np.int64)
        start = 0
        for p, top in enumerate(tops):
            for lv in range(height + 1):
                self.off[p, lv] = start
                if lv <= top:
                    start += -(-n // (1 << lv))
        self.known = np.zeros(start, bool)
        self.alice = np.zeros(start, np.uint8)
        self.mismatch = np.zeros(start, np.uint8)
        # segment starts (pass, level) for decoding flat indices
        seg = [(int(self.off[p, lv]), p, lv) for p, top in enumerate(tops) for lv in range(top + 1)]
        self.seg_start = np.array([s for s, _, _ in seg], np.int64)
        self.seg_pass = np.array([p for _, p, _ in seg], np.int64)
        self.seg_level = np.array([lv for _, _, lv in seg], np.int64)
        self.padded = [-(-n >> top) << top for top in tops]  # frame padded to whole top blocks
        self.lbase = np.concatenate([[0], np.cumsum([size + 1 for size in self.padded])])
        self.left = np.zeros(int(self.lbase[-1]), np.uint8)
        self.built = np.zeros(len(tops), bool)
        self.odd_pool = np.zeros(0, np.int64)  # flat ids that may be odd and known

    def flat(self, p: np.ndarray, level: np.ndarray, ids: np.ndarray) -> np.ndarray:
        return self.off[p, level] + ids

    def decode(self, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        seg = np.searchsorted(self.seg_start, flat, side="right") - 1
        return self.seg_pass[seg], self.seg_level[seg], flat - self.seg_start[seg]

    def build(self, p: int, permuted: np.ndarray) -> np.ndarray:
        """Fill pass p's left-child parities from Bob's permuted bits; top-level parities."""
        top = int(self.tops[p])
        level = np.zeros(self.padded[p], np.uint8)
        level[: self.n] = permuted
        base = int(self.lbase[p])
        for lv in range(top):
            self.left[base + (1 << lv): base + self.padded[p] + 1: 2 << lv] = level[0::2]
            level = level[0::2] ^ level[1::2]
        self.built[p] = True
        return level[: -(-self.n >> top)]

    def bob_left(self, p: np.ndarray, level: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Bob's parity of left children (even ``ids``) at ``level`` of pass ``p``."""
        return self.left[self.lbase[p] + ((ids + 1) << level)]

    def learn(self, flat: np.ndarray, alice: np.ndarray, mismatch: np.ndarray) -> None:
        self.known[flat] = True
        self.alice[flat] = alice
        self.mismatch[flat] = mismatch

    def flip(self, permuted: np.ndarray) -> None:
        """Bob flipped bits; ``permuted[p]`` are their positions in pass p (started passes).

        Toggles the mismatch of every known ancestor (remembering those that turned odd) and
        Bob's parity of every left child containing a flipped bit, in passes where it is kept.
        """
        started = permuted.shape[0]
        height = int(self.tops[:started].max()) + 1
        lv = np.arange(height, dtype=np.int64)[None, :, None]
        nodes = permuted[:, None, :] >> lv  # (pass, level, flip)
        passes = np.arange(started, dtype=np.int64)[:, None, None]
        valid = np.broadcast_to(lv <= self.tops[:started, None, None], nodes.shape)
        flat = (self.off[passes, np.minimum(lv, self.off.shape[1] - 1)] + nodes)[valid]
        flat = flat[self.known[flat]]
        if flat.size:
            np.bitwise_xor.at(self.mismatch, flat, 1)
            self.odd_pool = np.concatenate([self.odd_pool, flat[self.mismatch[flat] == 1]])
        keep = valid & ((nodes & 1) == 0) & (lv < self.tops[:started, None, None]) \
            & self.built[:started, None, None]
        if keep.any():
            idx = (self.lbase[:started, None, None] + ((nodes + 1) << lv))[keep]
            np.bitwise_xor.at(self.left, idx, 1)


class CascadeBob:
    """Bob's side: a generator-driven state machine yielding questions, fed Alice's answers.

    Use ``queries = bob.start()``; then while queries is not None:
    ``queries = bob.receive(alice_answer_bits)``. The result is in ``bob.result``.

    Searches run asynchronously: every binary search descends one level per round trip, a
    search that reaches a bit corrects it at once, and every round starts searches on all
    minimal odd known nodes not already being searched. A correction that makes the node of a
    running search even ends that search (its parities stay known; nothing is lost).
    """

    def __init__(self, bits: np.ndarray, qber: float, seed: int, passes: int = N_PASSES) -> None:
        self.bits = np.array(bits, dtype=np.uint8, copy=True)
        self.n = self.bits.size
        self.seed = seed
        self.passes = passes
        self.levels = block_levels(qber, self.n, passes)
        self.leaked_bits = 0
        self.rounds = 0
        self.corrected = 0
        self._forest = _Forest(self.n, self.levels)
        self._started = 0
        self._mark = np.zeros(self._forest.known.size, bool)
        self._gen = self._run()
        self.result: CascadeResult | None = None

    def start(self) -> list[ParityQuery] | None:
        return self._advance(None)

    def receive(self, answer: np.ndarray) -> list[ParityQuery] | None:
        return self._advance(answer)

    def _advance(self, answer: np.ndarray | None) -> list[ParityQuery] | None:
        try:
            queries = self._gen.send(answer) if answer is not None else next(self._gen)
        except StopIteration:
            self.result = CascadeResult(self.bits, self.leaked_bits, self.rounds, self.corrected)
            return None
        self.rounds += 1
        return queries

    def _answer(self, queries: list[ParityQuery]) -> Generator[list[ParityQuery], np.ndarray,
                                                                 np.ndarray]:
        answer = yield queries
        expected = sum(q.ids.size for q in queries)
        if answer.size != expected:
            raise ValueError(f"cascade answer has {answer.size} bits, expected {expected}")
        self.leaked_bits += expected
        return np.asarray(answer, np.uint8)

    # -- the protocol ---------------------------------------------------------------------
    def _run(self) -> Generator[list[ParityQuery], np.ndarray, None]:
        perms, _ = permutations(self.n, self.seed, self.passes)
        forest = self._forest
        for j, top in enumerate(self.levels):
            ids = np.arange(-(-self.n >> top), dtype=np.int64)
            alice = yield from self._answer([ParityQuery(j, top, ids)])
            bob = forest.build(j, self.bits[perms[j]])
            flat = forest.off[j, top] + ids
            mismatch = alice ^ bob
            forest.learn(flat, alice, mismatch)
            forest.odd_pool = np.concatenate([forest.odd_pool, flat[mismatch == 1]])
            self._started = j + 1
            yield from self._cascade()

    def _cascade(self) -> Generator[list[ParityQuery], np.ndarray, None]:
        """Search until no known node of a started pass is odd."""
        forest = self._forest
        empty = np.zeros(0, np.int64)
        cp, cl, ci = empty, empty, empty  # running searches: pass, level, id of their node
        while True:
            sp, sl, si = self._select(cp, cl, ci)
            cp, cl, ci = (np.concatenate([cp, sp]), np.concatenate([cl, sl]),
                          np.concatenate([ci, si]))
            cp, cl, ci, found = self._descend_known(cp, cl, ci)
            if found.size:
                self._correct(found)
                alive = forest.mismatch[forest.flat(cp, cl, ci)] == 1
                cp, cl, ci = cp[alive], cl[alive], ci[alive]
                continue
            if cp.size == 0:
                return
            # every running search needs Alice's parity of its left child: one round trip
            child, left = cl - 1, ci << 1
            order = np.lexsort((child, cp))
            key = cp[order] * 64 + child[order]
            cuts = np.flatnonzero(key[1:] != key[:-1]) + 1
            queries = [ParityQuery(int(cp[order[a]]), int(child[order[a]]), left[order[a:b]])
                       for a, b in zip(np.concatenate([[0], cuts]).tolist(),
                                       np.concatenate([cuts, [order.size]]).tolist(),
                                       strict=True)]
            answer = yield from self._answer(queries)
            left_alice = np.empty(order.size, np.uint8)
            left_alice[order] = answer
            right_empty = ((left + 1) << child) >= self.n
            cl, ci = self._step(cp, cl, ci, left_alice, right_empty)

    def _step(self, cp: np.ndarray, cl: np.ndarray, ci: np.ndarray, left_alice: np.ndarray,
              right_empty: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Record both children of each node and move each search into its odd child."""
        forest = self._forest
        child, left = cl - 1, ci << 1
        left_flat = forest.flat(cp, child, left)
        parent_alice = forest.alice[forest.flat(cp, cl, ci)]
        left_odd = left_alice ^ forest.bob_left(cp, child, left)
        left_odd[right_empty] = 1  # the left child is the whole node, which is odd
        forest.learn(left_flat, left_alice, left_odd)
        has_right = ~right_empty
        forest.learn(left_flat[has_right] + 1, (parent_alice ^ left_alice)[has_right],
                     1 ^ left_odd[has_right])
        return child, left + (1 ^ left_odd)

    def _descend_known(self, cp: np.ndarray, cl: np.ndarray, ci: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Descend every search as far as known parities allow; frame positions found."""
        forest = self._forest
        perms = permutation_matrix(self.n, self.seed, self.passes)
        found = []
        while cp.size:
            done = cl == 0
            if done.any():
                found.append(perms[cp[done], ci[done]].astype(np.int64))
                keep = ~done
                cp, cl, ci = cp[keep], cl[keep], ci[keep]
                if not cp.size:
                    break
            child, left = cl - 1, ci << 1
            right_empty = ((left + 1) << child) >= self.n
            left_flat = forest.flat(cp, child, left)
            left_known = forest.known[left_flat]
            right_known = ~right_empty & forest.known[np.where(right_empty, left_flat,
                                                               left_flat + 1)]
            free = right_empty | left_known | right_known
            if not free.any():
                break
            fp, fl, fi = cp[free], cl[free], ci[free]
            lf = left_flat[free]
            parent_alice = forest.alice[forest.flat(fp, fl, fi)]
            right_alice = forest.alice[np.where(right_empty[free], lf, lf + 1)]
            left_alice = np.where(left_known[free], forest.alice[lf],
                                  np.where(right_empty[free], parent_alice,
                                           parent_alice ^ right_alice)).astype(np.uint8)
            cl = cl.copy()
            ci = ci.copy()
            cl[free], ci[free] = self._step(fp, fl, fi, left_alice, right_empty[free])
        return cp, cl, ci, (np.concatenate(found) if found else np.zeros(0, np.int64))

    def _ancestors(self, p: np.ndarray, level: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Flat ids of every strict ancestor of the given nodes (within their pass's tree)."""
        forest = self._forest
        ups = np.arange(1, int(forest.tops.max()) + 1, dtype=np.int64)[:, None]
        anc_level = level[None, :] + ups
        valid = anc_level <= forest.tops[p][None, :]
        anc = forest.off[p[None, :], np.minimum(anc_level, forest.off.shape[1] - 1)] \
            + (ids[None, :] >> ups)
        return anc[valid]

    def _select(self, cp: np.ndarray, cl: np.ndarray, ci: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Odd known nodes to search now: those with no odd known descendant that are neither
        a running search's node nor one of its ancestors."""
        forest = self._forest
        pool = forest.odd_pool
        if pool.size:
            pool = pool[forest.mismatch[pool] == 1]
        empty = np.zeros(0, np.int64)
        if not pool.size:
            forest.odd_pool = empty
            return empty, empty, empty
        pool, _ = _sorted_unique(pool)
        forest.odd_pool = pool
        p, level, ids = forest.decode(pool)
        covered = np.concatenate([self._ancestors(p, level, ids), self._ancestors(cp, cl, ci),
                                  forest.flat(cp, cl, ci)])
        mark = self._mark
        mark[covered] = True
        free = ~mark[pool]
        mark[covered] = False
        return p[free], level[free], ids[free]

    def _correct(self, found: np.ndarray) -> None:
        found, _ = _sorted_unique(found)
        self.bits[found] ^= 1
        self.corrected += int(found.size)
        inverses = inverse_matrix(self.n, self.seed, self.passes)
        self._forest.flip(inverses[: self._started, found].astype(np.int64))


def reconcile(alice_bits: np.ndarray, bob_bits: np.ndarray, qber: float, seed: int = 0,
              passes: int = N_PASSES) -> CascadeResult:
    """Run both sides in-process (benchmarks, tests): Bob's corrected bits and the leakage."""
    alice = CascadeAlice(alice_bits, seed, passes)
    bob = CascadeBob(bob_bits, qber, seed, passes)
    queries = bob.start()
    while queries is not None:
        queries = bob.receive(alice.answer(queries))
    assert bob.result is not None
    return bob.result

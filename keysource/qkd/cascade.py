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
def permutations(n: int, seed: int, passes: int = N_PASSES) -> tuple[tuple[np.ndarray, ...],
                                                                    tuple[np.ndarray, ...]]:
    """The public per-pass permutations (pass 0 is the identity) and their inverses.

    Cached: a link uses one seed and a fixed frame size, so this is paid once.
    """
    rng = np.random.default_rng(seed)
    perms: list[np.ndarray] = [np.arange(n, dtype=np.int32)]
    for _ in range(1, passes):
        perms.append(rng.permutation(n).astype(np.int32))
    inverses = []
    for perm in perms:
        inv = np.empty(n, np.int32)
        inv[perm] = np.arange(n, dtype=np.int32)
        inverses.append(inv)
    for arr in (*perms, *inverses):
        arr.flags.writeable = False
    return tuple(perms), tuple(inverses)


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
            perms, _ = permutations(self.n, self.seed, self.passes)
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


class _PassState:
    """Known Alice parities and current mismatches for every node of one pass's dyadic tree."""

    def __init__(self, n: int, top_level: int) -> None:
        self.n = n
        self.top = top_level
        sizes = [-(-n // (1 << lv)) for lv in range(top_level + 1)]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        total = int(self.offsets[-1])
        self.known = np.zeros(total, bool)
        self.alice = np.zeros(total, np.uint8)
        self.mismatch = np.zeros(total, np.uint8)
        self.candidates = np.zeros(0, np.int64)  # flat ids that may be odd

    def flat(self, level: int | np.ndarray, ids: np.ndarray) -> np.ndarray:
        return self.offsets[level] + ids

    def learn(self, level: int | np.ndarray, ids: np.ndarray, alice: np.ndarray,
              mismatch: np.ndarray) -> None:
        flat = self.flat(level, ids)
        self.known[flat] = True
        self.alice[flat] = alice
        self.mismatch[flat] = mismatch
        odd = flat[mismatch.astype(bool)]
        if odd.size:
            self.candidates = np.concatenate([self.candidates, odd])

    def flip_ancestors(self, permuted: np.ndarray) -> None:
        """Bob flipped the bits at these permuted positions: toggle every known ancestor."""
        levels = np.arange(self.top + 1, dtype=np.int64)[:, None]
        permuted = permuted.astype(np.int64)
        flat = (self.offsets[:-1, None] + (permuted[None, :] >> levels)).ravel()
        flat = flat[self.known[flat]]
        if flat.size == 0:
            return
        ids, counts = _sorted_unique(flat)
        toggled = ids[(counts & 1).astype(bool)]
        self.mismatch[toggled] ^= 1
        self.candidates = np.concatenate([self.candidates, toggled])

    def minimal_odd(self) -> tuple[np.ndarray, np.ndarray]:
        """Disjoint odd known nodes with no odd known descendant, as (levels, ids)."""
        cand, _ = _sorted_unique(self.candidates)
        cand = cand[self.mismatch[cand] == 1]
        self.candidates = cand
        if cand.size == 0:
            return cand, cand
        levels = np.searchsorted(self.offsets, cand, side="right") - 1
        ids = cand - self.offsets[levels]
        # ancestors of every odd node (strictly above it); odd nodes among them are not minimal
        ups = np.arange(1, self.top + 1, dtype=np.int64)[:, None]
        anc_levels = levels[None, :] + ups
        valid = anc_levels <= self.top
        anc_flat = self.offsets[np.minimum(anc_levels, self.top)] + (ids[None, :] >> ups)
        anc_flat = anc_flat[valid]
        minimal = ~np.isin(cand, anc_flat)
        return levels[minimal], ids[minimal]


class CascadeBob:
    """Bob's side: a generator-driven state machine yielding questions, fed Alice's answers.

    Use ``queries = bob.start()``; then while queries is not None:
    ``queries = bob.receive(alice_answer_bits)``. The result is in ``bob.result``.
    """

    def __init__(self, bits: np.ndarray, qber: float, seed: int, passes: int = N_PASSES,
                 parallel_passes: int = 2) -> None:
        self.parallel_passes = parallel_passes
        self.bits = np.array(bits, dtype=np.uint8, copy=True)
        self.n = self.bits.size
        self.seed = seed
        self.passes = passes
        self.levels = block_levels(qber, self.n, passes)
        self.leaked_bits = 0
        self.rounds = 0
        self.corrected = 0
        self._perm_bits: dict[int, np.ndarray] = {}
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

    # -- Bob's parities -------------------------------------------------------------------
    def _permuted(self, pass_index: int) -> np.ndarray:
        """Bob's bits in pass ``pass_index`` order, kept in step with every correction."""
        cached = self._perm_bits.get(pass_index)
        if cached is None:
            perms, _ = permutations(self.n, self.seed, self.passes)
            cached = self.bits[perms[pass_index]]
            self._perm_bits[pass_index] = cached
        return cached

    def _flip(self, positions: np.ndarray) -> None:
        self.bits[positions] ^= 1
        _, inverses = permutations(self.n, self.seed, self.passes)
        for pass_index, permuted in self._perm_bits.items():
            permuted[inverses[pass_index][positions]] ^= 1

    def _parities(self, pass_index: int, level: int, ids: np.ndarray) -> np.ndarray:
        """Bob's current parity of each node: range sums over the permuted copy."""
        permuted = self._permuted(pass_index)
        if ids.size == 0:
            return np.zeros(0, np.uint8)
        width = 1 << level
        if ids.size * width >= self.n // 2:  # many nodes: one pass over the whole frame
            padded_len = -(-self.n // width) * width
            if padded_len != self.n:
                permuted = np.concatenate([permuted, np.zeros(padded_len - self.n, np.uint8)])
            sums = np.bitwise_xor.reduce(permuted.reshape(-1, width), axis=1)
            return sums[ids].astype(np.uint8)
        lo, hi = _node_bounds(self.n, level, ids)
        if width >= 2048 and ids.size <= 64:  # few wide nodes: count set bits slice by slice
            return np.array([np.count_nonzero(permuted[a:b]) & 1 for a, b in
                             zip(lo.tolist(), hi.tolist(), strict=True)], np.uint8)
        idx = lo[:, None] + np.arange(width, dtype=np.int64)[None, :]
        if (hi - lo < width).any():  # a node cut short by the end of the frame
            vals = permuted[np.minimum(idx, self.n - 1)] & (idx < self.n)
        else:
            vals = permuted[idx]
        return (np.bitwise_xor.reduce(vals, axis=1) & 1).astype(np.uint8)

    def _answer(self, queries: list[ParityQuery]) -> Generator[list[ParityQuery], np.ndarray,
                                                                 np.ndarray]:
        answer = yield queries
        expected = sum(q.ids.size for q in queries)
        if answer.size != expected:
            raise ValueError(f"cascade answer has {answer.size} bits, expected {expected}")
        self.leaked_bits += expected
        return answer

    # -- the protocol ---------------------------------------------------------------------
    def _run(self) -> Generator[list[ParityQuery], np.ndarray, None]:
        _, inverses = permutations(self.n, self.seed, self.passes)
        states: list[_PassState] = []
        for j, top in enumerate(self.levels):
            state = _PassState(self.n, top)
            states.append(state)
            ids = np.arange(-(-self.n // (1 << top)), dtype=np.int64)
            alice = yield from self._answer([ParityQuery(j, top, ids)])
            bob = self._parities(j, top, ids)
            state.learn(top, ids, alice, alice ^ bob)
            while True:
                batch = self._select(states)
                if not batch:
                    break
                found = yield from self._search_all(states, batch)
                found, _ = _sorted_unique(found)
                self._flip(found)
                self.corrected += int(found.size)
                for p, st in enumerate(states):
                    st.flip_ancestors(inverses[p][found])

    def _select(self, states: list[_PassState]) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """Odd nodes to search now: every pass's minimal odd nodes, skipping nodes that share a
        bit with a node already chosen from another pass (two searches could otherwise find
        the same error and waste parities). Cheapest passes choose first."""
        perms, _ = permutations(self.n, self.seed, self.passes)
        per_pass = []
        for q, st in enumerate(states):
            levels, ids = st.minimal_odd()
            if levels.size:
                per_pass.append((int(levels.min()), q, levels, ids))
        per_pass.sort(key=lambda item: (item[0], item[1]))
        if self.parallel_passes <= 1:
            per_pass = per_pass[:1]
        used = (np.zeros(self.n, bool) if len(per_pass) > 1 and self.parallel_passes == 2
                else None)
        batch = []
        for _, q, levels, ids in per_pass:
            if used is not None:
                keep = np.ones(ids.size, bool)
                for lv in np.unique(levels):
                    sel = np.flatnonzero(levels == lv)
                    idx = (ids[sel] << lv)[:, None] + np.arange(1 << lv, dtype=np.int64)[None, :]
                    valid = idx < self.n
                    pos = perms[q][np.minimum(idx, self.n - 1)]
                    clash = (used[pos] & valid).any(axis=1)
                    keep[sel[clash]] = False
                    chosen = pos[~clash][valid[~clash]]
                    used[chosen] = True
                levels, ids = levels[keep], ids[keep]
            if levels.size:
                batch.append((q, levels, ids))
        return batch

    def _search_all(self, states: list[_PassState], batch: list[tuple[int, np.ndarray,
                                                                       np.ndarray]]
                    ) -> Generator[list[ParityQuery], np.ndarray, np.ndarray]:
        """Run the binary searches of several passes in lockstep, one round trip per step."""
        searches = [self._binary_search(states[q], q, lv, ids) for q, lv, ids in batch]
        pending: list[tuple[int, list[ParityQuery]]] = []
        found: list[np.ndarray] = []
        for k, search in enumerate(searches):
            try:
                pending.append((k, next(search)))
            except StopIteration as stop:
                found.append(stop.value)
        while pending:
            queries = [query for _, qs in pending for query in qs]
            answer = yield from self._answer(queries)
            pos = 0
            still = []
            for k, qs in pending:
                size = sum(query.ids.size for query in qs)
                try:
                    still.append((k, searches[k].send(answer[pos: pos + size])))
                except StopIteration as stop:
                    found.append(stop.value)
                pos += size
            pending = still
        return np.concatenate(found) if found else np.zeros(0, np.int64)

    def _binary_search(self, state: _PassState, q: int, levels: np.ndarray,
                       ids: np.ndarray) -> Generator[list[ParityQuery], np.ndarray, np.ndarray]:
        """Descend from every odd node to one erroneous bit; returns frame positions."""
        perms, _ = permutations(self.n, self.seed, self.passes)
        found: list[np.ndarray] = []
        levels = levels.astype(np.int64)
        ids = ids.astype(np.int64)
        while levels.size:
            done = levels == 0
            if done.any():
                found.append(perms[q][ids[done]].astype(np.int64))
                levels, ids = levels[~done], ids[~done]
                if not levels.size:
                    break
            child = levels - 1
            left, right = ids * 2, ids * 2 + 1
            right_empty = (right << child) >= self.n
            parent_alice = state.alice[state.flat(levels, ids)]
            left_known = state.known[state.flat(child, left)]
            right_flat = state.flat(child, np.where(right_empty, left, right))
            right_known = ~right_empty & state.known[right_flat]
            ask = ~(right_empty | left_known | right_known)
            left_alice = np.zeros(ids.size, np.uint8)
            left_alice[right_empty] = parent_alice[right_empty]
            lk = left_known & ~right_empty
            left_alice[lk] = state.alice[state.flat(child[lk], left[lk])]
            rk = right_known & ~left_known
            left_alice[rk] = parent_alice[rk] ^ state.alice[right_flat[rk]]
            if ask.any():
                queries = []
                ask_idx = np.flatnonzero(ask)
                ask_levels = child[ask_idx]
                order = np.argsort(ask_levels, kind="stable")
                ask_idx = ask_idx[order]
                for lv in np.unique(ask_levels):
                    sel = ask_idx[child[ask_idx] == lv]
                    queries.append(ParityQuery(q, int(lv), left[sel]))
                answer = yield queries
                pos = 0
                for query in queries:
                    sel = ask_idx[pos: pos + query.ids.size]
                    left_alice[sel] = answer[pos: pos + query.ids.size]
                    pos += query.ids.size
            # Bob's parity of each left child, level by level
            left_bob = np.zeros(ids.size, np.uint8)
            for lv in np.unique(child):
                sel = child == lv
                left_bob[sel] = self._parities(q, int(lv), left[sel])
            left_odd = left_alice ^ left_bob
            state.learn(child, left, left_alice, left_odd)
            has_right = ~right_empty
            state.learn(child[has_right], right[has_right],
                        parent_alice[has_right] ^ left_alice[has_right],
                        (1 ^ left_odd[has_right]).astype(np.uint8))
            ids = np.where(left_odd.astype(bool), left, right)
            levels = child
        return np.concatenate(found) if found else np.zeros(0, np.int64)


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

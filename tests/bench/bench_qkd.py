"""QKD link emulator: key rate vs distance, Cascade efficiency, Eve, post-processing speed.

    python tests/bench/bench_qkd.py --quick --json OUT.json

- key_rate: secret bits per pulse slot from whole emulated blocks (pair mode: source, fibre,
  detectors, sifting, decoy estimation with finite-size bounds, Cascade, verification, Toeplitz)
  beside the Lo-Ma-Chen asymptotic decoy-state formula on the same LinkParams, using the Cascade
  efficiency f measured in the same blocks. The baseline is the formula.
- cascade: efficiency f = leaked / (n h(QBER)) for QBER 1..8 %, residual errors and channel uses
  (classical messages), beside the Shannon limit (f = 1.0) row.
- eve_full_intercept_qber: QBER with intercept-resend on every pulse (target 0.25 +- 0.03).
- finite_key: per distance and frame size (2^17, 2^20, 2^22 bits), key per pulse slot from the
  emulated link (2^17 frames run here; 2^20 and 2^22 taken from the key_rate rows, which run
  those sizes; None where no block was run), the finite-key formula (estimation.py, docs/qkd.md)
  on the expected counts of one block, the asymptotic decoy formula, and beside them the naive
  estimate (every click a single photon) and GLLP without decoys (at the link's mu = 0.5, and
  with mu optimised per distance: gllp_best_mu).
- pns: what each estimate claims when Eve runs the photon-number-splitting attack of eve.py
  (expected counts of a 2^20 frame; emulated 2^17 blocks at the nearer distances), and the share
  of the signal clicks whose bit Eve holds.
- postprocess_sifted_bits_per_s: the link's post-processing rate on this machine, sifted bits
  per second through sifting + estimation + Cascade + verification + privacy amplification
  (pair mode), with two lanes (``qsecret kme pair --lanes 2``: two blocks at once, one process
  each; lanes.py), measured whole: each lane records its blocks' physics (source, detectors
  and the quantum frame between them), then runs the same blocks again on a new link with the
  physics replayed (same seed and PSK: the same keys, checked), both lanes between two
  barriers; the rate is all the sifted bits over the wall time from the common start to the
  last lane's end. postprocess_whole has that for one lane and for two, each beside a
  same-run baseline (sorting as many int64 values with numpy before and after the blocks).
  postprocess is one lane with the physics subtracted per block instead, with CPU seconds per
  stage, beside the numpy baseline timed after every block; and
  postprocess.cascade_lockstep: Cascade's CPU per 2^20-bit frame, 4 frames one at a time and
  the same 4 in lockstep (cascade.py; the link itself still reconciles one frame a block).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import multiprocessing
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np

from keysource.qkd import protocol
from keysource.qkd.auth import make_psk
from keysource.qkd.cascade import permutations, reconcile, reconcile_lockstep
from keysource.qkd.estimation import (
    binary_entropy,
    eps_sec,
    expected_stats,
    finite_key_rate,
    gllp_rate,
    lmc_asymptotic_rate,
    naive_rate,
    pns_known_share,
)
from keysource.qkd.lanes import lane_params
from keysource.qkd.pair import PairLink
from keysource.qkd.params import LinkParams
from tests.bench._common import write_json

DISTANCES = [10, 25, 50, 100, 150, 200]
CASCADE_QBERS = [0.01, 0.02, 0.03, 0.05, 0.08]


# Finite-size effects (Chernoff bounds, docs/qkd.md): at 150 km few decoy errors and vacuum
# clicks are seen per block, so the phase-error bound is loose unless the block is large: 4 Mbit
# frames there.
LONG_LINK_KM = 150
LONG_LINK_FRAME = 1 << 22


def key_rate(frame_bits: int, blocks: int) -> list[dict]:
    rows = []
    for km in DISTANCES:
        frame = LONG_LINK_FRAME if km >= LONG_LINK_KM else frame_bits
        params = LinkParams(fibre_km=km, frame_bits=frame, seed=km)
        link = PairLink(params)
        secret = pulses = leaked = ineff = 0
        reasons = []
        for _ in range(blocks):
            report = link.run_block().report
            pulses += report.pulses
            secret += report.secret_bits
            if report.aborted:
                reasons.append(report.reason)
            else:
                leaked += report.leaked_bits
                ineff += report.cascade_efficiency * report.frame_bits
        done = blocks - len(reasons)
        f_ec = ineff / (done * frame) if done else 1.16
        formula = lmc_asymptotic_rate(params, f_ec)
        emulated = secret / pulses
        row = {"km": km, "emulated_per_pulse": emulated, "frame_bits": frame,
               "formula_per_pulse": max(0.0, formula), "f_ec": round(f_ec, 4),
               "ratio": round(emulated / formula, 3) if formula > 0 else None,
               "aborted_blocks": len(reasons)}
        if reasons:
            row["abort_reason"] = reasons[0]
        rows.append(row)
        ratio = f"{row['ratio']:.3f}" if row["ratio"] is not None else "  -  "
        print(f"  {km:>4} km  emulated {emulated:.3e}/pulse  LMC formula {max(0, formula):.3e}"
              f"/pulse  ratio {ratio}  f={f_ec:.3f}  aborted {len(reasons)}/{blocks}")
    return rows


def cascade(n: int, seed: int = 1) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows: list[dict] = [{"qber": None, "efficiency": 1.0, "residual_errors": 0,
                         "channel_uses": None, "baseline": "Shannon limit n h(QBER)"}]
    permutations(n, 99)
    for qber in CASCADE_QBERS:
        alice = rng.integers(0, 2, n, dtype=np.uint8)
        bob = alice ^ (rng.random(n) < qber).astype(np.uint8)
        actual = float((alice != bob).mean())
        start = time.perf_counter()
        result = reconcile(alice, bob, qber, seed=99)
        elapsed = time.perf_counter() - start
        efficiency = result.leaked_bits / (n * binary_entropy(actual))
        residual = int((result.bits != alice).sum())
        rows.append({"qber": qber, "efficiency": round(efficiency, 4),
                     "residual_errors": residual, "channel_uses": 2 * result.rounds,
                     "leaked_bits": result.leaked_bits, "n": n,
                     "seconds": round(elapsed, 3)})
        print(f"  QBER {qber:.2f}: f = {efficiency:.3f} (Shannon 1.000), residual {residual}, "
              f"{2 * result.rounds} messages, {elapsed:.2f}s")
    return rows


def eve_qber(blocks: int) -> float:
    link = PairLink(LinkParams(intercept_fraction=1.0, frame_bits=1 << 16, seed=3))
    reports = [link.run_block().report for _ in range(blocks)]
    assert all(r.aborted for r in reports)
    qber = statistics.fmean(r.qber_sample for r in reports)
    print(f"  full intercept-resend: QBER {qber:.4f} (target 0.25 +- 0.03), "
          f"{sum(r.keys for r in reports)} keys, all {blocks} blocks aborted")
    return qber


class StageTimer:
    """Wall and CPU seconds spent in named functions while it is active (bench only).

    Used to exclude the physics emulation and to show where post-processing time goes. A
    stage's figures are its own time: a timed function called inside another is counted in its
    own stage only, so the stages and "other" add up to the total."""

    def __init__(self, targets: dict[str, tuple[object, str]]) -> None:
        self.targets = targets
        self.wall = dict.fromkeys(targets, 0.0)
        self.cpu = dict.fromkeys(targets, 0.0)
        self._saved: dict[str, object] = {}
        self._inner: list[list[float]] = []  # per running stage: [wall, cpu] of nested stages

    def __enter__(self) -> StageTimer:
        for name, (owner, attr) in self.targets.items():
            fn = getattr(owner, attr)
            self._saved[name] = fn

            def wrapper(*args, _fn=fn, _name=name, **kwargs):  # type: ignore[no-untyped-def]
                wall, cpu = time.perf_counter(), time.process_time()
                self._inner.append([0.0, 0.0])
                try:
                    return _fn(*args, **kwargs)
                finally:
                    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                    inner_wall, inner_cpu = self._inner.pop()
                    self.wall[_name] += wall - inner_wall
                    self.cpu[_name] += cpu - inner_cpu
                    if self._inner:
                        self._inner[-1][0] += wall
                        self._inner[-1][1] += cpu
            setattr(owner, attr, wrapper)
        return self

    def __exit__(self, *exc: object) -> None:
        for name, (owner, attr) in self.targets.items():
            setattr(owner, attr, self._saved[name])


def _postprocess_stages() -> dict[str, tuple[object, str]]:
    """Physics (excluded) and the main post-processing stages (reported). The quantum frame's
    codec is physics too: it carries the emulated pulses (photon numbers, bases, slots) from
    the source to the detector, which fibre does in a real link; no post-processing reads it."""
    from keysource.qkd import cascade as cascade_module
    from keysource.qkd import verification
    return {
        "physics_emit": (protocol, "emit_block"), "physics_detect": (protocol, "detect"),
        "physics_frame_encode": (protocol, "encode_quantum"),
        "physics_frame_decode": (protocol, "decode_quantum"),
        "sifting_alice": (protocol.AliceEndpoint, "_on_sift"),
        "sifting_bob": (protocol.BobEndpoint, "_on_sift_reply"),
        "cascade_alice": (cascade_module.CascadeAlice, "answer"),
        "cascade_bob": (cascade_module.CascadeBob, "_advance"),
        "message_encode": (protocol._Endpoint, "_message"),
        "toeplitz": (protocol.amplification, "identity_toeplitz_hash"),
        "verify_hash": (verification, "key_hash"),
    }


def _sort_rate(values: np.ndarray, times: int = 3) -> float:
    """The baseline: int64 values numpy sorts per second (median of ``times``)."""
    sort_times = []
    for _ in range(times):
        started = time.perf_counter()
        np.sort(values)
        sort_times.append(time.perf_counter() - started)
    return values.size / statistics.median(sort_times)


def postprocess_rate(frame_bits: int, blocks: int) -> dict:
    """Sifted bits per second of post-processing, beside a same-run numpy sort baseline.

    The baseline (sorting as many int64 values as a block has sifted bits) is timed right after
    every block, so both see the same load on a shared machine; the ratio is per block, and
    every figure is a median over the blocks. CPU-time figures are printed too (steadier when
    other processes compete for the cores), with each stage's share."""
    link = PairLink(LinkParams(frame_bits=frame_bits, seed=5))
    link.run_block()  # warm-up: permutations are cached per link
    values = np.random.default_rng(0).integers(0, 1 << 62, 1)
    rates, cpu_rates, baselines, ratios, rounds, sifted_total = [], [], [], [], [], 0
    stages: dict[str, list[float]] = {}
    for _ in range(blocks):
        with StageTimer(_postprocess_stages()) as timer:
            start, cpu_start = time.perf_counter(), time.process_time()
            report = link.run_block().report
            total = time.perf_counter() - start
            cpu_total = time.process_time() - cpu_start
        assert not report.aborted, report.reason
        physics = sum(v for k, v in timer.wall.items() if k.startswith("physics"))
        physics_cpu = sum(v for k, v in timer.cpu.items() if k.startswith("physics"))
        rates.append(report.sifted_bits / (total - physics))
        cpu_rates.append(report.sifted_bits / (cpu_total - physics_cpu))
        rounds.append(report.cascade_rounds)
        sifted_total += report.sifted_bits
        if values.size != report.sifted_bits:
            values = np.random.default_rng(0).integers(0, 1 << 62, report.sifted_bits)
        baselines.append(_sort_rate(values))
        ratios.append(rates[-1] / baselines[-1])
        other = cpu_total - physics_cpu - sum(
            v for k, v in timer.cpu.items() if not k.startswith("physics"))
        for name, seconds in [*timer.cpu.items(), ("other", other)]:
            if not name.startswith("physics"):
                stages.setdefault(name, []).append(seconds)
    rate, baseline, ratio = (statistics.median(x) for x in (rates, baselines, ratios))
    cpu_rate = statistics.median(cpu_rates)
    per_block = {name: round(statistics.median(v), 4) for name, v in stages.items()}
    result = {"sifted_bits_per_s": rate, "frame_bits": frame_bits, "blocks": blocks,
              "baseline_numpy_sort_per_s": baseline, "ratio_to_baseline": ratio,
              "sifted_bits_per_cpu_s": cpu_rate, "cpu_seconds_per_block": per_block,
              "cascade_rounds": statistics.median(rounds),
              "sifted_bits_per_block": sifted_total // blocks}
    print(f"  one lane, physics subtracted per block: {rate:,.0f} sifted bits/s; baseline numpy "
          f"sort of as many int64: {baseline:,.0f}/s; ratio {ratio:.4f} (medians of {blocks} "
          f"blocks); CPU time: {cpu_rate:,.0f} sifted bits per CPU second")
    print(f"  CPU seconds per block of {sifted_total // blocks:,} sifted bits: " + ", ".join(
        f"{name} {seconds:.3f}" for name, seconds in per_block.items())
        + f"; Cascade round trips {statistics.median(rounds):.0f}")
    return result


class PhysicsReplay:
    """Bench only: a run's emulated physics recorded, then handed back to a second run of the
    same link (same seed, same PSK), so that the second run's wall clock is post-processing
    alone. Physics here: Alice's source (emit_block), Bob's detectors (detect) and the quantum
    frame that carries the pulses between them (encode_quantum, decode_quantum). The random
    generator a call advanced is left where the recorded call left it, so the replayed run
    makes exactly the recorded run's choices (checked: the same keys)."""

    TARGETS = ("emit_block", "detect", "encode_quantum", "decode_quantum")

    def __init__(self) -> None:
        self.calls: dict[str, list[tuple[Any, Any]]] = {name: [] for name in self.TARGETS}

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        def wrap(name: str, real: Any) -> Any:
            def record(*args: Any, **kwargs: Any) -> Any:
                result = real(*args, **kwargs)
                rng = _rng_of(args)
                self.calls[name].append((copy.deepcopy(result),
                                         None if rng is None else rng.bit_generator.state))
                return result
            return record
        with self._patched(wrap):
            yield

    @contextlib.contextmanager
    def replaying(self) -> Iterator[None]:
        def wrap(name: str, real: Any) -> Any:
            recorded = iter(self.calls[name])

            def replay(*args: Any, **kwargs: Any) -> Any:
                result, state = next(recorded)
                rng = _rng_of(args)
                if rng is not None:
                    rng.bit_generator.state = state
                return result
            return replay
        with self._patched(wrap):
            yield

    @contextlib.contextmanager
    def _patched(self, wrap: Any) -> Iterator[None]:
        saved = {name: getattr(protocol, name) for name in self.TARGETS}
        for name, real in saved.items():
            setattr(protocol, name, wrap(name, real))
        try:
            yield
        finally:
            for name, real in saved.items():
                setattr(protocol, name, real)


def _rng_of(args: tuple[Any, ...]) -> np.random.Generator | None:
    return next((a for a in args if isinstance(a, np.random.Generator)), None)


def _replayed_lane(frame_bits: int, blocks: int, lane: int, barrier: Any, out: Any) -> None:
    """One lane: record ``blocks`` blocks (and a warm-up), then run them again on a new link
    with the physics replayed, timed between two barriers shared with the other lanes."""
    params = lane_params(LinkParams(frame_bits=frame_bits, seed=5), lane)
    psk = make_psk()
    replay = PhysicsReplay()
    with replay.recording():
        link = PairLink(params, psk)
        recorded = [link.run_block() for _ in range(blocks + 1)]  # a warm-up, then the blocks
    values = np.random.default_rng(0).integers(0, 1 << 62, recorded[1].report.sifted_bits)
    sorts = [_sort_rate(values)]
    link = PairLink(params, psk)
    with replay.replaying():
        link.run_block()  # the warm-up: permutation tables, allocator
        barrier.wait()
        start, cpu_start = time.perf_counter(), time.process_time()
        results = [link.run_block() for _ in range(blocks)]
        end, cpu = time.perf_counter(), time.process_time() - cpu_start
    barrier.wait()
    sorts.append(_sort_rate(values))
    for got, want in zip(results, recorded[1:], strict=True):
        assert not got.report.aborted, got.report.reason
        assert got.keys_a == want.keys_a == got.keys_b, "the replayed run made other keys"
    out.put({"lane": lane, "sifted_bits": sum(r.report.sifted_bits for r in results),
             "start": start, "end": end, "cpu_s": cpu,
             "baseline_numpy_sort_per_s": statistics.median(sorts)})


def postprocess_replayed(frame_bits: int, blocks: int, lanes: int) -> dict:
    """The link's post-processing rate measured whole: ``lanes`` lanes (processes) run their
    blocks at once with the physics replayed (:class:`PhysicsReplay`), and the rate is every
    lane's sifted bits over the wall time from the common start to the last lane's end."""
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(lanes), ctx.Queue()
    workers = [ctx.Process(target=_replayed_lane, args=(frame_bits, blocks, lane, barrier, out))
               for lane in range(lanes)]
    for worker in workers:
        worker.start()
    try:
        per_lane = sorted((out.get(timeout=900) for _ in workers), key=lambda r: r["lane"])
    finally:
        for worker in workers:
            worker.join(timeout=60)
            if worker.is_alive():
                worker.kill()
    wall = max(r["end"] for r in per_lane) - min(r["start"] for r in per_lane)
    sifted = sum(r["sifted_bits"] for r in per_lane)
    baseline = statistics.median(r["baseline_numpy_sort_per_s"] for r in per_lane)
    return {"lanes": lanes, "blocks_per_lane": blocks, "sifted_bits": sifted, "wall_s": wall,
            "sifted_bits_per_s": sifted / wall, "baseline_numpy_sort_per_s": baseline,
            "ratio_to_baseline": sifted / wall / baseline,
            "cpu_s": [round(r["cpu_s"], 3) for r in per_lane]}


def postprocess_whole(frame_bits: int, blocks: int) -> dict:
    """One lane, then two lanes, each measured whole (postprocess_replayed), same run."""
    one = postprocess_replayed(frame_bits, blocks, 1)
    two = postprocess_replayed(frame_bits, blocks, 2)
    for row in (one, two):
        print(f"  {row['lanes']} lane(s), physics replayed, measured whole: "
              f"{row['sifted_bits_per_s']:,.0f} sifted bits/s ({row['sifted_bits']:,} bits in "
              f"{row['wall_s']:.2f} s; target >= 5,000,000 for the link); numpy sort "
              f"baseline {row['baseline_numpy_sort_per_s']:,.0f}/s, ratio "
              f"{row['ratio_to_baseline']:.4f}")
    print(f"  two lanes / one lane: x{two['sifted_bits_per_s'] / one['sifted_bits_per_s']:.2f}")
    return {"one_lane": one, "two_lanes": two}


def cascade_lockstep_speed(n: int, frames: int, qber: float = 0.01, repeats: int = 3) -> dict:
    """CPU seconds per frame of Cascade (both sides, in-process) for ``frames`` frames one
    after the other and the same frames in lockstep, interleaved ``repeats`` times (medians):
    what sharing the round trips' numpy calls saves (docs/qkd.md, "Post-processing speed")."""
    rng = np.random.default_rng(3)
    alice = rng.integers(0, 2, (frames, n), dtype=np.uint8)
    bob = alice ^ (rng.random((frames, n)) < qber).astype(np.uint8)
    reconcile(alice[0], bob[0], qber, seed=1)  # warm the permutation cache
    one, lockstep, rounds = [], [], 0
    for _ in range(repeats):
        start = time.process_time()
        for k in range(frames):
            reconcile(alice[k], bob[k], qber, seed=1)
        one.append((time.process_time() - start) / frames)
        start = time.process_time()
        _, rounds = reconcile_lockstep(alice, bob, [qber] * frames, seed=1)
        lockstep.append((time.process_time() - start) / frames)
    row = {"frame_bits": n, "frames": frames, "qber": qber,
           "cpu_s_per_frame_one_at_a_time": round(statistics.median(one), 4),
           "cpu_s_per_frame_lockstep": round(statistics.median(lockstep), 4),
           "lockstep_round_trips": rounds}
    print(f"  Cascade alone, {frames} frames of {n} bits at QBER {qber:.0%}: "
          f"{row['cpu_s_per_frame_one_at_a_time']:.3f} CPU-s per frame one at a time, "
          f"{row['cpu_s_per_frame_lockstep']:.3f} in lockstep ({rounds} round trips)")
    return row


# -- finite-key rows: what each part of the analysis buys ----------------------------------------
FINITE_FRAMES = [1 << 17, 1 << 20, 1 << 22]
PNS_DISTANCES = [10, 25, 50, 100]


def emulated_rate(params: LinkParams, blocks: int) -> float:
    """Secret bits per pulse slot over ``blocks`` blocks of the real link (pair mode)."""
    link = PairLink(params)
    secret = pulses = 0
    for _ in range(blocks):
        report = link.run_block().report
        secret += report.secret_bits
        pulses += report.pulses
    return secret / pulses


def gllp_best_mu(params: LinkParams, f_ec: float) -> float:
    """GLLP without decoys with the signal intensity that maximises it at this distance."""
    best = 0.0
    for mu in np.geomspace(1e-4, 0.5, 60):
        trial = replace(params, mu_signal=float(mu), nu_decoy=float(mu) / 2)
        best = max(best, gllp_rate(trial, f_ec))
    return best


def finite_key_rows(key_rate_rows: list[dict], blocks: int) -> list[dict]:
    f_by_km = {row["km"]: row["f_ec"] for row in key_rate_rows}
    emulated = {(row["km"], row["frame_bits"]): row["emulated_per_pulse"]
                for row in key_rate_rows}
    rows = []
    for km in DISTANCES:
        f_ec = f_by_km.get(km, 1.05)
        asymptotic = max(0.0, lmc_asymptotic_rate(LinkParams(fibre_km=km), f_ec))
        best_gllp = gllp_best_mu(LinkParams(fibre_km=km), f_ec)
        for frame in FINITE_FRAMES:
            params = LinkParams(fibre_km=km, frame_bits=frame, seed=km)
            if frame == FINITE_FRAMES[0] and asymptotic > 0:
                emulated[(km, frame)] = emulated_rate(params, blocks)
            row = {"km": km, "frame_bits": frame, "emulated": emulated.get((km, frame)),
                   "finite_key_formula": finite_key_rate(params, f_ec),
                   "asymptotic": asymptotic, "naive": naive_rate(params, f_ec),
                   "gllp": gllp_rate(params, f_ec), "gllp_best_mu": best_gllp, "f_ec": f_ec}
            row["finite_over_asymptotic"] = (round(row["finite_key_formula"] / asymptotic, 3)
                                             if asymptotic > 0 else None)
            rows.append(row)
            shown = "    -    " if row["emulated"] is None else f"{row['emulated']:.3e}"
            ratio = row["finite_over_asymptotic"]
            print(f"  {km:>4} km  2^{frame.bit_length() - 1} bits: emulated {shown}  finite "
                  f"{row['finite_key_formula']:.3e} ({'-' if ratio is None else ratio} of "
                  f"asymptotic {asymptotic:.3e})  naive {row['naive']:.3e}  GLLP "
                  f"{row['gllp']:.1e} (best mu {best_gllp:.2e})")
    return rows


def pns_rows(distances: list[int], emulate_up_to_km: int) -> list[dict]:
    rows = []
    frame = 1 << 20
    for km in distances:
        params = LinkParams(fibre_km=km, frame_bits=frame)
        honest, attacked = expected_stats(params), expected_stats(params, pns=True)
        eve_share = pns_known_share(params)
        row = {"km": km, "frame_bits": frame, "attack": "photon-number splitting",
               "qber": attacked.errors[0] / max(1, attacked.revealed[0]),
               "naive": naive_rate(params, 1.05, attacked),
               "naive_without_eve": naive_rate(params, 1.05, honest),
               "gllp": gllp_rate(params, 1.05, attacked),
               "finite_key_formula": finite_key_rate(params, 1.05, attacked),
               "eve_known_share_of_signal_clicks": eve_share, "emulated_frame_bits": None,
               "emulated_keys": None, "emulated_reason": None}
        if km <= emulate_up_to_km:
            report = PairLink(LinkParams(fibre_km=km, frame_bits=1 << 17, pns=True,
                                         seed=km)).run_block().report
            row.update(emulated_frame_bits=1 << 17, emulated_keys=report.keys,
                       emulated_secret_bits=report.secret_bits,
                       emulated_eve_known_frame_bits=report.eve_known_frame_bits,
                       emulated_reason=report.reason)
        rows.append(row)
        emulated = ("" if row["emulated_frame_bits"] is None else
                    f"; emulated 2^17 block: {row['emulated_secret_bits']} secret bits"
                    f" ({row['emulated_reason'] or 'kept'})")
        print(f"  {km:>4} km  PNS: naive claims {row['naive']:.3e}/pulse (Eve holds "
              f"{eve_share:.0%} of the signal clicks), GLLP {row['gllp']:.1e}, finite-key "
              f"{row['finite_key_formula']:.1e}{emulated}")
    return rows


CURVES = [("emulated", "emulated link"), ("finite_key_formula", "finite-key formula"),
          ("asymptotic", "asymptotic decoy (LMC)"), ("naive", "naive (every click 1 photon)"),
          ("gllp_best_mu", "GLLP, no decoys (best mu)")]


def draw_figure(rows: list[dict], path: str) -> None:
    """Key rate versus distance, log scale, one curve per estimate (bench-only extra)."""
    try:
        import matplotlib
    except ImportError:
        print("figure skipped: matplotlib is not installed (pip install -e '.[bench]')")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for frame, style in zip(FINITE_FRAMES, [":", "--", "-"], strict=True):
        for key, label in CURVES:
            if key in ("asymptotic", "naive", "gllp_best_mu") and frame != FINITE_FRAMES[-1]:
                continue  # frame-independent curves once
            points = [(r["km"], r[key]) for r in rows
                      if r["frame_bits"] == frame and r[key] and r[key] > 0]
            if not points:
                continue
            per_frame = key in ("emulated", "finite_key_formula")
            suffix = f" 2^{frame.bit_length() - 1}" if per_frame else ""
            km, rate = [p[0] for p in points], [p[1] for p in points]
            ax.plot(km, rate, style if per_frame else "-", marker="o", markersize=3,
                    label=label + suffix)
    ax.set_yscale("log")
    ax.set_xlabel("fibre length (km, 0.2 dB/km)")
    ax.set_ylabel("secret key per pulse slot")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"figure written to {path}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer, smaller blocks")
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument("--figure", help="draw key rate vs distance to this PNG (matplotlib)")
    args = parser.parse_args()
    frame = 1 << 20
    rate_blocks, speed_blocks, eve_blocks = (2, 3, 3) if args.quick else (4, 5, 6)
    print(f"key rate vs distance (frame {frame} bits, {LONG_LINK_FRAME} from {LONG_LINK_KM} km; "
          f"{rate_blocks} blocks per distance, "
          f"eps_sec {eps_sec(LinkParams()):.1e}):")
    rates = key_rate(frame, rate_blocks)
    print(f"finite-key rows ({rate_blocks} emulated blocks of 2^17 bits per distance; 2^20 and "
          f"2^22 emulated values come from the rows above; formulas on expected counts):")
    finite_rows = finite_key_rows(rates, rate_blocks)
    print("photon-number-splitting attack (formulas on a 2^20 frame; emulated 2^17 blocks up "
          f"to {25 if args.quick else 50} km):")
    pns = pns_rows(PNS_DISTANCES, 25 if args.quick else 50)
    if args.figure:
        draw_figure(finite_rows, args.figure)
    print("Cascade:")
    cascade_rows = cascade(frame)
    print("Eve:")
    qber = eve_qber(eve_blocks)
    print("post-processing throughput (pair mode; one lane, then two lanes at once):")
    speed = postprocess_rate(frame, speed_blocks)
    whole = postprocess_whole(frame, speed_blocks + 2)
    speed["cascade_lockstep"] = cascade_lockstep_speed(frame, 4)
    write_json(args.json, {
        "key_rate": rates, "cascade": cascade_rows, "eve_full_intercept_qber": qber,
        "postprocess_sifted_bits_per_s": whole["two_lanes"]["sifted_bits_per_s"],
        "postprocess": speed, "postprocess_whole": whole, "quick": args.quick,
        "finite_key": finite_rows, "pns": pns,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())

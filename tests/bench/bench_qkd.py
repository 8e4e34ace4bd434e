"""QKD link emulator: key rate vs distance, Cascade efficiency, Eve, post-processing speed.

    python tests/bench/bench_qkd.py --quick --json OUT.json

- key_rate: secret bits per pulse slot from whole emulated blocks (pair mode: source, fibre,
  detectors, sifting, decoy estimation with finite-size bounds, Cascade, verification, Toeplitz)
  beside the Lo-Ma-Chen asymptotic decoy-state formula on the same LinkParams, using the Cascade
  efficiency f measured in the same blocks. The baseline is the formula.
- cascade: efficiency f = leaked / (n h(QBER)) for QBER 1..8 %, residual errors and channel uses
  (classical messages), beside the Shannon limit (f = 1.0) row.
- eve_full_intercept_qber: QBER with intercept-resend on every pulse (target 0.25 +- 0.03).
- postprocess_sifted_bits_per_s: sifted bits per second through sifting + estimation + Cascade
  + verification + privacy amplification (pair mode, both ends in this process, physics emulation
  excluded), beside a same-run baseline: sorting the same number of int64 values with numpy
  (timed after every block; medians and their ratio), with CPU seconds per stage.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np

from keysource.qkd import protocol
from keysource.qkd.cascade import permutations, reconcile
from keysource.qkd.estimation import binary_entropy, eps_sec, lmc_asymptotic_rate
from keysource.qkd.pair import PairLink
from keysource.qkd.params import LinkParams
from tests.bench._common import write_json

DISTANCES = [10, 25, 50, 100, 150, 200]
CASCADE_QBERS = [0.01, 0.02, 0.03, 0.05, 0.08]


# Finite-size effects: the decoy bounds widen every count by u sqrt(count) (u = 6.36 for
# eps_pe = 1e-10). At 150 km few decoy errors and vacuum clicks are seen per block, so the
# single-photon error bound e1_U is loose unless the block is large: 4 Mbit frames there.
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

    Used to exclude the physics emulation and to show where post-processing time goes."""

    def __init__(self, targets: dict[str, tuple[object, str]]) -> None:
        self.targets = targets
        self.wall = dict.fromkeys(targets, 0.0)
        self.cpu = dict.fromkeys(targets, 0.0)
        self._saved: dict[str, object] = {}

    def __enter__(self) -> StageTimer:
        for name, (owner, attr) in self.targets.items():
            fn = getattr(owner, attr)
            self._saved[name] = fn

            def wrapper(*args, _fn=fn, _name=name, **kwargs):  # type: ignore[no-untyped-def]
                wall, cpu = time.perf_counter(), time.process_time()
                try:
                    return _fn(*args, **kwargs)
                finally:
                    self.wall[_name] += time.perf_counter() - wall
                    self.cpu[_name] += time.process_time() - cpu
            setattr(owner, attr, wrapper)
        return self

    def __exit__(self, *exc: object) -> None:
        for name, (owner, attr) in self.targets.items():
            setattr(owner, attr, self._saved[name])


def _postprocess_stages() -> dict[str, tuple[object, str]]:
    """Physics (excluded) and the main post-processing stages (reported)."""
    from keysource.qkd import cascade as cascade_module
    from keysource.qkd import verification
    return {
        "physics_emit": (protocol, "emit_block"), "physics_detect": (protocol, "detect"),
        "cascade_alice": (cascade_module.CascadeAlice, "answer"),
        "cascade_bob": (cascade_module.CascadeBob, "_advance"),
        "toeplitz": (protocol.amplification, "toeplitz_hash"),
        "verify_hash": (verification, "key_hash"),
    }


def postprocess_rate(frame_bits: int, blocks: int) -> dict:
    """Sifted bits per second of post-processing, beside a same-run numpy sort baseline.

    The baseline (sorting as many int64 values as a block has sifted bits) is timed right after
    every block, so both see the same load on a shared machine; the ratio is per block, and
    every figure is a median over the blocks. CPU-time figures are printed too (steadier when
    other processes compete for the cores)."""
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
        physics = timer.wall["physics_emit"] + timer.wall["physics_detect"]
        physics_cpu = timer.cpu["physics_emit"] + timer.cpu["physics_detect"]
        rates.append(report.sifted_bits / (total - physics))
        cpu_rates.append(report.sifted_bits / (cpu_total - physics_cpu))
        rounds.append(report.cascade_rounds)
        sifted_total += report.sifted_bits
        if values.size != report.sifted_bits:
            values = np.random.default_rng(0).integers(0, 1 << 62, report.sifted_bits)
        sort_times = []
        for _ in range(3):
            start = time.perf_counter()
            np.sort(values)
            sort_times.append(time.perf_counter() - start)
        baselines.append(values.size / statistics.median(sort_times))
        ratios.append(rates[-1] / baselines[-1])
        other = cpu_total - physics_cpu - sum(
            v for k, v in timer.cpu.items() if not k.startswith("physics"))
        for name, seconds in [*timer.cpu.items(), ("other", other)]:
            if not name.startswith("physics"):
                stages.setdefault(name, []).append(seconds)
    rate, baseline, ratio = (statistics.median(x) for x in (rates, baselines, ratios))
    cpu_rate = statistics.median(cpu_rates)
    per_block = {name: round(statistics.median(v), 4) for name, v in stages.items()}
    print(f"  post-processing: {rate:,.0f} sifted bits/s (target >= 5,000,000); baseline numpy "
          f"sort of as many int64: {baseline:,.0f}/s; ratio {ratio:.4f} (medians of {blocks} "
          f"blocks); CPU time: {cpu_rate:,.0f} sifted bits per CPU second")
    print(f"  CPU seconds per block of {sifted_total // blocks:,} sifted bits: " + ", ".join(
        f"{name} {seconds:.3f}" for name, seconds in per_block.items())
        + f"; Cascade round trips {statistics.median(rounds):.0f}")
    return {"sifted_bits_per_s": rate, "frame_bits": frame_bits, "blocks": blocks,
            "baseline_numpy_sort_per_s": baseline, "ratio_to_baseline": ratio,
            "sifted_bits_per_cpu_s": cpu_rate, "cpu_seconds_per_block": per_block,
            "cascade_rounds": statistics.median(rounds),
            "sifted_bits_per_block": sifted_total // blocks}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer, smaller blocks")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    frame = 1 << 20
    rate_blocks, speed_blocks, eve_blocks = (2, 3, 3) if args.quick else (4, 5, 6)
    print(f"key rate vs distance (frame {frame} bits, {LONG_LINK_FRAME} from {LONG_LINK_KM} km; "
          f"{rate_blocks} blocks per distance, "
          f"eps_sec {eps_sec(LinkParams()):.1e}):")
    rates = key_rate(frame, rate_blocks)
    print("Cascade:")
    cascade_rows = cascade(frame)
    print("Eve:")
    qber = eve_qber(eve_blocks)
    print("post-processing throughput (pair mode):")
    speed = postprocess_rate(frame, speed_blocks)
    write_json(args.json, {
        "key_rate": rates, "cascade": cascade_rows, "eve_full_intercept_qber": qber,
        "postprocess_sifted_bits_per_s": speed["sifted_bits_per_s"],
        "postprocess": speed, "quick": args.quick,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())

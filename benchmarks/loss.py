"""Forward + backward time and peak memory of the Barlow Twins loss at N=256 across projector widths D.

Ours (``formulation="auto"``, which is the batch-space ``gram`` form for D > 2N) against the plain D x D
formulation of the paper's Algorithm 1, written as the official code does it (BatchNorm without affine
on each z, ``c = z_a.T @ z_b / N``, in-place diagonal and off-diagonal sums). Times are medians of
interleaved repeats in this process; peak memory is measured in a fresh subprocess per case as the
growth of its peak resident set size (``ru_maxrss``) over the loss call. D x D cases whose predicted peak
exceeds ``--memory-budget-gb`` are reported as out of reach instead of run.

    nice -n 10 python benchmarks/loss.py                 # the README table (~10 minutes on 2 cores)
    python benchmarks/loss.py --dims 2048 8192 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from barlowtwins.config import LossConfig
from barlowtwins.losses.barlow_twins import barlow_twins_loss, choose_formulation

GB = 1024**3


def algorithm_1(z_a: torch.Tensor, z_b: torch.Tensor, lambd: float = LossConfig.lambd) -> torch.Tensor:
    """Paper Algorithm 1 / the official ``BarlowTwins.forward`` loss: forms the D x D matrix C."""
    c = F.batch_norm(z_a, None, None, training=True).T @ F.batch_norm(z_b, None, None, training=True)
    c = c / z_a.shape[0]
    on_diag = torch.diagonal(c).add(-1).pow_(2).sum()
    d = c.shape[0]
    off_diag = c.flatten()[:-1].view(d - 1, d + 1)[:, 1:].flatten().pow_(2).sum()  # official off_diagonal()
    return on_diag + lambd * off_diag


def ours(z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
    return barlow_twins_loss(z_a, z_b, formulation="auto")


IMPLEMENTATIONS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "ours": ours,
    "dxd": algorithm_1,
}


def _inputs(n: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    z_a = torch.randn(n, d, generator=g).requires_grad_()
    z_b = (z_a.detach() + torch.randn(n, d, generator=g)).requires_grad_()
    return z_a, z_b


def _step(fn, z_a: torch.Tensor, z_b: torch.Tensor) -> float:
    z_a.grad = z_b.grad = None
    loss = fn(z_a, z_b)
    loss.backward()
    return loss.item()


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def measure_memory_here(name: str, n: int, d: int) -> int:
    """Growth of this process's peak RSS over one forward + backward (run in a fresh process).

    Importing torch leaves a high-water mark above what the loss of small widths adds, so the mark is
    reset first (Linux ``clear_refs``); without that, the growth of ``ru_maxrss`` is an underestimate.
    """
    z_a, z_b = _inputs(n, d)
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # reset the peak RSS to the current RSS
        baseline = _status_kib("VmRSS")
        _step(IMPLEMENTATIONS[name], z_a, z_b)
        return (_status_kib("VmHWM") - baseline) * 1024
    except OSError:
        baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        _step(IMPLEMENTATIONS[name], z_a, z_b)
        return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline) * 1024


def measure_memory(name: str, n: int, d: int, threads: int) -> int:
    command = [sys.executable, __file__, "--memory-of", name, "--batch", str(n), "--dims", str(d)]
    command += ["--threads", str(threads)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_bytes"]


def time_interleaved(names: list[str], n: int, d: int, repeats: int) -> tuple[dict[str, float], dict[str, float]]:
    """Median seconds per forward + backward of each implementation, alternating them; and their loss values."""
    z_a, z_b = _inputs(n, d)
    values = {name: _step(IMPLEMENTATIONS[name], z_a, z_b) for name in names}  # warm-up
    times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(repeats):
        for name in names:
            start = time.perf_counter()
            _step(IMPLEMENTATIONS[name], z_a, z_b)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}, values


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def _fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    return f"{seconds * 1e3:,.0f} ms" if seconds >= 0.1 else f"{seconds * 1e3:.1f} ms"


def _fmt_mem(nbytes: float) -> str:
    return f"{nbytes / GB:.2f} GB" if nbytes >= 0.1 * GB else f"{nbytes / 1024**2:.0f} MB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--dims", type=int, nargs="+", default=[2048, 8192, 16384, 32768, 65536])
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per case (median reported)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: stable timings on a shared 2-core machine)"
    )
    parser.add_argument(
        "--memory-budget-gb",
        type=float,
        default=12.0,
        help="D x D cases predicted to need more are reported, not run (the machine is shared)",
    )
    parser.add_argument("--memory-of", choices=list(IMPLEMENTATIONS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    n = args.batch
    torch.set_num_threads(args.threads)

    if args.memory_of:  # child process: one memory measurement
        print(json.dumps({"peak_bytes": measure_memory_here(args.memory_of, n, args.dims[0])}))
        return

    print(
        f"# Barlow Twins loss, forward + backward, N={n}, fp32; {platform.machine()} "
        f"{_cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; median of {args.repeats} interleaved repeats",
        file=sys.stderr,
    )
    bytes_per_entry: float | None = None  # D x D peak per D^2 entry, learnt from the widest run so far
    rows = []
    for d in sorted(args.dims):
        run_dxd = True
        predicted = None
        if bytes_per_entry is not None:
            predicted = bytes_per_entry * d * d
            run_dxd = predicted <= args.memory_budget_gb * GB
        names = ["ours", "dxd"] if run_dxd else ["ours"]
        memory = {name: measure_memory(name, n, d, args.threads) for name in names}
        times, values = time_interleaved(names, n, d, args.repeats)
        if run_dxd:  # the widest run so far: fixed overheads matter least there
            bytes_per_entry = memory["dxd"] / (d * d)
        row = {
            "D": d,
            "formulation": choose_formulation(n, d),
            "ours_s": times["ours"],
            "ours_bytes": memory["ours"],
            "dxd_s": times.get("dxd"),
            "dxd_bytes": memory.get("dxd"),
            "dxd_predicted_bytes": predicted,
            "relative_difference": abs(values["ours"] - values["dxd"]) / abs(values["dxd"]) if run_dxd else None,
        }
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)

    machine = f"{_cpu_name()}, {os.cpu_count()} cores, no GPU"
    print(f"Machine: {machine}; torch {torch.__version__}, {args.threads} thread(s), N={n}, fp32.")
    print(f"| D | D×D (Algorithm 1) time | ours ({rows[0]['formulation']}/auto) time | speed-up | "
          "D×D peak memory | ours peak memory | memory ratio | loss rel. diff. |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if r["dxd_s"] is None:
            need = f"out of reach (needs ~{r['dxd_predicted_bytes'] / GB:.0f} GB)"
            ours_cells = f"{_fmt_time(r['ours_s'])} | — | {need} | {_fmt_mem(r['ours_bytes'])}"
            print(f"| {r['D']:,} | {need} | {ours_cells} | — | — |")
            continue
        print(
            f"| {r['D']:,} | {_fmt_time(r['dxd_s'])} | {_fmt_time(r['ours_s'])} | {r['dxd_s'] / r['ours_s']:.1f}× | "
            f"{_fmt_mem(r['dxd_bytes'])} | {_fmt_mem(r['ours_bytes'])} | "
            f"{r['dxd_bytes'] / max(r['ours_bytes'], 1):.0f}× | {r['relative_difference']:.1e} |"
        )


if __name__ == "__main__":
    main()

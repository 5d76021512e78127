"""``bib-ray bench engine``: the batched engine against the authors' one-design-at-a-time loop.

Same task, LM, variant and steps. The batch optimises all M designs per LM call; the loop runs the
same engine with M = 1, design after design, as the authors' code does. The loop's rate is per
design and does not depend on which design, so a sample of ``--loop-designs`` designs times it.
Prints design-steps per second of each, peak memory, and last ``speedup_vs_loop=<ratio>``.
"""

from __future__ import annotations

import resource
import statistics
import time

import torch

from bib_ray.runner import build_engine
from bib_ray.spec import RunSpec
from bib_ray.workbench import get_workbench


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _time_engine(spec: RunSpec, bench, steps: int, start_slice: slice | None = None) -> float:
    engine, _ = build_engine(spec, bench)
    if start_slice is not None:
        from bib_ray.core.engine import BIBEngine

        engine = BIBEngine(engine.embed, engine.fit, engine.auxiliary, spec.engine,
                           engine.start[start_slice], engine.z.shape[-1], engine.device)
    t0 = time.perf_counter()
    for _ in engine.run(steps):
        pass
    if engine.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main(task: str = "tfbind8", variant: str = "learned", designs: int = 128, steps: int | None = None,
         loop_designs: int = 8, repeats: int = 3, device: str = "auto") -> int:
    """Run the benchmark and print its figures (``device``: cpu, cuda, cuda:N or auto)."""
    spec = RunSpec().with_updates({"task.name": task, "engine.variant": variant, "engine.designs": designs,
                                   "device": device})
    bench = get_workbench(spec)
    steps = steps or 20
    device = bench.proxy.device
    print(f"task={bench.task.name} lm={bench.proxy.name} variant={variant} M={designs} steps={steps} "
          f"device={device} threads={torch.get_num_threads()}")
    _time_engine(spec.with_updates({"engine.designs": 2}), bench, 2)  # warm-up
    rss0 = _peak_rss_mib()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    loop_n = min(loop_designs, designs)
    batched_times, loop_times = [], []
    for _ in range(repeats):  # interleaved, so a busy spell on the machine hits both alike
        batched_times.append(_time_engine(spec, bench, steps))
        loop_times.append(sum(_time_engine(spec, bench, steps, slice(i, i + 1)) for i in range(loop_n)))
    batched_s, loop_s = statistics.median(batched_times), statistics.median(loop_times)
    batched_rate = designs * steps / batched_s
    loop_rate = loop_n * steps / loop_s
    rss_batched = _peak_rss_mib()
    cuda_peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    print(f"median of {repeats} interleaved repeats; speedup per repeat: "
          + ", ".join(f"{(designs / b) / (loop_n / lo):.1f}" for b, lo in zip(batched_times, loop_times)))
    print(f"batched: {batched_rate:10.1f} design-steps/s  ({batched_s:.2f} s for {designs} designs x {steps} steps)")
    print(f"loop:    {loop_rate:10.1f} design-steps/s  ({loop_s:.2f} s for {loop_n} designs x {steps} steps, "
          f"extrapolated {designs * steps / loop_rate:.1f} s for {designs})")
    print(f"peak_rss_mib={rss_batched:.0f} (before the batched run {rss0:.0f})")
    if cuda_peak is not None:
        print(f"peak_cuda_mib={cuda_peak:.0f}")
    print(f"speedup_vs_loop={batched_rate / loop_rate:.2f}")
    return 0

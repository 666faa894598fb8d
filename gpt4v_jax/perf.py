"""Throughput accounting: the hardware's peak FLOP/s, for MFU in the logs.

A step's FLOPs are model FLOPs, counted by formula from the model's shapes (each module's
`forward_flops`, each objective's `train_flops_per_example`): 2 per multiply-add of every
matmul and convolution, causal attention over half its query-key pairs, x3 for forward and
backward of what is trained and x1 for what is frozen; norms, activations, softmax and the
optimizer are left out. MaxText and PaLM count the same way. `compiled_flops` (XLA's cost
analysis of a compiled program) is the independent check the tests hold the count to.
"""
import time

import jax
import jax.numpy as jnp

# Dense bf16 peak FLOP/s per device, from the vendors' spec sheets.
PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,  # v5e
    "TPU v5": 459e12,  # v5p
    "TPU v6 lite": 918e12,  # v6e
    "NVIDIA A100-SXM4-40GB": 312e12,
    "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA H100 80GB HBM3": 989e12,
    "NVIDIA H200": 989e12,
}


def measured_matmul_flops(n: int = 2048, reps: int = 5) -> float:
  """FLOP/s of a jitted f32 [n, n] @ [n, n] on the first device: the CPU's practical peak,
  from the fastest of `reps` timed calls (the rate the hardware reaches, as timeit takes the
  minimum; a slower call measures interference, which would inflate MFU)."""
  x = jnp.ones((n, n), jnp.float32)
  f = jax.jit(lambda a: a @ a)
  f(x).block_until_ready()
  best = float("inf")
  for _ in range(reps):
    t0 = time.perf_counter()
    f(x).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return 2 * n**3 / best


def peak_flops_per_device() -> tuple[float, str]:
  """(peak FLOP/s, where the number comes from) for this process's devices."""
  kind = jax.devices()[0].device_kind
  if kind in PEAK_FLOPS:
    return PEAK_FLOPS[kind], f"spec sheet ({kind})"
  if jax.devices()[0].platform == "cpu":
    # --xla_force_host_platform_device_count splits one CPU into devices that share its cores.
    n = jax.local_device_count()
    return (measured_matmul_flops() / n,
            "measured f32 matmul rate" + (f" / {n} devices sharing the CPU" if n > 1 else ""))
  raise ValueError(f"No peak FLOP/s known for device kind {kind!r}; add it to perf.PEAK_FLOPS.")


def compiled_flops(compiled) -> float:
  """FLOPs per call of a compiled jitted function, from XLA's cost analysis (all devices)."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost.get("flops", 0.0)) if cost else 0.0

import jax
import jax.numpy as jnp
import pytest

from gpt4v_jax import perf


def test_compiled_flops_counts_a_matmul():
  a, b = jnp.ones((64, 128)), jnp.ones((128, 32))
  compiled = jax.jit(lambda x, y: x @ y).lower(a, b).compile()
  assert perf.compiled_flops(compiled) == pytest.approx(2 * 64 * 128 * 32, rel=0.01)


def test_cpu_peak_is_measured():
  peak, source = perf.peak_flops_per_device()
  assert "measured" in source and 1e8 < peak < 1e14

"""A layer's matmul as one 2D dot: the same products, a cheaper backward pass.

A dense layer contracts the features of activations [batch, tokens, ...] with a kernel. As
one dot_general over the 3D/4D arrays, its weight gradient contracts two axes (batch and
tokens), and XLA:CPU first writes the incoming gradient out transposed to lay that dot out:
for the mid benchmark model's MLP ([2048 tokens, 512] -> 2048 -> 512) one such copy of the
[2048, 2048] hidden gradient took 50-99 ms per layer (experiments/benchmarks/op_profile.py),
and the MLP's forward + backward, timed alone, 240 ms against 167 ms with 2D matmuls. So the
leading axes are merged into one rows axis and the kernel's into [K, N] first: row-major
reshapes, free; the products are the same up to the dots' summation order (a train step's
params differ by ~1e-7 relative). Shardings pass through: the merged axes keep their major
(sharded) axis first, and callers constrain the outputs.
"""
import math

import jax


def contract(x: jax.Array, w: jax.Array, num_axes: int = 1, *, transpose_w: bool = False,
             preferred_element_type=None) -> jax.Array:
  """Contracts the last `num_axes` axes of x with w, as a [rows, K] x [K, N] matmul.

  Args:
    x: [..., *k] activations, e.g. [batch, tokens, embed] or [batch, tokens, heads, head_dim].
    w: [*k, *n] kernel, or [*n, *k] with transpose_w (a tied embedding [vocab, embed]).
    num_axes: how many axes are contracted (k's length).
    transpose_w: whether w's contracted axes are its last rather than its first.
    preferred_element_type: the dot's output dtype (e.g. float32 logits from bf16 inputs).

  Returns:
    [..., *n]: einsum("...k,kn->...n", x, w) (or "...k,nk->...n").
  """
  lead, k = x.shape[:-num_axes], x.shape[x.ndim - num_axes:]
  n = w.shape[:-num_axes] if transpose_w else w.shape[num_axes:]
  w_k = w.shape[w.ndim - num_axes:] if transpose_w else w.shape[:num_axes]
  if w_k != k:
    raise ValueError(f"Contracted axes differ: x {x.shape}, w {w.shape}, num_axes={num_axes}, "
                     f"transpose_w={transpose_w}.")
  rows = x.reshape(math.prod(lead), math.prod(k))
  if transpose_w:
    y = jax.lax.dot_general(rows, w.reshape(math.prod(n), -1), (((1,), (1,)), ((), ())),
                            preferred_element_type=preferred_element_type)
  else:
    y = jax.lax.dot_general(rows, w.reshape(-1, math.prod(n)), (((1,), (0,)), ((), ())),
                            preferred_element_type=preferred_element_type)
  return y.reshape(*lead, *n)


def dense_dot_general(lhs, rhs, dimension_numbers, precision=None,
                      preferred_element_type=None):
  """`lax.dot_general` for `nn.Dense(dot_general=...)`: its (inputs [..., features],
  kernel [features, out]) dot through `contract`; any other dot as lax.dot_general."""
  (lhs_contract, rhs_contract), batch = dimension_numbers
  if (precision is None and batch == ((), ()) and tuple(rhs_contract) == (0,)
      and tuple(lhs_contract) == (lhs.ndim - 1,) and lhs.ndim > 2):
    return contract(lhs, rhs, 1, preferred_element_type=preferred_element_type)
  return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                             preferred_element_type=preferred_element_type)

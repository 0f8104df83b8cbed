"""Devices for data parallelism: how many, and how to give each one its copy of the params and its slice.

`jax.pmap(f)` runs `f` on every local device at once, each on one row of a leading *device* axis, so:

- `replicate(params)`: every leaf stacked n times, `(n, ...)`, row k placed on device k;
- `shard(batch)`: `(B, ...)` reshaped to `(n, B / n, ...)`; device k gets images k B/n .. (k+1) B/n - 1;
- `pad_batch(x, padded_size(B, n))`: `shard` needs B divisible by n, so append zero images first (their
  scores are computed and then dropped).

These replace `flax.jax_utils.replicate` and `flax.training.common_utils.shard`: flax < 0.12.7 calls
`jax.device_put_replicated`, which jax 0.10 removed, so Colab's flax 0.11.2 cannot run them beside a newer jax.
A few lines of public jax (`Mesh`, `NamedSharding`, `device_put`) work on jax 0.7 through 0.10.

On a CPU, `set_host_device_count(n)` splits the processor into n devices so pmap runs for real on a laptop.
Nothing here imports jax at module import: the count must be set before jax starts.
"""

from __future__ import annotations

import math
import os

import numpy as np

# JAX grabs 75% of a GPU's memory when it starts; torch (the pipeline, the torch twin) needs it too.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

_HOST_COUNT_FLAG = "--xla_force_host_platform_device_count"  # the pre-config spelling, kept as a fallback


def set_host_device_count(n: int) -> int:
    """Ask jax for `n` CPU devices (pmap on a laptop); call it before jax's first computation. Returns `n`.

    Uses `jax.config.update("jax_num_cpu_devices", n)`: checked on jax 0.7.2 (Colab's) and 0.10.2, and
    `JAX_NUM_CPU_DEVICES` is its environment-variable spelling since jax 0.5.1. A jax too old for the option
    gets the XLA flag it replaced, `XLA_FLAGS=--xla_force_host_platform_device_count=n`. On a GPU/TPU machine jax still computes on the accelerators; this only splits the CPU.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a whole number >= 1, got {n!r}.")
    import jax

    try:
        jax.config.update("jax_num_cpu_devices", n)
    except AttributeError:  # no such option (very old jax): the XLA flag, read when the CPU backend starts
        flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(_HOST_COUNT_FLAG)]
        os.environ["XLA_FLAGS"] = " ".join([*flags, f"{_HOST_COUNT_FLAG}={n}"])
    except RuntimeError:  # jax has started: the count is fixed now; fine only if it is already n
        have = len(jax.local_devices(backend="cpu"))
        if have != n:
            raise RuntimeError(
                f"jax has already started with {have} CPU device(s); the count is fixed then. "
                f"Restart the kernel (or Python) and call set_host_device_count({n}) before using jax."
            ) from None
    return n


def replicate(tree, devices=None):
    """Every leaf of `tree` as `(n, *shape)`, one identical row per device, placed row k on device k.

    Like `flax.jax_utils.replicate`, without `jax.device_put_replicated` (removed in jax 0.10): a broadcast
    view (no host copy) put onto a 1-D device mesh, split along its leading axis.
    """
    import jax
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    devices = list(devices or jax.local_devices())
    rows = NamedSharding(Mesh(np.array(devices), ("devices",)), P("devices"))  # row k -> device k

    def put(x):
        x = np.asarray(x)
        return jax.device_put(np.broadcast_to(x, (len(devices), *x.shape)), rows)  # (n, *shape)

    return jax.tree_util.tree_map(put, tree)


def shard(tree, n_devices: int | None = None):
    """Every leaf `(B, ...)` reshaped to `(n, B / n, ...)`, as `flax.training.common_utils.shard` does.

    B must divide by n (pad first): otherwise numpy's reshape raises, as it did in the blog.
    """
    import jax

    n = n_devices or jax.local_device_count()
    return jax.tree_util.tree_map(lambda x: x.reshape((n, -1) + x.shape[1:]), tree)  # (n, B / n, ...)


def padded_size(n: int, n_devices: int) -> int:
    """The smallest multiple of `n_devices` that holds `n` images (shard needs equal slices)."""
    return math.ceil(n / n_devices) * n_devices


def pad_batch(x: np.ndarray, size: int) -> np.ndarray:
    """Append zero images up to `size` rows; their scores are computed and then dropped."""
    if len(x) == size:
        return x
    return np.concatenate([x, np.zeros((size - len(x), *x.shape[1:]), x.dtype)])

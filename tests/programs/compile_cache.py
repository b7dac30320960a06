"""Points JAX's persistent compilation cache at CACHE_DIR (parallel.use_compile_cache) and
compiles one function; run by tests/test_cluster.py in a fresh interpreter, so that pytest's own
JAX never writes a cache:
    compile_cache.py CACHE_DIR
"""
import sys

import jax
import jax.numpy as jnp

from aime_jax import parallel

parallel.use_compile_cache(sys.argv[1])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
print(float(jax.jit(lambda x: jnp.sin(x) * 2)(jnp.ones(3)).sum()))

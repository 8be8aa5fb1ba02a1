"""Test-session settings: one persistent XLA compilation cache for every test and subprocess, and one
pretraining data cache (`DATA_CACHE`) for the runs that `test_pretrain.small_config`/`cli_args` set up.

The suite trains the same tiny models many times (in-process and through the CLI); compiling each
step function once per session instead of once per run, and training the embedded corpus's vocabulary
and tokenizing it once instead of in every new workdir, keeps CI fast. Results do not change: the
caches are keyed by the compiled program, and by the corpus and vocabulary.
"""

import os
import tempfile

import jax

_CACHE = os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="albert_jax_xla_cache_"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

# Tests that look into a data cache, or damage one, pass their own data.cache_dir.
DATA_CACHE = os.environ.setdefault(
    "ALBERT_JAX_TEST_DATA_CACHE", tempfile.mkdtemp(prefix="albert_jax_data_cache_")
)

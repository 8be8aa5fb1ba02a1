"""host_memory: an entry point is restarted with glibc's huge pages, and its step temporaries are then
not faulted in page by page every call."""

import json
import os
import subprocess
import sys

import pytest

from albert_jax import host_memory

# Each call allocates a 96 MB loop-carried temporary (as a scan's stacked activations) and frees it;
# the page faults of each of 10 calls after warm-up are counted with getrusage (the median is printed).
PROBE = r"""
import json, os, resource
{marker}
import albert_jax
import jax, jax.numpy as jnp
from jax import lax

@jax.jit
def f(x):
    ys = jnp.zeros((4,) + x.shape)
    ys = lax.fori_loop(0, 4, lambda i, ys: lax.dynamic_update_index_in_dim(ys, jnp.sin(x + i), i, 0), ys)
    return ys.sum()

x = jnp.ones((6_000_000,))
for _ in range(5):
    f(x).block_until_ready()
faults = []
for _ in range(10):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps(dict(tunables=os.environ.get("GLIBC_TUNABLES", ""), faults=sorted(faults)[5])))
"""
PAGES = 4 * 6_000_000 * 4 // os.sysconf("SC_PAGE_SIZE")


def _probe(tmp_path, marker: bool, **extra: str) -> dict:
    script = tmp_path / "probe.py"
    script.write_text(PROBE.format(marker=f"{host_memory.MARKER} = True" if marker else ""))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    env.pop("XLA_FLAGS", None)
    env.update(JAX_PLATFORMS="cpu", **extra)
    out = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=240, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_an_entry_point_is_restarted_with_huge_pages_and_stops_faulting(tmp_path, monkeypatch):
    monkeypatch.delenv(host_memory.ENV, raising=False)
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    for key in [k for k in os.environ if k.startswith("MALLOC_") or k == "GLIBC_TUNABLES"]:
        monkeypatch.delenv(key)
    monkeypatch.setattr(host_memory, "_backend_started", lambda: False)  # this process has computed
    if not host_memory.applies():
        pytest.skip(
            f"no glibc 2.35+ with transparent huge pages here (THP {host_memory.transparent_huge_pages()})"
        )
    restarted = _probe(tmp_path, marker=True)
    assert restarted["tunables"] == host_memory.TUNABLE
    assert restarted["faults"] < PAGES / 10, restarted
    plain = _probe(tmp_path, marker=False)  # a notebook or library user: nothing restarts
    assert plain["tunables"] == ""
    if host_memory.transparent_huge_pages() == "madvise":  # under `always`, every mmap is huge anyway
        assert plain["faults"] > PAGES / 2, plain  # a fresh mapping per call, faulted in 4 KiB at a time
    opted_out = _probe(tmp_path, marker=True, **{host_memory.ENV: "system"})
    assert opted_out["tunables"] == ""


@pytest.mark.parametrize(
    "platforms, cpu",
    [("cpu", True), ("cuda", False), ("tpu", False), ("cpu,cuda", True), ("cuda,cpu", False)],
)
def test_applies_only_where_jax_computes_on_the_cpu(monkeypatch, platforms, cpu):
    monkeypatch.setenv("JAX_PLATFORMS", platforms)
    assert host_memory._computes_on_cpu() is cpu


def test_not_applied_once_a_backend_runs():
    """In this process JAX has computed already: the settings would not reach XLA's threads."""
    import jax.numpy as jnp

    jnp.ones(2).block_until_ready()
    assert host_memory._backend_started()


@pytest.mark.parametrize(
    "env, user_set",
    [
        ({}, False),
        ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0:glibc.malloc.arena_max=2"}, True),
        ({"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F"}, False),
        ({"MALLOC_ARENA_MAX": "4"}, True),
    ],
)
def test_the_environments_own_malloc_settings_are_kept(monkeypatch, env, user_set):
    for key in [k for k in os.environ if k.startswith("MALLOC_") or k == "GLIBC_TUNABLES"]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert host_memory._user_set() is user_set


def test_a_script_run_in_process_does_not_restart_its_host(tmp_path):
    """`runpy.run_path("train.py", run_name="__main__")` (or IPython's `%run`) puts the entry point in
    `__main__`; a restart there would restart the process that ran it."""
    entry = tmp_path / "entry.py"
    entry.write_text(f"{host_memory.MARKER} = True\n")
    module = type(sys)("__main__")
    module.__file__, module.ALBERT_JAX_HUGE_PAGES = str(entry), True
    assert not host_memory._asks_for_restart(module)  # the probe test runs one as its own script

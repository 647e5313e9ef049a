"""Hypothesis strategies: parameters are drawn here, matrices come from seeded generators."""

from hypothesis import strategies as st

seeds = st.integers(min_value=0, max_value=2**32 - 1)
noise_scales = st.floats(min_value=0.05, max_value=20.0, allow_nan=False)
small_dims = st.integers(min_value=2, max_value=80)


def spike_sets(max_rank: int = 4, bound: float = 10.0):
    """Lists of spike eigenvalues, positive and negative, possibly sub-threshold."""
    spike = st.floats(min_value=-bound, max_value=bound, allow_nan=False, allow_subnormal=False)
    return st.lists(spike, min_size=1, max_size=max_rank)


populations = st.integers(min_value=2, max_value=10**6).flatmap(
    lambda N: st.tuples(st.just(N), st.integers(min_value=1, max_value=N))
)

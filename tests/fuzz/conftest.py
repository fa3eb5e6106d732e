"""Hypothesis profiles for the fuzz suite: bounded and reproducible in `make test`, long in the soak.

``fuzz-ci`` (default): ``derandomize=True`` (the examples are a fixed function of the test, so
CI is reproducible and a failure reruns identically), no example database, a few hundred
examples per target: the three fuzz files stay within ~90 s on 2 shared cores.
``fuzz-chaos``: 20x the examples, random seeds, selected when ``LMPIPE_CHAOS_TRIALS`` > 2
(`make chaos`) or ``LMPIPE_FUZZ_PROFILE=fuzz-chaos``. Hypothesis prints the failing example
and a ``@reproduce_failure`` blob either way.
"""

from hypothesis import HealthCheck, settings

_SLOW_OK = [
    HealthCheck.too_slow,
    HealthCheck.data_too_large,
    HealthCheck.filter_too_much,
    HealthCheck.large_base_example,
]

# The per-example hang limit is fuzzkit.call_with_timeout's, not hypothesis' deadline:
# timings on 2 shared cores vary too much for a deadline to be meaningful.
settings.register_profile(
    "fuzz-ci",
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=_SLOW_OK,
    max_examples=100,
)
settings.register_profile(
    "fuzz-chaos",
    derandomize=False,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=_SLOW_OK,
    max_examples=2000,
)

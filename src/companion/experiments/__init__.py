"""The committed experiments: what they are (:mod:`~companion.experiments.catalogue`, every name of which is handed on
here), ``companion reproduce`` (:mod:`~companion.experiments.reproduce`) and their results read back for the book
(:mod:`~companion.experiments.results`)."""

from companion.experiments import catalogue, reproduce, results  # noqa: F401
from companion.experiments.catalogue import *  # noqa: F401,F403
from companion.experiments.reproduce import (  # noqa: F401
    compare, cost_seconds, describe, init, main, other_experiments, progress_of, reproduce_other, run_one, save)
from companion.experiments.results import load_results  # noqa: F401

"""Everything in finetui that exists only for speed (see engine/perf/plan.py)."""

"""Pure checks: raw results and ``rmt`` theory in, tidy rows (``reports.schema``) out.

One module per source of rows, all deciding their verdicts with :mod:`validation.checks.verdict`.
Nothing here imports torch: a check works on numbers a run has already measured.
"""

"""One tidy results schema shared by synthetic, network and paper runs.

Every comparison of theory with measurement is one row:

``source``       the run it came from (``synthetic``, ``network``, ``paper``) and its folder name;
``check``        what is compared (e.g. ``theorem2``, ``weyl``, ``free-convolution``, ``sigma2``,
                 ``noise-edge``, ``noise-asymmetry``);
``quantity``     a human-readable name of the number (e.g. ``lambda_max batch B=32``);
``predicted``    the theory's value (NaN when the theory makes no prediction);
``measured``     the measured value;
``uncertainty``  one standard error of the measurement or of the comparison (NaN when none);
``regime``       the branch of the theory that applies (``outlier``, ``edge``, ``bulk``, ...; ``-``
                 when not meaningful);
``verdict``      one of :data:`VERDICTS` (a run may refine the wording after the first word, e.g.
                 ``disagrees (inside the edge)``).

The verdicts are decided when a run is checked (``validation.checks.verdict``, the one rule) and
stored with the rows in the run's ``summary.csv``; the report reads them and decides none.
"""

from __future__ import annotations

import pandas as pd

TIDY_COLUMNS = (
    "source",
    "check",
    "quantity",
    "predicted",
    "measured",
    "uncertainty",
    "regime",
    "verdict",
)
VERDICTS = ("agrees", "disagrees", "not applicable")


def tidy_frame(rows) -> pd.DataFrame:
    """Rows (dicts) as a frame with exactly :data:`TIDY_COLUMNS`, checked."""
    frame = pd.DataFrame(list(rows), columns=list(TIDY_COLUMNS))
    bad = sorted({str(v) for v in frame["verdict"] if verdict_word(v) not in VERDICTS})
    if bad:
        raise ValueError(f"unknown verdicts {sorted(set(bad))}; accepted: {', '.join(VERDICTS)}")
    for column in ("predicted", "measured", "uncertainty"):
        frame[column] = frame[column].astype(float)
    return frame


def verdict_word(verdict) -> str:
    """The schema's verdict of a row: one of :data:`VERDICTS` when the text is one of them or
    starts with one followed by a space (wording after it is allowed), else the text itself."""
    text = str(verdict)
    for v in VERDICTS:
        if text == v or text.startswith(v + " "):
            return v
    return text

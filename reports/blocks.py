"""The report's content as blocks (headings, paragraphs, tables, figures, notes, preformatted
text) and its fixed sections: built by :mod:`reports.report`, rendered by :mod:`reports.render`."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

TITLE = "Mini-batch Hessian spectra: random-matrix theory against measurement"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

SECTIONS = (
    ("summary", "1. Summary of verdicts"),
    ("paper", "2. The paper's table re-derived"),
    ("synthetic", "3. Synthetic checks"),
    ("network", "4. Network spectra"),
    ("batch-models", "5. Which model explains the batch spectrum"),
    ("sigma2-epochs", "6. sigma^2 over epochs"),
    ("stability", "7. The largest stable learning rate"),
    ("provenance", "8. Provenance"),
)

# ---------------------------------------------------------------------------------------------
# blocks


@dataclass(frozen=True)
class Heading:
    level: int  # 2 for a section, 3 and 4 below it
    text: str
    anchor: str | None = None


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Note:
    """Something missing or not applicable, set apart from the findings."""

    text: str


@dataclass(frozen=True)
class Table:
    frame: pd.DataFrame
    caption: str = ""
    verdict_column: str | None = None  # cells coloured by verdict in HTML


@dataclass(frozen=True)
class Image:
    name: str  # file name of the Markdown copy
    png: bytes
    caption: str


@dataclass(frozen=True)
class Preformatted:
    text: str


@dataclass(frozen=True)
class Report:
    """The rendered report and what goes beside the Markdown file."""

    html: str
    markdown: str
    summary: pd.DataFrame  # tidy rows of every run (reports.schema)
    figures: dict = field(repr=False)  # file name -> PNG bytes, referenced by ``markdown``

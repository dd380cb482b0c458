"""Label tables: one reader of CSV and TSV files for the CSV format and the CheXpert/NIH label files."""

from __future__ import annotations

import csv
from pathlib import Path

from ..runtime.errors import DataFormatError


def read_label_table(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a label table (tab-separated when the name ends in ``.tsv``; a UTF-8 BOM is
    ignored; names and values stripped; fields beyond the header dropped). An unreadable file, an
    empty one, or one with a header and no rows is a :class:`DataFormatError`."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            dialect = "excel-tab" if path.suffix.lower() == ".tsv" else "excel"
            reader = csv.DictReader(f, dialect=dialect)
            header = [h.strip() for h in (reader.fieldnames or [])]
            rows = [{k.strip(): (v or "").strip() for k, v in r.items() if k} for r in reader]
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataFormatError(f"{path} is not a readable UTF-8 CSV file ({type(e).__name__}: {e})") from None
    if not header:
        raise DataFormatError(f"{path} is empty (no header, no rows)")
    if not rows:
        raise DataFormatError(f"{path} holds a header and no rows")
    return header, rows

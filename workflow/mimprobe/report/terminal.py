"""The end of every `snakemake` run: the headline table and where the report files are.

Standard library and mimprobe.layout only: the Snakefile imports it before any job runs. Nothing here may raise, so a
finished run never fails for want of a table to print.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from ..layout import REPORT_DIR

NOTHING_TO_DO = "Nothing to be done"  # Snakemake's message when every output is up to date


def headline_message(report_dir: str | Path = REPORT_DIR) -> str:
    report_dir = Path(report_dir)
    headline = report_dir / "headline.txt"
    try:
        table = headline.read_text(encoding="utf-8").rstrip()
    except (OSError, UnicodeError) as err:
        return f"mimprobe: no headline table to show ({headline}: {getattr(err, 'strerror', None) or err})."
    return "\n".join([
        f"mimprobe headline ({headline}):", "", table, "",
        f"Tables: {report_dir}/headline.html, per_block.html, metrics.md, metrics.csv; figures: {report_dir}/plots/",
        (f"All in one page: snakemake --configfile <your config> --report {report_dir}/report.html "
         "(make report-html for the demo)"),
    ])


def print_headline(report_dir: str | Path = REPORT_DIR) -> None:
    try:
        print("\n" + headline_message(report_dir), flush=True)
    except Exception as err:  # printing is a courtesy: never fail a finished run over it
        print(f"mimprobe: could not print the headline table: {err}")


class _OnNothingToDo(logging.Handler):
    def __init__(self, logger: logging.Logger, dry_run: Callable[[], bool], report_dir):
        super().__init__(logging.INFO)
        self.logger, self.dry_run, self.report_dir = logger, dry_run, report_dir

    def emit(self, record):
        try:
            if str(record.msg).startswith(NOTHING_TO_DO):
                self.logger.removeHandler(self)
                if not self.dry_run():
                    print_headline(self.report_dir)
        except Exception:  # a logging handler must never raise into Snakemake
            pass


def print_headline_when_nothing_to_do(logger: logging.Logger, dry_run: Callable[[], bool],
                                      report_dir: str | Path = REPORT_DIR) -> None:
    """Snakemake calls `onsuccess` only after jobs ran; when nothing needs to run it logs
    NOTHING_TO_DO and stops, so print the headline on that message too (not in a dry run, which
    logs the same message; `dry_run` is asked then, as Snakemake knows it only once it runs)."""
    logger.addHandler(_OnNothingToDo(logger, dry_run, report_dir))

"""Downloads of a page's view: its table as CSV (formula-safe) and the whole view as one offline HTML report
(`rnnlib.viz.report`), built only when the button is pressed."""

import pandas as pd

from ui import safe

REPORT_HELP = ("One HTML file with these charts (interactive), tables, settings and where the numbers come from. "
               "It needs no network and no login: mail it, or put it on any static host.")


def csv(column, table: pd.DataFrame, file_name: str) -> None:
    column.download_button("Download as CSV", safe.csv_safe(table).to_csv(index=False), file_name=file_name,
                           mime="text/csv", on_click="ignore", icon=":material/table:")


def _file_name(page: str, experiment: str) -> str:
    stem = "".join(c if c.isalnum() or c in "-_" else "-" for c in experiment)[:60] or "experiment"
    return f"{page}-{stem}.html"


def compare(column, experiment: str, runs: pd.DataFrame, histories: pd.DataFrame, settings, selection) -> None:
    """Compare's "Export this view"."""
    def build() -> str:
        from rnnlib import tracking
        from rnnlib.viz import report

        return report.compare_report(experiment, runs, histories, settings, selection, tracking.git_commit())

    column.download_button("Export this view (HTML)", build, file_name=_file_name("compare", experiment),
                           mime="text/html", on_click="ignore", icon=":material/download:", help=REPORT_HELP)


def gradients(column, experiment: str, runs: pd.DataFrame, flows, histories: pd.DataFrame, settings) -> None:
    """Gradient flow's "Export this view"."""
    def build() -> str:
        from rnnlib import tracking
        from rnnlib.viz import report

        return report.gradient_report(experiment, runs, flows, histories, settings, tracking.git_commit())

    column.download_button("Export this view (HTML)", build, file_name=_file_name("gradients", experiment),
                           mime="text/html", on_click="ignore", icon=":material/download:", help=REPORT_HELP)

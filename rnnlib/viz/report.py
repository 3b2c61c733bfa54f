"""Static reports: a page's view (`rnnlib.viz.views`) as one self-contained HTML file that opens offline.

The file holds the charts (interactive plotly, plotly.js embedded once), the tables, the view's settings with
the dashboard link that reopens it, and provenance (run ids, the git commits the runs were trained at, rnnlib's
version). It fetches nothing: a Content-Security-Policy forbids every network request, so it can be mailed or put
on any static host. Every text from the store (run, experiment and param names) is escaped, in HTML and in the
charts (`rnnlib.viz.plots.plain`).
"""

import dataclasses
import datetime
import html
import json
from collections.abc import Mapping, Sequence
from urllib.parse import urlencode

import numpy as np
import pandas as pd
import plotly
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

import rnnlib
from rnnlib.viz import views

# No fetch, no frame, no form: only the inline script and styles of this file, images as data. `unsafe-eval`:
# plotly's WebGL charts (parallel coordinates) compile their shaders' glue code with `new Function`.
POLICY = ("default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; style-src 'unsafe-inline'; "
          "img-src data: blob:; font-src data:; connect-src 'none'; form-action 'none'; base-uri 'none'")
STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto; max-width: 1200px;
       padding: 0 1rem; color: #262730; line-height: 1.45; }
h1 { margin-bottom: .2rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #e6e6e6; padding-bottom: .2rem; }
.meta, .caption { color: #666; font-size: .92rem; } .notice { background: #fff4e5; padding: .6rem .9rem; }
table { border-collapse: collapse; font-size: .88rem; margin: .6rem 0; }
th, td { border: 1px solid #e1e1e1; padding: .25rem .55rem; text-align: left; vertical-align: top; }
th { background: #f6f6f8; } td.number { text-align: right; font-variant-numeric: tabular-nums; }
code { background: #f3f3f5; padding: .1rem .3rem; word-break: break-all; } details { margin: .6rem 0; }
"""
CHART_CONFIG = {"displaylogo": False, "responsive": True}


@dataclasses.dataclass(frozen=True)
class Section:
    """One heading of a report with a chart, a table (shown whole, or folded under `fold` when given), a notice
    and/or a caption."""

    title: str
    figure: go.Figure | None = None
    table: pd.DataFrame | None = None
    caption: str = ""
    notice: str | None = None
    fold: str = ""


def compare_sections(view: views.CompareView, settings: views.CompareSettings) -> list[Section]:
    """The Compare page's sections, in its order."""
    return [
        Section("Learning curves", view.curves, notice=view.notice,
                caption=f"Mean of each group over its runs; band: {settings.band and _band(settings.band)}."),
        Section(f"Summary: {settings.metric} ({settings.statistic_name})",
                table=view.groups.rename(columns=views.group_columns(settings)),
                caption="One row per group, best first. A diverged run has no statistic and is counted apart."),
        Section("Per run", table=view.per_run, fold=f"Per run ({len(view.per_run)})"),
        Section("Verdicts", table=view.verdicts.rename(columns=views.VERDICT_COLUMNS),
                caption=f"Each pair of groups, better first: the difference of means with a "
                        f"{_interval(settings.interval)}, Hedges' g, Welch's p corrected for the pairs shown (Holm)."),
        Section("Metric vs hyperparameter", view.vs_param),
        Section("Params that differ", table=view.differences),
        Section("Parallel coordinates", view.parallel),
    ]


def gradient_sections(view: views.GradientView) -> list[Section]:
    """The Gradient flow page's sections, in its order."""
    return [
        Section(f"{view.label} vs lag", view.lag),
        Section("Where the gradient vanishes", table=view.vanishing.rename(columns=views.VANISHING_COLUMNS),
                caption=f"Lag T − t at which {view.label} first falls below 10⁻³ of its value at the last step "
                        "(median over runs), at initialisation and after training."),
        Section("Per run", table=view.per_run.rename(columns=views.VANISHING_COLUMNS),
                fold=f"Per run ({len(view.per_run)})"),
        *([Section("What truncation does to the gradient", view.bias, caption=views.BIAS_CAPTION)]
          if view.bias is not None else []),
        *([Section("Exploding gradients and clipping", view.norms, caption=views.NORMS_CAPTION)]
          if view.norms is not None else []),
    ]


def _interval(method: str) -> str:
    from rnnlib.analysis.verdicts import METHODS

    return "95% " + METHODS.get(method, method)


def _band(kind: str) -> str:
    from rnnlib.analysis.compare import BANDS

    return BANDS.get(kind, kind)


def provenance(runs: pd.DataFrame, code_commit: str) -> dict[str, str]:
    """Where the numbers come from: how many runs, the commits they were trained at, this rnnlib."""
    commits = runs.get("tags.mlflow.source.git.commit", pd.Series(dtype=str)).dropna().astype(str)
    starts = (pd.to_datetime(runs["start_time"]) if "start_time" in runs and len(runs)
              else pd.Series(dtype="datetime64[ns]"))
    return {
        "runs": str(len(runs)),
        "trained at commits": ", ".join(sorted(set(commits))) or "not recorded",
        "trained between": (f"{starts.min():%Y-%m-%d %H:%M} and {starts.max():%Y-%m-%d %H:%M} UTC"
                            if len(starts) else "–"),
        "report made by": f"rnnlib {rnnlib.__version__} at commit {code_commit}, plotly {plotly.__version__}",
        "report made at": f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC",
    }


def html_report(title: str, sections: Sequence[Section], runs: pd.DataFrame, settings: Mapping[str, list[str]],
                page: str, facts: Mapping[str, str]) -> str:
    """The report as one HTML document.

    Args:
        title: its heading, e.g. `Compare: adding_cells`.
        sections: what it shows (`compare_sections`, `gradient_sections`).
        runs: the runs behind it (their ids, names, statuses and commits are listed at the end).
        settings: the view's permalink query (`rnnlib.viz.views.query`), shown and as the link that reopens it.
        page: the dashboard page that link opens, e.g. `compare`.
        facts: provenance (`provenance`).
    """
    body = [f"<h1>{_text(title)}</h1>",
            f"<p class='meta'>A static report by RNN Lab: interactive charts, no network needed. "
            f"{_text(facts.get('report made at', ''))}.</p>"]
    for index, section in enumerate(sections):
        body.append(_section(section, f"chart-{index}"))
    body.append("<h2>This view</h2>")
    link = f"{page}?{urlencode([(k, v) for k, values in settings.items() for v in values])}"
    body.append(f"<p>Reopen it in a dashboard on the same runs: <code>{_text(link)}</code> after the dashboard's "
                "address.</p>")
    body.append(_table(pd.DataFrame([(k, ", ".join(v)) for k, v in settings.items()], columns=["setting", "value"])))
    body.append("<h2>Provenance</h2>")
    body.append(_table(pd.DataFrame(list(facts.items()), columns=["", ""]), header=False))
    columns = [c for c in ("run_id", "run_name", "status", "start_time", "tags.mlflow.source.git.commit") if c in runs]
    listed = runs[columns].rename(columns={"tags.mlflow.source.git.commit": "git commit", "start_time": "started"})
    body.append(f"<details><summary>The {len(runs)} runs</summary>{_table(listed)}</details>")
    return (
        "<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<meta http-equiv='Content-Security-Policy' content=\"{POLICY}\">"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{_text(title)}</title><style>{STYLE}</style>"
        f"<script>{get_plotlyjs()}</script></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def _section(section: Section, chart_id: str) -> str:
    parts = [f"<h2>{_text(section.title)}</h2>"]
    if section.notice:
        parts.append(f"<p class='notice'>{_text(section.notice)}</p>")
    if section.caption:
        parts.append(f"<p class='caption'>{_text(section.caption)}</p>")
    if section.figure is not None:
        parts.append(_chart(section.figure, chart_id))
    if section.table is not None:
        table = _table(section.table)
        parts.append(f"<details><summary>{_text(section.fold)}</summary>{table}</details>" if section.fold else table)
    return "\n".join(parts)


def _chart(figure: go.Figure, chart_id: str) -> str:
    """A plotly chart drawn by the embedded library. The figure's JSON is made safe inside a script element
    (`</script>` or `<!--` in a label cannot end it)."""
    spec = figure.to_json().replace("</", "<\\/").replace("<!--", "<\\!--")
    config = json.dumps(CHART_CONFIG)
    return (f"<div id='{chart_id}' class='chart' style='height:{figure.layout.height or 460}px'></div>"
            f"<script>(function(){{var f={spec};Plotly.newPlot('{chart_id}',f.data,f.layout,{config});}})();</script>")


def _table(frame: pd.DataFrame, header: bool = True) -> str:
    """`frame` as an HTML table, every cell escaped, numbers to 4 significant digits, missing as `–`."""
    head = "".join(f"<th>{_text(column)}</th>" for column in frame.columns) if header else ""
    rows = []
    for values in frame.itertuples(index=False):
        cells = []
        for value in values:
            if isinstance(value, (float, np.floating)):
                cells.append(f"<td class='number'>{'–' if np.isnan(value) else f'{value:.4g}'}</td>")
            elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
                cells.append(f"<td class='number'>{value}</td>")
            else:
                cells.append(f"<td>{_text('–' if value is None or value is pd.NaT else value)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    head = f"<thead><tr>{head}</tr></thead>" if header else ""
    return f"<table>{head}<tbody>{''.join(rows)}</tbody></table>"


def _text(value) -> str:
    return html.escape(str(value), quote=True)


def compare_report(experiment: str, runs: pd.DataFrame, histories: pd.DataFrame, settings: views.CompareSettings,
                   selection: Mapping[str, list[str]], code_commit: str) -> str:
    """The Compare view of `runs` (training runs of `experiment`, picked by the permalink `selection`) as HTML."""
    view = views.compare_view(runs, histories, settings)
    query = views.query({"experiment": experiment, **{k: v for k, v in selection.items() if k != "experiment"}},
                        settings)
    return html_report(f"Compare: {experiment}", compare_sections(view, settings), runs, query, "compare",
                       provenance(runs, code_commit))


def gradient_report(experiment: str, runs: pd.DataFrame, flows: Mapping, histories: pd.DataFrame,
                    settings: views.GradientSettings, code_commit: str) -> str:
    """The Gradient flow view of `runs` (those with a record in `flows`) as HTML."""
    view = views.gradient_view(runs, flows, histories, settings)
    query = views.query({"experiment": experiment}, settings)
    return html_report(f"Gradient flow: {experiment}", gradient_sections(view), runs, query, "gradients",
                       provenance(runs, code_commit))

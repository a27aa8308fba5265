"""``grokscope report RUN``: one self-contained ``report.html`` (plotly.js embedded) and a
machine-readable ``summary.json`` for a run (:mod:`.build`, :mod:`.sections`); the report of
a sweep (:mod:`.sweep`, ``grokscope phase ... --report``)."""

from grokscope.report.build import (
    REPORT_FILE,
    SUMMARY_FILE,
    Report,
    discovery_summary,
    early_step,
    r2_note,
    render_html,
    summary_dict,
    write_report,
)
from grokscope.report.sweep import write_sweep_report

__all__ = ["write_sweep_report", "write_report", "Report", "summary_dict", "discovery_summary", "render_html", "early_step", "r2_note", "REPORT_FILE",
           "SUMMARY_FILE"]

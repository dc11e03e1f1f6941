"""Run reports: report.md and plots/*.png, from a run directory's files alone.

    from slmkit.report import write_report
    write_report("runs/nano")        # -> runs/nano/report.md, runs/nano/plots/*.png
"""

from slmkit.report.report import build_report, write_report

__all__ = ["build_report", "write_report"]

"""What a sweep's trials add up to: the Pareto front (table, plot, registry choice), the
per-method statistics over seeds with Welch verdicts, the method-comparison report, and the
end-of-sweep summary. Pure functions over ``orchestrator.records.TrialRecord`` lists, apart
from the summary and the report's loading, which read and write MLflow."""

from trainables._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "dominates": "pareto", "non_dominated": "pareto", "mark_front": "pareto", "front": "pareto",
    "registry_aliases": "pareto", "write_table": "pareto", "plot_fronts": "pareto",
    "GroupStats": "method_stats", "group_records": "method_stats", "select_best": "method_stats",
    "equal_count_verdicts": "method_stats",
    "build_report": "method_report", "SweepPart": "method_report",
    "Summary": "sweep_summary", "summarize": "sweep_summary", "print_summary": "sweep_summary",
})

"""Fault-injection suite: prints one summary line of what it survived at the end.

``pytest tests/faults -m "slow or not slow"`` runs everything; the default ``pytest``
runs the quick subset. The line is the figure quoted in docs/faults.md.
"""

from __future__ import annotations

from tests.faults._helpers import FIGURES


def summary_line() -> str | None:
    f = FIGURES
    if not any(v for k, v in f.items() if not k.endswith("_tried")):
        return None
    kills = f["interruptions"]
    parts = [
        f"{len(kills)} SIGKILL interruptions resumed to bit-identical weights and metrics",
        (f"{len(f['bad_inputs'])}/{len(f['bad_inputs_tried'])} bad inputs answered with one "
         f"error line naming the file, key or value "
         f"({len(f['bad_inputs_console'])}/{len(f['bad_inputs_console_tried'])} also through "
         "the console entry)"),
        f"code-carrying pickle refused {len(f['payload_refused'])} times, payload never ran",
        (f"a model factory named by a checkpoint or manifest refused by "
         f"{len(f['factory_refused'])} loaders, never imported"),
        f"{len(f['bad_manifests'])} bent manifests refused",
        f"{len(f['files_kept'])} exports onto user files left them byte-identical",
        f"{len(f['failed_writes'])} failed writes left the previous files intact",
        (f"{len(f['divergence'])} divergences stopped naming epoch, step and last good "
         "checkpoint"),
        (f"{len(f['failed_marked'])} failed runs marked FAILED with their reason (skipped by "
         "compare, cleared by a finished resume)"),
    ]
    return "faults: " + "; ".join(parts)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    line = summary_line()
    if line:
        terminalreporter.write_sep("-", "fault-injection summary")
        terminalreporter.write_line(line)
        kills = FIGURES["interruptions"]
        if kills:
            terminalreporter.write_line(
                "kill points: " + ", ".join(f"{case} ({point})" for case, point in kills))

"""Shared pieces of the fault-injection suite: running the console entry points (as a
subprocess, or in-process through the same ``main()``), checking that an error is one
clear line, and the figures the suite prints at the end (see ``conftest.py``)."""

from __future__ import annotations

import importlib
import io
import os
import signal
import subprocess
import sys
import time
import traceback
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import REPO

ENTRY = {"compress": "segcompress.cli", "bench": "bench.cli"}

# file types a run, an eval, an export or a benchmark writes as results: none of them may
# be left behind by a command that failed
RESULT_SUFFIXES = {".pt", ".pth", ".onnx", ".xml", ".bin", ".engine", ".plan", ".json",
                   ".csv", ".md", ".png"}

FIGURES: dict[str, list] = {
    "interruptions": [],     # (case, kill point) of every SIGKILL survived
    "bad_inputs_tried": [],  # row ids run (not skipped)
    "bad_inputs": [],        # row ids answered with one error line
    "bad_inputs_console_tried": [],
    "bad_inputs_console": [],
    "payload_refused": [],   # where a code-carrying pickle was refused, marker absent
    "factory_refused": [],   # loaders that refused a factory named by a file, marker absent
    "bad_manifests": [],     # bent manifests (paths out, edited, unhashed) refused
    "files_kept": [],        # user files that survived an export byte-identical
    "failed_writes": [],     # simulated disk-full / killed writes that left old files intact
    "divergence": [],        # NaN / divergence cases stopped with epoch, step, checkpoint
    "failed_marked": [],     # failed runs whose run dir got FAILED with the reason
}


def record(kind: str, what) -> None:
    FIGURES[kind].append(what)


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def text(self) -> str:
        return self.stdout + self.stderr


def child_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    env.pop("SEGCOMPRESS_FAULT", None)
    env.update(extra)
    return env


def run_console(prog: str, argv: list[str], timeout: float = 300, **env: str) -> Result:
    """``python -m segcompress.cli ...`` / ``python -m bench.cli ...`` in a subprocess."""
    p = subprocess.run([sys.executable, "-m", ENTRY[prog], *argv], capture_output=True,
                       text=True, cwd=REPO, env=child_env(**env), timeout=timeout, check=False)
    return Result(p.returncode, p.stdout, p.stderr)


def run_inprocess(prog: str, argv: list[str]) -> Result:
    """The same ``main()`` the console script runs, in this process: an exception that
    escapes it is printed as the interpreter would (a traceback, exit code 1)."""
    mod = importlib.import_module(ENTRY[prog])
    out, err = io.StringIO(), io.StringIO()
    old_argv = sys.argv
    sys.argv = [prog, *argv]
    code = 0
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                mod.main()
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except BaseException:  # noqa: BLE001 - printed as Python would, uncaught
                traceback.print_exc(file=err)
                code = 1
    finally:
        sys.argv = old_argv
    return Result(code, out.getvalue(), err.getvalue())


def run_and_kill(argv: list[str], point: str, marker: Path, timeout: float = 600,
                 sig: signal.Signals = signal.SIGKILL) -> Result:
    """Start ``argv`` with the fault hook armed, wait until it stops at ``point``, send
    ``sig`` (SIGKILL: nothing runs after it; SIGINT: Ctrl-C, the run handles it)."""
    marker.unlink(missing_ok=True)
    # PYTHONFAULTHANDLER: a child that outlives the signal prints its stack on SIGABRT
    env = child_env(SEGCOMPRESS_FAULT=point, SEGCOMPRESS_FAULT_MARKER=str(marker),
                    PYTHONFAULTHANDLER="1")
    # a shell that starts the suite in the background ignores SIGINT for it, and an ignored
    # disposition survives exec: the child would never hear the Ctrl-C. A handled one is
    # reset to the default by exec (then Python raises KeyboardInterrupt), so handle it here
    # while the child starts.
    before = signal.getsignal(signal.SIGINT)
    if before == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
    finally:
        if before == signal.SIG_IGN:
            signal.signal(signal.SIGINT, before)
    deadline = time.monotonic() + timeout
    try:
        while not marker.exists():
            if proc.poll() is not None:
                raise AssertionError(f"run ended (rc {proc.returncode}) before reaching "
                                     f"{point}:\n{proc.stderr.read()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"run did not reach {point} in {timeout}s")
            time.sleep(0.05)
        proc.send_signal(sig)
        try:
            _, err = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            _, err = proc.communicate(timeout=60)
            raise AssertionError(f"the run was still alive 300 s after {sig.name}; its "
                                 f"stack then:\n{err[-4000:]}") from None
        if sig == signal.SIGKILL:
            assert proc.returncode == -signal.SIGKILL
        return Result(proc.returncode, "", err)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


_available: dict[tuple[str, str], bool] = {}


def command_available(prog: str, command: str) -> bool:
    """Whether ``<prog> <command> --help`` works (other packages add commands later)."""
    key = (prog, command)
    if key not in _available:
        try:
            r = run_inprocess(prog, [command, "--help"])
            _available[key] = r.code == 0 and "Usage" in r.text
        except Exception:  # noqa: BLE001 - a missing module is "not available"
            _available[key] = False
    return _available[key]


def error_line(r: Result) -> str:
    """Check the one-line error contract and return the line.

    The command failed (non-zero exit), printed no traceback, and said exactly one line
    starting ``error:``, which is the last thing on stderr (log lines from the work done
    before the problem was found may precede it)."""
    assert r.code != 0, f"exit code 0 for a bad input:\n{r.text[-2000:]}"
    assert "Traceback" not in r.text, f"traceback printed:\n{r.text[-3000:]}"
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1, f"expected one 'error:' line on stderr, got:\n{r.text[-2000:]}"
    assert lines[-1] == errors[0], f"the error is not the last line:\n{r.stderr[-2000:]}"
    return errors[0]


def results_left(folder: Path) -> list[Path]:
    """Files under ``folder`` that look like results (or temp files of writes)."""
    if not folder.exists():
        return []
    return [p for p in folder.rglob("*") if p.is_file() and (
        p.suffix.lower() in RESULT_SUFFIXES or p.name.endswith(".tmp")
        or ".tmp-" in str(p.relative_to(folder)))]

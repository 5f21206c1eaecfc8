"""The command line: ``autooffload calibrate | show | plot | history | info | run``, ``--version``.
The only module that prints, besides the report printed at exit (_report.py).

Exit codes: 0 done; 1 could not do it (calibration failed or locked, matplotlib missing);
2 bad usage or an unusable profile file; 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from datetime import datetime, timezone
from typing import Sequence, TextIO

from ._config import reload_environment
from ._costmodel import KINDS, crossover, tier_range
from ._profiles import (
    Profile,
    active_profile,
    load_profile,
    profile_path,
    software_drift,
    this_machine_mismatch,
)
from .errors import CalibrationError, ConfigError, ProfileError
from ._units import format_bytes, format_seconds

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
SHOW_JSON_VERSION = 3  # of the `show --json` document (keys below); bump on change. 2: numba_tier, profile schema 2; 3: probed
# Notes a probe-scaled profile carries (_profiles/scaling.py): shown as "Scaled:" lines.
SCALED_NOTE_PREFIXES = ("probe of", "numba tier:")


# ---------------------------------------------------------------------------------------------
# What `show` reports, as data (also the `show --json` document).
# ---------------------------------------------------------------------------------------------


def crossover_table(profile: Profile) -> dict[str, dict[str, float | None]]:
    """Per kind: smallest input bytes from which the warm GPU wins, with data on host / device."""
    if not profile.has_device_timings():
        return {kind: {"host": None, "device": None} for kind in KINDS}
    table = {}
    for kind in KINDS:
        try:
            table[kind] = {loc: crossover(profile, kind, loc) for loc in ("host", "device")}
        except KeyError:  # kind not in the profile and no generic fallback
            table[kind] = {"host": None, "device": None}
    return table


def numba_tier(profile: Profile) -> dict:
    """The Numba tier in this profile: its compile time, whether it can load here, and per kind
    the input sizes (host data) where it is predicted faster than NumPy."""
    from . import backends

    timing = profile.backend("numba")
    ranges: dict[str, list[list[float]]] = {}
    if timing is not None and timing.can_predict():
        for kind in KINDS:
            try:
                ranges[kind] = [list(run) for run in tier_range(profile, kind)]
            except KeyError:
                ranges[kind] = []
    return {
        "curves": bool(ranges),
        "compile_s": timing.warmup_s if timing is not None else None,
        "unavailable_here": backends.unavailable_reason("numba"),
        "faster_than_numpy": ranges,
    }


def describe(profile: Profile, *, note: str | None = None) -> dict:
    """The `show --json` document: which file, whose machine, how old, the crossovers, the profile."""
    from ._profiles.scaling import is_probed

    is_builtin = profile.source.startswith("built-in")  # also with a probed host tier, or a failed GPU probe
    probed = is_probed(profile)  # scaled to this machine by its probe: the fingerprint is the reference's
    mismatch = None if is_builtin or probed else this_machine_mismatch(profile.fingerprint)
    created = profile.created if profile.created.tzinfo else profile.created.replace(tzinfo=timezone.utc)
    return {
        "show_json_version": SHOW_JSON_VERSION,
        "source": profile.source,
        "builtin": is_builtin,
        "this_machine": (not is_builtin) and mismatch is None,
        "probed": probed,
        "other_machine_reason": mismatch,
        "note": note,
        "age_s": max(0.0, (datetime.now(timezone.utc) - created).total_seconds()),
        "version_drift": [] if is_builtin or probed or mismatch else software_drift(profile),
        "gpu_usable": profile.has_device_timings(),
        "crossovers": crossover_table(profile),
        "numba_tier": numba_tier(profile),
        "profile": profile.model_dump(mode="json"),
    }


# ---------------------------------------------------------------------------------------------
# Text formatting.
# ---------------------------------------------------------------------------------------------


def human_bytes(n: float | None) -> str:
    return "-" if n is None else format_bytes(n)


def human_seconds(s: float | None) -> str:
    return "-" if s is None else format_seconds(s)


def human_age(seconds: float) -> str:
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return "just now"


def format_show(doc: dict) -> str:
    """The human-readable `show` text from the `describe()` document."""
    p = doc["profile"]
    fp = p["fingerprint"]
    lines = []
    if doc.get("probed"):
        whose = "a shipped profile scaled to this machine by its probe"
    else:
        whose = "built-in defaults" if doc["builtin"] else ("this machine's" if doc["this_machine"] else "ANOTHER machine's")
    lines.append(f"Profile:   {doc['source']} ({whose})")
    if doc["note"]:
        lines.append(f"Note:      {doc['note']}")
    for scaled in (n for n in p["notes"] if n.startswith(SCALED_NOTE_PREFIXES)):
        lines.append(f"Scaled:    {scaled}")
    if doc["other_machine_reason"]:
        lines.append(
            f"Note:      not this machine's profile ({doc['other_machine_reason']}); "
            "the decorator will not use it automatically; `autooffload calibrate` measures this one"
        )
    if doc["version_drift"]:
        lines.append(f"Note:      software changed since ({', '.join(doc['version_drift'])}); consider recalibrating")
    created = p["created"][:16].replace("T", " ")
    sweep = "quick" if p["quick"] else "default"
    lines.append(
        f"Measured:  {created} UTC ({human_age(doc['age_s'])}), {sweep} sweep, "
        f"autooffload {p['autooffload_version'] or '?'}, schema {p['schema_version']}"
    )
    lines.append(f"CPU:       {fp['cpu_model']}, {fp['cpu_cores']} cores; BLAS {fp['blas'] or '?'} ({fp['blas_threads'] or '?'} threads)")
    if fp["gpu_name"]:
        memory = human_bytes(fp["gpu_memory_bytes"]) if fp["gpu_memory_bytes"] else "?"
        lines.append(
            f"GPU:       {fp['gpu_name']} (compute {fp['gpu_compute_capability'] or '?'}, {memory}), "
            f"{fp['gpu_uuid'] or 'UUID ?'}; driver {fp['driver_version'] or '?'}, CUDA runtime {fp['cuda_runtime_version'] or '?'}"
        )
    else:
        lines.append("GPU:       none")
    lines.append(
        f"Software:  Python {fp['python_version'] or '?'}, numpy {fp['numpy_version'] or '?'}, "
        f"cupy {fp['cupy_version'] or '-'}, numba {fp['numba_version'] or '-'}"
    )
    tier = doc["numba_tier"]
    if not doc["gpu_usable"]:
        lines.append("")
        lines.append("No GPU timings in this profile" + (": every call runs on NumPy." if not tier["curves"] else "."))
        return "\n".join(lines + _tier_lines(tier)) + "\n"
    for backend in p["backends"].values():
        if backend["memory"] == "device":
            lines.append(
                f"GPU costs: copies via {backend['transfer_engine'] or '?'}; "
                f"launch latency {human_seconds(backend['launch_latency_s'])}; "
                f"cold start {human_seconds(backend['warmup_s'])} (once per process)"
            )
            lines.extend(_copy_tuning_lines(backend.get("copy_tuning")))
    lines.append("")
    lines.append("Crossovers: smallest input (bytes of all array inputs) from which the warm GPU wins")
    header = ("kind", "numpy data (host)", "cupy data (device)")
    rows = [
        (kind, _crossover_text(c["host"]), _crossover_text(c["device"])) for kind, c in doc["crossovers"].items()
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    for row in [header, *rows]:
        lines.append("  " + "   ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return "\n".join(lines + _tier_lines(tier)) + "\n"


# Knobs shown as sizes; the rest are counts.
_SIZE_KNOBS = ("chunk_bytes", "min_chunk_bytes", "small_bytes", "h2d_direct_max", "d2h_direct_max", "staged_min",
               "staged_max", "min_part_bytes", "h2d_register_min", "d2h_register_min", "register_chunk_bytes",
               "worker_chunk_bytes", "pin_results_min", "pin_reused_min")
_SWITCH_KNOBS = ("h2d_nontemporal", "d2h_nontemporal", "staged_fresh")


def _knob_text(name: str, value: int) -> str:
    if name in _SWITCH_KNOBS:
        return f"{name}={'on' if value else 'off'}"
    if name in _SIZE_KNOBS:
        if value >= 1 << 50:
            return f"{name}=any"
        return f"{name}={human_bytes(value)}" if value else f"{name}=0"
    return f"{name}={value}"


def _copy_tuning_lines(tuning: dict | None) -> list[str]:
    """The copy engine's tuning in a profile: the knobs and the rates they achieved."""
    if not tuning:
        return ["Copies:    engine defaults (this profile has no copy tuning; `autooffload calibrate` searches one)"]
    knobs = ", ".join(_knob_text(k, v) for k, v in sorted(tuning["knobs"].items()))
    search = f", search {tuning['search_s']:.1f} s" if tuning.get("search_s") is not None else ""
    lines = [f"Copies:    tuned for {tuning['engine']}{search}: {knobs}"]
    bound, pinned = tuning.get("host_bound_GBps") or {}, tuning.get("pinned_GBps") or {}
    if bound or pinned:
        lines.append(
            "           limits: pinned DMA " + " / ".join(f"{pinned[d]:.1f}" for d in ("h2d", "d2h") if d in pinned)
            + " GB/s in / out; host memcpy to pinned " + (f"{bound['to_pinned']:.1f}" if "to_pinned" in bound else "?")
            + ", from pinned " + (f"{bound['from_pinned']:.1f}" if "from_pinned" in bound else "?")
            + " (fresh pages " + (f"{bound['from_pinned_fresh']:.1f}" if "from_pinned_fresh" in bound else "?") + ") GB/s"
        )
    for r in tuning.get("rates") or []:
        default = ""
        if r.get("default_h2d_GBps") and r.get("default_d2h_GBps"):
            default = f" (defaults {r['default_h2d_GBps']:.1f} / {r['default_d2h_GBps']:.1f})"
        lines.append(f"           {human_bytes(r['nbytes']):>9}: {r['h2d_GBps']:.1f} GB/s in, {r['d2h_GBps']:.1f} out{default}")
    return lines


def _tier_lines(tier: dict) -> list[str]:
    """The Numba tier's part of `show`: when it beats NumPy, its compile time, whether it loads."""
    lines = [""]
    if not tier["curves"]:
        lines.append("Numba tier: no curves in this profile (`autooffload calibrate` with Numba installed measures them)")
        return lines
    here = tier["unavailable_here"]
    lines.append(f"Numba tier: compiles in ~{human_seconds(tier['compile_s'])} per argument types, in the background; "
                 + (f"absent here ({here})" if here else "available here"))
    lines.append("  kind             Numba predicted faster than NumPy (numpy data)")
    for kind, runs in tier["faster_than_numpy"].items():
        text = ", ".join(f"from {human_bytes(a)}" if b >= 2.0**39 else f"{human_bytes(a)} to {human_bytes(b)}"
                         for a, b in runs) or "never"
        lines.append(f"  {kind:<16} {text}")
    return lines


def _crossover_text(nbytes: float | None) -> str:
    return "never" if nbytes is None else human_bytes(nbytes)


# ---------------------------------------------------------------------------------------------
# Progress bar (stderr, terminals only).
# ---------------------------------------------------------------------------------------------


class ProgressBar:
    """One self-overwriting line on a terminal; nothing at all when the stream is not one."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.enabled = stream.isatty()
        self.start = time.monotonic()
        self.drawn = False

    def __call__(self, progress) -> None:
        if not self.enabled:
            return
        width = shutil.get_terminal_size((80, 20)).columns
        filled = int(24 * progress.fraction)
        text = (
            f"[{'#' * filled}{'.' * (24 - filled)}] {progress.fraction:4.0%} "
            f"{time.monotonic() - self.start:5.0f} s  {progress.stage} {progress.detail}"
        )
        self.stream.write("\r" + text[: width - 1].ljust(width - 1))
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        if self.enabled and self.drawn:
            width = shutil.get_terminal_size((80, 20)).columns
            self.stream.write("\r" + " " * (width - 1) + "\r")
            self.stream.flush()


# ---------------------------------------------------------------------------------------------
# Commands.
# ---------------------------------------------------------------------------------------------


def _error(message: str) -> None:
    print(f"autooffload: error: {message}", file=sys.stderr)


def cmd_calibrate(args: argparse.Namespace) -> int:
    from ._calibrate import calibrate, check_can_save

    try:
        target = str(check_can_save(args.output))  # a usage error, found before the sweep
    except CalibrationError as e:
        _error(str(e))
        return EXIT_USAGE
    bar = ProgressBar(sys.stderr)
    started = time.perf_counter()
    try:
        profile = calibrate(quick=args.quick, output=args.output, progress=bar)
    except KeyboardInterrupt:
        bar.close()
        _error(f"interrupted; nothing was written and the existing profile (if any) at {target} is unchanged")
        return EXIT_INTERRUPTED
    except CalibrationError as e:
        bar.close()
        _error(str(e))
        return EXIT_FAILED
    bar.close()
    print(f"autooffload: saved {profile.source} in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    if args.json:
        sys.stdout.write(profile.model_dump_json(indent=1) + "\n")
    else:
        sys.stdout.write(format_show(describe(profile)))
    return EXIT_OK


def _profile_to_show(path: str | None) -> tuple[Profile, str | None]:
    """The file asked for, else the profile file in use, else what the decorator falls back to."""
    if path:
        return load_profile(path), None
    in_use = profile_path()
    if os.environ.get("AUTOOFFLOAD_PROFILE") or in_use.exists() or in_use.is_symlink():
        return load_profile(in_use), None
    return active_profile(), f"no calibrated profile at {in_use}; showing the fallback that decisions use"


def cmd_show(args: argparse.Namespace) -> int:
    try:
        profile, note = _profile_to_show(args.path)
    except ProfileError as e:
        _error(str(e))
        return EXIT_USAGE
    doc = describe(profile, note=note)
    if args.json:
        sys.stdout.write(json.dumps(doc, indent=1) + "\n")
    else:
        sys.stdout.write(format_show(doc))
    return EXIT_OK


def cmd_plot(args: argparse.Namespace) -> int:
    from ._plot import PlotUnavailableError, plot_profile

    try:
        profile, _ = _profile_to_show(args.path)
    except ProfileError as e:
        _error(str(e))
        return EXIT_USAGE
    try:
        written = plot_profile(profile, args.output)
    except PlotUnavailableError as e:
        _error(str(e))
        return EXIT_FAILED
    except (OSError, ValueError) as e:  # unwritable path, unknown image format
        _error(f"cannot write {args.output}: {e}")
        return EXIT_FAILED
    print(f"autooffload: wrote {written} (profile {profile.source})", file=sys.stderr)
    return EXIT_OK


def format_history(rows: list[dict]) -> str:
    """The learned history as a table: per function and size, calls, observed vs predicted time."""
    if not rows:
        return "no learned history on this machine yet (offloaded calls record it as they run)"
    lines = [f"{'function':<44} {'size':>9}  {'backend':<7} {'calls':>6} {'observed':>10} {'predicted':>10}  note"]
    total_saved = 0.0
    for row in rows:
        size = human_bytes(2.0 ** (max(row["bucket"][0] if row["bucket"][1] < 0 else row["bucket"][1], 0) / 2))
        where = "host" if row["bucket"][1] < 0 else "device"
        for backend, calls in sorted(row["calls"].items()):
            note = ""
            if backend == row["choice"]:
                note = "chosen"
                if row["saved_s"] > 0:
                    note += f"; saved {human_seconds(row['saved_s'])} over the profile's {row['profile_choice']}"
            name = row["function"].rsplit(":", 1)[0] if row["function"].count(":") >= 2 else row["function"]
            lines.append(f"{name[-44:]:<44} {size:>9}  {backend:<7} {calls:>6} "
                         f"{human_seconds(row['observed_s'][backend]):>10} {human_seconds(row['predicted_s'][backend]):>10}  "
                         f"{note} ({where} data)".rstrip())
        total_saved += row["saved_s"]
    lines.append(f"learning saved {human_seconds(total_saved)} in all, as far as measured")
    return "\n".join(lines)


def cmd_history(args: argparse.Namespace) -> int:
    from . import _learn
    from ._history import summary

    if args.clear:
        _learn.STORE.clear()
        print(f"autooffload: forgot the learned history ({_learn.history_path()})")
        return EXIT_OK
    rows = summary(_learn.STORE.all_functions())
    if args.json:
        print(json.dumps(rows, default=list, indent=1))
    else:
        print(format_history(rows))
    return EXIT_OK


def format_info(doc: dict) -> str:
    """The human-readable `info` text from ``_sysinfo.collect()``."""
    lines = [f"autooffload {doc['autooffload']}, Python {doc['python']}, numpy {doc['numpy']}", f"platform    {doc['platform']}"]
    for name, state in doc["extensions"].items():
        lines.append(f"{name:<11} {state}")
    c = doc["cores"]
    quota = "none" if c["cgroup_quota"] is None else f"{c['cgroup_quota']:g} CPUs"
    lines.append(f"cores       {c['usable']} usable (machine {c['machine']}, affinity {c['affinity']}, cgroup quota {quota})")
    for lib in doc["blas"] or [{"error": "none found"}]:
        if "error" in lib:
            lines.append(f"BLAS        {lib['error']}")
        else:
            lines.append(f"BLAS        {lib['internal_api']} {lib['version']}, {lib['num_threads']} threads "
                         f"({lib['threading_layer']}), {lib['filepath']}")
    cp = doc["cupy"]
    if cp.get("unavailable"):
        lines.append(f"CuPy        not used: {cp['unavailable']}")
    elif "import" in cp:
        lines.append(f"CuPy        does not import: {cp['import']}")
    else:
        cuda = f"CUDA runtime {cp.get('cuda_runtime', '?')}, driver {cp.get('cuda_driver', '?')}"
        lines.append(f"CuPy        {cp['version']}, {cuda}")
        if "cuda_error" in cp:
            lines.append(f"GPU         none usable: {cp['cuda_error']}")
        for i, gpu in enumerate(cp.get("gpus", [])):
            lines.append(f"GPU {i:<7} {gpu['name']} (compute {gpu['compute']}, {human_bytes(gpu['memory_bytes'])})")
    nb = doc["numba"]
    if "import" in nb:
        lines.append(f"Numba       not available: {nb['import']}")
    else:
        lines.append(f"Numba       {nb['version']}, threading layer {nb['threading_layer']}, {nb['threads']} threads")
    return "\n".join(lines) + "\n"


def cmd_info(args: argparse.Namespace) -> int:
    from ._sysinfo import collect

    doc = collect()
    sys.stdout.write(json.dumps(doc, indent=1) + "\n" if args.json else format_info(doc))
    return EXIT_OK


_SCRIPT_MODULES: list = []  # the scripts `run` ran, kept until exit (see _run_as_main)


def _run_as_main(path: str) -> None:
    """Run the script as ``python SCRIPT`` does (``runpy.run_path`` with ``__main__``), in a
    module kept until exit: the report at exit lists the functions the script decorated, which
    are kept only weakly (a function its program drops leaves the report), and runpy's temporary
    module dropped them when the script ended, or later, as the garbage collector happened to run
    (the same script's report was empty or not from one version of this package to the next)."""
    import builtins
    import io
    import types

    with io.open_code(path) as f:
        code = compile(f.read(), path, "exec", dont_inherit=True)
    main = types.ModuleType("__main__")
    main.__dict__.update(__file__=path, __cached__=None, __loader__=None, __package__=None, __spec__=None,
                         __builtins__=builtins)
    _SCRIPT_MODULES.append(main)
    previous = sys.modules.get("__main__")
    sys.modules["__main__"] = main  # pickling and multiprocessing look the script's names up there
    try:
        exec(code, main.__dict__)
    finally:
        if previous is not None:
            sys.modules["__main__"] = previous


def cmd_run(args: argparse.Namespace) -> int:
    """Run a script as ``python SCRIPT ARGS`` would (``__main__``, ``sys.argv``, its folder first
    on ``sys.path``), as ``python -m cudf.pandas`` does, and print the report at exit (stderr).
    The script's exit code is the command's; an uncaught exception prints its traceback, exit 1."""
    import traceback

    from . import _report

    if not os.path.isfile(args.script):
        _error(f"no such script: {args.script}")
        return EXIT_USAGE
    _report.print_at_exit()  # after the script's own exit handlers, which it registers later
    sys.argv = [args.script, *args.script_args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(args.script)))
    try:
        _run_as_main(args.script)
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(e.code, file=sys.stderr)  # as the interpreter does with `sys.exit("message")`
        return 1
    except KeyboardInterrupt:
        traceback.print_exc()
        return EXIT_INTERRUPTED
    except BaseException:
        traceback.print_exc()
        return EXIT_FAILED
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autooffload",
        description="Measure this machine once so that @offload runs each call where it is fastest.",
    )
    parser.add_argument("--version", action="version", version=f"autooffload {_package_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    cal = commands.add_parser("calibrate", help="measure this machine and save its profile")
    cal.add_argument("--quick", action="store_true", help="a shorter sweep (about a minute on a GPU machine)")
    cal.add_argument("--output", metavar="PATH", help="where to save (default: AUTOOFFLOAD_PROFILE, else the cache folder)")
    cal.add_argument("--json", action="store_true", help="print the profile as JSON on stdout")
    cal.set_defaults(run=cmd_calibrate)

    show = commands.add_parser("show", help="show a profile: machine, age, crossover sizes per kind")
    show.add_argument("path", nargs="?", metavar="PATH", help="profile file (default: the one in use)")
    show.add_argument("--json", action="store_true", help="print a JSON document instead of text")
    show.set_defaults(run=cmd_show)

    plot = commands.add_parser("plot", help="plot CPU vs GPU time by size per kind (needs matplotlib)")
    plot.add_argument("-o", "--output", required=True, metavar="FILE.png", help="image to write")
    plot.add_argument("path", nargs="?", metavar="PATH", help="profile file (default: the one in use)")
    plot.set_defaults(run=cmd_plot)

    history = commands.add_parser("history", help="what each function's own calls measured, and what learning saved")
    history.add_argument("--clear", action="store_true", help="forget the learned history of this machine")
    history.add_argument("--json", action="store_true", help="print the rows as JSON")
    history.set_defaults(run=cmd_history)
    info = commands.add_parser("info", help="what loads here: C extensions, cores, BLAS, CuPy and CUDA, GPUs, Numba")
    info.add_argument("--json", action="store_true", help="print a JSON document instead of text")
    info.set_defaults(run=cmd_info)

    run = commands.add_parser("run", help="run a Python script, then print where its offloaded calls' time went")
    run.add_argument("script", metavar="SCRIPT", help="the script, run as __main__ (as `python SCRIPT` would)")
    run.add_argument("script_args", nargs=argparse.REMAINDER, metavar="ARGS", help="the script's own arguments")
    run.set_defaults(run=cmd_run)
    return parser


def _package_version() -> str:
    from . import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or a usage error argparse has already explained
        return int(e.code) if isinstance(e.code, int) else EXIT_USAGE
    try:
        # The AUTOOFFLOAD_* variables every decorated call would reject: say so before any work.
        reload_environment()
    except ConfigError as e:
        _error(str(e))
        return EXIT_USAGE
    try:
        return args.run(args)
    except KeyboardInterrupt:
        _error("interrupted")
        return EXIT_INTERRUPTED

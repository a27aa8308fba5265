"""The ``grokscope`` command line: thin, lazily importing, with clear errors.

Every command imports the library only when it runs, so ``grokscope --help`` is
instant. Errors a user can fix (bad path, bad argument, corrupt file) print one line
and exit with code 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import os
import sys
import warnings

import typer

from grokscope.errors import GrokscopeWarning

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="grokscope: tasks, training and circuit analysis for grokked implicit reasoners.",
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state: dict[str, bool] = {"debug": False}
_default_showwarning = warnings.showwarning

from grokscope.cli.common import UserError  # noqa: E402


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    threads: int | None = typer.Option(
        None, "--threads", min=1,
        help="CPU threads for analysis (default: OMP_NUM_THREADS, else 1; 2 pays only on an idle machine)."),
) -> None:
    _state["debug"] = debug
    # Torch reads OMP_NUM_THREADS when it is first imported, which the commands do lazily.
    # One thread by default, as training. With the other core busy, 2 threads collapse: training
    # steps at 0.52x (docs/MEASUREMENTS.md), a cold report's discovery at 25-76 s per checkpoint
    # against 3-6 s with one thread (measured on a fresh clone while a training held the other core).
    if threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(threads)
    else:
        os.environ.setdefault("OMP_NUM_THREADS", "1")


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    if issubclass(category, GrokscopeWarning):
        typer.echo(f"warning: {message}", err=True)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


def main() -> None:
    """Console entry point: run the app, turning user errors into one line + exit 2."""
    warnings.showwarning = _one_line_warning
    try:
        app(standalone_mode=False)
    except UserError as e:
        _fail(e)
    except (ValueError, FileNotFoundError, PermissionError, OSError) as e:
        _fail(e)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except Exception as e:  # usage errors (click exceptions) arrive here with standalone_mode=False
        if hasattr(e, "format_message") and hasattr(e, "exit_code"):
            # one line, as every other error: "error: Invalid value for '--max-steps': 'abc' is not a valid integer."
            ctx = getattr(e, "ctx", None)
            where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            typer.echo(f"error: {e.format_message()}{where}", err=True)
            sys.exit(e.exit_code)
        raise


def _fail(e: BaseException) -> None:
    if _state["debug"] or os.environ.get("GROKSCOPE_DEBUG"):
        raise e
    typer.echo(f"error: {e}", err=True)
    sys.exit(2)


from grokscope.cli.analysis import circuit, lens, report, trace_cmd  # noqa: E402
from grokscope.cli.discovery import discover, progress  # noqa: E402
from grokscope.cli.runs import data, eval_cmd, import_hf_cmd, runs, sweep, train  # noqa: E402
from grokscope.cli.sweeps import phase  # noqa: E402

app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(data)
app.command(context_settings={"allow_extra_args": False})(train)
app.command("eval")(eval_cmd)
app.command()(runs)
app.command()(sweep)
app.command()(phase)
app.command("import-hf")(import_hf_cmd)
app.command()(report)
app.command()(lens)
app.command("trace")(trace_cmd)
app.command()(circuit)
app.command()(progress)
app.command()(discover)

if __name__ == "__main__":
    main()

"""The ``grokscope`` command line: thin, lazily importing, with clear errors.

Every command imports the library only when it runs, so ``grokscope --help`` is
instant. Errors a user can fix (bad path, bad argument, corrupt file) print one line
and exit with code 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Any, Optional

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="grokscope: tasks, training and circuit analysis for grokked implicit reasoners.",
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state: dict[str, bool] = {"debug": False}


class UserError(Exception):
    """An error the user can fix; printed as one line, exit code 2."""


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")) -> None:
    _state["debug"] = debug


class TaskChoice(str, Enum):
    composition = "composition"
    comparison = "comparison"
    complex = "complex"


def _print_table(rows: list[tuple[str, Any]], title: str | None = None) -> None:
    if title:
        typer.echo(title)
    width = max(len(str(k)) for k, _ in rows) if rows else 0
    for k, v in rows:
        if isinstance(v, float):
            v = f"{v:.4g}"
        typer.echo(f"  {str(k).ljust(width)}  {v}")


@app.command()
def data(
    task: TaskChoice = typer.Argument(..., help="Which task: composition, comparison or complex."),
    out: Path = typer.Option(..., "--out", help="Directory to write the paper-format files into."),
    entities: Optional[int] = typer.Option(None, "--entities", help="Number of entities (paper: 2000 / 1000)."),
    relations: Optional[int] = typer.Option(None, "--relations", help="Composition: number of relations (paper: 200)."),
    out_degree: Optional[int] = typer.Option(None, "--out-degree", help="Composition: relations per entity (paper: 20)."),
    attributes: Optional[int] = typer.Option(None, "--attributes", help="Comparison/complex: attributes (paper: 20)."),
    values: Optional[int] = typer.Option(None, "--values", help="Comparison/complex: ordinal values (paper: 20)."),
    ood_fraction: Optional[float] = typer.Option(None, "--ood-fraction", help="OOD share, in (0, 1)."),
    phi: Optional[float] = typer.Option(None, "--phi", help="Inferred/atomic ratio (composition, comparison)."),
    seed: int = typer.Option(0, "--seed", help="Data seed."),
) -> None:
    """Generate a task and write it in the paper's format plus stats.json.

    Example: grokscope data composition --out data/comp --entities 200 --relations 20 --phi 7.2
    """
    from grokscope.tasks import generate_comparison, generate_complex, generate_composition
    from grokscope.tasks.paper_format import save_paper_format

    given = {
        "n_entities": entities, "n_relations": relations, "out_degree": out_degree,
        "n_attributes": attributes, "n_values": values, "ood_fraction": ood_fraction, "phi": phi,
    }
    allowed = {
        "composition": {"n_entities", "n_relations", "out_degree", "ood_fraction", "phi"},
        "comparison": {"n_entities", "n_attributes", "n_values", "ood_fraction", "phi"},
        "complex": {"n_entities", "n_attributes", "n_values", "ood_fraction"},
    }[task.value]
    flags = {"n_entities": "--entities", "n_relations": "--relations", "out_degree": "--out-degree",
             "n_attributes": "--attributes", "n_values": "--values", "ood_fraction": "--ood-fraction", "phi": "--phi"}
    wrong = [flags[k] for k, v in given.items() if v is not None and k not in allowed]
    if wrong:
        raise UserError(f"{', '.join(wrong)} does not apply to the {task.value} task")
    kwargs = {k: v for k, v in given.items() if v is not None}
    from grokscope.config import ComparisonConfig, ComplexConfig, CompositionConfig

    cls = {"composition": CompositionConfig, "comparison": ComparisonConfig, "complex": ComplexConfig}[task.value]
    cfg = cls(seed=seed, **kwargs)
    gen = {"composition": generate_composition, "comparison": generate_comparison, "complex": generate_complex}
    ds = gen[task.value](cfg)
    save_paper_format(ds, out)
    stats = ds.stats()
    (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    rows: list[tuple[str, Any]] = [("task", ds.task), ("seed", seed)]
    rows += [(f"split {k}", v) for k, v in stats["splits"].items()]
    rows += [(k, v if not isinstance(v, dict) else json.dumps(v)) for k, v in stats["counts"].items()]
    rows += [("vocab size", stats["vocab_size"]), ("content hash", stats["content_hash"][:16])]
    _print_table(rows, title=f"{ds.task} dataset written to {out}")


def main() -> None:
    """Console entry point: run the app, turning user errors into one line + exit 2."""
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
        if hasattr(e, "show") and hasattr(e, "exit_code"):
            e.show()
            sys.exit(e.exit_code)
        raise


def _fail(e: BaseException) -> None:
    if _state["debug"] or os.environ.get("GROKSCOPE_DEBUG"):
        raise e
    typer.echo(f"error: {e}", err=True)
    sys.exit(2)


if __name__ == "__main__":
    main()

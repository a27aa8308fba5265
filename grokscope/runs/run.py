"""The run directory: the format every other part of grokscope (and plain
TransformerLens) reads.

Layout::

    RUN/config.json                      schema version, grokscope version, the RunConfig
                                         ("run"), the TransformerLens config ("model",
                                         accepted by TransformerBridgeConfig.from_dict),
                                         and the data's content hash and sizes ("data")
    RUN/data/{train,valid,test,vocab}.json  the split in the paper's format
    RUN/data/stats.json                  generator arguments, counts, content hash
    RUN/metrics.jsonl                    one JSON object per evaluation
    RUN/checkpoints/step_XXXXXXXX/model.safetensors   weights (raw, unfolded)
    RUN/checkpoints/step_XXXXXXXX/meta.json           step, wall time, metrics
    RUN/checkpoints/step_XXXXXXXX/optimizer.safetensors + trainer_state.json
                                         resume state, kept for the latest checkpoint only

Every file is written to a temporary name and renamed; a checkpoint directory is
built under a temporary name and renamed into place, so a crash at any moment leaves
the previous checkpoint intact and no half-written one visible.

Loading a checkpoint without grokscope::

    import json, safetensors.torch
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge
    cfg = json.load(open("RUN/config.json"))["model"]
    model = TransformerBridge.boot_native(TransformerBridgeConfig.from_dict(cfg))
    model.load_state_dict(safetensors.torch.load_file(
        "RUN/checkpoints/step_00001000/model.safetensors"), strict=True)

Example:
    >>> run = Run.open("checkpoints/composition-small")     # doctest: +SKIP
    >>> model = run.load_model(run.steps()[-1])              # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from grokscope import __version__
from grokscope.display import Summarized
from grokscope.errors import GrokscopeError, unknown_key_message
from grokscope.runs.config import SCHEMA_VERSION, RunConfig

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

    from grokscope.tasks.dataset import TaskDataset

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
DATA_DIR = "data"
CHECKPOINTS_DIR = "checkpoints"
MODEL_FILE = "model.safetensors"
META_FILE = "meta.json"
OPTIMIZER_FILE = "optimizer.safetensors"
TRAINER_STATE_FILE = "trainer_state.json"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt")


class RunError(GrokscopeError, ValueError):
    """A run directory that cannot be read as asked; the message says what to do."""


_CHEAP_SHAPE = ("n_layers", "d_model", "n_heads", "d_mlp")


def _check_model_section(cfg_path: Path, config: RunConfig, model: dict[str, Any], data: dict[str, Any],
                         *, full: bool = False) -> None:
    """``config.json["model"]`` (the TransformerLens config, kept so plain TransformerLens can
    load a checkpoint) is derived from ``config.json["run"]["model"]``, the one source of the
    architecture: an unknown key or a value that disagrees is refused, not ignored.

    Opening a run compares the shape keys that need no TransformerLens; ``full`` (when a
    model is built, TransformerLens being imported anyway) checks every key against the
    config TransformerLens derives. A missing shape key (a typo) triggers the full check.
    """
    cheap = {k: getattr(config.model, k) for k in _CHEAP_SHAPE}
    cheap.update(d_vocab=data.get("d_vocab"), n_ctx=data.get("n_ctx"))
    if not full and all(k in model for k in cheap):
        bad = {k: cheap[k] for k in cheap if model[k] != cheap[k]}
    else:
        from grokscope.runs.model import bridge_config_dict

        try:
            expected = bridge_config_dict(config.model, int(data["d_vocab"]), int(data["n_ctx"]), config.seed)
        except (KeyError, TypeError, ValueError):
            return  # an older data section: nothing to derive from
        unknown = set(model) - set(expected)
        if unknown:
            raise RunError(f"{cfg_path}: {unknown_key_message('model', unknown, expected)}")
        shape = (*cheap, "d_head", "act_fn", "normalization_type")
        bad = {k: expected.get(k) for k in shape if k in model and model[k] != expected.get(k)}
    if bad:
        diffs = ", ".join(f"{k} {model[k]!r} (run.model gives {v!r})" for k, v in bad.items())
        raise RunError(f"{cfg_path}: the model section disagrees with run.model, the architecture's one "
                       f"source: {diffs}; restore config.json, or make the two sections agree")


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file, fsync and rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True, repr=False)
class Run(Summarized):
    """An opened run directory.

    Attributes:
        path: the run directory.
        config: the frozen :class:`~grokscope.runs.config.RunConfig`.
        model_config: the TransformerLens config dict (``config.json["model"]``).
        data_info: content hash and sizes of the data (``config.json["data"]``).
    """

    path: Path
    config: RunConfig
    model_config: dict[str, Any]
    data_info: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        """Directory, config name, task, model shape, checkpoints."""
        steps = self.steps()
        m = self.config.model
        return {"path": str(self.path), "name": self.config.name, "task": self.config.task.task,
                "model": f"{m.n_layers}L d{m.d_model} {m.n_heads}h", "checkpoints": len(steps),
                "last_step": steps[-1] if steps else None}

    # -- creation ---------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike[str], config: RunConfig, dataset: TaskDataset) -> Run:
        """Create a new run directory holding the config and the data split.

        Raises:
            RunError: if ``path`` already holds a run (resume it instead).
        """
        from grokscope.runs.model import bridge_config_dict
        from grokscope.tasks.paper_format import save_paper_format

        path = Path(path)
        if (path / CONFIG_FILE).exists():
            raise RunError(f"{path} already holds a run; resume it with `grokscope train --resume {path}` or pick another --out")
        path.mkdir(parents=True, exist_ok=True)
        save_paper_format(dataset, path / DATA_DIR)
        stats = dataset.stats()
        atomic_write_json(path / DATA_DIR / "stats.json", stats)
        data_info = {
            "content_hash": stats["content_hash"],
            "task": dataset.task,
            "d_vocab": len(dataset.vocab),
            "n_ctx": dataset.n_ctx,
            "splits": stats["splits"],
        }
        model_cfg = bridge_config_dict(config.model, len(dataset.vocab), dataset.n_ctx, config.seed)
        doc = {
            "schema_version": SCHEMA_VERSION,
            "grokscope_version": __version__,
            "run": config.to_dict(),
            "model": model_cfg,
            "data": data_info,
        }
        (path / CHECKPOINTS_DIR).mkdir(exist_ok=True)
        atomic_write_json(path / CONFIG_FILE, doc)
        return cls(path=path, config=config, model_config=model_cfg, data_info=data_info)

    # -- opening ----------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Run:
        """Open an existing run directory, checking its schema version.

        Raises:
            RunError: missing directory or config, unreadable JSON, unknown schema.
        """
        path = Path(path)
        cfg_path = path / CONFIG_FILE
        if not path.is_dir():
            raise RunError(f"{path}: no such run directory")
        if not cfg_path.is_file():
            raise RunError(f"{cfg_path}: missing; {path} is not a grokscope run directory")
        try:
            doc = json.loads(cfg_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RunError(f"{cfg_path}: not valid JSON ({e}); restore it from a backup") from None
        if not isinstance(doc, dict):
            raise RunError(f"{cfg_path}: expected a JSON object")
        version = doc.get("schema_version")
        if version != SCHEMA_VERSION:
            raise RunError(
                f"{cfg_path}: schema_version {version!r} is not supported (this grokscope "
                f"{__version__} reads version {SCHEMA_VERSION}); use a matching grokscope version"
            )
        for key in ("run", "model", "data"):
            if key not in doc:
                raise RunError(f"{cfg_path}: missing the {key!r} section")
        try:
            config = RunConfig.from_dict(doc["run"])
        except (ValueError, TypeError) as e:
            raise RunError(f"{cfg_path}: invalid run config: {e}") from None
        _check_model_section(cfg_path, config, doc["model"], doc["data"])
        return cls(path=path, config=config, model_config=doc["model"], data_info=doc["data"])

    # -- checkpoints ------------------------------------------------------------
    @property
    def checkpoints_dir(self) -> Path:
        return self.path / CHECKPOINTS_DIR

    def steps(self) -> list[int]:
        """Steps of every complete checkpoint, ascending."""
        out = []
        if not self.checkpoints_dir.is_dir():
            return out
        for p in self.checkpoints_dir.iterdir():
            name = p.name
            if p.is_dir() and name.startswith("step_") and name[5:].isdigit() and (p / MODEL_FILE).is_file():
                out.append(int(name[5:]))
        return sorted(out)

    def checkpoint_path(self, step: int) -> Path:
        """Directory of the checkpoint at ``step``.

        Raises:
            RunError: no checkpoint at that step (the message lists the ones there are),
                or the checkpoint directory holds a pickle file (never loaded).
        """
        if isinstance(step, bool) or not isinstance(step, int):
            return self.checkpoint_path(self.resolve_step(step))
        p = self.checkpoints_dir / step_dir_name(step)
        refuse_pickles(p)
        if not (p / MODEL_FILE).is_file():
            steps = self.steps()
            shown = ", ".join(map(str, steps[:20])) + (" ..." if len(steps) > 20 else "")
            raise RunError(
                f"{self.path}: no checkpoint at step {step}; available steps: {shown or 'none'} "
                "(pass one of them to --step)"
            )
        return p

    def resolve_step(self, step: int | None) -> int:
        """``step`` itself, or the latest step when None.

        Raises:
            RunError: not a checkpoint step (the message lists the available steps);
                a string of digits such as ``"1500"`` is read as that step.
        """
        if step is not None:
            if isinstance(step, str) and step.strip().isdigit():
                step = int(step)
            if isinstance(step, bool) or not isinstance(step, int):
                steps = self.steps()
                shown = ", ".join(map(str, steps[:20])) + (" ..." if len(steps) > 20 else "")
                raise RunError(f"{self.path}: step must be a checkpoint step (an int), got {step!r}; "
                               f"available steps: {shown or 'none'}")
            self.checkpoint_path(step)
            return step
        steps = self.steps()
        if not steps:
            raise RunError(f"{self.path}: holds no checkpoint yet")
        return steps[-1]

    def checkpoint_meta(self, step: int) -> dict[str, Any]:
        p = self.checkpoint_path(step) / META_FILE
        try:
            return json.loads(p.read_text())
        except FileNotFoundError:
            return {"step": step}

    def build_model(self, device: str | None = None) -> TransformerBridge:
        """A freshly initialised model of this run's shape (the run's init seed)."""
        from grokscope.runs.model import build_model

        _check_model_section(self.path / CONFIG_FILE, self.config, self.model_config, self.data_info, full=True)

        return build_model(
            self.config.model, self.data_info["d_vocab"], self.data_info["n_ctx"], self.config.seed, device=device
        )

    def load_model(self, step: int | None = None, device: str | None = None) -> TransformerBridge:
        """The model at checkpoint ``step`` (latest when None), in eval mode.

        Raises:
            RunError: no such step, a pickle in place of weights, corrupt weights, or
                weights whose shapes disagree with the config.
        """
        from grokscope.runs.model import load_tensors

        step = self.resolve_step(step)
        tensors = read_safetensors(self.checkpoint_path(step) / MODEL_FILE)
        model = self.build_model(device=device)
        try:
            load_tensors(model, tensors, strict=True)
        except (RuntimeError, ValueError) as e:
            first = str(e).strip().splitlines()
            raise RunError(
                f"{self.checkpoint_path(step) / MODEL_FILE}: weights do not match {self.path / CONFIG_FILE} "
                f"({first[1].strip() if len(first) > 1 else first[0]}); restore that config.json, or load this checkpoint with the run it belongs to"
            ) from None
        model.eval()
        return model

    # -- data and metrics -------------------------------------------------------
    def dataset(self) -> TaskDataset:
        """The run's data split, read from ``RUN/data`` and checked against its hash.

        Raises:
            RunError: missing/corrupt files, or a content hash that differs from config.json.
        """
        from grokscope.tasks.paper_format import load_paper_format

        try:
            ds = load_paper_format(self.path / DATA_DIR, task=self.data_info.get("task", self.config.task.task))
        except (FileNotFoundError, ValueError) as e:
            raise RunError(f"{self.path / DATA_DIR}: {e}") from None
        if len(ds.vocab) != self.data_info.get("d_vocab"):
            raise RunError(
                f"{self.path / DATA_DIR / 'vocab.json'}: {len(ds.vocab)} tokens, but {self.path / CONFIG_FILE} "
                f"says d_vocab={self.data_info.get('d_vocab')}; the vocabulary was changed: restore "
                f"{self.path / DATA_DIR} from a backup or re-create the run"
            )
        want = self.data_info.get("content_hash")
        if want and ds.content_hash() != want:
            raise RunError(
                f"{self.path / DATA_DIR}: content hash {ds.content_hash()[:12]} differs from "
                f"{want[:12]} in {self.path / CONFIG_FILE}; the data files were changed: restore "
                "them from a backup or re-create the run"
            )
        return ds

    def metrics(self) -> list[dict[str, Any]]:
        """Every evaluation record of ``metrics.jsonl`` (a torn last line is skipped)."""
        p = self.path / METRICS_FILE
        if not p.is_file():
            return []
        out = []
        for line in p.read_text().splitlines():
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out


def refuse_pickles(directory: Path) -> None:
    """Refuse a checkpoint directory that holds a pickle file (by suffix); reads nothing.

    grokscope writes only safetensors and JSON, so a pickle there was put there by
    something else; loading it could run arbitrary code.

    Raises:
        RunError: naming the first pickle file found.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return
    found = sorted(f.name for f in directory.iterdir() if f.suffix.lower() in PICKLE_SUFFIXES)
    if found:
        raise RunError(
            f"{directory / found[0]}: a pickle file in a grokscope checkpoint, refused: unpickling can "
            "run arbitrary code and grokscope loads only safetensors + JSON. Delete it (convert it to "
            f"{MODEL_FILE} with safetensors only if you trust its source)"
        )


def read_safetensors(path: Path) -> dict[str, Any]:
    """Read a safetensors file, refusing anything else (never unpickles).

    Raises:
        RunError: missing file, a pickle (by content or by suffix), or a corrupt file.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise RunError(f"{path}: missing")
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05") or head[:4] == b"PK\x03\x04":
        raise RunError(
            f"{path}: is a pickle/torch.save archive, not safetensors; grokscope never unpickles "
            "(it could run code). Convert it with safetensors where you trust its source."
        )
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise RunError(f"{path}: corrupt or truncated safetensors file ({e}); delete this checkpoint or restore it") from None


def write_checkpoint(
    run_path: Path,
    step: int,
    tensors: dict[str, Any],
    meta: dict[str, Any],
    resume: tuple[dict[str, Any], dict[str, Any]] | None = None,
) -> Path:
    """Write ``checkpoints/step_XXXXXXXX`` atomically (build under a temp name, rename).

    ``resume`` = (optimizer tensors, trainer state) is stored beside the weights; older
    checkpoints lose their resume state once the new one is in place.
    """
    from safetensors.torch import save_file

    ck = Path(run_path) / CHECKPOINTS_DIR
    final = ck / step_dir_name(step)
    tmp = ck / f".{step_dir_name(step)}.tmp-{os.getpid()}"
    try:
        ck.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        save_file(tensors, str(tmp / MODEL_FILE))
        if resume is not None:
            opt_tensors, state = resume
            save_file(opt_tensors, str(tmp / OPTIMIZER_FILE))
            (tmp / TRAINER_STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():  # re-saving a step (e.g. after resume): swap in place
            old = ck / f".{step_dir_name(step)}.old-{os.getpid()}"
            os.replace(final, old)
            try:
                os.replace(tmp, final)
            except OSError:
                os.replace(old, final)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RunError(
            f"{final}: could not write this checkpoint ({e.strerror or e}); the checkpoints already "
            f"in {ck} are intact. Free disk space or make {Path(run_path)} writable, then retry "
            f"(`grokscope train --resume {Path(run_path)}` continues a training run)"
        ) from e
    _fsync_dir(ck)
    if resume is not None:
        for p in ck.iterdir():
            if p.is_dir() and p.name.startswith("step_") and p != final:
                for name in (OPTIMIZER_FILE, TRAINER_STATE_FILE):
                    (p / name).unlink(missing_ok=True)
    for p in ck.iterdir():  # leftovers of interrupted writes
        if p.name.startswith(".step_") and p != tmp:
            name, _, kind = p.name[1:].partition(".")
            if kind.startswith("old-") and not (ck / name).exists():  # killed mid-swap: restore
                os.replace(p, ck / name)
            else:
                shutil.rmtree(p, ignore_errors=True)
    return final


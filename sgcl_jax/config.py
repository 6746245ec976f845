"""The run configuration as typed dataclasses: the one source of defaults and the one place values are checked.

`configs/*.py` return a `Config` from `get_config()` (starting from `base_config()`, the defaults), and
ml_collections' `config_flags` reads it as it is: every field can be overridden from the command line
(`--config.optim.lr=3e-5`), parsed by the field's type. `Config.from_dict` then checks the whole config once,
refusing an unknown field or an invalid value with one line naming the field, before any work starts; the same
function reads a run folder's `config.json` (and a `ConfigDict` from an older config file).

The dataclasses are mutable only so that the flag parser can set fields (it assigns attributes); every
library function takes them as values and builds changed copies with `Config.replace`. They hash by value
(`unsafe_hash`): the train step is cached on its optimiser and objective sections. Annotations are not
postponed (`from __future__ import annotations`): config_flags reads the field types as classes.
"""

import dataclasses
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_collections

from sgcl_jax import tasks

# The vocabulary of the config; the modules that implement each name import it from here (this module imports no
# JAX, so a config validates, and a CLI answers --help, without loading it).
SOURCES = ("stsb", "text", "tfds")
CLASSIFIERS = ("logreg", "mlp")
DTYPES = ("float32", "bfloat16")
POOLINGS = ("cls", "mean", "max")
OBJECTIVES = ("sg_opt", "sg", "opt1", "opt2")


class ConfigError(ValueError):
    """An invalid or unknown config field; the message names it."""


def _require(ok: bool, field: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"config: {field}: {message}")


@dataclasses.dataclass(unsafe_hash=True)
class OptimConfig:
    """AdamW + warmup/linear decay + global-norm clipping; the defaults are SG-BERT's."""

    lr: float = 5e-5
    b1: float = 0.9
    b2: float = 0.9
    eps: float = 1e-6
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    clip_norm: float = 1.0

    def __post_init__(self) -> None:
        checks = {"lr": self.lr > 0, "b1": 0 <= self.b1 < 1, "b2": 0 <= self.b2 < 1, "eps": self.eps > 0,
                  "weight_decay": self.weight_decay >= 0, "warmup_ratio": 0 <= self.warmup_ratio <= 1,
                  "clip_norm": self.clip_norm > 0}
        for name, ok in checks.items():
            _require(ok, f"optim.{name}", f"{getattr(self, name)} is out of range "
                     "(lr, eps, clip_norm > 0; b1, b2 in [0, 1); warmup_ratio in [0, 1])")


@dataclasses.dataclass(unsafe_hash=True)
class ObjectiveConfig:
    """Which loss, its temperature and the regulariser's weight."""

    name: str = "sg_opt"
    tau: float = 0.01
    lam: float = 0.1

    def __post_init__(self) -> None:
        _require(self.name in OBJECTIVES, "objective.name", f"{self.name!r}: choose from {OBJECTIVES}")
        _require(self.tau > 0, "objective.tau", f"{self.tau}: must be > 0")
        _require(self.lam >= 0, "objective.lam", f"{self.lam}: must be >= 0")


@dataclasses.dataclass(unsafe_hash=True)
class ModelConfig:
    """Which BERT is the guide (and so BERT_T's start), how it computes, and the projection head."""

    name: str = "minilm"  # 'minilm' (bundled), a Hugging Face folder or hub id, or 'random'
    tokenizer: str = "minilm"  # for name='random' only
    init_seed: int = 0  # for name='random' only
    random: dict = dataclasses.field(default_factory=lambda: {  # for name='random' only: BertConfig fields
        "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
        "max_position_embeddings": 128, "vocab_size": 30522})
    max_length: int = 128
    dtype: str = "float32"  # compute dtype of both BERTs and the head in training; params stay fp32
    remat: bool = False  # rematerialise BERT_T's layers (large batches)
    head: bool = True  # the projection head f; False compares [CLS] and the views directly (Table 5)
    pooling: str = "cls"  # BERT_T's trained sentence vector: last-layer [CLS] (the paper), or mean/max of tokens
    head_dim: int = 4096

    def __post_init__(self) -> None:
        _require(self.dtype in DTYPES, "model.dtype", f"{self.dtype!r}: choose from {DTYPES}")
        _require(2 <= self.max_length <= 4096, "model.max_length", f"{self.max_length}: must be in 2..4096")
        _require(self.head_dim > 0, "model.head_dim", f"{self.head_dim}: must be > 0")
        _require(self.pooling in POOLINGS, "model.pooling", f"{self.pooling!r}: choose from {POOLINGS}")


@dataclasses.dataclass(unsafe_hash=True)
class GuideConfig:
    """How each hidden state of the frozen guide becomes a view.

    `layer_min..layer_max` is an inclusive range of hidden-state indices (0 = embedding output, -1 = the last
    layer). The released code's `--lmin a --lmax b` is an exclusive slice `[a:b]`, with `--lmax -1` meaning
    every layer: it equals `layer_min=a, layer_max=b-1`, and `--lmax -1` equals `layer_max=-1`.
    """

    pooling: str = "mean"  # released code: mean; the paper's text: max
    layer_min: int = 0
    layer_max: int = -1
    dropout: bool = True  # the released code runs the guide in train mode

    def __post_init__(self) -> None:
        _require(self.pooling in POOLINGS, "guide.pooling", f"{self.pooling!r}: choose from {POOLINGS}")
        _require(self.layer_min >= 0, "guide.layer_min", f"{self.layer_min}: must be >= 0")
        _require(self.layer_max >= -1, "guide.layer_max", f"{self.layer_max}: must be >= -1 (-1 = last layer)")


@dataclasses.dataclass(unsafe_hash=True)
class DataConfig:
    """The unlabeled training text and the global batch."""

    source: str = "stsb"  # 'stsb' (all STS-B sentences), 'text' (data.files) or 'tfds'
    files: tuple[str, ...] = ()  # text files, one sentence a line, .gz allowed
    tfds_name: str = ""
    tfds_split: str = "train"
    tfds_feature: str = "text"
    tfds_data_dir: str = ""
    max_sentences: int = 0  # 0: all
    data_dir: str = ""  # STS data folder; '' = $SGCL_DATA_DIR or the user cache
    download: bool = True  # fetch STS-B into the data folder when it is absent
    batch_size: int = 16  # global batch: every sentence's negatives come from all of it
    num_epochs: int = 1
    buckets: tuple[int, ...] = (16, 32, 64, 128)

    def __post_init__(self) -> None:
        _require(self.source in SOURCES, "data.source", f"{self.source!r}: choose from {SOURCES}")
        _require(self.source != "text" or bool(self.files), "data.files",
                 "give at least one text file for data.source='text' (--config.data.files=a.txt,b.txt)")
        _require(self.source != "tfds" or bool(self.tfds_name), "data.tfds_name", "required for data.source='tfds'")
        _require(self.batch_size >= 2, "data.batch_size", f"{self.batch_size}: a contrastive batch needs >= 2")
        _require(self.num_epochs >= 1, "data.num_epochs", f"{self.num_epochs}: must be >= 1")
        _require(self.max_sentences >= 0, "data.max_sentences", f"{self.max_sentences}: must be >= 0 (0 = all)")
        _require(bool(self.buckets) and all(b > 0 for b in self.buckets), "data.buckets",
                 f"{self.buckets}: positive lengths")


@dataclasses.dataclass(unsafe_hash=True)
class TrainConfig:
    """Schedule length, dev evaluation, early stopping, logging and checkpoints."""

    num_steps: int = 0  # 0: num_epochs x steps per epoch
    eval_every: int = 50  # dev evaluation (STS-B dev, [CLS]) and best-checkpoint selection; 0: none
    patience: int = 10  # early stop once dev fell below the previous evaluation this many times
    log_every: int = 10
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("log_every", "checkpoint_every", "keep_checkpoints", "patience"):
            _require(getattr(self, name) >= 1, f"train.{name}", f"{getattr(self, name)}: must be >= 1")
        for name in ("num_steps", "eval_every"):
            _require(getattr(self, name) >= 0, f"train.{name}", f"{getattr(self, name)}: must be >= 0")


@dataclasses.dataclass(unsafe_hash=True)
class EvalConfig:
    """Dev selection and the final evaluation: pooling, precision, tasks, and the transfer classifier."""

    pooling: str = "cls"
    batch_size: int = 64
    dtype: str = "float32"  # evaluation runs in fp32 whatever model.dtype is; 'bfloat16' opts in
    final_tasks: tuple[str, ...] = tasks.STS_TASKS  # names, aliases (sts, transfer, sts17) or STS folders
    download: bool = False  # fetch missing STS tasks (STS12-16, SICK-R) before the final evaluation
    also_last: bool = True  # also score the last state (what the released training.py reports)
    senteval_dir: str = ""  # SentEval data folder; '' = $SGCL_SENTEVAL_DIR
    classifier: str = "logreg"  # transfer tasks: 'logreg' or 'mlp' (SentEval's)
    kfold: int = 10
    classifier_seeds: tuple[int, ...] = (1111,)  # SentEval's seed; the paper averages 8

    def __post_init__(self) -> None:
        _require(self.pooling in POOLINGS, "eval.pooling", f"{self.pooling!r}: choose from {POOLINGS}")
        _require(self.dtype in DTYPES, "eval.dtype", f"{self.dtype!r}: choose from {DTYPES}")
        _require(self.batch_size >= 1, "eval.batch_size", f"{self.batch_size}: must be >= 1")
        _require(self.classifier in CLASSIFIERS, "eval.classifier",
                 f"{self.classifier!r}: choose from {CLASSIFIERS}")
        _require(self.kfold >= 2, "eval.kfold", f"{self.kfold}: must be >= 2")
        _require(bool(self.classifier_seeds), "eval.classifier_seeds", "give at least one seed")
        try:
            tasks.expand(self.final_tasks)
        except ValueError as e:
            raise ConfigError(f"config: eval.final_tasks: {e}") from None


@dataclasses.dataclass(unsafe_hash=True)
class MeshConfig:
    """The device mesh: data-parallel size (-1 = every device) x model size, and the params' layout on it."""

    data: int = -1
    model: int = 1
    fsdp: bool = False  # shard trainable params, optimizer state and guide over `data` (ZeRO-3), not replicate

    def __post_init__(self) -> None:
        _require(self.model >= 1, "mesh.model", f"{self.model}: must be >= 1")
        _require(self.data == -1 or self.data >= 1, "mesh.data", f"{self.data}: -1 or >= 1")


@dataclasses.dataclass(unsafe_hash=True)
class Config:
    """A whole run: SG-OPT on the bundled MiniLM with the paper's hyper-parameters (Table 8 + the released code)."""

    seed: int = 1
    seeds: tuple[int, ...] = ()  # non-empty: run each seed in <workdir>/seed_<s> and report mean +- std
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    guide: GuideConfig = dataclasses.field(default_factory=GuideConfig)
    objective: ObjectiveConfig = dataclasses.field(default_factory=ObjectiveConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)

    def __post_init__(self) -> None:
        _require(self.seed >= 0, "seed", f"{self.seed}: must be >= 0")
        _require(all(s >= 0 for s in self.seeds), "seeds", f"{self.seeds}: every seed must be >= 0")
        repeated = sorted({s for s in self.seeds if self.seeds.count(s) > 1})
        _require(not repeated, "seeds", f"{self.seeds} repeats {repeated}: give each seed once")

    @classmethod
    def from_dict(cls, d: Any) -> "Config":
        """A validated Config from a Config (as the flag parser left it), a run's config.json, a dict or a
        ConfigDict."""
        if isinstance(d, ml_collections.ConfigDict):
            d = d.to_dict()
        try:
            return _build(cls, d, "")
        except ConfigError:
            raise
        except ValueError as e:  # a section's own check (ObjectiveConfig, OptimConfig) names its field
            raise ConfigError(f"config: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples as lists once written)."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "Config":
        """A copy with dotted fields changed, validated: `cfg.replace(**{"optim.lr": 1e-4})`."""
        d = self.to_dict()
        for key, value in changes.items():
            *parents, last = key.split(".")
            node = d
            for p in parents:
                if not isinstance(node.get(p), dict):
                    raise ConfigError(f"config: {key}: no such field")
                node = node[p]
            if last not in node:
                raise ConfigError(f"config: {key}: no such field")
            node[last] = value
        return Config.from_dict(d)


def check_override(path: str) -> None:
    """Refuses a dotted override path that names no config field (`optim.lrr`), naming the section's fields."""
    cls: Any = Config
    parts = path.split(".")
    for i, part in enumerate(parts):
        fields = {f.name: f for f in dataclasses.fields(cls)}
        section = ".".join(parts[:i]) or "config"
        if part not in fields:
            raise ConfigError(f"config: {path}: no such field (fields of {section}: {', '.join(fields)})")
        hint = typing.get_type_hints(cls)[part]
        if not dataclasses.is_dataclass(hint):
            if i < len(parts) - 1 and not (hint is dict or typing.get_origin(hint) is dict):
                raise ConfigError(f"config: {path}: {'.'.join(parts[:i + 1])} is a value, not a section")
            return
        cls = hint
    raise ConfigError(f"config: {path}: is a section; set one of its fields")


def base_config() -> Config:
    """The defaults, for a config file's `get_config()` to change field by field."""
    return Config()


# The shipped configs: installed inside the package (sgcl_jax/configs), or the checkout's top-level configs/.
CONFIG_DIRS = (Path(__file__).parent / "configs", Path(__file__).parent.parent / "configs")


def shipped_configs() -> dict[str, Path]:
    """The configs that ship with sgcl_jax, by name (default, tiny, nli, bert_base)."""
    found: dict[str, Path] = {}
    for folder in CONFIG_DIRS:
        for path in sorted(folder.glob("*.py")):
            if not path.name.startswith("_"):
                found.setdefault(path.stem, path)
    return found


def config_path(name_or_path: str) -> Path:
    """A config file: an existing path, or a shipped config's name ('default' or 'default.py')."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    known = shipped_configs()
    name = path.stem if name_or_path.endswith(".py") else name_or_path
    if name in known:
        return known[name]
    raise FileNotFoundError(f"--config {name_or_path}: no such file, and no shipped config of that name "
                            f"(shipped: {', '.join(known)})")


def load_config_file(name_or_path: str) -> Config:
    """The validated Config of a config file's `get_config()` (or of a shipped config, by name)."""
    import importlib.util

    path = config_path(name_or_path)
    spec = importlib.util.spec_from_file_location(f"_sgcl_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return Config.from_dict(module.get_config())


# ------------------------------------------------------------------------------------------ building


def _build(cls: type, d: Any, prefix: str) -> Any:
    if dataclasses.is_dataclass(d) and not isinstance(d, type):  # as the flag parser left it: check every field
        d = {f.name: getattr(d, f.name) for f in dataclasses.fields(d)}
    if not isinstance(d, Mapping):
        raise ConfigError(f"config: {prefix.rstrip('.') or 'config'}: expected a section, got {d!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise ConfigError(f"config: {', '.join(prefix + u for u in unknown)}: no such field "
                          f"(fields of {prefix.rstrip('.') or 'config'}: {', '.join(fields)})")
    hints = typing.get_type_hints(cls)
    kwargs = {name: _coerce(hints[name], d[name], prefix + name) for name in fields if name in d}
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, field: str) -> Any:
    """Checks a value against its field's type; tuples accept lists and a comma-separated string."""
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, field + ".")
    origin = typing.get_origin(hint)
    if origin is tuple:
        (item, _) = typing.get_args(hint)
        if isinstance(value, str):
            value = (value,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config: {field}: expected a list, got {value!r}")
        # The flag parser turns `--config.x=a,b` into ('a,b',): split comma strings here, whatever the item type.
        value = [p.strip() if isinstance(p, str) else p for v in value
                 for p in (v.split(",") if isinstance(v, str) else [v]) if not isinstance(p, str) or p.strip()]
        return tuple(_coerce(item, v, field) for v in value)
    if hint is dict or origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"config: {field}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config: {field}: expected True or False, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, str) and value.lstrip("-").isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config: {field}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config: {field}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"config: {field}: expected a string, got {value!r}")
        return value
    if isinstance(hint, types.UnionType):  # pragma: no cover - no such field today
        return value
    raise ConfigError(f"config: {field}: unsupported field type {hint}")  # pragma: no cover

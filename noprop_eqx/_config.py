"""`RunConfig`: every option of a training run, its default (the paper's Table 3 setting) and its
validation, in one frozen dataclass. The `noprop-eqx train` command line only parses its
arguments into a `RunConfig`; `noprop_eqx.train(config)` runs it from Python."""

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

from ._embeddings import PROTOTYPE_SCALES
from ._loop import EMBEDDINGS, EVAL_SOLVERS, VARIANTS
from ._losses import CT_WEIGHTINGS, FM_Z_INPUTS
from ._train import weight_decay_mode
from .models._factory import BACKBONES, backbone_name
from .noise_schedules import CosineNoiseSchedule

DATASETS = ("digits", "mnist", "cifar10", "cifar100")
LR_SCHEDULES = ("constant", "cosine")
COMPUTE_DTYPES = ("float32", "bfloat16")
CIFAR100_LABELS = ("fine", "coarse")
# NoProp-DT's cosine schedule's ceiling on ᾱ (at the last block): the class's own default.
DT_ALPHA_BAR_MAX = CosineNoiseSchedule.alpha_bar_max


class ConfigError(ValueError):
    """An option of a `RunConfig` that cannot work: the message says what was expected and
    what was got."""


def _expect(ok: bool, what: str, got: object) -> None:
    if not ok:
        raise ConfigError(f"expected {what}, got {got!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


SEED_RANGE = "an integer from -2^63 to 2^63 - 1"


def is_seed(value: object) -> bool:
    """A seed `jax.random.key` takes: a 64-bit signed integer."""
    return _is_int(value) and -(2**63) <= value < 2**63


def _positive(value: object) -> bool:
    return _is_int(value) and value >= 1


@dataclass(frozen=True)
class RunConfig:
    """A `noprop-eqx train` run. The defaults are the paper's setting (Table 3) on MNIST.

    Each field is the command-line option of the same name with `-` for `_`
    (`batch_size` is `--batch-size`); the options' help (`noprop-eqx train --help`) says what
    each does. Invalid values raise `ConfigError` when the configuration is made, before any
    data is read or model built.
    """

    variants: tuple[str, ...] | list[str] = ("DT",)
    dataset: str = "mnist"
    data_dir: str | None = None
    epochs: int = 100
    stop_after: int | None = None
    time_budget: float | None = None
    batch_size: int = 128
    lr: float = 1e-3
    lr_schedule: str = "constant"
    weight_decay: float = 1e-3
    embedding: str = "one-hot"
    prototype_scale: str | None = None
    fixed_embedding: bool = False
    embed_dim: int | None = None
    model: str = "paper"
    width: int = 64
    norm: str = "group"
    num_blocks: int = 10
    ct_gamma_init: tuple[float, float] | list[float] = (-2.0, 2.0)
    ct_fixed_schedule: bool = False
    ct_weighting: str = "snr-prime"
    fm_z_input: str = "full"
    dt_alpha_bar_max: float = DT_ALPHA_BAR_MAX
    compute_dtype: str = "float32"
    steps_per_call: int | str = "auto"
    augment_shift: int = 0
    seed: int = 0
    seeds: tuple[int, ...] | list[int] | None = None
    cifar100_labels: str = "fine"
    verify_md5: bool = True
    limit_train: int | None = None
    limit_test: int | None = None
    subset_seed: int = 0
    eval_solver: str = "heun"
    eval_steps: int = 20
    inference_runs: int = 5
    out: str = "runs"
    results: str | None = None
    resume: bool = False
    progress: bool = True
    mesh: str | None = None
    cpu_devices: int | None = None
    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None

    def __post_init__(self):
        variants = self.variants
        _expect(
            isinstance(variants, list | tuple) and len(variants) > 0,
            f"variants to be a non-empty list of {VARIANTS}",
            variants,
        )
        upper = tuple(dict.fromkeys(str(v).upper() for v in variants))  # unique, in order
        for v in upper:
            _expect(v in VARIANTS, f"variants among {VARIANTS}", v)
        object.__setattr__(self, "variants", upper)
        if self.seeds is not None:
            _expect(
                isinstance(self.seeds, list | tuple)
                and len(self.seeds) > 0
                and all(is_seed(s) for s in self.seeds),
                "seeds to be a non-empty list of integers, each from -2^63 to 2^63 - 1, or None",
                self.seeds,
            )
            _expect(len(set(self.seeds)) == len(self.seeds), "seeds without repeats", self.seeds)
            object.__setattr__(self, "seeds", tuple(self.seeds))
        gamma = self.ct_gamma_init
        _expect(
            isinstance(gamma, list | tuple)
            and len(gamma) == 2
            and all(isinstance(g, int | float) and not isinstance(g, bool) for g in gamma)
            and all(math.isfinite(g) for g in gamma)
            and gamma[0] < gamma[1],
            "ct_gamma_init to be two finite numbers G0 < G1 (the learned schedule's γ at t = 1 "
            "and at t = 0)",
            gamma,
        )
        object.__setattr__(self, "ct_gamma_init", (float(gamma[0]), float(gamma[1])))
        ceiling, floor = self.dt_alpha_bar_max, CosineNoiseSchedule.alpha_bar_min
        _expect(
            isinstance(ceiling, int | float)
            and not isinstance(ceiling, bool)
            and floor < ceiling < 1.0,
            f"dt_alpha_bar_max to be a number in ({floor}, 1): the ceiling on ᾱ of NoProp-DT's "
            "cosine schedule, below 1 so that the last block's SNR stays finite",
            ceiling,
        )
        object.__setattr__(self, "dt_alpha_bar_max", float(ceiling))
        object.__setattr__(self, "out", str(self.out))
        if self.results is not None:
            object.__setattr__(self, "results", str(self.results))
        self._check_choices()
        self._check_numbers()
        self._check_combinations()

    def _check_choices(self) -> None:
        for name, choices in (
            ("dataset", DATASETS),
            ("lr_schedule", LR_SCHEDULES),
            ("embedding", EMBEDDINGS),
            ("model", BACKBONES),
            ("compute_dtype", COMPUTE_DTYPES),
            ("cifar100_labels", CIFAR100_LABELS),
            ("eval_solver", EVAL_SOLVERS),
            ("ct_weighting", CT_WEIGHTINGS),
            ("fm_z_input", FM_Z_INPUTS),
        ):
            _expect(
                getattr(self, name) in choices,
                f"{name} to be one of {choices}",
                getattr(self, name),
            )
        if self.prototype_scale is not None:
            _expect(
                self.prototype_scale in PROTOTYPE_SCALES,
                f"prototype_scale to be one of {PROTOTYPE_SCALES} or None",
                self.prototype_scale,
            )

    def _check_numbers(self) -> None:
        for name in ("epochs", "batch_size", "width", "num_blocks", "eval_steps"):
            _expect(
                _positive(getattr(self, name)),
                f"{name} to be a positive integer",
                getattr(self, name),
            )
        for name in ("stop_after", "embed_dim", "limit_train", "limit_test"):
            value = getattr(self, name)
            _expect(
                value is None or _positive(value), f"{name} to be a positive integer or None", value
            )
        budget = self.time_budget
        _expect(
            budget is None
            or (isinstance(budget, int | float) and not isinstance(budget, bool) and budget > 0),
            "time_budget to be a number of seconds > 0 or None",
            budget,
        )
        _expect(is_seed(self.seed), f"seed to be {SEED_RANGE}", self.seed)
        _expect(
            _is_int(self.subset_seed) and self.subset_seed >= 0,
            "subset_seed to be a non-negative integer",
            self.subset_seed,
        )
        _expect(
            _is_int(self.augment_shift) and self.augment_shift >= 0,
            "augment_shift to be a non-negative integer",
            self.augment_shift,
        )
        for name in ("lr", "weight_decay"):
            value = getattr(self, name)
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            _expect(
                ok and math.isfinite(value) and value >= 0,
                f"{name} to be a finite number >= 0",
                value,
            )
        _expect(
            self.steps_per_call == "auto" or _positive(self.steps_per_call),
            "steps_per_call to be a positive integer or 'auto'",
            self.steps_per_call,
        )
        _expect(
            _is_int(self.inference_runs) and (self.inference_runs == 0 or self.inference_runs >= 2),
            "inference_runs to be 0 (skip) or >= 2 (for a standard error)",
            self.inference_runs,
        )

    def _check_combinations(self) -> None:
        _expect(
            isinstance(self.ct_fixed_schedule, bool),
            "ct_fixed_schedule to be True or False",
            self.ct_fixed_schedule,
        )
        if self.embedding != "prototype":
            for name, given in (
                ("prototype_scale", self.prototype_scale is not None),
                ("fixed_embedding", self.fixed_embedding),
            ):
                if given:
                    raise ConfigError(
                        f"{name} applies to embedding 'prototype' only, got embedding "
                        f"{self.embedding!r}"
                    )
        if self.ct_gamma_init != RunConfig.ct_gamma_init and "CT" not in self.variants:
            raise ConfigError(
                f"ct_gamma_init applies to variant 'CT' only, got variants {self.variants}"
            )
        if self.eval_solver == "recurrence" and "FM" in self.variants:
            raise ConfigError(
                "eval_solver 'recurrence' (Eq. 3 on a time grid) needs a noise schedule, which "
                "NoProp-CT has and FM has not: train FM with an ODE solver (euler, heun or "
                f"tsit5) or leave it out of the variants, got variants {self.variants}"
            )
        if self.ct_fixed_schedule and "CT" not in self.variants:
            raise ConfigError(
                f"ct_fixed_schedule applies to variant 'CT' only, got variants {self.variants}"
            )
        if self.ct_weighting != RunConfig.ct_weighting and "CT" not in self.variants:
            raise ConfigError(
                f"ct_weighting applies to variant 'CT' only, got variants {self.variants}"
            )
        if self.fm_z_input != RunConfig.fm_z_input and "FM" not in self.variants:
            raise ConfigError(
                f"fm_z_input applies to variant 'FM' only, got variants {self.variants}"
            )
        if self.dt_alpha_bar_max != DT_ALPHA_BAR_MAX and "DT" not in self.variants:
            raise ConfigError(
                f"dt_alpha_bar_max applies to variant 'DT' only, got variants {self.variants}"
            )
        if self.dataset == "digits" and self.model == "paper":
            raise ConfigError(
                "model: the paper's networks need images of at least 12×12 (MNIST, CIFAR); the "
                "digits are 8×8: expected model 'simple' or a ResNet with dataset 'digits', got "
                "'paper'"
            )
        if self.cifar100_labels != "fine" and self.dataset != "cifar100":
            raise ConfigError(
                f"cifar100_labels applies to dataset 'cifar100' only, got {self.dataset!r}"
            )
        try:
            backbone_name(self.model, self.width)
        except ValueError as e:
            raise ConfigError(f"width: {e}") from None
        try:
            backbone_name(self.model, self.width, self.norm)
        except ValueError as e:
            raise ConfigError(f"norm: {e}") from None
        if self.stop_after is not None and self.stop_after > self.epochs:
            raise ConfigError(
                f"expected stop_after <= epochs ({self.epochs}), got {self.stop_after}"
            )
        self._check_devices()

    def _check_devices(self) -> None:
        if self.norm == "batch" and self.mesh is not None:
            raise ConfigError(
                f"norm: BatchNorm backbones train on one device; expected no --mesh with "
                f"norm 'batch', got mesh {self.mesh!r} (use norm 'group' on a mesh)"
            )
        if self.seeds is not None and self.mesh is not None:
            raise ConfigError(
                "seeds: several seeds train in one step on one device; expected no --mesh "
                f"with them, got mesh {self.mesh!r} (train each seed on the mesh with --seed)"
            )
        for name in ("cpu_devices", "num_processes"):
            value = getattr(self, name)
            _expect(
                value is None or _positive(value), f"{name} to be a positive integer or None", value
            )
        _expect(
            self.process_id is None or (_is_int(self.process_id) and self.process_id >= 0),
            "process_id to be a non-negative integer or None",
            self.process_id,
        )
        if None not in (self.process_id, self.num_processes):
            _expect(
                self.process_id < self.num_processes,
                f"process_id below num_processes ({self.num_processes})",
                self.process_id,
            )
        if self.mesh is None:
            for name in ("coordinator", "num_processes", "process_id"):
                if getattr(self, name) is not None:
                    raise ConfigError(f"{name} applies to a run on a mesh: give --mesh too")
            return
        sizes = self.mesh_sizes
        if self.batch_size % sizes["data"]:
            raise ConfigError(
                f"expected batch_size divisible by the mesh's data={sizes['data']}, got "
                f"{self.batch_size}"
            )
        if sizes["blocks"] > 1:
            if set(self.variants) != {"DT"}:
                raise ConfigError(
                    f"mesh: blocks={sizes['blocks']} splits NoProp-DT's blocks; expected "
                    f"variants ('DT',), got {self.variants} (train the others with blocks=1)"
                )
            if self.num_blocks % sizes["blocks"]:
                works = [n for n in range(1, self.num_blocks + 1) if self.num_blocks % n == 0]
                raise ConfigError(
                    f"mesh: blocks={sizes['blocks']} does not divide num_blocks="
                    f"{self.num_blocks}; sizes that do: {works}"
                )
        _expect(
            self.steps_per_call in ("auto", 1),
            "steps_per_call 'auto' or 1 on a mesh (one step per call)",
            self.steps_per_call,
        )

    @property
    def mesh_sizes(self) -> dict[str, int]:
        """{"data": ..., "blocks": ...} from `mesh` ("data=4,blocks=2"); both 1 without one."""
        from .parallel import MeshError, parse_mesh

        if self.mesh is None:
            return {"data": 1, "blocks": 1}
        try:
            return parse_mesh(self.mesh)
        except MeshError as e:
            raise ConfigError(f"mesh: {e}") from None

    def replace(self, **changes) -> "RunConfig":
        """A copy with some fields changed (and validated again)."""
        return dataclasses.replace(self, **changes)

    @property
    def backbone(self) -> str:
        """The backbone's name with its width and norm (`"resnet18-w32"`, `"resnet18-w32-bn"`),
        as run records hold it."""
        return backbone_name(self.model, self.width, self.norm)

    @property
    def out_dir(self) -> Path:
        return Path(self.out)

    @property
    def resolved_prototype_scale(self) -> str | None:
        """None unless the embedding is "prototype", whose default scale is raw."""
        return None if self.embedding != "prototype" else self.prototype_scale or "raw"

    def for_seed(self, seed: int) -> "RunConfig":
        """This configuration for one of its `seeds`: that seed, its runs under `out/seed<S>`,
        no results file (the seeds' records are appended together)."""
        return self.replace(
            seed=seed, seeds=None, out=str(self.out_dir / f"seed{seed}"), results=None
        )

    def run_dir(self, variant: str) -> Path:
        """`out/<variant>` (one-hot) or `out/<variant>-<embedding>`."""
        name = variant if self.embedding == "one-hot" else f"{variant}-{self.embedding}"
        return self.out_dir / name

    @property
    def last_epoch(self) -> int:
        """The epoch this share of the run trains to: `stop_after`, else `epochs`."""
        return self.epochs if self.stop_after is None else self.stop_after

    def trajectory(self, variant: str) -> dict:
        """The settings that shape `variant`'s training trajectory and are known before the
        data is read: what `config.json` records and `--resume` requires to be unchanged."""
        limited = self.limit_train is not None or self.limit_test is not None
        return dict(
            variant=variant,
            dataset=self.dataset,
            model=self.backbone,
            embedding=self.embedding,
            prototype_scale=self.resolved_prototype_scale,
            fixed_embedding=self.fixed_embedding,
            augment_shift=self.augment_shift,
            num_blocks=self.num_blocks,
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            lr_schedule=self.lr_schedule,
            weight_decay=self.weight_decay,
            compute_dtype=self.compute_dtype,
            steps_per_call=self.steps_per_call,
            seed=self.seed,
            limit_train=self.limit_train,
            limit_test=self.limit_test,
            subset_seed=self.subset_seed if limited else None,
            cifar100_labels=self.cifar100_labels if self.dataset == "cifar100" else None,
            weight_decay_mode=weight_decay_mode(variant, self.weight_decay),
            ct_gamma_init=list(self.ct_gamma_init) if variant == "CT" else None,
            ct_fixed_schedule=self.ct_fixed_schedule if variant == "CT" else None,
            ct_weighting=self.ct_weighting if variant == "CT" else None,
            fm_z_input=self.fm_z_input if variant == "FM" else None,
            dt_alpha_bar_max=self.dt_alpha_bar_max if variant == "DT" else None,
        )


# Trajectory settings a resumed run must match; "epochs" only with a cosine schedule (whose
# length it sets): a constant-rate run may be extended with more epochs.
PINNED = (
    "variant",
    "dataset",
    "model",
    "embedding",
    "embed_dim",
    "prototype_scale",
    "fixed_embedding",
    "augment_shift",
    "num_blocks",
    "batch_size",
    "lr",
    "lr_schedule",
    "weight_decay",
    "compute_dtype",
    "steps_per_call",
    "seed",
    "limit_train",
    "subset_seed",
    "cifar100_labels",
    "weight_decay_mode",
    "lr_decay_steps",
    "ct_gamma_init",
    "ct_fixed_schedule",
    "ct_weighting",
    "fm_z_input",
    "dt_alpha_bar_max",
)


def saved_defaults(saved: dict) -> dict:
    """A saved `config.json` with the values of options added since it was written, as the run
    that wrote it used them."""
    saved = dict(saved)
    saved.setdefault("compute_dtype", "float32")
    saved.setdefault("prototype_scale", "raw" if saved.get("embedding") == "prototype" else None)
    saved.setdefault("fixed_embedding", False)
    saved.setdefault("augment_shift", 0)
    saved.setdefault("steps_per_call", "auto")
    saved.setdefault("subset_seed", None)  # first-N subsets
    saved.setdefault("cifar100_labels", "fine" if saved.get("dataset") == "cifar100" else None)
    saved.setdefault("weight_decay_mode", weight_decay_mode(saved.get("variant", "DT"), None))
    # CT's learned schedule started at γ = -5 and 5 before the option existed.
    saved.setdefault("ct_gamma_init", [-5.0, 5.0] if saved.get("variant") == "CT" else None)
    saved.setdefault("ct_fixed_schedule", False if saved.get("variant") == "CT" else None)
    saved.setdefault("ct_weighting", "snr-prime" if saved.get("variant") == "CT" else None)
    saved.setdefault("fm_z_input", "full" if saved.get("variant") == "FM" else None)
    saved.setdefault("dt_alpha_bar_max", DT_ALPHA_BAR_MAX if saved.get("variant") == "DT" else None)
    return saved


def settings_differ(saved: dict, now: dict, keys=PINNED) -> dict:
    """{key: (saved, now)} for the pinned settings that differ (keys absent from `now` are not
    compared: they are checked once the data is read)."""
    saved = saved_defaults(saved)
    return {k: (saved.get(k), now[k]) for k in keys if k in now and saved.get(k) != now[k]}

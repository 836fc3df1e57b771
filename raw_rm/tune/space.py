"""The Tune search space, pure: parse and validate ``tune.space``, baseline point, trial configs (no Ray import).

The space is YAML under ``tune.space``: dotted config paths mapped to distribution specs, applied to each
trial's copy of the config as overrides, so every trial runs THE training recipe on the one config tree.

    tune:
      space:
        loss.name: {choice: [bt, contrastive, focal]}
        loss.contrastive_tau: {loguniform: [0.05, 5], when: {loss.name: contrastive}}
        loss.gamma: {uniform: [0.5, 4]}          # `when` inferred: only losses that read gamma (focal)
        train.lr: {loguniform: [1.0e-5, 3.0e-4]}

Specs: ``choice: [...]``, ``grid: [...]`` (random searcher only), ``uniform: [low, high]``,
``loguniform: [low, high]`` (low > 0), ``randint: [low, high]`` (high exclusive), each with an optional
``when: {path: value | [values]}`` on a searched ``choice``/``grid`` parameter. A ``loss.<param>`` without ``when``
is sampled only for the chosen losses that read it (``raw_rm.losses.LOSSES[name].params``); likewise a model
parameter that only some architectures read (``ARCH_PARAMS``: ``model.cross_attention_layers`` for cross_attention,
...) is sampled only for the searched ``model.arch`` values that read it, and searching one whose architecture is
neither searched nor the base config's is an error. ``load_config`` checks
the whole space with :func:`parse_space` (so does ``run_tune``, before Ray starts): unknown paths (with the closest
known one), unknown or wrong-kind loss names (listing the valid ones), malformed specs, and every candidate value
against the config's own types and rules.
"""

from __future__ import annotations

import difflib
import math
import typing
from dataclasses import asdict, dataclass, fields, is_dataclass
from typing import Any, Literal

from raw_rm.config import RENAMED_KEYS, Config, ConfigError, apply_overrides, config_from_dict, renamed_key_message

DISTRIBUTIONS = ("choice", "grid", "uniform", "loguniform", "randint")
# ModelConfig fields that only some architectures read: searched, they are sampled only for those (architecture
# search with conditional parameters, e.g. cross_attention_layers only when model.arch is cross_attention).
ARCH_PARAMS: dict[str, tuple[str, ...]] = {
    "model.cross_attention_layers": ("cross_attention",),
    "model.num_heads": ("multihead",),
    "model.bootstrap": ("multihead",),
    "model.fusion": ("separate",),
    "model.shared_encoder": ("separate",),
    "model.aspects": ("multi_objective",),
    "model.aspect_weights": ("multi_objective",),
    "model.learned_gate": ("multi_objective",),
    "model.length_head": ("concat",),
}


@dataclass(frozen=True)
class ParamSpec:
    """One searched config path: its distribution and the conditions under which it is sampled."""

    path: str
    kind: Literal["choice", "grid", "uniform", "loguniform", "randint"]
    args: tuple[Any, ...]  # choice/grid: the values; otherwise (low, high)
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()  # (path, allowed values) pairs, all must hold

    def active(self, values: dict[str, Any]) -> bool:
        """Whether this parameter is sampled given the values of the parameters it depends on."""
        return all(values.get(path) in allowed for path, allowed in self.when)


def leaf_paths(cls: type = Config, prefix: str = "") -> list[str]:
    """Every settable dotted path of the config tree (``loss.contrastive_tau``, ``data.synthetic.seed``, ...)."""
    hints = typing.get_type_hints(cls)
    out: list[str] = []
    for f in fields(cls):
        if is_dataclass(hints[f.name]):
            out += leaf_paths(hints[f.name], f"{prefix}{f.name}.")
        else:
            out.append(f"{prefix}{f.name}")
    return out


def check_space(cfg: Config) -> None:
    """``load_config``'s check of ``tune.space`` (pass ``checks=[check_space]``): every path, spec and loss name.

    Raises:
        ConfigError: every problem of the space, one per line.
    """
    if cfg.tune.space:
        parse_space(cfg.tune.space, cfg)


def parse_space(space: dict[str, Any], base: Config) -> list[ParamSpec]:
    """Validate ``tune.space`` against the config tree and the loss registry; specs in sampling order.

    Raises:
        ConfigError: every problem found, one per line, e.g.
            ``tune.space: loss.name: unknown loss "hinge"; valid: bt, margin, ...``.
    """
    errors: list[str] = []
    known = leaf_paths()
    specs: dict[str, ParamSpec] = {}
    for path, raw in (space or {}).items():
        where = f"tune.space: {path}"
        if path in RENAMED_KEYS:
            errors.append(f"tune.space: {renamed_key_message(path)}")
            continue
        if path not in known:
            close = difflib.get_close_matches(str(path), known, n=1, cutoff=0.6)
            hint = f' (did you mean "{close[0]}"?)' if close else ""
            errors.append(f"{where}: unknown config path{hint}")
            continue
        if path.startswith("tune."):
            errors.append(f"{where}: the search cannot change its own tune.* settings")
            continue
        spec = _parse_spec(path, raw, where, errors)
        if spec is not None:
            specs[path] = spec
    if not errors:
        _check_values(specs, base, errors)
        _resolve_conditions(specs, base, errors)
        _resolve_arch_conditions(specs, base, errors)
    if errors:
        raise ConfigError("\n".join(errors))
    return _sampling_order(list(specs.values()))


def _parse_spec(path: str, raw: Any, where: str, errors: list[str]) -> ParamSpec | None:
    example = '{"loguniform": [0.05, 5]} or {"choice": [bt, focal]}'
    if not isinstance(raw, dict):
        errors.append(f"{where}: expected a distribution spec such as {example}, got {raw!r}")
        return None
    when = raw.get("when", {})
    kinds = [k for k in raw if k != "when"]
    unknown = [k for k in kinds if k not in DISTRIBUTIONS]
    if unknown or len(kinds) != 1:
        bad = (
            f'unknown distribution "{unknown[0]}"'
            if unknown
            else f"expected exactly one distribution, got {len(kinds)}"
        )
        errors.append(f"{where}: {bad}; valid: {', '.join(DISTRIBUTIONS)} (plus an optional when)")
        return None
    kind, args = kinds[0], raw[kinds[0]]
    if kind in ("choice", "grid"):
        if not isinstance(args, list) or not args:
            errors.append(f"{where}: {kind} expects a non-empty list of values, got {args!r}")
            return None
    else:
        if not (isinstance(args, list) and len(args) == 2 and all(is_number(a) for a in args)):
            errors.append(f"{where}: {kind} expects [low, high] numbers, got {args!r}")
            return None
        low, high = args
        if not low < high:
            errors.append(f"{where}: {kind} expects low < high, got [{low}, {high}]")
            return None
        if kind == "loguniform" and low <= 0:
            errors.append(f"{where}: loguniform expects low > 0, got {low}")
            return None
        if kind == "randint" and not all(isinstance(a, int) for a in args):
            errors.append(f"{where}: randint expects integer bounds [low, high) , got {args!r}")
            return None
    if when and kind == "grid":
        errors.append(f"{where}: a grid parameter cannot have a when condition (use choice)")
        return None
    if not isinstance(when, dict):
        errors.append(f"{where}: when expects a mapping {{path: value or [values]}}, got {when!r}")
        return None
    conditions = tuple((str(p), tuple(v) if isinstance(v, list) else (v,)) for p, v in when.items())
    return ParamSpec(path=path, kind=kind, args=tuple(args), when=conditions)


def is_number(value: Any) -> bool:
    """A finite int or float (booleans are not numbers here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_values(specs: dict[str, ParamSpec], base: Config, errors: list[str]) -> None:
    """Every candidate value (choices, bounds) must pass the config's types and rules; loss names the registry."""
    for spec in specs.values():
        where = f"tune.space: {spec.path}"
        if spec.path == "loss.name":
            bad = [m for m in (_loss_name_problem(v, base) for v in spec.args) if m]
            if bad:
                errors.extend(f"{where}: {m}" for m in bad)
                continue
        for value in spec.args:
            try:
                apply_overrides(base, {spec.path: value})
            except ConfigError as exc:
                reason = str(exc).split(": ", 1)[-1]
                errors.append(f"{where}: value {value!r} is not valid here: {reason}")


def _loss_name_problem(name: Any, base: Config) -> str | None:
    # raw_rm.losses (torch, seconds) is imported inside the functions that check loss names: load_config runs
    # check_space, and every `raw-rm COMMAND --help` loads this module through raw_rm.cli.common
    from raw_rm.losses import LOSSES

    if name not in LOSSES:
        return f'unknown loss "{name}"; valid: {", ".join(LOSSES)}'
    group = LOSSES[name].kind == "group"
    if group and base.data.kind != "groups":
        pair_names = ", ".join(n for n, s in LOSSES.items() if s.kind == "pair")
        return f'loss "{name}" is a ranking loss for k-wise groups (data.kind=groups); pairwise losses: {pair_names}'
    return None


def _resolve_conditions(specs: dict[str, ParamSpec], base: Config, errors: list[str]) -> None:
    """Check explicit ``when`` clauses; infer them for loss parameters (sampled only for losses that read them)."""
    from raw_rm.losses import LOSSES

    names = specs.get("loss.name")
    for path, spec in list(specs.items()):
        where = f"tune.space: {path}"
        for cond_path, allowed in spec.when:
            parent = specs.get(cond_path)
            if parent is None or parent.kind not in ("choice", "grid"):
                errors.append(f"{where}: when: {cond_path} must be a searched choice or grid parameter of tune.space")
                continue
            missing = [v for v in allowed if v not in parent.args]
            if missing:
                errors.append(f"{where}: when: {cond_path}={missing[0]!r} is not one of its values {list(parent.args)}")
                continue
            if cond_path == "loss.name" and path.startswith("loss."):
                param = path.split(".", 1)[1]
                unused = [n for n in allowed if param not in LOSSES[n].params]
                if unused:
                    uses = ", ".join(n for n, s in LOSSES.items() if param in s.params) or "none"
                    errors.append(f'{where}: when: loss "{unused[0]}" does not read {param} (losses that do: {uses})')
        if spec.when or names is None or not path.startswith("loss.") or path == "loss.name":
            continue
        param = path.split(".", 1)[1]
        readers = tuple(n for n in names.args if n in LOSSES and param in LOSSES[n].params)
        if readers:
            specs[path] = ParamSpec(path, spec.kind, spec.args, (("loss.name", readers),))
        elif any(param in s.params for s in LOSSES.values()):
            errors.append(f"{where}: none of the searched losses {list(names.args)} reads {param}")


def _resolve_arch_conditions(specs: dict[str, ParamSpec], base: Config, errors: list[str]) -> None:
    """Architecture parameters: check explicit ``when`` on ``model.arch``, infer it when absent, and refuse one
    whose architecture is neither searched nor the base config's (it would be sampled and never read)."""
    arch = specs.get("model.arch")
    for path, readers in ARCH_PARAMS.items():
        spec = specs.get(path)
        if spec is None:
            continue
        where = f"tune.space: {path}"
        explicit = dict(spec.when).get("model.arch")
        if explicit is not None:
            unused = [a for a in explicit if a not in readers]
            if unused:
                errors.append(
                    f"{where}: when: model.arch {unused[0]!r} does not read it (architectures that do: "
                    f"{', '.join(readers)})"
                )
            continue
        if arch is None:
            if base.model.arch not in readers:
                errors.append(
                    f"{where}: only model.arch {' or '.join(readers)} reads it, but the base config has "
                    f"model.arch={base.model.arch} and model.arch is not searched: search model.arch with "
                    f"{readers[0]} among its choices, or set model.arch={readers[0]}"
                )
            continue
        used = tuple(a for a in arch.args if a in readers)
        if not used:
            errors.append(
                f"{where}: none of the searched architectures {list(arch.args)} reads it (architectures "
                f"that do: {', '.join(readers)})"
            )
            continue
        specs[path] = ParamSpec(path, spec.kind, spec.args, (*spec.when, ("model.arch", used)))


def _sampling_order(specs: list[ParamSpec]) -> list[ParamSpec]:
    """Parents before the parameters conditioned on them (define-by-run samples in this order)."""
    ordered: list[ParamSpec] = []
    pending = list(specs)
    while pending:
        ready = [s for s in pending if all(p in {o.path for o in ordered} for p, _ in s.when)]
        if not ready:
            cycle = ", ".join(s.path for s in pending)
            raise ConfigError(f"tune.space: circular when conditions among {cycle}")
        ordered += ready
        pending = [s for s in pending if s not in ready]
    return ordered


def baseline_point(specs: list[ParamSpec], base: Config) -> dict[str, Any]:
    """The base config's own values of the searched paths (what an untuned run would use)."""
    data = asdict(base)
    point: dict[str, Any] = {}
    for spec in specs:
        value: Any = data
        for part in spec.path.split("."):
            value = value[part]
        point[spec.path] = value if spec.active(point) else None
    return point


def trial_config(base: Config | dict[str, Any], params: dict[str, Any]) -> Config:
    """The config of one trial: base plus the sampled values (parameters left unsampled are None or absent)."""
    cfg = base if isinstance(base, Config) else config_from_dict(base, source="tune base config")
    return apply_overrides(cfg, {k: v for k, v in params.items() if v is not None})


class DefineByRunSpace:
    """Optuna define-by-run space with conditional parameters (a class so OptunaSearch can pickle its state)."""

    def __init__(self, specs: list[ParamSpec]) -> None:
        self.specs = specs

    def __call__(self, trial: Any) -> None:
        values: dict[str, Any] = {}
        for spec in self.specs:
            if not spec.active(values):
                continue
            low, high = (spec.args + (None, None))[:2]
            if spec.kind == "choice":
                values[spec.path] = trial.suggest_categorical(spec.path, list(spec.args))
            elif spec.kind == "randint":
                values[spec.path] = trial.suggest_int(spec.path, low, high - 1)  # Tune's randint excludes high
            else:
                values[spec.path] = trial.suggest_float(spec.path, low, high, log=spec.kind == "loguniform")
        return None

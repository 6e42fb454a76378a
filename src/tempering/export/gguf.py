"""GGUF export: a model's weights (the adapter merged) written as one GGUF file that llama.cpp, Ollama and LM
Studio load, with the tokenizer and chat template in its metadata, and a LoRA adapter in llama.cpp's
LoRA-GGUF form.

The tensors are written with the ``gguf`` package's writer (llama.cpp's own gguf-py) under the names its
tensor map gives for the architecture (``llama`` for SmolLM2 and Llama-family models, ``phi3`` for Phi-3),
transformed as llama.cpp's ``convert_hf_to_gguf.py`` does: a Llama model's query and key rows are permuted
from Hugging Face's rotary layout to GGML's; Phi-3's fused ``qkv_proj`` and ``gate_up_proj`` are kept fused.
Norms stay float32; matrices are float32, float16, bfloat16 or Q8_0 (``gguf.quants``). The tokenizer comes
from the base model's own GGUF when it has one (the embedded default: copied exactly, pre-tokenizer
included), else from its Hugging Face tokenizer (byte-level BPE as ``gpt2``, SentencePiece-style BPE as
``llama``, through gguf-py's vocab readers).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tempering.errors import InvalidConfigError

FILE_TYPES = {"f32": "F32", "f16": "F16", "bf16": "BF16", "q8_0": "Q8_0"}
ARCHITECTURES = {"llama": "LLAMA", "phi3": "PHI3"}  # model_type → gguf MODEL_ARCH
TOKENIZER_PREFIX = "tokenizer."


def architecture(config) -> str:
    if config.model_type not in ARCHITECTURES:
        raise InvalidConfigError(f"GGUF export knows the {', '.join(ARCHITECTURES)} architectures, not "
                                 f"{config.model_type!r}", param="format", code="unsupported_format")
    return config.model_type


def permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """Hugging Face's rotary layout (halves) to GGML's (interleaved pairs), per head: convert_hf_to_gguf's."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def gguf_tensors(state: dict, config) -> list[tuple[str, np.ndarray]]:
    """(GGUF name, float32 array) for every tensor of a Hugging Face state dict, transformed for llama.cpp."""
    import gguf

    arch = getattr(gguf.MODEL_ARCH, ARCHITECTURES[architecture(config)])
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    out = []
    for name, tensor in state.items():
        if name.endswith("rotary_emb.inv_freq"):
            continue
        data = tensor.detach().float().cpu().numpy()
        if config.model_type == "llama" and name.endswith("q_proj.weight"):
            data = permute(data, config.num_attention_heads)
        elif config.model_type == "llama" and name.endswith("k_proj.weight"):
            data = permute(data, config.num_key_value_heads)
        mapped = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if mapped is None:
            raise InvalidConfigError(f"GGUF export: no GGUF name for the tensor {name}", param="format",
                                     code="unsupported_format")
        out.append((mapped, data))
    return out


def encode(data: np.ndarray, file_type: str):
    """(array, GGML type) as written: 1-D tensors (norms) stay float32; matrices take the file's type."""
    import gguf

    kind = gguf.GGMLQuantizationType
    if data.ndim < 2 or file_type == "f32":
        return data.astype(np.float32), kind.F32
    if file_type == "f16":
        return data.astype(np.float16), kind.F16
    quant = kind.BF16 if file_type == "bf16" else kind.Q8_0
    if quant == kind.Q8_0 and data.shape[-1] % 32:
        return data.astype(np.float16), kind.F16  # Q8_0 packs rows in blocks of 32
    return gguf.quants.quantize(data, quant), quant


def write_model_gguf(model, tokenizer, card, path: Path, file_type: str, name: str) -> None:
    """One GGUF file of ``model`` (a transformers causal LM, adapter already merged)."""
    import gguf

    if file_type not in FILE_TYPES:
        raise InvalidConfigError(f"a GGUF file type is one of {', '.join(FILE_TYPES)} (got {file_type!r})",
                                 param="dtype")
    config = model.config
    arch = architecture(config)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    _hyperparameters(writer, config, card)
    writer.add_file_type(getattr(gguf.LlamaFileType, f"MOSTLY_{FILE_TYPES[file_type]}")
                         if file_type != "f32" else gguf.LlamaFileType.ALL_F32)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    write_tokenizer(writer, tokenizer, card)
    for tensor_name, data in gguf_tensors(model.state_dict(), config):
        if tensor_name == "output.weight" and getattr(config, "tie_word_embeddings", False):
            continue  # tied: llama.cpp reads the embedding matrix as the output head
        array, kind = encode(data, file_type)
        writer.add_tensor(tensor_name, array, raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _hyperparameters(writer, config, card) -> None:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_context_length(card.context_length)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(getattr(config, "rope_theta", None)
                                    or (config.rope_parameters or {}).get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    if config.model_type == "phi3" and getattr(config, "sliding_window", None):
        writer.add_sliding_window(config.sliding_window)


def write_tokenizer(writer, tokenizer, card) -> None:
    """The tokenizer's metadata: copied from the base's own GGUF when it has one, else read from its Hugging
    Face files; and the chat template either way."""
    from tempering.catalog.loading import embedded_gguf_path

    if card.embedded is not None:
        source = embedded_gguf_path(card)
        _copy_tokenizer(writer, source)
        if tokenizer.chat_template and not _has_chat_template(source):
            writer.add_chat_template(tokenizer.chat_template)
    else:
        _tokenizer_from_hf(writer, tokenizer)  # gguf-py's SpecialVocab adds the saved chat template


def _has_chat_template(path: Path) -> bool:
    from gguf import GGUFReader

    return "tokenizer.chat_template" in GGUFReader(path).fields


def _copy_tokenizer(writer, path: Path) -> None:
    """Every ``tokenizer.*`` field of another GGUF, values and types as they are."""
    from gguf import GGUFReader, GGUFValueType

    for key, field in GGUFReader(path).fields.items():
        if not key.startswith(TOKENIZER_PREFIX):
            continue
        value = field.contents()
        if field.types[0] == GGUFValueType.ARRAY:
            writer.add_array(key, value)
        else:
            writer.add_key_value(key, value, field.types[0])


def _tokenizer_from_hf(writer, tokenizer) -> None:
    import tempfile

    import gguf

    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        model = json.loads((Path(folder) / "tokenizer.json").read_text(encoding="utf-8"))["model"]
        if model.get("type") == "BPE" and model.get("byte_fallback"):
            vocab = gguf.LlamaHfVocab(Path(folder))  # SentencePiece-style BPE (Llama 2, Phi-3)
            writer.add_tokenizer_model("llama")
            writer.add_tokenizer_pre("default")
        elif model.get("type") == "BPE":
            vocab = gguf.BpeVocab(Path(folder))  # byte-level BPE (GPT-2 style)
            writer.add_tokenizer_model("gpt2")
            writer.add_tokenizer_pre("default")
        else:
            raise InvalidConfigError(f"GGUF export: a {model.get('type')} tokenizer is not supported",
                                     param="format", code="unsupported_format")
        tokens, scores, types = [], [], []
        for text, score, kind in vocab.all_tokens():
            tokens.append(text)
            scores.append(score)
            types.append(kind)
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        gguf.SpecialVocab(Path(folder), load_merges=model.get("type") == "BPE" and not model.get("byte_fallback"),
                          n_vocab=len(tokens)).add_to_gguf(writer)


def write_lora_gguf(adapter: Path, config, path: Path, file_type: str, name: str) -> None:
    """A PEFT LoRA adapter in llama.cpp's LoRA-GGUF form (``convert_lora_to_gguf.py``'s): ``general.type``
    adapter, ``adapter.lora.alpha``, and per adapted matrix ``<gguf name>.lora_a`` (rank × in) and ``.lora_b``
    (out × rank); a Llama query or key's B rows permuted as the matrix itself is. llama.cpp scales by
    alpha / rank; an rsLoRA adapter's alpha is rescaled to keep its scale."""
    import gguf
    from safetensors.numpy import load_file

    settings = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    if settings.get("use_dora") or settings.get("peft_type", "LORA") != "LORA":
        raise InvalidConfigError("llama.cpp's adapter GGUF holds plain LoRA only (not DoRA)", param="format",
                                 code="unsupported_format")
    alpha, rank = float(settings["lora_alpha"]), int(settings["r"])
    if settings.get("use_rslora"):
        alpha *= rank ** 0.5  # rsLoRA scales by alpha / sqrt(rank); llama.cpp by alpha / rank
    arch = architecture(config)
    names = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, ARCHITECTURES[arch]), config.num_hidden_layers)
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for key, value in load_file(adapter / "adapter_model.safetensors").items():
        if ".lora_A." not in key and ".lora_B." not in key:
            raise InvalidConfigError(f"the adapter holds {key}, which llama.cpp's LoRA form cannot carry",
                                     param="format", code="unsupported_format")
        base = key.replace("base_model.model.", "", 1).replace(".lora_A.weight", ".weight") \
            .replace(".lora_B.weight", ".weight")
        pairs.setdefault(base, {})["a" if ".lora_A." in key else "b"] = value.astype(np.float32)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    writer.add_name(name)
    for base, pair in sorted(pairs.items()):
        mapped = names.get_name(base, try_suffixes=(".weight",))
        if mapped is None or set(pair) != {"a", "b"}:
            raise InvalidConfigError(f"GGUF export: cannot place the adapter's {base}", param="format",
                                     code="unsupported_format")
        lora_b = pair["b"]
        if arch == "llama" and base.endswith("q_proj.weight"):
            lora_b = permute(lora_b, config.num_attention_heads)
        elif arch == "llama" and base.endswith("k_proj.weight"):
            lora_b = permute(lora_b, config.num_key_value_heads)
        for suffix, data in (("lora_a", pair["a"]), ("lora_b", lora_b)):
            array, kind = encode(data, "f32" if file_type == "q8_0" else file_type)  # ranks are rarely 32-wide
            writer.add_tensor(f"{mapped}.{suffix}", array, raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

"""Optional int8 or int4 weights for serving on a CPU (``TEMPERING_SERVE_QUANTIZE=int8`` or ``int4``).

Decoding one token reads every weight once, so on a CPU it is bound by memory traffic: float32 weights are
4 bytes a parameter, int8 one. ``Int8Linear`` keeps a linear layer's weight as int8 with one scale per output
channel (weight-only quantization, as gpt-fast and torchao do it) and multiplies with PyTorch's
``_weight_int8pack_mm`` CPU kernel, activations in bfloat16. Activations are not quantized: dynamic int8
activations (``torch.ao``'s dynamic quantization) were as fast but lost the fine-tuned behaviour of the
embedded model (its answers no longer started the way the adapter taught), weight-only int8 keeps it.

It *is* an ``nn.Linear`` to PEFT, so LoRA adapters wrap it as usual and stay float32: the base is shared and
quantized once, each adapter's small matrices are exact. Embeddings stay float (a decode step reads one row).
Answers can differ slightly from float32 where two tokens are nearly tied; training and evaluation always use
float weights. Knows nothing about HTTP.
"""

from __future__ import annotations

import torch


class Int8Linear(torch.nn.Linear):
    def __init__(self, linear: torch.nn.Linear):
        torch.nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach().float()
        scales = (weight.abs().amax(dim=1) / 127).clamp(min=1e-12)
        # plain attributes, not buffers: state dicts (PEFT loading an adapter) never see or expect them
        self._int8 = torch.round(weight / scales[:, None]).clamp(-127, 127).to(torch.int8).contiguous()
        self._scales = scales.to(torch.bfloat16)
        self._bias = None if linear.bias is None else linear.bias.detach().float()
        # PEFT reads the base layer's weight for its dtype and device only; the int8 copy is the real one
        self.weight = torch.nn.Parameter(torch.empty(0), requires_grad=False)
        self.bias = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
        y = torch._weight_int8pack_mm(flat, self._int8, self._scales).to(x.dtype)
        if self._bias is not None:
            y = y + self._bias
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights per channel"


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """Replace every ``nn.Linear`` of a causal LM (the decoder's and the LM head) by ``Int8Linear``, in place."""
    if next(model.parameters()).device.type != "cpu":
        raise ValueError("int8 serving is for CPUs; GPUs serve bf16")
    targets = [(name, module) for name, module in model.named_modules() if type(module) is torch.nn.Linear]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, Int8Linear(module))
    model.config.tie_word_embeddings = False  # the head is its own int8 copy now
    return model


class Int4Linear(torch.nn.Linear):
    """Weight-only int4, group-wise (``group_size`` input columns share a scale and a zero point), multiplied
    with PyTorch's ``_weight_int4pack_mm_for_cpu`` kernel, activations in bfloat16: gpt-fast's and torchao's
    recipe. Half the bytes of int8 again. Like ``Int8Linear``, an ``nn.Linear`` to PEFT, so adapters stay float."""

    def __init__(self, linear: torch.nn.Linear, group_size: int = 32):
        torch.nn.Module.__init__(self)
        self.in_features, self.out_features, self.group_size = linear.in_features, linear.out_features, group_size
        weight = linear.weight.detach().float()
        groups = weight.reshape(-1, group_size)
        low, high = groups.amin(dim=1, keepdim=True), groups.amax(dim=1, keepdim=True)
        scales = ((high - low).clamp(min=1e-6) / 15)
        zeros = low + scales * 8  # the kernel's convention: value = (q - 8) * scale + zero
        quantized = groups.sub(low).div(scales).round().clamp(0, 15).to(torch.int32).reshape_as(weight)
        self._packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(quantized.contiguous(), 2)
        self._scales_and_zeros = torch.cat([scales.reshape(self.out_features, -1, 1),
                                            zeros.reshape(self.out_features, -1, 1)], 2) \
            .transpose(0, 1).contiguous().to(torch.bfloat16)
        self._bias = None if linear.bias is None else linear.bias.detach().float()
        self.weight = torch.nn.Parameter(torch.empty(0), requires_grad=False)
        self.bias = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self._packed, self.group_size,
                                                       self._scales_and_zeros).to(x.dtype)
        if self._bias is not None:
            y = y + self._bias
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, int4 weights in groups of "
                f"{self.group_size}")


def quantize_int4(model: torch.nn.Module, group_size: int = 32) -> torch.nn.Module:
    """Replace every decoder ``nn.Linear`` whose input width is a multiple of ``group_size`` by ``Int4Linear``,
    in place (any other stays float); the LM head becomes ``Int8Linear``, as llama.cpp's 4-bit types keep the
    output matrix at higher precision: every logit passes through it, and at 4 bits it cost the fine-tuned
    embedded model 5.5 % of validation perplexity on the Xbox sample (bench/quantization.py)."""
    if next(model.parameters()).device.type != "cpu":
        raise ValueError("int4 serving is for CPUs; GPUs serve bf16")
    head = model.get_output_embeddings()
    targets = [(name, module) for name, module in model.named_modules()
               if type(module) is torch.nn.Linear and module.in_features % group_size == 0]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, Int8Linear(module) if module is head else Int4Linear(module, group_size))
    model.config.tie_word_embeddings = False
    return model


def tensor_bytes(model: torch.nn.Module) -> int:
    """Bytes of a model's parameters and buffers plus its quantized layers' own tensors (which are plain
    attributes, invisible to ``parameters()``); tied weights counted once."""
    seen, total = set(), 0
    tensors = [*model.parameters(), *model.buffers()]
    for module in model.modules():
        if isinstance(module, (Int8Linear, Int4Linear)):
            tensors += [t for t in vars(module).values() if isinstance(t, torch.Tensor)]
    for tensor in tensors:
        if tensor.data_ptr() not in seen or tensor.numel() == 0:
            seen.add(tensor.data_ptr())
            total += tensor.numel() * tensor.element_size()
    return total

"""Applying LoRA adapters per row at serving time, two matrix products per layer whatever the mix.

PEFT loads the adapters (its config handling and weight names are the reference); at inference the engine
replaces the forward of each LoRA ``Linear`` layer: for the adapters present in a step, their ``A`` matrices
are stacked (``[sum of ranks, in]``) and their ``B`` matrices, scaled, side by side (``[out, sum of ranks]``),
so ``base(x) + mask(x Aᵀ) Bᵀ`` applies every row's own adapter, where ``mask`` keeps each row's block of
columns (and none for rows on the plain base). One adapter for every row needs no mask. The stacks are
cached per layer and per set of adapters; PEFT's own per-row path (``adapter_names``) groups rows adapter
by adapter and, like switching PEFT's active adapter, walks modules in Python, which dominated decoding.

Plain LoRA on linear layers only (no DoRA, no other variants): anything else keeps PEFT's forward
(``supported``). Dropout is off at inference, so it is not applied.
"""

from __future__ import annotations

import types

import torch


def supported(peft_model) -> bool:
    from peft.tuners.lora import LoraConfig, LoraLayer
    from peft.tuners.lora.layer import Linear as LoraLinear

    configs = list(peft_model.peft_config.values())
    if not all(isinstance(c, LoraConfig) and not c.use_dora and not getattr(c, "lora_bias", False)
               for c in configs):
        return False
    return all(type(m) is LoraLinear for m in peft_model.modules() if isinstance(m, LoraLayer))


class RowAdapters:
    """The adapters of the current step and which row uses which; read by every LoRA layer's forward."""

    def __init__(self):
        self.adapters: tuple[str, ...] = ()  # distinct adapters of the step, in first-seen order
        self.rows: torch.Tensor | None = None  # [rows] index into ``adapters``, -1 for the base; None: all on one
        self._masks: dict = {}
        self._layers: list = []

    def set_step(self, names: list[str], base: str) -> None:
        distinct = tuple(dict.fromkeys(n for n in names if n != base))
        self.adapters = distinct
        self._masks = {}
        if len(distinct) == 1 and base not in names:
            self.rows = None
        else:
            index = {n: i for i, n in enumerate(distinct)}
            self.rows = torch.tensor([index.get(n, -1) for n in names])

    def mask(self, blocks: tuple[tuple[int, int], ...], dtype) -> torch.Tensor | None:
        """[rows, 1, columns]: 1 where a column belongs to the row's adapter. ``blocks``: (adapter, rank)."""
        if self.rows is None:
            return None
        if blocks not in self._masks:
            owner = torch.cat([torch.full((rank,), adapter) for adapter, rank in blocks])
            self._masks[blocks] = (self.rows[:, None] == owner[None, :]).to(dtype)[:, None, :]
        return self._masks[blocks]

    # -- installing on a model ---------------------------------------------------------------------------------

    def attach(self, peft_model) -> None:
        """Route every LoRA layer of the model through ``forward`` (new layers too: call after each load or
        eviction) and drop the stacked weights, which are stale once adapters changed."""
        from peft.tuners.lora import LoraLayer

        self._layers = [m for m in peft_model.modules() if isinstance(m, LoraLayer)]
        for layer in self._layers:
            layer._stack_cache = {}
            if getattr(layer, "_row_adapters", None) is not self:
                layer._row_adapters = self
                layer.forward = types.MethodType(_forward, layer)

    def detach(self) -> None:
        """Back to PEFT's own forward on every layer (an adapter this module cannot apply was loaded)."""
        for layer in self._layers:
            if layer.__dict__.pop("forward", None) is not None:
                layer._row_adapters = None
        self._layers = []


def _stacks(layer, adapters: tuple[str, ...]):
    cached = layer._stack_cache.get(adapters)
    if cached is None:
        present = [(i, name) for i, name in enumerate(adapters) if name in layer.lora_A]
        if not present:
            cached = (None, None, ())
        else:
            a = torch.cat([layer.lora_A[name].weight for _, name in present], dim=0)
            b = torch.cat([layer.lora_B[name].weight * layer.scaling[name] for _, name in present], dim=1)
            blocks = tuple((i, layer.lora_A[name].weight.shape[0]) for i, name in present)
            cached = (a, b, blocks)
        layer._stack_cache[adapters] = cached
    return cached


def _forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    result = self.base_layer(x, *args, **kwargs)
    router: RowAdapters = self._row_adapters
    if not router.adapters:
        return result
    a, b, blocks = _stacks(self, router.adapters)
    if a is None:
        return result
    hidden = torch.nn.functional.linear(x.to(a.dtype), a)
    mask = router.mask(blocks, hidden.dtype)
    if mask is not None:
        hidden = hidden * mask
    return result + torch.nn.functional.linear(hidden, b).to(result.dtype)

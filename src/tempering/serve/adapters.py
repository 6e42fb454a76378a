"""The adapters of a served base model: which LoRA adapters are loaded (least recently used evicted beyond a
limit, never one a row is decoding with) and the forward pass that runs each row of a batch under its own
adapter. Plain LoRA adapters go through ``serve.lora`` (every row's adapter in two products per layer);
adapters only PEFT can apply (DoRA, …) through PEFT's own forward, mixed only where PEFT can mix them.
The engine (``serve.engine``) decides what runs together; this module how a step runs. Knows nothing about
batching, sampling or HTTP.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections import OrderedDict
from pathlib import Path

from tempering.serve.lora import RowAdapters

BASE = "__base__"  # PEFT's name for "no adapter" in a mixed batch
MIXED = "__mixed__"


def adapter_name(folder: Path) -> str:
    """A PEFT adapter name for a folder: stable, and a valid module key (no dots or colons)."""
    return "a" + hashlib.sha1(str(Path(folder).resolve()).encode(), usedforsecurity=False).hexdigest()[:16]


@functools.lru_cache(maxsize=256)
def peft_only(folder: Path | None) -> bool:
    """Whether an adapter folder holds something ``serve.lora`` cannot apply (read from its config)."""
    if folder is None:
        return False
    try:
        config = json.loads((Path(folder) / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return True
    return config.get("peft_type") != "LORA" or bool(config.get("use_dora")) or bool(config.get("lora_bias"))


class AdapterHost:
    """A base model and the adapters loaded onto it."""

    def __init__(self, model, max_adapters: int):
        self.model = model
        self.max_adapters = max_adapters
        self._adapters: OrderedDict[str, Path] = OrderedDict()
        self._active_adapter: str | None = None
        self._mode: str | None = None  # see forward
        self._row_adapters: list[str] | None = None
        self._rows = RowAdapters()  # the step's adapters per row, for serve.lora's layer forward
        self.lean = False  # every adapter is plain LoRA on linear layers: serve.lora applies them

    @property
    def loaded(self) -> int:
        return len(self._adapters)

    def compatible(self, name: str, folder: Path | None, others: list[str], newcomers: list[Path | None]) -> bool:
        """Whether a row under adapter ``name`` may decode beside rows under ``others`` (the newcomers among
        them from ``newcomers`` folders): always with plain LoRA adapters (serve.lora mixes them per row); an
        adapter only PEFT can apply (DoRA, …) decodes only beside rows of the same adapter, as PEFT cannot mix
        it with others in one pass."""
        if all(other == name for other in others):
            return True
        return self.lean and not peft_only(folder) and not any(peft_only(f) for f in newcomers)

    def use(self, name: str, folder: Path | None, in_use: set[str]) -> None:
        """Make adapter ``name`` (the PEFT folder ``folder``) loaded, evicting the least recently used one
        that no row in ``in_use`` needs when over the limit."""
        if name == BASE:
            return
        if name in self._adapters:
            self._adapters.move_to_end(name)
            return
        from peft import PeftModel

        while len(self._adapters) >= self.max_adapters:
            victim = next((name for name in self._adapters if name not in in_use), None)
            if victim is None:
                break  # every loaded adapter is decoding: go over the limit for now
            self.model.delete_adapter(victim)
            del self._adapters[victim]
            if self._active_adapter == victim:
                self._active_adapter = None
        if isinstance(self.model, PeftModel):
            self.model.load_adapter(str(folder), adapter_name=name)
        else:
            self.model = PeftModel.from_pretrained(self.model, str(folder), adapter_name=name)
        self.model.set_adapter(name)  # load_adapter only adds it
        self.model.eval()
        self._refresh_lora()
        self._adapters[name] = folder
        self._active_adapter = name
        self._mode = None  # new LoRA layers may have come in enabled: set the mode again on the next step

    def forward(self, names: list[str], **inputs):
        """One forward pass with each row under its adapter.

        PEFT switches are costly (each walks every module), so the engine remembers its mode and switches
        only when it changes: all rows on the base (adapter layers disabled), all on one adapter (that adapter
        active: the plain LoRA path), or mixed (each LoRA layer's persistent pre-hook hands it the rows'
        adapter names, PEFT's mixed-batch path; PEFT's own ``adapter_names=`` argument would register and
        remove a hook on every LoRA layer at every step)."""
        from peft import PeftModel

        if not isinstance(self.model, PeftModel):
            return self.model(**inputs, use_cache=True, logits_to_keep=1)
        if self.lean:
            self._rows.set_step(names, BASE)
            return self.model(**inputs, use_cache=True, logits_to_keep=1)
        distinct = set(names)
        mode = BASE if distinct == {BASE} else names[0] if len(distinct) == 1 else MIXED
        if mode != self._mode:
            if mode == BASE:
                self.model.base_model.disable_adapter_layers()
            else:
                if self._mode in (BASE, None):
                    self.model.base_model.enable_adapter_layers()
                if mode != MIXED and self._active_adapter != mode:
                    self.model.set_adapter(mode)
                    self._active_adapter = mode
            self._mode = mode
        self._row_adapters = names if mode == MIXED else None
        try:
            return self.model(**inputs, use_cache=True, logits_to_keep=1)
        finally:
            self._row_adapters = None

    def _refresh_lora(self) -> None:
        """After loading an adapter: route LoRA layers through ``serve.lora`` when every adapter is plain
        LoRA on linear layers, else keep PEFT's own forward (with the hooks below for mixed steps)."""
        from tempering.serve import lora

        self.lean = lora.supported(self.model)
        if self.lean:
            self._rows.attach(self.model)  # also drops the stacks built for the adapters loaded before
        else:
            self._rows.detach()
            self._mode = None
            self._hook_lora_layers()

    def _hook_lora_layers(self) -> None:
        """Give every LoRA layer (once) the pre-hook that passes the rows' adapter names in mixed steps."""
        from peft.tuners.lora import LoraLayer

        def inject(module, args, kwargs):
            if self._row_adapters is not None:
                kwargs["adapter_names"] = self._row_adapters
            return args, kwargs

        for module in self.model.modules():
            if isinstance(module, LoraLayer) and not getattr(module, "_tempering_hooked", False):
                module.register_forward_pre_hook(inject, with_kwargs=True)
                module._tempering_hooked = True

"""Shared fixtures: a temporary TEMPERING_HOME for every test, a real tokenizer, and tiny random models.

The tiny Llama (2 layers, hidden size 32) uses the embedded default's real tokenizer and chat template,
so masking, training and serving run the same code paths as with a real model, in seconds. The tiny Phi-3
(``tiny_phi3_dir``, registered under the Phi-3 catalog id by ``tiny_phi3``) has Phi-3's architecture (fused
``qkv_proj`` and ``gate_up_proj``, untied head, sliding-window config), special tokens and chat template.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

# Tiny models run fastest on one thread, and several OpenMP threads spin-waiting on a loaded 2-core machine
# made tiny-model tests ~20x slower. Set before torch is imported; subprocesses inherit it. The end-to-end
# tests on the real model give their subprocesses every core again.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest

from tempering.settings import reset_settings

SYSTEM = "You are a concise assistant."
TINY_ID = "tiny-llama"
PHI3_ID = "phi-3-mini-4k-instruct"  # the built-in card the tiny Phi-3 is registered under
# Phi-3-mini-4k-instruct's chat template as its tokenizer_config.json has had it since mid-2024 (system turns
# supported, the conversation closed with eos_token when no generation prompt is asked for).
PHI3_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\\n' + message['content'] + "
    "'<|end|>\\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\\n' + message['content'] + '<|end|>\\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\\n' + message['content'] + '<|end|>\\n'}}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}"
    "{% endif %}"
)
PHI3_SPECIAL_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|endoftext|>"]


# `make test` runs the suite on every core with pytest-xdist, a test module per work unit (`--dist loadscope`:
# a module's fixtures, such as its live server, start once). The modules that train the embedded model (on
# `worker_cores()` threads) are one work unit, handed out first, so they never compete with each other for the
# cores and never trail the run.
EMBEDDED_MODEL_MODULES = ("tests/test_e2e.py", "tests/test_portal_browser.py")
EMBEDDED_UNIT = "embedded-model"


def worker_cores() -> int:
    """The cores a test may give a real model: all of them, or this pytest-xdist worker's share."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return max(1, (os.cpu_count() or 1) // workers)


def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    overridden = ("_split_scope", "_assign_work_unit")  # private to xdist: a rename would silently undo the order
    if not all(callable(getattr(LoadScopeScheduling, name, None)) for name in overridden):
        raise pytest.UsageError(f"this pytest-xdist's LoadScopeScheduling lacks {overridden}: update conftest's scheduler")

    class EmbeddedModelFirst(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return EMBEDDED_UNIT if nodeid.split("::")[0] in EMBEDDED_MODEL_MODULES else super()._split_scope(nodeid)

        def _assign_work_unit(self, node) -> None:
            if EMBEDDED_UNIT in self.workqueue:
                self.workqueue.move_to_end(EMBEDDED_UNIT, last=False)
            super()._assign_work_unit(node)

    return EmbeddedModelFirst(config, log)


@pytest.fixture(autouse=True)
def _no_model_loading_in_the_background():
    """A test starts once no other thread is mid-way through loading a model (a serving engine a previous test
    started loads in its own thread): transformers patches process-wide state while it loads, which would
    corrupt the models this test builds."""
    from tempering.catalog.loading import LOADING

    with LOADING:
        pass
    yield


@pytest.fixture(autouse=True)
def tempering_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("TEMPERING_HOME", str(home))
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    reset_settings()
    yield home
    reset_settings()


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    """The embedded default's tokenizer, read straight from its GGUF (no model conversion)."""
    from transformers import AutoTokenizer

    from tempering.catalog import get_card
    from tempering.catalog.loading import embedded_gguf_path
    from tempering.errors import ModelUnavailableError

    try:
        gguf = embedded_gguf_path(get_card("smollm2-135m-instruct"))
    except ModelUnavailableError as exc:
        pytest.skip(str(exc))
    folder = tmp_path_factory.mktemp("tokenizer")
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_model_dir(tokenizer_dir, tmp_path_factory) -> Path:
    import shutil

    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
        tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    # Unit-scale embeddings: with the default 0.02 the tied head's logits stay too small to ever fit data.
    torch.nn.init.normal_(model.model.embed_tokens.weight, std=1.0)
    folder = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(folder, safe_serialization=True)
    for item in tokenizer_dir.iterdir():
        shutil.copy(item, folder / item.name)
    return folder


@pytest.fixture
def tiny_model(tiny_model_dir) -> str:
    """The tiny model's catalog id, registered in this test's home."""
    from tempering.catalog import register_local_path

    register_local_path(TINY_ID, tiny_model_dir)
    return TINY_ID


def phi3_tokenizer(tokenizer_dir: Path):
    """The embedded tokenizer dressed as Phi-3's: its special tokens, chat template, EOS and pad."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    tok.add_special_tokens({"additional_special_tokens": PHI3_SPECIAL_TOKENS})
    # Phi-3-mini's config.json: eos and pad id 32000, <|endoftext|>; its generation_config.json adds <|end|>.
    tok.eos_token = tok.pad_token = "<|endoftext|>"  # noqa: S105 - a special token, not a password
    tok.chat_template = PHI3_CHAT_TEMPLATE
    return tok


def save_tiny_phi3(folder: Path, tokenizer_dir: Path, *, attention_scale: float = 1.0, **config_overrides) -> Path:
    """A tiny random Phi3ForCausalLM with Phi-3's tokenizer, saved as a Hugging Face folder.

    ``attention_scale`` multiplies the query/key/value weights: random attention is nearly uniform, so
    position encoding (RoPE factors, the sliding window) barely shows in the output unless it is sharpened."""
    import torch
    from transformers import GenerationConfig, Phi3Config, Phi3ForCausalLM

    tok = phi3_tokenizer(tokenizer_dir)
    end, assistant, eos = tok.convert_tokens_to_ids(["<|end|>", "<|assistant|>", "<|endoftext|>"])
    settings = {
        # the embedding padded past the tokenizer to a multiple of 64, as Phi-3's 32,064 rows for 32,011 tokens
        "vocab_size": -(-len(tok) // 64) * 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2,  # grouped KV heads, as Phi-3-medium has
        "max_position_embeddings": 4096, "original_max_position_embeddings": 4096, "sliding_window": 2047,
        "tie_word_embeddings": False, "bos_token_id": tok.bos_token_id, "eos_token_id": eos, "pad_token_id": eos,
    }
    config = Phi3Config(**{**settings, **config_overrides})
    torch.manual_seed(0)
    model = Phi3ForCausalLM(config)
    # Unit-scale embeddings and head (untied, as in Phi-3): with the default 0.02 the logits stay too small for
    # LoRA on the body (which never touches the head) to ever fit data.
    torch.nn.init.normal_(model.model.embed_tokens.weight, std=1.0)
    torch.nn.init.normal_(model.lm_head.weight, std=1.0)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.qkv_proj.weight.mul_(attention_scale)
    # Phi-3's generation_config.json ends a turn on <|endoftext|>, <|assistant|> or <|end|>.
    model.generation_config = GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=[eos, assistant, end],
                                               pad_token_id=eos)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_phi3_dir(tokenizer_dir, tmp_path_factory) -> Path:
    """A tiny random Phi-3 (2 layers, hidden 32, 4 heads over 2 KV heads) as a Hugging Face folder."""
    return save_tiny_phi3(tmp_path_factory.mktemp("tiny-phi3"), tokenizer_dir)


@pytest.fixture(scope="session")
def phi3_tok(tiny_phi3_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_phi3_dir)


@pytest.fixture
def tiny_phi3(tiny_phi3_dir) -> str:
    """The tiny Phi-3 registered (``models add-path``'s code) under the built-in Phi-3-mini card's id."""
    from tempering.catalog import register_local_path

    register_local_path(PHI3_ID, tiny_phi3_dir)
    return PHI3_ID


def chat_example(question: str, answer: str, *, system: bool = True) -> dict:
    messages = [{"role": "system", "content": SYSTEM}] if system else []
    return {"messages": messages + [{"role": "user", "content": question},
                                    {"role": "assistant", "content": answer}]}


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def qa_file(tmp_path) -> Path:
    """Twenty small, learnable question/answer examples."""
    colors = ["red", "green", "blue", "yellow", "purple"]
    rows = [chat_example(f"What color is item {i}?", f"Item {i} is {colors[i % 5]}.") for i in range(20)]
    return write_jsonl(tmp_path / "qa.jsonl", rows)


def app_and_two_projects(training: bytes):
    """The app without workers over the current settings, the admin's headers (project "default"), the
    ``training`` bytes uploaded there, and a second project "other" with its own key's headers:
    ``(app, client, mine, theirs, file_id)``."""
    from fastapi.testclient import TestClient

    from tempering.api.app import create_app
    from tempering.services.projects import project_key
    from tempering.settings import get_settings
    from tempering.store.models import Project

    app = create_app(get_settings(), workers=0)
    client = TestClient(app)
    mine = {"Authorization": f"Bearer {app.state.initial_api_key}"}
    file_id = client.post("/v1/files", headers=mine, files={"file": ("t.jsonl", training)},
                          data={"purpose": "fine-tune"}).json()["id"]
    with app.state.db.session() as session:
        other = Project(name="other")
        session.add(other)
        session.flush()
        theirs = {"Authorization": f"Bearer {project_key(session, other.id, 'other')}"}
    return app, client, mine, theirs, file_id

"""Settings: where Tempering keeps its state. Read from the environment (``TEMPERING_*``).

Everything Tempering writes lives under ``TEMPERING_HOME``; nothing here knows about models or HTTP.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TEMPERING_", extra="ignore")

    home: Path = Field(
        default=Path("~/.tempering"),
        description="Folder holding the model cache, data, runs and (later) the database.",
    )

    @property
    def root(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def models_dir(self) -> Path:
        """Converted base models (safetensors + tokenizer), one folder per catalog id."""
        return self.root / "models"

    @property
    def runs_dir(self) -> Path:
        """One folder per fine-tuning run: checkpoints, events, metrics and the final adapter."""
        return self.root / "runs"

    @property
    def catalog_file(self) -> Path:
        """User additions to the catalog (``tempering models add-path``)."""
        return self.root / "catalog.json"


@lru_cache(maxsize=1)
def _cached() -> Settings:
    return Settings()


def get_settings() -> Settings:
    """The process-wide settings. Tests call ``reset_settings()`` after changing the environment."""
    return _cached()


def reset_settings() -> None:
    _cached.cache_clear()

"""Data: sources for each on-disk format, the prepared cache, and the DataModule.

The names below load on first use, so scoring a clip (which needs the sources and the
collation, not the Lightning DataModule) imports neither Lightning nor every reader.
"""

from importlib import import_module

_HOMES = {"DataSource": "sources", "DatasetSpec": "schema", "FeatureSource": "features",
          "FeatureTableSource": "tables", "GeneratedSource": "sources",
          "LMTokenStates": "lm_features", "MMSAPickleSource": "mmsa", "MOSISource": "mosi",
          "MultimodalDataModule": "datamodule", "RawClipSource": "sources", "SDKSource": "sdk",
          "TranscriptText": "lm_features", "collate": "batches"}

__all__ = list(_HOMES)


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(import_module(f"mmsent.data.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'mmsent.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])

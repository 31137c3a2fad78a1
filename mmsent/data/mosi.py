"""Real CMU-MOSI: its feature-table source, and where its folder is.

Only the configuration and ``MMSENT_MOSI_DIR`` are searched, so the same configuration
runs from any working directory.
"""

from __future__ import annotations

import os
from pathlib import Path

from mmsent.data.tables import FeatureTableSource

MOSI_ENV = "MMSENT_MOSI_DIR"
MOSI_ROOT_KEY = "data.source.init_args.root"
MOSI_HELP = """CMU-MOSI not found: {problem}.
Set the environment variable {env} or the config key {key}
to a folder holding
  label.csv                 video_id, clip_id, text, label, annotation, mode (MMSA's
                            layout: transcripts, scores in [-3, 3], standard folds)
  audio_opensmile.parquet   video_id, clip_id, audio (one acoustic vector per clip)
The corpus (Zadeh et al., 2016) is distributed by CMU (CMU-MultimodalSDK,
github.com/CMU-MultiComp-Lab/CMU-MultimodalSDK) and, with MMSA's label.csv and
feature pickles, by thuiar/MMSA (github.com/thuiar/MMSA); MMSA's pickles load
directly with mmsent.data.MMSAPickleSource, the SDK's .csd files with
mmsent.data.SDKSource."""


def find_mosi(root: str | None = None) -> Path:
    """The CMU-MOSI folder, from the configuration or the environment.

    Args:
        root (str | None): The folder; None reads ``$MMSENT_MOSI_DIR``.

    Returns:
        Path: The folder holding ``label.csv``, made absolute.

    Raises:
        FileNotFoundError: If neither names a folder holding ``label.csv``; the message
            says where the setting came from and how to get the data.
    """
    if root:
        folder, origin = Path(root), MOSI_ROOT_KEY
    elif os.environ.get(MOSI_ENV):
        folder, origin = Path(os.environ[MOSI_ENV]), f"${MOSI_ENV}"
    else:
        problem = f"neither {MOSI_ROOT_KEY} nor the environment variable {MOSI_ENV} is set"
        raise FileNotFoundError(MOSI_HELP.format(problem=problem, env=MOSI_ENV, key=MOSI_ROOT_KEY))
    if not (folder / "label.csv").is_file():
        problem = f"{folder.resolve()} (from {origin}) holds no label.csv"
        raise FileNotFoundError(MOSI_HELP.format(problem=problem, env=MOSI_ENV, key=MOSI_ROOT_KEY))
    return folder.resolve()


class MOSISource(FeatureTableSource):
    """Real CMU-MOSI: ``label.csv`` and openSMILE acoustic vectors (73-d, one per clip).

    Args:
        root (str | None): The data folder; None reads ``$MMSENT_MOSI_DIR``.
        audio_table (str): The acoustic table, relative to the folder.
        modalities (list[str] | None): Default ``["text", "audio"]``.
        **kwargs: :class:`~mmsent.data.features.FeatureSource` options.
    """

    name = "cmu-mosi"

    def __init__(self, root: str | None = None, audio_table: str = "audio_opensmile.parquet",
                 modalities: list[str] | None = None, **kwargs) -> None:
        folder = find_mosi(root)
        super().__init__(str(folder), tables={"audio": audio_table},
                         modalities=modalities or ["text", "audio"], **kwargs)

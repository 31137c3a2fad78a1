"""Real CMU-MOSI: its feature-table source, and where its folder is."""

from __future__ import annotations

import os
from pathlib import Path

from mmsent.data.tables import FeatureTableSource

MOSI_ENV = "MMSENT_MOSI_DIR"
MOSI_DEFAULT = Path("..") / "shared" / "data" / "cmu-mosi"
MOSI_HELP = """CMU-MOSI not found; looked in: {places}.
Point mmsent at a folder holding
  label.csv                 video_id, clip_id, text, label, annotation, mode (MMSA's
                            layout: transcripts, scores in [-3, 3], standard folds)
  audio_opensmile.parquet   video_id, clip_id, audio (one acoustic vector per clip)
with the environment variable {env} or data.source.init_args.root.
The corpus (Zadeh et al., 2016) is distributed by CMU (CMU-MultimodalSDK,
github.com/CMU-MultiComp-Lab/CMU-MultimodalSDK) and, with MMSA's label.csv and
feature pickles, by thuiar/MMSA (github.com/thuiar/MMSA); MMSA's pickles load
directly with mmsent.data.MMSAPickleSource, the SDK's .csd files with
mmsent.data.SDKSource."""


def find_mosi(root: str | None = None) -> Path:
    """Finds the CMU-MOSI folder.

    Args:
        root (str | None): An explicit folder; else ``$MMSENT_MOSI_DIR``; else
            ``../shared/data/cmu-mosi`` relative to the working directory, then to
            the repository holding this package.

    Returns:
        Path: The folder holding ``label.csv``.

    Raises:
        FileNotFoundError: With instructions on how to get the data.
    """
    if root:
        places = [Path(root)]
    elif os.environ.get(MOSI_ENV):
        places = [Path(os.environ[MOSI_ENV])]
    else:
        places = [MOSI_DEFAULT, Path(__file__).resolve().parents[2] / MOSI_DEFAULT]
    for place in places:
        if (place / "label.csv").is_file():
            return place.resolve()
    raise FileNotFoundError(MOSI_HELP.format(places=", ".join(str(p.resolve()) for p in places),
                                             env=MOSI_ENV))


class MOSISource(FeatureTableSource):
    """Real CMU-MOSI: transcripts and scores from ``label.csv``, openSMILE acoustic
    vectors (73-d, one per clip) from ``audio_opensmile.parquet``.

    Args:
        root (str | None): The data folder; None finds it with :func:`find_mosi`
            (``$MMSENT_MOSI_DIR``, else ``../shared/data/cmu-mosi``).
        audio_table (str): The acoustic table, relative to the folder.
        modalities (list[str] | None): Default ``["text", "audio"]``.
        **kwargs: :class:`~mmsent.data.features.FeatureSource` options, e.g. ``text_features: minilm``.
    """

    name = "cmu-mosi"

    def __init__(self, root: str | None = None, audio_table: str = "audio_opensmile.parquet",
                 modalities: list[str] | None = None, **kwargs) -> None:
        folder = find_mosi(root)
        super().__init__(str(folder), tables={"audio": audio_table},
                         modalities=modalities or ["text", "audio"], **kwargs)

"""The ``README.md`` model card of an exported model folder."""

from __future__ import annotations

from mmsent.data.datamodule import MultimodalDataModule
from mmsent.data.schema import SPLITS

CARD_METRICS = ("MAE", "Corr", "Has0_acc_2", "Non0_acc_2", "Mult_acc_5", "Mult_acc_7")


def model_card(config: dict, manifest: dict, rows: list[dict], stage: str,
               datamodule: MultimodalDataModule) -> str:
    """The model card: what it is, the data, per-stage test metrics, use and limits.

    Args:
        config: The folder's ``config.json``.
        manifest: The pipeline's manifest.
        rows: The pipeline report's rows (:func:`mmsent.pipeline.report.report_rows`).
        stage: The exported stage.
        datamodule: The data it was trained on.

    Returns:
        Markdown with a YAML header for the Hub.
    """
    source = datamodule.source
    sizes = ", ".join(f"{split} {len(datamodule.prepared.splits[split])}" for split in SPLITS)
    pre = config["preprocessing"]
    metrics = ["| stage | " + " | ".join(CARD_METRICS) + " |", "|---" * (len(CARD_METRICS) + 1) + "|"]
    for row in rows:
        values = [row.get("test", {}).get(name) for name in CARD_METRICS]
        cells = ["" if v is None else f"{v:.3f}" for v in values]
        metrics.append(f"| {row['stage']} | " + " | ".join(cells) + " |")
    encoders = ", ".join(f"{m}: `{c['class_path'].rsplit('.', 1)[1]}`" for m, c in config["encoders"].items())
    return "\n".join([
        "---",
        "library_name: mmsent",
        "tags: [mmsent, multimodal-sentiment-analysis]",
        "---",
        f"# {manifest.get('pipeline', 'mmsent')}: multimodal sentiment model",
        "",
        (f"The fused model of stage `{stage}` of the mmsent pipeline `{manifest.get('pipeline')}`: "
        f"{encoders}; fusion `{config['fusion']['class_path'].rsplit('.', 1)[1]}`; "
        f"modalities in use: {', '.join(config['active_modalities'])}. It predicts a sentiment "
        "score in [-3, 3] (CMU-MOSI's scale) for a short clip from its video, audio and transcript."),
        "",
        "```python",
        "from mmsent import SentimentModel",
        "model = SentimentModel.from_pretrained(\"path/to/this/folder\")",
        "print(model.predict(video=\"clip.mp4\", text=\"what was said\"))",
        "```",
        "",
        "## Data",
        "",
        (f"`{type(source).__name__}` at `{source.root}` (clips per split: {sizes}). Preprocessing "
        f"(in `config.json`): {pre['video']['frames']} frames of {pre['video']['frame_size']}x"
        f"{pre['video']['frame_size']} RGB, {pre['audio']['n_mels']} log-mel bands at "
        f"{pre['audio']['sample_rate']} Hz (at most {pre['audio']['max_frames']} frames), the "
        f"`{pre['text']['tokenizer']}` tokenizer, at most {pre['text']['max_length']} tokens."),
        "",
        "## Test metrics per pipeline stage",
        "",
        *metrics,
        "",
        "## Intended use and limits",
        "",
        ("Research on multimodal sentiment analysis: scoring short single-speaker clips like "
        "the ones it was trained on, and a starting point for fine-tuning. Scores of clips "
        "unlike the training data (other languages, recording conditions, lengths, or a "
        "generated training set) are not to be trusted; a missing modality is scored from "
        "the others, less accurately. Not for decisions about people."),
        ""])

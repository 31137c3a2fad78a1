"""Running quickstart stages in-process for benchmarks: unimodal stages, then fusion."""

from __future__ import annotations

import time

import torch

from benchmarks.common import REPO

QUICKSTART = REPO / "pipelines" / "quickstart"
STAGE_CONFIGS = {"text": "1_text.yaml", "audio": "2_audio.yaml", "video": "3_video.yaml"}
QUIET = ["--trainer.enable_progress_bar=false"]


def configs(*names: str) -> list[str]:
    """list[str]: ``-c`` arguments for ``base.yaml`` and the named quickstart files."""
    return [arg for name in ("base.yaml", *names) for arg in ("-c", str(QUICKSTART / name))]


def fit(args: list[str]):
    """Fits one stage through the CLI and loads its best checkpoint's weights back.

    Args:
        args (list[str]): ``mmsent fit`` arguments without the subcommand.

    Returns:
        tuple: The CLI (``cli.model`` holds the best weights, ``cli.datamodule`` the
        data), the best checkpoint's path and the fit's wall time in seconds.
    """
    from mmsent.cli import build_cli
    from mmsent.tasks.checkpoints import load_weights

    started = time.time()
    cli = build_cli(args, run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    best = cli.trainer.checkpoint_callback.best_model_path
    load_weights(cli.model, best)
    return cli, best, round(time.time() - started, 1)


def unimodal_checkpoints(seed: int, epochs: int, root: str) -> dict[str, str]:
    """Trains the three unimodal stages.

    Args:
        seed (int): ``seed_everything``.
        epochs (int): Epochs per stage.
        root (str): Folder of the runs.

    Returns:
        dict[str, str]: Modality -> best checkpoint.
    """
    paths = {}
    for modality, config in STAGE_CONFIGS.items():
        _, paths[modality], _ = fit([*configs(config), f"--seed_everything={seed}", *QUIET,
                                     f"--trainer.max_epochs={epochs}",
                                     f"--trainer.default_root_dir={root}/{modality}/{seed}"])
    return paths


def fusion_args(checkpoints: dict[str, str], seed: int, epochs: int, root: str) -> list[str]:
    """list[str]: Stage 4 arguments on the given unimodal checkpoints, without
    the selection (every modality stays in use)."""
    stage = configs("4_fusion.yaml")
    return [*stage, "--selection=null", f"--seed_everything={seed}", *QUIET,
            f"--trainer.max_epochs={epochs}", f"--trainer.default_root_dir={root}/fusion/{seed}",
            *(f"--model.init_args.encoders.{m}={path}" for m, path in checkpoints.items())]


@torch.no_grad()
def collect_embeddings(model, loader) -> dict:
    """Every sample's embeddings, presence, label and id under a fused model's encoders.

    Args:
        model: A :class:`~mmsent.models.LateFusionModel`.
        loader: A data loader.

    Returns:
        dict: ``<m>`` ``(N, D_m)``, ``<m>_present`` ``(N,)`` and ``label`` ``(N,)``
        tensors, and ``id``, the clip ids in the same order.
    """
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {}
    ids: list[str] = []
    for batch in loader:
        columns = {**model.encode(batch), "label": batch["label"]}
        columns.update({f"{m}_present": batch[f"{m}_present"].bool() for m in model.encoders})
        for key, value in columns.items():
            parts.setdefault(key, []).append(value)
        ids += list(batch["id"])
    return {**{key: torch.cat(values) for key, values in parts.items()}, "id": ids}

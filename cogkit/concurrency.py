"""How many predictions a model's server runs at once: `concurrency.max` in its cog.yaml overlay.

coglet reads it from COG_MAX_CONCURRENCY (the Cog CLI bakes cog.yaml's value into the image's
environment); every way cogkit starts a server sets it from the overlay, so a model runs the same
locally, behind the gateway and in a container.
"""

from pathlib import Path

from cogkit.weights import project_root


def model_concurrency(model: str, root: Path | None = None) -> int:
    """`concurrency.max` of the model's overlay (models/cog/<model>.yaml), 1 when it sets none."""
    from cogkit.ship.config import overlay_path, read_overlay

    if not overlay_path(model, root).is_file():
        return 1
    value = ((read_overlay(model, root).get("cog") or {}).get("concurrency") or {}).get("max", 1)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{model}.yaml: concurrency.max must be a positive integer, not {value!r}")
    return value


def runner_concurrency(runner: str, root: Path | None = None, model: str | None = None) -> int:
    """The concurrency of the model served by `runner` ("predict.py:LLMRunner"): `model` (COGKIT_MODEL)
    when that model runs on it (several models may share a predictor), else the first model that names
    the runner; 1 for a runner no model names (e.g. a naive comparison predictor)."""
    from models import MODELS

    if model in MODELS and MODELS[model].runner == runner:
        return model_concurrency(model, Path(root or project_root()))
    for spec in MODELS.values():
        if spec.runner == runner:
            return model_concurrency(spec.name, Path(root or project_root()))
    return 1

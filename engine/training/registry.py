"""The model registry: loading registered versions, and moving the `champion` alias only to a better model."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import ray

from engine.errors import TrainingError
from engine.redact import redact_text, redact_url

CHAMPION = "champion"


@dataclass(frozen=True)
class LoadedModel:
    """A registered model version with the input columns of its signature."""

    name: str
    version: str
    model: Any
    numeric: list[str]
    categorical: list[str]


def load_model(name: str, version: str | int = CHAMPION) -> LoadedModel:
    """Version `version` (a number or an alias) of registered model `name`.

    Raises:
        TrainingError: no such model, version or alias.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    try:
        found = (client.get_model_version(name, str(version)) if str(version).isdigit()
                 else client.get_model_version_by_alias(name, str(version)))
        uri = f"models:/{name}/{found.version}"
        model = mlflow.sklearn.load_model(uri)
        signature = mlflow.models.get_model_info(uri).signature
    except MlflowException as err:
        raise TrainingError(f"cannot load model `{name}` version `{version}` from "
                            f"{redact_url(mlflow.get_tracking_uri())}: "
                            f"{redact_text(err.message)}; train it with `medallion train` or name an existing version",
                            model=name) from None
    columns = [(spec.name, str(spec.type)) for spec in signature.inputs.inputs]
    return LoadedModel(name, str(found.version), model, [n for n, kind in columns if "string" not in kind],
                       [n for n, kind in columns if "string" in kind])


@dataclass(frozen=True)
class Decision:
    """Whether a new version became champion, and against what."""

    promoted: bool
    champion: str
    previous: str | None
    previous_auc: float | None
    reason: str


def decide_champion(name: str, version: str, auc: float, holdout: ray.ObjectRef, label: str,
                    columns: Sequence[str]) -> Decision:
    """Move alias `champion` of `name` to `version` when there is no champion, or when `auc` beats the
    champion's AUC on the same `holdout` (rows with `columns`, in the object store, scored in a Ray task); ties
    and champions that cannot score the holdout stay."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from engine.training.fit import holdout_auc

    client = mlflow.MlflowClient()
    try:
        current = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        current = None
    if current is None:
        client.set_registered_model_alias(name, CHAMPION, version)
        return Decision(True, version, None, None, "no champion yet")
    champion = load_model(name, current.version)
    missing = [c for c in champion.numeric + champion.categorical if c not in columns]
    if missing:
        return Decision(False, str(current.version), str(current.version), None,
                        f"champion v{current.version} reads columns {missing} the holdout lacks; kept")
    previous = holdout_auc(champion.model, holdout, label, champion.numeric, champion.categorical)
    if auc > previous:
        client.set_registered_model_alias(name, CHAMPION, version)
        return Decision(True, version, str(current.version), previous,
                        f"AUC {auc:.4f} beats champion v{current.version}'s {previous:.4f} on the same holdout")
    return Decision(False, str(current.version), str(current.version), previous,
                    f"AUC {auc:.4f} does not beat champion v{current.version}'s {previous:.4f} on the same holdout")


def require_columns(model: LoadedModel, available: Sequence[str]) -> None:
    """Raise unless every input column of `model` is in `available`.

    Raises:
        TrainingError: a column is missing.
    """
    missing = [c for c in model.numeric + model.categorical if c not in available]
    if missing:
        raise TrainingError(f"model `{model.name}` v{model.version} reads columns {missing} that the feature "
                            "service no longer returns; retrain it or score with a matching version",
                            model=model.name)

"""Prediction settings chosen on validation so that the choice survives the test part.

:func:`choose_settings` predicts the validation part exactly as the test part is
predicted (:func:`helpers.evaluation.score_settings`: whole cases, the same context)
with the default settings and with each option: no overlap, test-time mirroring, and
the largest-component rule for each foreground class on its own, as nnU-Net decides it.
An option is kept only when it beats the default by more than a margin: at least
:data:`MIN_GAIN`, more when the per-case gains spread wider (their standard error), so
that noise is not mistaken for a gain. :func:`explain_difference` says in words why the
default's and the chosen settings' test scores differ by more than that margin.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: The smallest gain in validation mean IoU for which an option is kept.
MIN_GAIN = 0.005


def _margin(gains: list[float], min_gain: float) -> float:
    """``min_gain``, or the standard error of the per-case ``gains`` where that is larger."""
    if len(gains) < 2:
        return float(min_gain)
    return float(max(min_gain, np.std(gains, ddof=1) / np.sqrt(len(gains))))


def _gains(option: dict[str, Any], default: dict[str, Any], cls: int | None) -> list[float]:
    """Per-case gain of ``option`` over ``default`` (scored results): mean IoU, or class ``cls``'s IoU."""
    out = []
    for case, scores in option["unet"]["per_case"].items():
        base = default["unet"]["per_case"][case]
        if cls is None:
            new, old = scores["mean_iou"], base["mean_iou"]
        else:
            new, old = scores["iou"][cls], base["iou"][cls]
        if new is not None and old is not None and not (np.isnan(new) or np.isnan(old)):
            out.append(float(new) - float(old))
    return out


def decide(
    scored: dict[str, dict[str, Any]], options: dict[str, dict[str, Any]], min_gain: float = MIN_GAIN
) -> dict[str, Any]:
    """The settings to keep, from validation results of ``"default"`` and each option.

    ``scored`` maps ``"default"`` and each option's name to a scored result
    (:func:`helpers.evaluation.score_settings`) with its ``"settings"``. ``options`` maps
    a name to ``{"key": "tta", "value": "mirror"}`` (``"class": c`` for the largest
    component of class c); an option with a ``class`` is judged on that class's IoU
    (the largest-component rule), the others on the foreground mean IoU.

    Returns ``{"default", "chosen", "options": {name: {"gain", "margin", "kept"}}}``.
    """
    default = dict(scored["default"]["settings"])
    chosen = {**default, "keep_largest": list(default.get("keep_largest") or [])}
    report = {}
    for name, option in options.items():
        gains = _gains(scored[name], scored["default"], option.get("class"))
        gain = float(np.mean(gains)) if gains else 0.0
        margin = _margin(gains, min_gain)
        kept = gain > margin
        mean_iou = scored[name]["unet"]["mean_iou"]
        report[name] = {"gain": gain, "margin": margin, "kept": kept, "mean_iou": mean_iou}
        if kept and option["key"] == "keep_largest":
            chosen["keep_largest"].append(option["class"])
        elif kept:
            chosen[option["key"]] = option["value"]
    return {"default": default, "chosen": chosen, "options": report}


def choose_settings(
    model: Any, ds: Any, params: dict[str, Any], *, min_gain: float = MIN_GAIN, progress: bool = False
) -> dict[str, Any]:
    """Score the validation part with the default settings and each option; keep what beats the margin.

    The options: overlap 0 (instead of ``params["overlap"]``), ``tta="mirror"``, and the
    largest component of each foreground class on its own. Validation is predicted by
    :func:`helpers.evaluation.score_settings`, as the test part is.

    Returns
    -------
    dict
        ``default`` and ``chosen`` settings (``overlap``, ``tta``, ``keep_largest``);
        ``options``: each option's validation mean IoU, gain over the default, margin
        and whether it was kept; ``default_mean_iou``; ``margin``: the largest margin used.
    """
    from helpers.evaluation import score_settings

    default = {"overlap": float(params["overlap"]), "tta": None, "keep_largest": []}
    options: dict[str, dict[str, Any]] = {
        "overlap 0": {"key": "overlap", "value": 0.0},
        "mirroring": {"key": "tta", "value": "mirror"},
    }
    for c in range(1, ds.n_classes):
        options[f"largest component: {ds.class_names[c]}"] = {"key": "keep_largest", "value": [c], "class": c}
    settings = {"default": default}
    for name, option in options.items():
        value = [option["class"]] if option["key"] == "keep_largest" else option["value"]
        settings[name] = {**default, option["key"]: value}
    scored = score_settings(model, ds, params, "val", settings, progress=progress)
    for name, result in scored.items():
        result["settings"] = settings[name]
    out = decide(scored, options, min_gain)
    out["default_mean_iou"] = scored["default"]["unet"]["mean_iou"]
    out["margin"] = max(o["margin"] for o in out["options"].values())
    return out


def _setting_names(chosen: dict[str, Any], classes: list[str]) -> list[str]:
    """The chosen settings that differ from the defaults, in words (``classes``: the class names)."""
    names = []
    if chosen.get("tta"):
        names.append("test-time mirroring")
    if chosen.get("overlap") is not None and not chosen.get("overlap"):
        names.append("overlap 0")
    names += [f"the largest component of {classes[c]}" for c in chosen.get("keep_largest") or []]
    return names


def explain_difference(
    default: dict[str, Any], chosen_result: dict[str, Any], chosen: dict[str, Any], margin: float
) -> str:
    """Why the chosen settings' test score differs from the default's, in one or two sentences.

    ``default`` and ``chosen_result`` are scored results of the same part
    (:func:`helpers.evaluation.score_settings`); ``chosen`` the chosen settings.
    """
    before, after = default["unet"]["mean_iou"], chosen_result["unet"]["mean_iou"]
    diff = after - before
    if abs(diff) <= margin:
        return (
            f"The chosen settings move the mean IoU of the test part by {diff:+.3f}, within the margin "
            f"({margin:.3f}): the choice made on validation holds on the test part."
        )
    classes = chosen_result["classes"]
    changes = [
        (a - b, c)
        for c, (a, b) in enumerate(zip(chosen_result["unet"]["iou"], default["unet"]["iou"], strict=True))
        if c > 0 and a is not None and b is not None
    ]
    change, cls = min(changes) if diff < 0 else max(changes)
    if diff > 0:  # the choice held on the test part, and more than noise
        gains = ", ".join(_setting_names(chosen, classes)) or "the default settings"
        return (
            f"The chosen settings raise the mean IoU of the test part by {diff:+.3f}, more than the margin "
            f"({margin:.3f}): the choice made on validation ({gains}) holds on the test part. "
            f"Most of the gain is {classes[cls]} (IoU {change:+.3f})."
        )
    causes = []
    if cls in (chosen.get("keep_largest") or []):
        causes.append(
            f"the largest-component rule for {classes[cls]}, which the test cases do not obey as the "
            "validation cases did (a structure in several pieces loses all but one)"
        )
    if chosen.get("tta"):
        causes.append("test-time mirroring")
    if chosen.get("overlap") is not None and not chosen.get("overlap"):
        causes.append("overlap 0, whose tile seams fall elsewhere in the test cases")
    cause = "; ".join(causes) or "no setting that touches that class alone"
    return (
        f"The chosen settings move the mean IoU of the test part by {diff:+.3f}, "
        f"more than the margin ({margin:.3f}). "
        f"Most of it is {classes[cls]} (IoU {change:+.3f}); the cause: {cause}. A choice made on "
        "one or two validation cases can fail on another case; more validation cases make it safer."
    )

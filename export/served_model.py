"""The router classifier's Triton model code (model_repository/router_classifier/model.py),
loaded as a module so that the export and the evaluation score prompts with exactly the code
Triton serves. It needs only numpy, tokenizers and onnxruntime (no Triton: ``pb_utils`` is
absent outside the python-backend stub)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

SOURCE = Path(__file__).resolve().parents[1] / "model_repository" / "router_classifier" / "model.py"
# The code every version carries beside its graph: model.py, and the GPU path it loads by path.
CODE_FILES = (SOURCE, SOURCE.with_name("torch_graph.py"))


def load_module(source: Path, name: str) -> ModuleType:
    """Import a Triton model's ``model.py`` from ``source`` under the module name ``name``."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, source)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"{source} cannot be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve their module by name
    # No __pycache__ next to the model: Triton's repository polling would see a change.
    dont_write, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = dont_write
    return module


_model = load_module(SOURCE, "router_classifier_model")
CALIBRATION_FILE = _model.CALIBRATION_FILE
CALIBRATION_SHARES = _model.CALIBRATION_SHARES
QUALITY_KEY = _model.QUALITY_KEY
CLF_OUTPUT = _model.CLF_OUTPUT
HEAD_FILE = _model.HEAD_FILE
KNN_OUTPUT = _model.KNN_OUTPUT
METADATA_FILE = _model.METADATA_FILE
MODEL_FILE = _model.MODEL_FILE
OPTIONS_INPUT = _model.OPTIONS_INPUT
POOLED_OUTPUT = _model.POOLED_OUTPUT
SUPPORT_OUTPUT = _model.SUPPORT_OUTPUT
FEATURE_NAMES = _model.FEATURE_NAMES
prompt_features = _model.prompt_features
lists_options = _model.lists_options
Calibration = _model.Calibration
Familiarity = _model.Familiarity
LogisticBlend = _model.LogisticBlend
ClassifierRuntime = _model.ClassifierRuntime
RankBlend = _model.RankBlend
RuntimeSettings = _model.RuntimeSettings
probabilities = _model.probabilities
rank_in = _model.rank_in
rank_table = _model.rank_table
requested_outputs = _model.requested_outputs
settings_from_config = _model.settings_from_config
variant_file = _model.variant_file

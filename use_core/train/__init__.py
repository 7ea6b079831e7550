"""Training of the USE head (paper §3.2 "Training and Loss", §4.2).

==================  ===========================================================================
module              what it holds
==================  ===========================================================================
``dataset``         the pairs table grouped per image: images, masks, texts; seeded RNG streams
``augment``         random rescale [0.5, 2] + random square crop, masks moved along
``views``           a view through the frozen backbones + its segments' pooling weights
``feature_cache``   fp16 sharded-safetensors cache of K fixed views per image
``validate``        segment→text retrieval, zero-shot top-1 (by colour / shape), val loss
``state``           resumable epoch checkpoints (safetensors + JSON)
``metrics_log``     the ``MetricsLogger`` interface and its JSON-lines default
``loop``            :func:`train_use_model`, the train stage
==================  ===========================================================================
"""

from use_core.train.loop import TrainResult, train_use_model
from use_core.train.metrics_log import JsonlMetricsLogger, MetricsLogger

__all__ = [
    "JsonlMetricsLogger",
    "MetricsLogger",
    "TrainResult",
    "train_use_model",
]

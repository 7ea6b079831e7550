"""The pipeline's stages: one module per DVC stage, assembled from one table.

==================  ===========================================================================
module              what it holds
==================  ===========================================================================
``table``           :data:`STAGES`: every stage as data (inputs, outputs, params, version)
``runner``          :func:`run` a stage by name with its table paths (:class:`StageIO`)
``commands``        the ``use <stage>`` / ``python -m use_core.pipeline <stage>`` commands
``dvcfile``         ``dvc.yaml`` written from the table and each stage's import closure
``shards``          the shard runner of the curation stages (stores, keys, quarantine)
``shapes``          stage: the shapes demo corpus
``caption``         stage, curation 1/4: ground-truth and MLLM captions
``ground``          stage, curation 2/4: referring expressions grounded with the whole caption
``masks``           stage, curation 3/4: SAM masks from the boxes
``nms``             stage, curation 4/4: mask NMS merging texts → pairs; ``curation_report``
``checks``          stage: the great-expectations gate on the pairs
``train``           stage: the USE head trained on the pairs, tracked in MLflow
``proposals``       stage: SAM proposals of every benchmark's images, once
``evaluate``        stage (one per benchmark): zero-shot semantic / part segmentation
``register``        stage: the model registered, promoted to champion only if better
==================  ===========================================================================

This package's ``__init__`` imports nothing: a stage process loads only its own stage's code.
"""

"""Inference (paper §4.3–4.4): one module per step, imported lazily by the CLI.

==============  ==========================================================================
``proposals``   SAM grid-point masks (coarse to fine, low-res filtering, box + mask NMS),
                user masks (RLE JSON / label map), oracle regions, proposal recall
``embed``       one encoder pass per image → segment embeddings (+ whole-image segment)
``classify``    class text embeddings with templates; softmax at the logit scale
``semantic``    per-pixel sum of covering segments' probabilities → argmax label map
``predict``     the one predict path: proposals or masks → embeddings (+ whole-image
                segment) → labels/scores (segment, served model, index, eval)
``parts``       parts + background vocabulary; part-top segments → COCO results
``query``       Parquet segment index (pairs table or image folder) and text search
``segment``     one image → overlay PNG + per-segment JSON
==============  ==========================================================================
"""

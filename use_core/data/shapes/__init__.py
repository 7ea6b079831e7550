"""The procedural "shapes" demo corpus, in one place.

==============  ===============================================================================
module          what it holds
==============  ===============================================================================
``scenes``      :func:`generate_shapes`: seeded scenes, captions, VG regions, COCO masks on disk
``draw``        object silhouettes and parts, their layout, the stuff backgrounds
``language``    referring phrases, captions and region phrases of a scene
``vocab``       the corpus' class names and the caption language (colours, shapes, parts)
``gt``          pairs and class names straight from the corpus' ground truth (val, tests)
==============  ===============================================================================
"""

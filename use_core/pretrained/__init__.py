"""Pretrained components by role (clip, dinov2, sam, grounding, captioner, spacy).

``profiles`` holds the model profiles as data, ``registry`` the loaders
(``load_component``), ``demo`` the offline tiny-model builders and ``assets`` the
checkpoint fetcher. Import those modules directly: this package import stays light.
"""

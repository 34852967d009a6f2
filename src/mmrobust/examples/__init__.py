"""Small models written the way the field's benchmark code writes them, for the docs, configs and tests.

They use no mmrobust code (only torch): they stand for *your* model. ``multibench`` is MultiBench's
layout (``MMDL``: a list of per-modality encoders, a fusion module taking a list, a head) with a
LeNet-style image and audio encoder, a GRU text encoder over token embeddings and tensor fusion;
``configs/multibench.yaml`` trains and evaluates it through declared hooks (docs/models.md).
"""

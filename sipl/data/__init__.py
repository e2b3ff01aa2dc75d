"""Data: clean sources, image I/O, WebDataset shards, synthesis, benchmark sets and the training loader.

- ``sources``: the clean images of params ``sources`` and their split assignment.
- ``imageio``: reading users' images into uint8 H×W×3 RGB, writing PNGs atomically.
- ``shards``: the shard format (local or ``s3://``), manifests and checked reading.
- ``synthesize``: clean crops -> degraded pairs -> shards (the ``synthesize`` stage).
- ``benchmark_import``, ``benchmarks``: paired benchmark folders and field benchmark sets -> test shards.
- ``loader``, ``augment``: the training stream of each worker and its albumentations pair pipeline.
"""

"""faceveil.data: face photos in, aligned and masked face shards out, and back as batches.

- :mod:`faceveil.data.prepare` — ``faceveil prepare`` as a function (:func:`~faceveil.data.prepare.prepare`);
- :mod:`faceveil.data.loader` — :func:`~faceveil.data.loader.make_loader`, batches for training and evaluation;
- :mod:`faceveil.data.sample_set` — :func:`~faceveil.data.sample_set.build_sample_shards`, real faces from installed packages;
- :mod:`faceveil.data.shards` — the shard format (members, ``index.json``, ``rejects.tsv``);
- :mod:`faceveil.data.extract` — one photo to aligned faces (detector, face policy, alignment, mask);
- :mod:`faceveil.data.align`, :mod:`faceveil.data.masks` — FFHQ-style alignment; landmark / parsing / latent masks;
- :mod:`faceveil.data.detect_dlib`, :mod:`faceveil.data.detect_insightface`, :mod:`faceveil.data.precomputed` — backends;
- :mod:`faceveil.data.images`, :mod:`faceveil.data.samples`, :mod:`faceveil.data.dlib_models` — image I/O, sample photos, dlib models.
"""

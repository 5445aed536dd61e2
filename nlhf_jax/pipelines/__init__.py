"""Pipelines: jobs that run several trainers (each stage an ordinary run in its own directory).

``PIPELINES[name](config, workdir)`` runs the pipeline a config names with ``config.pipeline``:

- ``demo`` (``demo.py``): the embedded default main job on the synthetic task, SFT -> judges ->
  every policy method -> exact evaluation (``make demo``);
- ``rlp`` (``rlp.py``): reward (or preference) learning on policy, a judge refreshed on the
  policy's own samples and the method trained again.

``text.py`` holds the text path's stage configs (``configs/text.py``). Pipelines sit above
``nlhf_jax.train``: they import trainers, trainers never import them. ``python -m nlhf_jax.train``
finds a pipeline, and its own default config (the demo's), through the package's entry points
(setup.py, groups ``nlhf_jax.pipelines`` and ``nlhf_jax.default_config``): a pipeline added here
gets its line there too (``tests/test_imports.py`` checks that the two agree).
"""

from nlhf_jax.pipelines import demo, rlp

PIPELINES = {"demo": demo.run, "rlp": rlp.run}

__all__ = ["PIPELINES"]

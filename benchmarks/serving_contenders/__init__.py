"""What the ``model_serving`` benchmark serves its model with, besides the platform.

* ``loader``: loads a model folder through its ``model.json`` the way the platform
  does (entrypoint ``module:Class``, create, ``load(folder)``, the endpoint's method),
  with the standard library only, so BentoML's own venv can use it too;
* ``bento_service``: the BentoML service (``bentoml serve bento_service:ComfortService``
  from this folder, in BentoML's own venv);
* ``flask_app``: the Flask dev-server wrapper (``python -m benchmarks.serving_contenders.flask_app``).
"""

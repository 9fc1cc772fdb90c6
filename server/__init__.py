"""HTTP serving of the pipeline (FastAPI on uvicorn): ``/v1/ask``, ``/v1/rerank``, ``/v1/search`` and more.

Public API::

    from server import create_app
    app = create_app({"offline": load_config("configs/offline.yaml")})

See docs/serving.md for the endpoints and ``scripts/serve.py`` for the command.
"""

from server.app import create_app

__all__ = ["create_app"]

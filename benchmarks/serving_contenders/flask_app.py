"""The model behind a plain Flask app on Flask's dev server (threaded, its default).

    AIOT_BENCH_MODEL_DIR=<folder with model.json> python -m benchmarks.serving_contenders.flask_app PORT

``POST /predict/<endpoint>`` with a JSON object of input fields → the model's output
dict as JSON. No validation beyond Flask's JSON parsing: the simplest wrapper one writes.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue

from benchmarks.serving_contenders.loader import load_endpoint


def create_app(model_dir: Path, endpoint: str) -> Flask:
    app = Flask(__name__)
    predict = load_endpoint(model_dir, endpoint)

    @app.post(f"/predict/{endpoint}")
    def serve() -> ResponseReturnValue:
        inputs: dict[str, Any] = request.get_json()
        return jsonify(predict(**inputs))

    @app.get("/health")
    def health() -> ResponseReturnValue:
        return jsonify(status="ok")

    return app


def main() -> None:
    app = create_app(
        Path(os.environ["AIOT_BENCH_MODEL_DIR"]), os.environ.get("AIOT_BENCH_ENDPOINT", "predict")
    )
    app.run(host="127.0.0.1", port=int(sys.argv[1]))


if __name__ == "__main__":
    main()

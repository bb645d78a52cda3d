"""`blendmask serve`: a trained model behind an HTTP API and a web page (optional extra
`blendmask[serve]`: FastAPI + uvicorn + prometheus-client).

>>> from blendmask.serve import ServeSettings, create_app
>>> app = create_app(ServeSettings(weights="model.pt"))   # an ASGI app; uvicorn runs it

Modules: `app.py` (settings, server state, the app), `routes.py` (endpoints), `batching.py`
(micro-batching, bounded queue), `uploads.py` (body limit, multipart, safe decoding),
`backends.py` (PyTorch / ONNX predictors, knobs, response bodies), `errors.py` (one-line JSON
errors), `metrics.py` (Prometheus), `static/` (the web page).
"""

from __future__ import annotations

from blendmask.serve.app import ServeSettings, create_app

__all__ = ["ServeSettings", "create_app"]

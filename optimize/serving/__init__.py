"""``optimize serve``: bundles behind an HTTP endpoint with dynamic batching, on Ray Serve.

batching.py groups concurrent requests' texts into length-sorted, token-bounded batches;
metrics.py keeps the Prometheus counters; app.py is the HTTP API of one bundle (FastAPI,
usable without Ray); deployment.py puts it on Ray Serve; loadtest.py drives an endpoint for
``optimize bench --serve``.
"""

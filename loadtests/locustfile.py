"""Locust users for the platform's three personas, and the per-request log drills need.

* ``ServingUser``: recommendations through the serving front door (``serving.frontend_url``):
  ``POST /invocations`` with one user id drawn with a Zipf-like skew from the model's known users
  (a few unknown ids for the cold-start path) and ``k`` varied (5/10/20).
* ``ScientistUser``: logs runs through MLflow's REST API (create run, log metrics, upload small
  artifacts, finish run). Each operation tries the regions' MLflow servers in write order (a
  client with a list of endpoints) and is timed as one request with Locust's request event, so
  it appears in Locust's statistics as ``tracking: ...``; every acknowledged write is recorded
  for RPO.
* ``ReleaseManagerUser``: promotes and rolls back the registered model at a low rate
  (stage + alias, through the MLflow REST API, so the server-side registry gate applies).

Run by ``xregion drill`` (headless, local or ``--workers N``), or directly:

    locust -f loadtests/locustfile.py --headless -u 8 -r 8 -t 60s [--host FRONT_DOOR]

Options (``--xr-*``, or the ``XR_*`` environment variables) choose the mix, the rates and where
the request log goes; the regions file (``XREGION_CONFIG``) gives every URL.
Every process that runs users appends each request to ``<run dir>/requests-<pid>.csv``. The users
live in ``personas.py`` and the plumbing in ``locust_hooks.py``; this file is what ``locust -f`` loads.
"""

from xregion.loadtests import locust_hooks  # noqa: F401 (registers the options and the request log)
from xregion.loadtests.personas import ReaderUser, ReleaseManagerUser, ScientistUser, ServingUser

__all__ = ["ReaderUser", "ReleaseManagerUser", "ScientistUser", "ServingUser"]

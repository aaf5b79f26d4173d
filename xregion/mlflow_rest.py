"""MLflow's REST API over every region's server: the first that answers wins.

The one hand-written MLflow client of the project, for the places that cannot use MlflowClient:
Locust users (gevent; one timed call per operation), drill read-backs and failover canaries (a
deadline across regions, not MLflow's minutes of retries). A region that is down, frozen or
failing (connection error, timeout, 5xx, 408/429) is skipped; any other 4xx is final, since the
request itself is wrong.
"""

from __future__ import annotations

import os
import time

import requests


class Unavailable(Exception):
    """No endpoint acknowledged the operation; the message lists what each one said."""

    def __init__(self, message: str, status: int | None = None, body: str = ""):
        super().__init__(message)
        self.status = status  # the final 4xx, when a server refused the request itself
        self.body = body


class MlflowRest:
    def __init__(
        self,
        endpoints: list[str],
        timeout: float,
        auth: tuple[str, str] | None = None,
        per_endpoint: float | None = None,
    ):
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self.timeout = timeout
        self.per_endpoint = per_endpoint  # read timeout per endpoint: a frozen server must not take it all
        self.session = requests.Session()
        if auth is None and os.environ.get("MLFLOW_TRACKING_USERNAME"):  # as MLflow's own client would
            auth = (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ.get("MLFLOW_TRACKING_PASSWORD", ""))
        if auth:
            self.session.auth = auth

    def call(self, method: str, path: str, *, json_body=None, data=None, params=None) -> tuple[dict, str]:
        """(response JSON, endpoint that answered), within ``timeout`` seconds over all endpoints."""
        body, ep = self.raw(method, path, json_body=json_body, data=data, params=params)
        try:
            return (body.json() if body.content else {}), ep
        except ValueError:
            return {}, ep

    def raw(self, method: str, path: str, *, json_body=None, data=None, params=None) -> tuple[requests.Response, str]:
        deadline = time.monotonic() + self.timeout
        errors = []
        for i, ep in enumerate(self.endpoints):
            left = deadline - time.monotonic()
            if left <= 0.05:
                break
            # a frozen server accepts and never answers: every endpoint but the last gets only its
            # share, so that the next region still has time to answer
            read = left if self.per_endpoint is None or i == len(self.endpoints) - 1 else min(self.per_endpoint, left)
            try:
                resp = self.session.request(
                    method, ep + path, json=json_body, data=data, params=params, timeout=(min(1.0, left), read)
                )
            except requests.RequestException as exc:
                errors.append(f"{ep}: {type(exc).__name__}")
                continue
            if resp.status_code < 300:
                return resp, ep
            errors.append(f"{ep}: HTTP {resp.status_code} {resp.text[:100]}")
            if 400 <= resp.status_code < 500 and resp.status_code not in (408, 429):
                raise Unavailable("; ".join(errors), resp.status_code, resp.text)
        raise Unavailable("; ".join(errors) or "timed out")

    def get(self, path: str, **params) -> requests.Response | None:
        """A read from the first region that answers; None when none does. A 4xx is returned, not raised."""
        try:
            return self.raw("GET", path, params=params)[0]
        except Unavailable as err:
            if err.status is None:
                return None
            resp = requests.Response()
            resp.status_code, resp._content = err.status, err.body.encode()
            return resp

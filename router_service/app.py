"""Flask app factory: builds the config, clients and routes; no module-level state."""
from __future__ import annotations

import logging
import os

from flask import Flask
from flask.json.provider import DefaultJSONProvider

from .access import Gate
from .accounting import Accounting
from .admin_api import bp as admin_bp
from .api_keys import KeyStore
from .limits import Limiter
from .api import RouterState
from .api import bp as api_bp
from .circuit_breaker import CircuitBreaker
from . import cooperative
from .classifier import Classifier
from .classifier_client import ClassifierClient
from .config import ClassifierConfig, RouterConfig, load_config
from .decision_cache import CachedClassifier
from .decision_log import DecisionLog
from .dispatch import Dispatcher
from .errors import register_error_handlers
from .health import bp as health_bp
from .openapi import bp as openapi_bp
from .playground import bp as playground_bp
from .policy import Router
from .release import ReleaseBook
from .metrics import RouterMetrics
from .request_log import RequestLog
from .shared_breaker import SharedBreaker
from .shadow import Shadows
from .shared_stats import SharedStats
from .stats import Stats
from .store import Store
from .targets import build_targets
from .token_count import TokenCounters
from .trials import Trials

DEFAULT_CONFIG = "config/router.yaml"
_log = logging.getLogger(__name__)


def _classifier(config: RouterConfig, c: ClassifierConfig, metrics: RouterMetrics) -> Classifier:
    """The Triton client of a classifier, behind its decision cache unless that is off."""
    if cooperative.patched():  # gunicorn's gevent worker: Triton's HTTP endpoint (cooperative.py)
        client = ClassifierClient(config.triton.http_url, c.triton_model, c.model_version, config.triton.timeout_s,
                                  protocol="http")
    else:
        client = ClassifierClient(config.triton.grpc_url, c.triton_model, c.model_version, config.triton.timeout_s)
    if c.cache.size == 0:
        return client
    hits, misses = metrics.classifier_cache.labels(c.name, "hit"), metrics.classifier_cache.labels(c.name, "miss")
    return CachedClassifier(client, c.cache.size, c.cache.ttl_s, on_lookup=lambda hit: (hits if hit else misses).inc())


def create_app(config: RouterConfig | None = None) -> Flask:
    """Build the app. Without an explicit config, read the YAML at $ROUTER_CONFIG."""
    if config is None:
        config = load_config(os.environ.get("ROUTER_CONFIG", DEFAULT_CONFIG))
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = config.server.max_body_bytes
    if isinstance(app.json, DefaultJSONProvider):
        app.json.sort_keys = False  # answers keep the order they are built in
    metrics = RouterMetrics(config.policies, {t.name: t.fallbacks for t in config.targets})
    classifiers = {c.name: _classifier(config, c, metrics) for c in config.classifiers}
    counters = TokenCounters({t.name: t.tokenizer for t in config.targets})
    request_log = RequestLog(config.server.request_log, config.server.log_prompts)
    request_log.warn_if_prompts()
    store = None
    if config.store.url:
        store = Store(config.store.url, config.store.prefix, config.store.timeout_s,
                      on_error=lambda operation: metrics.store_errors.labels(operation).inc())
    breaker_config = config.reliability.circuit_breaker
    dispatcher = Dispatcher(build_targets(config), config.reliability,
                            (lambda name: SharedBreaker(name, breaker_config, store)) if store is not None
                            else (lambda name: CircuitBreaker(breaker_config)))
    metrics.watch_breakers(lambda: {name: b.state for name, b in dispatcher.breakers.items()})
    gate = Gate(config.auth, KeyStore(store) if store else None, Limiter(store) if store else None)
    decision_log = None
    if config.decision_log.path:
        logged = metrics.decision_log
        decision_log = DecisionLog(config.decision_log, on_write=logged.labels("written").inc,
                                   on_drop=logged.labels("dropped").inc)
    releases = ReleaseBook(store, config.classifiers)
    if store is None and any(c.guarded for c in config.classifiers):
        _log.warning("classifiers[].guarded needs the store (store.url): new model versions serve as soon as "
                     "Triton loads them")
    app.extensions["router"] = RouterState(
        config=config, router=Router(config, classifiers, counters, releases), dispatcher=dispatcher,
        accounting=Accounting(config, counters, SharedStats(store) if store is not None else Stats()),
        request_log=request_log, metrics=metrics, gate=gate, store=store, decision_log=decision_log,
        shadows=Shadows(config, dispatcher, decision_log, metrics), trials=Trials(classifiers, decision_log, metrics))
    register_error_handlers(app)
    app.register_blueprint(api_bp)
    app.register_blueprint(health_bp)
    app.register_blueprint(openapi_bp)
    app.register_blueprint(admin_bp)
    if config.server.playground:
        app.register_blueprint(playground_bp)
    return app

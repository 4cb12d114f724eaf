"""The services one gateway process runs, built from ``Settings`` and started in the lifespan.

A layer that cannot load (weights missing, a bad option) never stops the server: it is replaced
by its fallback, the log says what is missing and how to fix it, and ``/health`` shows both.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import msgspec

from compass.config import Settings
from compass.storage.backend import RowStore, duckdb_rows, postgres_rows
from compass.storage.db import Database
from compass.storage.history import HistoryWriter
from compass.upstream.base import Upstream, build_upstream
from compass.upstream.breaker import Breakers
from compass.upstream.pools import configured_pool, demo_pool, unpriced_models
from layers.bandit.base import Selector, build_selector
from layers.cache.base import ResponseCache, build_cache
from layers.classifier.base import Classifier, build_classifier
from layers.types import ModelSpec

log = logging.getLogger("compass")

# Backends that read the shared request embedding (so the MiniLM must be loaded).
EMBEDDING_CLASSIFIERS = frozenset({"embedding"})


@dataclass
class Services:
    settings: Settings
    upstream: Upstream
    pool: dict[str, ModelSpec] = field(default_factory=dict)
    embedding_pool: dict[str, ModelSpec] = field(default_factory=dict)  # ``mode: embedding`` models
    demo: bool = False
    db: Database | None = None
    history: HistoryWriter | None = None
    rows: RowStore | None = None  # where request and reward rows go (compass.storage.backend)
    analysis: Any = None  # run/analyse DuckDB SQL over all history: ``db``, or the fleet's mirror
    classifier: Classifier | None = None
    fallback_classifier: Classifier | None = None
    selector: Selector | None = None
    cache: ResponseCache | None = None
    embedder: Any = None
    demo_upstream: Any = None
    problems: dict[str, str] = field(default_factory=dict)
    unpriced: list[str] = field(default_factory=list)
    started_at: float = field(default_factory=time.time)
    extras: dict[str, Any] = field(default_factory=dict)
    background: set[asyncio.Task[Any]] = field(default_factory=set)
    breakers: Breakers = field(default_factory=Breakers)
    metrics: Any = None
    affinity: Any = None  # compass.storage.affinity.AffinityMemory unless routing.affinity is off
    tracing: Any = None  # compass.tracing.Tracing when OTEL_EXPORTER_OTLP_ENDPOINT is set

    @property
    def models(self) -> list[ModelSpec]:
        return list(self.pool.values())

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run background work tied to a request (cache writes, failure rewards); awaited at stop."""
        task = asyncio.ensure_future(coro)
        self.background.add(task)
        task.add_done_callback(self._background_done)
        return task

    async def settle(self) -> None:
        """Wait for queued history rows and background writes, so a read sees every request."""
        if self.background:
            await asyncio.wait(list(self.background), timeout=10)
        if self.history is not None:
            await self.history.flush()

    def _background_done(self, task: asyncio.Task[Any]) -> None:
        self.background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed: %r", task.exception())

    async def start(self) -> None:
        settings = self.settings
        settings.home_path.mkdir(parents=True, exist_ok=True)
        from compass.metrics import Metrics

        self.metrics = Metrics(self)
        self._start_tracing()
        if settings.routing.affinity:
            from compass.storage.affinity import AffinityMemory

            self.affinity = AffinityMemory(settings.routing.affinity_max_conversations)
        self._start_pool()
        self.db = Database(settings.database_path)
        applied = self.db.open()
        if applied:
            log.info("database %s: applied migrations %s", settings.database_path, ", ".join(applied))
        self.rows = self._open_rows()  # a bad storage.url raises ConfigError here: start-up stops
        from compass.storage.fleet_analysis import open_analysis

        self.analysis = open_analysis(settings, self.db)
        journal = None
        if settings.storage.url is not None:  # rows spool on disk while PostgreSQL is away
            from compass.storage.spool import fleet_writer

            self.history = fleet_writer(self.rows.runner, settings, self.rows.origin)
        elif settings.storage.durability == "journal":
            from compass.storage.journal import Journal, recover

            recovered = self.db.run_sync(recover, settings.journal_path)  # before a new segment opens
            if recovered:
                log.warning("history: %d rows from before a crash recovered from the journal", recovered)
            journal = Journal(settings.journal_path)
        if self.history is None:
            self.history = HistoryWriter(
                self.rows.runner,
                settings.storage.flush_interval_ms,
                settings.storage.batch_size,
                insert=self.rows.insert_requests,
                journal=journal,
            )
        self.history.start()
        await self.upstream.start(self.models)
        await self._start_embedder()
        await self._start_classifier()
        await self._start_selector()
        await self._start_cache()
        from compass.storage.retention import RetentionTask

        self.extras["retention"] = RetentionTask(self).start()  # storage.retention_days
        if self.rows.fleet is not None:  # fleet mode: follow the other replicas' changes
            from compass.pipeline.fleet import start_following

            start_following(self)
        write_server_file(self)

    def _start_tracing(self) -> None:
        from compass.tracing import Tracing, tracing_enabled

        if self.tracing is None and tracing_enabled():
            try:
                self.tracing = Tracing.from_environment()
            except Exception as exc:  # a broken exporter must not stop the gateway
                self.problems["tracing"] = f"{type(exc).__name__}: {exc}"
                log.warning("OpenTelemetry tracing is off: %s", self.problems["tracing"])
            else:
                log.info("OpenTelemetry: exporting traces over OTLP")

    def _open_rows(self) -> RowStore:
        """Request and reward rows: the DuckDB file, or the fleet store when storage.url is set."""
        url = self.settings.storage.url
        if url is None:
            return duckdb_rows(self.db)
        from compass.storage.postgres import PostgresStore

        store = PostgresStore(url, self.settings.storage.connect_timeout_s)
        applied = store.open()
        log.info("fleet store %s: applied migrations %s", store.display, ", ".join(applied) or "none")
        return postgres_rows(store)

    def _start_pool(self) -> None:
        configured = configured_pool(self.settings)
        pool = [m for m in configured if m.mode == "chat"]
        self.embedding_pool = {m.name: m for m in configured if m.mode == "embedding"}
        if not pool:
            from compass.upstream.demo import demo_config, spawn_fake_upstream

            self.demo_upstream = spawn_fake_upstream(demo_config(), port=0)
            pool = demo_pool(self.demo_upstream.url)
            self.demo = True
            log.warning(
                "DEMO MODE: no provider key (OPENAI_API_KEY, ANTHROPIC_API_KEY, GEMINI_API_KEY, "
                "DASHSCOPE_API_KEY) and no models in the config; answers come from the built-in fake "
                "upstream at %s, not from a real LLM",
                self.demo_upstream.url,
            )
        default_timeout = self.settings.upstream.timeout_s
        pool = [m if m.timeout_s > 0 else msgspec.structs.replace(m, timeout_s=default_timeout) for m in pool]
        self.pool = {m.name: m for m in pool}
        log.info("model pool: %s", ", ".join(f"{m.name} ({m.tier})" for m in pool))
        self.unpriced = unpriced_models(pool)
        if self.unpriced:
            self.problems["pricing"] = (
                f"no price for {', '.join(self.unpriced)}: not in LiteLLM's cost map and no "
                "input_price_per_mtok / output_price_per_mtok in the config, so they cost 0"
            )
            log.warning("pool: %s", self.problems["pricing"])

    async def _start_embedder(self) -> None:
        needs = self.settings.classifier.backend in EMBEDDING_CLASSIFIERS or self.settings.cache.enabled
        if not needs:
            return
        await self._load_embedder()

    async def local_embedder(self) -> Any:
        """The shared MiniLM, loaded on first use when no layer needed it (``/v1/embeddings``)."""
        if self.embedder is None:
            lock = self.extras.setdefault("embedder_lock", asyncio.Lock())
            async with lock:
                if self.embedder is None:
                    await self._load_embedder()
        return self.embedder

    async def _load_embedder(self) -> None:
        from layers.embedding import Embedder

        embedder = Embedder(**self.settings.classifier.options.get("embedder", {}))
        try:
            await asyncio.to_thread(embedder.load)
        except Exception as exc:  # the bundled model should always load; degrade rather than die
            self.problems["embedder"] = f"{type(exc).__name__}: {exc}"
            log.error("the MiniLM embedder failed to load (%s); embedding classifier and cache are off", exc)
            return
        log.info("embedder: MiniLM on %s", embedder.runtime)
        self.embedder = embedder

    async def _start_classifier(self) -> None:
        cfg = self.settings.classifier
        self.fallback_classifier = build_classifier(cfg.fallback, {})
        await self.fallback_classifier.start()
        if cfg.backend in EMBEDDING_CLASSIFIERS and self.embedder is None:
            self.problems["classifier"] = "embedder unavailable"
            self.classifier = self.fallback_classifier
            return
        try:
            classifier = build_classifier(cfg.backend, dict(cfg.options), embedder=self.embedder)
            await classifier.start()
        except Exception as exc:
            self.problems["classifier"] = f"{type(exc).__name__}: {exc}"
            substitute = await self._offline_default_classifier(cfg.backend)
            log.error(
                "classifier backend %r could not start: %s — using %r instead. "
                "If weights are missing, fetch them with `compass download-models`.",
                cfg.backend,
                exc,
                substitute.name,
            )
            self.classifier = substitute
            return
        self.classifier = classifier
        log.info("layer 1: classifier %r (fallback %r)", cfg.backend, cfg.fallback)

    async def _offline_default_classifier(self, failed: str) -> Classifier:
        """The bundled MiniLM classifier stands in for a backend that could not start, else the fallback."""
        assert self.fallback_classifier is not None
        if failed in EMBEDDING_CLASSIFIERS or self.embedder is None:
            return self.fallback_classifier
        try:
            substitute = build_classifier("embedding", {}, embedder=self.embedder)
            await substitute.start()
        except Exception as exc:
            log.error("the embedding classifier could not start either: %s", exc)
            return self.fallback_classifier
        return substitute

    def make_selector(self) -> Selector:
        """Layer 2 as configured; a per-prompt selector without the MiniLM embedder is tier Thompson."""
        cfg = self.settings.selector
        selector = build_selector(cfg.backend, dict(cfg.options), self.models)
        if selector.uses_embedding and self.embedder is None:
            from layers.bandit.thompson import DEFAULTS

            options = {k: v for k, v in cfg.options.items() if k in DEFAULTS}
            log.info("layer 2: no embedder, so %r runs as tier-context thompson", cfg.backend)
            selector = build_selector("thompson", options, self.models)
        return selector

    async def _start_selector(self) -> None:
        self.selector = self.make_selector()
        events = await self.load_reward_events()
        self.selector.rebuild(events)
        log.info("layer 2: selector %r rebuilt from %d reward events", self.selector.name, len(events))

    async def load_reward_events(self) -> list[Any]:
        """The reward rows the selector's state is a fold over, oldest first."""
        assert self.rows is not None
        return await self.rows.run(self.rows.load_reward_events)

    async def _start_cache(self) -> None:
        cfg = self.settings.cache
        if not cfg.enabled:
            return
        if self.embedder is None:
            self.problems["cache"] = "embedder unavailable"
            return
        options = {"index_path": str(self.settings.home_path / "cache" / "index.faiss"), **cfg.options}
        try:
            from compass.pipeline.fleet import cache_store_for

            store = cache_store_for(self)  # None: the DuckDB file
            cache = build_cache(cfg.backend, options, db=self.db, embedder=self.embedder, store=store)
            await cache.start()
        except Exception as exc:
            self.problems["cache"] = f"{type(exc).__name__}: {exc}"
            log.exception("cache backend %r could not start; the cache is off", cfg.backend)
            return
        self.cache = cache
        log.info("layer 3: cache %r", cfg.backend)

    async def stop(self) -> None:
        remove_server_file(self)
        if self.rows is not None and self.rows.fleet is not None:
            from compass.pipeline.fleet import stop_following

            await stop_following(self)
        if "retention" in self.extras:
            await self.extras.pop("retention").stop()
        if self.background:
            await asyncio.wait(list(self.background), timeout=10)
        for closer in (self.cache, self.classifier, self.fallback_classifier, self.upstream):
            if closer is not None:
                try:
                    await closer.close()
                except Exception:
                    log.exception("error while closing %r", closer)
        if self.embedder is not None:
            await self.embedder.close()
        if self.history is not None:
            await self.history.close()
        if self.rows is not None and self.rows.runner is not self.db:
            self.rows.runner.close()
        if self.analysis is not None and self.analysis is not self.db:
            self.analysis.close()
        if self.db is not None:
            self.db.close()
        if self.demo_upstream is not None:
            self.demo_upstream.terminate()
            self.demo_upstream = None
        if self.tracing is not None:
            self.tracing.shutdown()  # flushes the batch of spans still queued


def build_services(settings: Settings, upstream: Upstream | None = None) -> Services:
    """Construct (not start) the services for ``settings``."""
    return Services(
        settings=settings,
        breakers=Breakers(settings.upstream.breaker_failures, settings.upstream.breaker_cooldown_s),
        upstream=upstream
        or build_upstream(settings.upstream.backend, direct=settings.upstream.direct_openai_compatible),
    )


def server_file(settings: Settings) -> os.PathLike[str]:
    return settings.home_path / "server.json"


def write_server_file(services: Services) -> None:
    """Tell ``compass sql`` on this machine where the running server listens."""
    settings = services.settings
    info = {
        "pid": os.getpid(),
        "url": f"http://{settings.server.host}:{settings.server.port}",
        "database": str(settings.database_path),
        "started_at": services.started_at,
    }
    try:
        with open(server_file(settings), "w", encoding="utf-8") as fh:
            json.dump(info, fh)
    except OSError:
        log.warning("could not write %s", server_file(settings))


def remove_server_file(services: Services) -> None:
    path = server_file(services.settings)
    try:
        with open(path, encoding="utf-8") as fh:
            if json.load(fh).get("pid") != os.getpid():
                return
        os.remove(path)
    except (OSError, ValueError):
        pass

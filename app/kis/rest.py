"""The KIS REST client: approval key, access token (cached on disk), current price and volume rank.

One :class:`KisRestClient` per app key and process, used as ``async with``. Every request goes through one
pacer (at most ``requests_per_second``, spaced evenly, so KIS's sliding one-second window never sees more),
then through one retry loop:

- HTTP 5xx, connection errors, timeouts and ``EGW00201`` (rate exceeded) are retried with exponential
  backoff and jitter, at most ``max_retries`` times;
- ``EGW00123`` (token expired) and ``EGW00121`` (token unknown, e.g. revoked) refresh the token once and retry;
- anything else raises :class:`KisApiError` at once.

The access token is cached in ``token_cache`` (JSON, mode 0600, replaced atomically under a lock, keyed by
``app_key_id``) and reused until one hour before its ``access_token_token_expired``. KIS hands out at most one
new token per minute (``EGW00133``): then a still-valid cached token is used, or the client waits and retries.

Secrets (app key, app secret, access token, approval key) never appear in logs, exceptions or reprs: errors
carry the endpoint label, HTTP status and KIS's ``msg_cd``/``msg1`` with any secret text replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import email.utils
import fcntl
import logging
import os
import random
import secrets
import stat
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiohttp
import orjson
from prometheus_client import Counter as PromCounter

from app.kis.credentials import KisCredentials
from app.kis.protocol import (
    MULTI_PRICE_MAX_SYMBOLS,
    PATH_APPROVAL,
    PATH_INQUIRE_PRICE,
    PATH_MULTI_PRICE,
    PATH_REVOKE,
    PATH_TOKEN,
    PATH_VOLUME_RANK,
    TR_INQUIRE_PRICE,
    TR_MULTI_PRICE,
    TR_VOLUME_RANK,
)

log = logging.getLogger(__name__)

KST = dt.timezone(dt.timedelta(hours=9), "KST")

# Endpoint labels (metric label values; a closed set).
EP_APPROVAL, EP_TOKEN, EP_REVOKE = "approval", "token", "revoke"
EP_INQUIRE_PRICE, EP_VOLUME_RANK, EP_MULTI_PRICE = "inquire_price", "volume_rank", "multi_price"

TOKEN_REFRESH_MARGIN_S = 3600.0  # a cached token is replaced one hour before it expires
PACING_HEADROOM = 1.01  # requests are spaced 1% wider than 1/rate: room for network jitter at the server
_TOKEN_INVALID = frozenset({"EGW00121", "EGW00123"})
_RATE_LIMITED = "EGW00201"
_TOKEN_THROTTLED = "EGW00133"
_NOT_RETRYABLE = frozenset({"EGW00103", "EGW00105", "EGW00121", "EGW00123", "EGW00133", "EGW00205", "EGW00208"})

REQUESTS = PromCounter(
    "observer_kis_rest_requests", "KIS REST requests sent, by endpoint and outcome", ["endpoint", "outcome"]
)
RETRIES = PromCounter(
    "observer_kis_rest_retries", "KIS REST requests retried, by endpoint and reason", ["endpoint", "reason"]
)
ERRORS = PromCounter(
    "observer_kis_rest_errors", "KIS REST calls that failed for good (KisApiError raised), by endpoint", ["endpoint"]
)
TOKEN_ISSUES = PromCounter("observer_kis_rest_token_requests", "POST /oauth2/tokenP sent, by outcome", ["outcome"])


class KisApiError(Exception):
    """A KIS REST call failed for good. Carries no secret: only what the server said, redacted."""

    def __init__(self, endpoint: str, http_status: int, msg_cd: str, msg1: str) -> None:
        super().__init__(endpoint, http_status, msg_cd, msg1)
        self.endpoint = endpoint
        self.http_status = http_status
        self.msg_cd = msg_cd
        self.msg1 = msg1

    def __str__(self) -> str:
        status = f"HTTP {self.http_status}" if self.http_status else "no HTTP response"
        return f"KIS {self.endpoint}: {status} {self.msg_cd or '-'} {self.msg1}".rstrip()


@dataclass(frozen=True)
class AccessToken:
    value: str
    expires_at: float  # epoch seconds (from access_token_token_expired, KST)
    expires_text: str

    def __repr__(self) -> str:  # the token itself never goes into a repr
        return f"AccessToken(expires={self.expires_text!r})"

    def usable(self, now: float, margin_s: float = TOKEN_REFRESH_MARGIN_S) -> bool:
        return now < self.expires_at - margin_s


class RequestPacer:
    """At most ``rate`` requests per second, evenly spaced; FIFO among concurrent callers.

    Spacing (not a bursty token bucket) is what keeps every sliding one-second window at or under ``rate``,
    which is how KIS counts. Requests are spaced ``PACING_HEADROOM`` x 1/rate apart.
    """

    def __init__(self, rate: float, monotonic: Callable[[], float] = time.monotonic) -> None:
        if not rate > 0:
            raise ValueError(f"requests_per_second must be positive, got {rate}")
        self.interval = PACING_HEADROOM / rate
        self._monotonic = monotonic
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            wait = self._next - self._monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._next = self._monotonic() + self.interval


def parse_kst(text: str) -> float:
    """Epoch seconds of ``YYYY-MM-DD HH:MM:SS`` in KST."""
    return dt.datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=KST).timestamp()


class KisRestClient:
    """KIS REST for one app key; ``async with KisRestClient(...) as kis: await kis.volume_rank()``."""

    def __init__(
        self,
        base_url: str,
        credentials: KisCredentials,
        token_cache: Path,
        requests_per_second: float,
        max_retries: int = 5,
        timeout_s: float = 10,
        *,
        backoff_base_s: float = 0.25,
        backoff_max_s: float = 8.0,
        token_retry_wait_s: float = 61.0,
        custtype: str = "P",
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self.base_url = base_url.rstrip("/")
        self._credentials = credentials
        self.app_key_id = credentials.app_key_id
        self.token_cache = token_cache
        self.max_retries = max_retries
        self.timeout_s = timeout_s
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.token_retry_wait_s = token_retry_wait_s
        self.custtype = custtype
        self._wall = wall_clock
        self._pacer = RequestPacer(requests_per_second)
        self._session: aiohttp.ClientSession | None = None
        self._token: AccessToken | None = None
        self._token_lock = asyncio.Lock()
        self._approval_key: str | None = None
        self._rng = random.Random()
        # Per-instance counts (the Prometheus counters above aggregate over instances).
        self.requests: Counter[tuple[str, str]] = Counter()  # (endpoint, outcome) per HTTP attempt
        self.retries: Counter[str] = Counter()  # endpoint -> retries
        self.errors: Counter[str] = Counter()  # endpoint -> KisApiError raised
        self.token_requests = 0  # POST /oauth2/tokenP sent
        self.token_refreshes = 0  # tokens replaced after EGW00121/EGW00123
        self.cache_problems = 0  # unreadable / unsafe token cache files ignored
        # The server's clock (HTTP Date) at the last successful quotation reply, epoch seconds; our own wall
        # clock when the reply had no usable Date. Scanner snapshots take their event time from it.
        self.last_server_time: float | None = None

    def __repr__(self) -> str:
        return f"KisRestClient(base_url={self.base_url!r}, app_key_id={self.app_key_id!r})"

    async def __aenter__(self) -> Self:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ------------------------------------------------------------------ public API

    async def approval_key(self, *, force_new: bool = False) -> str:
        """The WebSocket approval key (``POST /oauth2/Approval``), issued once per instance unless forced."""
        if self._approval_key is None or force_new:
            creds = self._credentials
            doc = await self._call(
                EP_APPROVAL,
                "POST",
                PATH_APPROVAL,
                body={
                    "grant_type": "client_credentials",
                    "appkey": creds.app_key.get_secret_value(),
                    "secretkey": creds.app_secret.get_secret_value(),
                },
            )
            key = doc.get("approval_key")
            if not isinstance(key, str) or not key:
                raise self._fail(EP_APPROVAL, 200, "BAD_RESPONSE", "no approval_key in the reply")
            self._approval_key = key
        return self._approval_key

    async def access_token(self) -> str:
        """A usable access token: in memory, else from the cache file, else newly issued."""
        async with self._token_lock:
            now = self._wall()
            if self._token is not None and self._token.usable(now):
                return self._token.value
            cached = await asyncio.to_thread(self._read_cache)
            if cached is not None and cached.usable(now):
                self._token = cached
                return cached.value
            held = [t for t in (self._token, cached) if t is not None]
            fallback = max(held, key=lambda t: t.expires_at, default=None)
            self._token = await self._issue_token(fallback)
            return self._token.value

    async def inquire_price(self, code: str, market: str = "J") -> dict[str, str]:
        """``output`` of 주식현재가 시세 (FHKST01010100) for ``code``."""
        doc = await self._call(
            EP_INQUIRE_PRICE,
            "GET",
            PATH_INQUIRE_PRICE,
            tr_id=TR_INQUIRE_PRICE,
            params={"FID_COND_MRKT_DIV_CODE": market, "FID_INPUT_ISCD": code},
        )
        output = doc.get("output")
        if not isinstance(output, dict) or not _all_str(output):
            raise self._fail(EP_INQUIRE_PRICE, 200, "BAD_RESPONSE", "output is not an object of strings")
        return output

    async def multi_price(self, codes: Sequence[str], market: str = "J") -> list[dict[str, str]]:
        """Rows of 관심종목(멀티종목) 시세조회 (FHKST11300006) for up to 30 ``codes``, one call."""
        if not 1 <= len(codes) <= MULTI_PRICE_MAX_SYMBOLS:
            raise ValueError(f"multi_price takes 1 to {MULTI_PRICE_MAX_SYMBOLS} symbols, got {len(codes)}")
        params: dict[str, str] = {}
        for n, code in enumerate(codes, start=1):
            params[f"FID_COND_MRKT_DIV_CODE_{n}"] = market
            params[f"FID_INPUT_ISCD_{n}"] = code
        doc = await self._call(EP_MULTI_PRICE, "GET", PATH_MULTI_PRICE, tr_id=TR_MULTI_PRICE, params=params)
        output = doc.get("output")
        if not isinstance(output, list) or not all(isinstance(r, dict) and _all_str(r) for r in output):
            raise self._fail(EP_MULTI_PRICE, 200, "BAD_RESPONSE", "output is not a list of objects of strings")
        return output

    async def volume_rank(
        self,
        *,
        market: str = "J",
        sector: str = "0000",
        div_cls: str = "0",
        blng_cls: str = "0",
        trgt_cls: str = "111111111",
        trgt_exls_cls: str = "0000000000",
        price_min: str = "",
        price_max: str = "",
        min_volume: str = "",
    ) -> list[dict[str, str]]:
        """Rows of 거래량순위 (FHPST01710000), at most 30; parameters as documented (KIS_PROTOCOL.md 5.1)."""
        params = {
            "FID_COND_MRKT_DIV_CODE": market,
            "FID_COND_SCR_DIV_CODE": "20171",
            "FID_INPUT_ISCD": sector,
            "FID_DIV_CLS_CODE": div_cls,
            "FID_BLNG_CLS_CODE": blng_cls,
            "FID_TRGT_CLS_CODE": trgt_cls,
            "FID_TRGT_EXLS_CLS_CODE": trgt_exls_cls,
            "FID_INPUT_PRICE_1": price_min,
            "FID_INPUT_PRICE_2": price_max,
            "FID_VOL_CNT": min_volume,
            "FID_INPUT_DATE_1": "",
        }
        doc = await self._call(EP_VOLUME_RANK, "GET", PATH_VOLUME_RANK, tr_id=TR_VOLUME_RANK, params=params)
        output = doc.get("output")
        if not isinstance(output, list) or not all(isinstance(r, dict) and _all_str(r) for r in output):
            raise self._fail(EP_VOLUME_RANK, 200, "BAD_RESPONSE", "output is not a list of objects of strings")
        return output

    async def revoke_token(self) -> bool:
        """Revoke the token this instance holds (``POST /oauth2/revokeP``) and drop it from the cache."""
        async with self._token_lock:
            token = self._token
            if token is None:
                return False
            creds = self._credentials
            await self._call(
                EP_REVOKE,
                "POST",
                PATH_REVOKE,
                body={
                    "appkey": creds.app_key.get_secret_value(),
                    "appsecret": creds.app_secret.get_secret_value(),
                    "token": token.value,
                },
            )
            self._token = None
            await asyncio.to_thread(self._write_cache, None)
            return True

    # ------------------------------------------------------------------ tokens

    async def _issue_token(self, fallback: AccessToken | None) -> AccessToken:
        """POST /oauth2/tokenP; on EGW00133 use ``fallback`` if still valid, else wait and try again."""
        creds = self._credentials
        body = {
            "grant_type": "client_credentials",
            "appkey": creds.app_key.get_secret_value(),
            "appsecret": creds.app_secret.get_secret_value(),
        }
        throttled = 0
        while True:
            self.token_requests += 1
            try:
                doc = await self._call(EP_TOKEN, "POST", PATH_TOKEN, body=body)
            except KisApiError as exc:
                if exc.msg_cd != _TOKEN_THROTTLED:
                    TOKEN_ISSUES.labels("error").inc()
                    raise
                TOKEN_ISSUES.labels("throttled").inc()
                now = self._wall()
                if fallback is not None and now < fallback.expires_at:
                    log.info(
                        "kis %s: token re-issue throttled (EGW00133); keeping the current token until %s",
                        self.app_key_id,
                        fallback.expires_text,
                    )
                    return fallback
                throttled += 1
                if throttled > self.max_retries:
                    raise
                log.warning(
                    "kis %s: token issue throttled (EGW00133), no valid token; retrying in %.0f s",
                    self.app_key_id,
                    self.token_retry_wait_s,
                )
                self.retries[EP_TOKEN] += 1
                RETRIES.labels(EP_TOKEN, "token_throttled").inc()
                await asyncio.sleep(self.token_retry_wait_s)
                continue
            token = self._parse_token(doc)
            TOKEN_ISSUES.labels("ok").inc()
            await asyncio.to_thread(self._write_cache, token)
            return token

    def _parse_token(self, doc: dict[str, Any]) -> AccessToken:
        value, expired, expires_in = (
            doc.get("access_token"),
            doc.get("access_token_token_expired"),
            doc.get("expires_in"),
        )
        if not isinstance(value, str) or not value or str(doc.get("token_type", "")).lower() != "bearer":
            raise self._fail(EP_TOKEN, 200, "BAD_RESPONSE", "no Bearer access_token in the reply")
        if isinstance(expired, str):
            try:
                return AccessToken(value, parse_kst(expired), expired)
            except ValueError:
                log.warning(
                    "kis %s: access_token_token_expired %r is not YYYY-MM-DD HH:MM:SS; using expires_in",
                    self.app_key_id,
                    expired[:40],
                )
        if not isinstance(expires_in, int | float) or expires_in <= 0:
            raise self._fail(EP_TOKEN, 200, "BAD_RESPONSE", "token reply has no usable expiry")
        expires_at = self._wall() + float(expires_in)
        return AccessToken(value, expires_at, dt.datetime.fromtimestamp(expires_at, KST).strftime("%Y-%m-%d %H:%M:%S"))

    async def _refresh_token(self, rejected: str) -> None:
        """The server refused ``rejected`` (expired/unknown): replace it, unless someone already did."""
        async with self._token_lock:
            if self._token is not None and self._token.value != rejected:
                return
            self._token = None
            self.token_refreshes += 1
            cached = await asyncio.to_thread(self._read_cache)
            if cached is not None and cached.value != rejected and cached.usable(self._wall()):
                self._token = cached  # another process refreshed it already
                return
            self._token = await self._issue_token(None)

    # ------------------------------------------------------------------ the token cache file

    @contextlib.contextmanager
    def _cache_lock(self) -> Iterator[None]:
        self.token_cache.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock_path = self.token_cache.with_name(self.token_cache.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _load_cache_doc(self) -> dict[str, Any]:
        try:
            fd = os.open(self.token_cache, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return {}
        with os.fdopen(fd, "rb") as fh:
            mode = os.fstat(fh.fileno()).st_mode
            if mode & 0o077 or not stat.S_ISREG(mode):
                self.cache_problems += 1
                log.warning(
                    "kis token cache %s is not a private regular file (mode %04o); ignoring it",
                    self.token_cache,
                    stat.S_IMODE(mode),
                )
                return {}
            raw = fh.read()
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            self.cache_problems += 1
            log.warning("kis token cache %s is not valid JSON; ignoring it (it will be rewritten)", self.token_cache)
            return {}
        return doc if isinstance(doc, dict) else {}

    def _read_cache(self) -> AccessToken | None:
        with self._cache_lock():
            entry = self._load_cache_doc().get("tokens", {}).get(self.app_key_id)
        if not isinstance(entry, dict):
            return None
        if entry.get("base_url") != self.base_url or entry.get("key_fingerprint") != self._credentials.fingerprint():
            return None  # a token of another server or of a rotated key
        value, expired = entry.get("access_token"), entry.get("access_token_token_expired")
        if not isinstance(value, str) or not isinstance(expired, str):
            return None
        try:
            return AccessToken(value, parse_kst(expired), expired)
        except ValueError:
            return None

    def _write_cache(self, token: AccessToken | None) -> None:
        """Set (or, with None, remove) this app key's entry: read-modify-write under the lock, atomic replace."""
        with self._cache_lock():
            doc = self._load_cache_doc()
            tokens = doc.get("tokens")
            if not isinstance(tokens, dict):
                tokens = {}
            if token is None:
                tokens.pop(self.app_key_id, None)
            else:
                tokens[self.app_key_id] = {
                    "base_url": self.base_url,
                    "key_fingerprint": self._credentials.fingerprint(),
                    "access_token": token.value,
                    "access_token_token_expired": token.expires_text,
                    "written_at": dt.datetime.now(KST).strftime("%Y-%m-%d %H:%M:%S"),
                }
            data = orjson.dumps({"version": 1, "tokens": tokens}, option=orjson.OPT_INDENT_2)
            directory = self.token_cache.parent
            tmp = directory / f".{self.token_cache.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                os.fchmod(fd, 0o600)
                os.write(fd, data)
                os.fsync(fd)
            except BaseException:
                os.close(fd)
                tmp.unlink(missing_ok=True)
                raise
            os.close(fd)
            os.replace(tmp, self.token_cache)
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    # ------------------------------------------------------------------ requests

    async def _call(
        self,
        endpoint: str,
        method: str,
        path: str,
        *,
        body: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        tr_id: str | None = None,
    ) -> dict[str, Any]:
        """One logical call: pacing, retries, token refresh. Returns the JSON object of a success."""
        if self._session is None:
            raise RuntimeError("KisRestClient is used outside 'async with'")
        quotation = tr_id is not None
        attempt = 0
        refreshed = False
        while True:
            token = await self.access_token() if quotation else None
            await self._pacer.acquire()
            status, doc, failure = await self._attempt(endpoint, method, path, body, params, tr_id, token)
            if failure is None and (not quotation or doc.get("rt_cd") == "0"):
                self._count(endpoint, "ok")
                return doc
            if failure is None:
                failure = self._failure(endpoint, status, doc)
            if quotation and token is not None and failure.msg_cd in _TOKEN_INVALID and not refreshed:
                refreshed = True
                self._count(endpoint, "token_rejected")
                self._note_retry(endpoint, "token_rejected", failure, 0.0)
                await self._refresh_token(token)
                continue
            reason = self._retry_reason(failure)
            self._count(endpoint, reason or "error")
            if reason is None or attempt >= self.max_retries:
                self.errors[endpoint] += 1
                ERRORS.labels(endpoint).inc()
                log.warning("kis %s: %s%s", self.app_key_id, failure, f" (after {attempt} retries)" if attempt else "")
                raise failure
            delay = min(self.backoff_max_s, self.backoff_base_s * 2**attempt) * (0.5 + self._rng.random() / 2)
            attempt += 1
            self._note_retry(endpoint, reason, failure, delay)
            await asyncio.sleep(delay)

    async def _attempt(
        self,
        endpoint: str,
        method: str,
        path: str,
        body: dict[str, str] | None,
        params: dict[str, str] | None,
        tr_id: str | None,
        token: str | None,
    ) -> tuple[int, dict[str, Any], KisApiError | None]:
        assert self._session is not None
        creds = self._credentials
        headers = {"content-type": "application/json; charset=utf-8"}
        if tr_id is not None and token is not None:
            headers.update(
                {
                    "authorization": f"Bearer {token}",
                    "appkey": creds.app_key.get_secret_value(),
                    "appsecret": creds.app_secret.get_secret_value(),
                    "tr_id": tr_id,
                    "tr_cont": "",
                    "custtype": self.custtype,
                }
            )
        try:
            async with self._session.request(
                method,
                self.base_url + path,
                params=params,
                headers=headers,
                data=orjson.dumps(body) if body is not None else None,
            ) as resp:
                status = resp.status
                raw = await resp.read()
                server_time = _http_date(resp.headers.get("Date")) or self._wall()
        except TimeoutError:
            return 0, {}, KisApiError(endpoint, 0, "TIMEOUT", f"no response within {self.timeout_s:g} s")
        except aiohttp.ClientError as exc:
            return 0, {}, KisApiError(endpoint, 0, "CONNECTION", self._redact(f"{type(exc).__name__}: {exc}"))
        try:
            doc = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            text = raw[:200].decode("utf-8", errors="replace")
            return status, {}, KisApiError(endpoint, status, "NOT_JSON", self._redact(text))
        if not isinstance(doc, dict):
            return status, {}, KisApiError(endpoint, status, "NOT_JSON", "reply is not a JSON object")
        if status != 200:
            return status, doc, self._failure(endpoint, status, doc)
        self.last_server_time = server_time
        return status, doc, None

    def _failure(self, endpoint: str, status: int, doc: dict[str, Any]) -> KisApiError:
        msg_cd = doc.get("msg_cd") or doc.get("error_code") or ""
        msg1 = doc.get("msg1") or doc.get("error_description") or ""
        return KisApiError(endpoint, status, self._redact(str(msg_cd))[:20], self._redact(str(msg1))[:300])

    @staticmethod
    def _retry_reason(failure: KisApiError) -> str | None:
        if failure.msg_cd == _RATE_LIMITED:
            return "rate_limited"
        if failure.msg_cd in _NOT_RETRYABLE:
            return None
        if failure.http_status == 0:
            return "timeout" if failure.msg_cd == "TIMEOUT" else "connection"
        if failure.http_status >= 500:
            return "http_5xx"
        return None

    def _note_retry(self, endpoint: str, reason: str, failure: KisApiError, delay: float) -> None:
        self.retries[endpoint] += 1
        RETRIES.labels(endpoint, reason).inc()
        log.info("kis %s: retrying %s in %.2f s (%s)", self.app_key_id, endpoint, delay, failure)

    def _count(self, endpoint: str, outcome: str) -> None:
        self.requests[(endpoint, outcome)] += 1
        REQUESTS.labels(endpoint, outcome).inc()

    def _fail(self, endpoint: str, status: int, msg_cd: str, msg1: str) -> KisApiError:
        self.errors[endpoint] += 1
        ERRORS.labels(endpoint).inc()
        return KisApiError(endpoint, status, msg_cd, msg1)

    def _redact(self, text: str) -> str:
        creds = self._credentials
        for secret in (
            creds.app_key.get_secret_value(),
            creds.app_secret.get_secret_value(),
            self._token.value if self._token else "",
            self._approval_key or "",
        ):
            if len(secret) >= 8 and secret in text:
                text = text.replace(secret, "[redacted]")
        return text


def _http_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None


def _all_str(doc: dict[Any, Any]) -> bool:
    return all(isinstance(k, str) and isinstance(v, str) for k, v in doc.items())

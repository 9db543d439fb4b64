"""The simulator's REST side: KIS's OAuth and quotation endpoints, their envelopes, errors, limits and faults.

Reproduced (KIS_PROTOCOL.md sections 1 and 5):

- ``POST /oauth2/Approval`` (body ``grant_type``/``appkey``/``secretkey``) -> ``{"approval_key": ...}``;
- ``POST /oauth2/tokenP`` (body ``appsecret``) -> ``access_token``/``token_type``/``expires_in``/
  ``access_token_token_expired`` (KST, from the wall clock); the same token again within 6 h; with
  ``token_throttle`` a second *new* token for an app key within 60 s is refused with ``EGW00133``;
- ``POST /oauth2/revokeP`` (``appkey``/``appsecret``/``token``) -> ``{"code": 200, "message": ...}``;
- ``GET .../quotations/inquire-price`` (``FHKST01010100``), ``GET .../quotations/intstock-multprice``
  (``FHKST11300006``, up to 30 symbols a call) and ``GET .../quotations/volume-rank``
  (``FHPST01710000``, every documented query parameter required, at most 30 rows), with the headers
  ``authorization: Bearer``, ``appkey``, ``appsecret``, ``tr_id`` and ``custtype`` checked, the envelope
  ``rt_cd``/``msg_cd``/``msg1``/``output`` and a sliding one-second request window per app key (``EGW00201``).

OAuth errors are HTTP 403 ``{"error_description", "error_code"}``; gateway errors on the quotation paths are
HTTP 500 ``{"rt_cd": "1", "msg_cd": "EGW...", "msg1": ...}`` (what clients report for EGW00123/EGW00201);
bad query parameters are HTTP 200 ``{"rt_cd": "2", "msg_cd": "OPSQ2001", "msg1": "ERROR INVALID <param>"}``
and an unknown ``tr_id`` ``OPSQ0002`` (both as seen in client code; [UNCONF] for missing parameters).

Token lifetimes, the 6 h reuse and the 60 s throttle run on the wall clock (real KIS semantics, and what a
client's token cache compares against); the request window runs on the monotonic clock. The simulated clock
(``clock``) only stamps the ledger: REST answers from whatever state the caller has advanced the market to.

The state is reachable from the application: ``app[APPROVAL_KEYS]`` (also ``app["approval_keys"]``) is the
live dict approval key -> app key the WebSocket server validates against; ``app[REST_STATS]`` (also
``app["stats"]``) the counters for the ground-truth ledger; ``app[REST_STATE]`` the whole :class:`RestState`.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import logging
import math
import random
import secrets
import time
import uuid
import warnings
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any

import orjson
from aiohttp import web
from aiohttp.web_exceptions import NotAppKeyWarning

from app.kis.credentials import key_fingerprint
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
from app.sim.market import Market

log = logging.getLogger(__name__)

KST = dt.timezone(dt.timedelta(hours=9), "KST")

TOKEN_LIFETIME_S = 86_400
TOKEN_REUSE_S = 6 * 3600
TOKEN_THROTTLE_S = 60.0
APPROVAL_LIFETIME_S = 86_400
MAX_RANK_ROWS = 30

MSG_OK = ("MCA00000", "정상처리 되었습니다.")
# Gateway codes (KIS FAQ list as transcribed in KIS_PROTOCOL.md section 1.5).
EGW_TEXT: dict[str, str] = {
    "EGW00002": "서버 에러가 발생했습니다.",  # generic server error ([UNCONF] wording); used for injected faults
    "EGW00103": "유효하지 않은 AppKey입니다.",
    "EGW00105": "유효하지 않은 AppSecret입니다.",
    "EGW00121": "유효하지 않은 token 입니다.",
    "EGW00123": "기간이 만료된 token 입니다.",
    "EGW00133": "접근토큰 발급 잠시 후 다시 시도하세요(1분당 1회)",
    "EGW00201": "초당 거래건수를 초과하였습니다.",
    "EGW00205": "credentials_type이 유효하지 않습니다.(Bearer)",
    "EGW00208": "고객유형(custtype)이 유효하지 않습니다.",
}
REVOKE_OK = "접근토큰 폐기에 성공하였습니다"

# volume-rank: every documented query parameter is required; the value checks are the documented ones.
RANK_PARAMS: tuple[str, ...] = (
    "FID_COND_MRKT_DIV_CODE",
    "FID_COND_SCR_DIV_CODE",
    "FID_INPUT_ISCD",
    "FID_DIV_CLS_CODE",
    "FID_BLNG_CLS_CODE",
    "FID_TRGT_CLS_CODE",
    "FID_TRGT_EXLS_CLS_CODE",
    "FID_INPUT_PRICE_1",
    "FID_INPUT_PRICE_2",
    "FID_VOL_CNT",
    "FID_INPUT_DATE_1",
)
RANK_MARKETS = frozenset({"J", "NX", "UN", "W"})
PRICE_MARKETS = frozenset({"J", "NX", "UN"})


@dataclass(frozen=True)
class RestFaults:
    """REST behaviour knobs. ``rate_limit_per_s`` is KIS's 20/s (real) or 2/s (paper); 0 disables it."""

    error_rate: float = 0.0  # fraction of quotation calls answered HTTP 500 EGW00002
    slow_ms: int = 0  # delay added to every response
    rate_limit_per_s: int = 20
    token_throttle: bool = True  # a second new token per app key within 60 s -> EGW00133
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError(f"error_rate must be within [0, 1], got {self.error_rate}")
        if self.slow_ms < 0 or self.rate_limit_per_s < 0:
            raise ValueError("slow_ms and rate_limit_per_s must not be negative")


@dataclass
class RestStats:
    """Ground truth of the REST side (JSON-serialisable). App keys appear only as their non-secret labels."""

    requests: dict[str, dict[str, int]] = field(default_factory=dict)  # endpoint -> HTTP status -> count
    codes: dict[str, dict[str, int]] = field(default_factory=dict)  # endpoint -> msg_cd/error_code -> count
    by_key: dict[str, int] = field(default_factory=dict)  # app key label -> quotation requests received
    max_per_window: dict[str, int] = field(default_factory=dict)  # label -> most requests in any 1 s window
    rate_limited: int = 0
    faults_injected: int = 0
    approvals_issued: int = 0
    tokens_issued: int = 0
    tokens_reused: int = 0
    tokens_revoked: int = 0
    tokens_throttled: int = 0
    last_sim_time_us: int = 0

    def count(self, endpoint: str, status: int) -> None:
        by_status = self.requests.setdefault(endpoint, {})
        by_status[str(status)] = by_status.get(str(status), 0) + 1

    def code(self, endpoint: str, code: str) -> None:
        by_code = self.codes.setdefault(endpoint, {})
        by_code[code] = by_code.get(code, 0) + 1

    def total(self, endpoint: str, status: int | None = None) -> int:
        by_status = self.requests.get(endpoint, {})
        return sum(by_status.values()) if status is None else by_status.get(str(status), 0)


@dataclass
class _Token:
    token: str
    app_key: str
    issued_wall: float
    expires_wall: float


class RestState:
    """Credentials accepted, tokens and approval keys issued, request windows and counters."""

    def __init__(
        self,
        market: Market,
        clock: Callable[[], int],
        accepted: Mapping[str, str],
        faults: RestFaults,
        labels: Mapping[str, str] | None = None,
        wall_clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.market = market
        self.clock = clock
        self.accepted = dict(accepted)
        self.faults = faults
        self.labels = {k: labels.get(k, "") if labels else "" for k in self.accepted}
        for app_key, label in self.labels.items():
            if not label:
                self.labels[app_key] = "key-" + key_fingerprint(app_key)[:8]
        self.wall = wall_clock
        self.monotonic = monotonic
        self.stats = RestStats()
        self.approval_keys: dict[str, str] = {}  # approval key -> app key (the WebSocket server reads this)
        self._approval_issued: dict[str, float] = {}
        self._tokens: dict[str, _Token] = {}
        self._current: dict[str, _Token] = {}  # app key -> its latest token (reused within 6 h)
        self._last_new_issue: dict[str, float] = {}
        self._window: dict[str, deque[float]] = {}  # accepted quotation requests, last second
        self._arrivals: dict[str, deque[float]] = {}  # all quotation requests, last second
        self._rng = random.Random(faults.seed)

    def label(self, app_key: str) -> str:
        return self.labels.get(app_key, "unknown")

    # ------------------------------------------------------------------ approval keys and tokens

    def issue_approval_key(self, app_key: str) -> str:
        now = self.wall()
        for key, issued in list(self._approval_issued.items()):
            if now - issued > APPROVAL_LIFETIME_S:
                del self._approval_issued[key]
                self.approval_keys.pop(key, None)
        key = str(uuid.uuid4())
        self.approval_keys[key] = app_key
        self._approval_issued[key] = now
        self.stats.approvals_issued += 1
        return key

    def issue_token(self, app_key: str) -> _Token | None:
        """The app key's token: the current one if issued within 6 h, else a new one; None if throttled."""
        now = self.wall()
        current = self._current.get(app_key)
        if current is not None and now - current.issued_wall < TOKEN_REUSE_S and now < current.expires_wall:
            self.stats.tokens_reused += 1
            return current
        last = self._last_new_issue.get(app_key)
        if self.faults.token_throttle and last is not None and now - last < TOKEN_THROTTLE_S:
            self.stats.tokens_throttled += 1
            return None
        token = _Token(
            token=_jwt_like(self.label(app_key), now),
            app_key=app_key,
            issued_wall=now,
            expires_wall=now + TOKEN_LIFETIME_S,
        )
        self._tokens[token.token] = token
        self._current[app_key] = token
        self._last_new_issue[app_key] = now
        self.stats.tokens_issued += 1
        return token

    def revoke_token(self, app_key: str, token: str) -> bool:
        entry = self._tokens.get(token)
        if entry is None or entry.app_key != app_key:
            return False
        del self._tokens[token]
        if self._current.get(app_key) is entry:
            del self._current[app_key]
        self.stats.tokens_revoked += 1
        return True

    def expire_tokens(self) -> int:
        """Make every issued token expired now (tests of the EGW00123 path). Returns how many."""
        now = self.wall()
        for entry in self._tokens.values():
            entry.expires_wall = min(entry.expires_wall, now - 1)
        return len(self._tokens)

    def token(self, token: str) -> _Token | None:
        return self._tokens.get(token)

    # ------------------------------------------------------------------ request window and faults

    def admit(self, app_key: str) -> bool:
        """Record a quotation request; False if it exceeds the app key's requests in the last second."""
        now = self.monotonic()
        label = self.label(app_key)
        arrivals = self._arrivals.setdefault(app_key, deque())
        _prune(arrivals, now)
        arrivals.append(now)
        self.stats.by_key[label] = self.stats.by_key.get(label, 0) + 1
        if len(arrivals) > self.stats.max_per_window.get(label, 0):
            self.stats.max_per_window[label] = len(arrivals)
        limit = self.faults.rate_limit_per_s
        if limit <= 0:
            return True
        window = self._window.setdefault(app_key, deque())
        _prune(window, now)
        if len(window) >= limit:
            self.stats.rate_limited += 1
            return False
        window.append(now)
        return True

    def inject_fault(self) -> bool:
        if self.faults.error_rate <= 0.0:
            return False
        hit = self._rng.random() < self.faults.error_rate
        if hit:
            self.stats.faults_injected += 1
        return hit


def _prune(times: deque[float], now: float) -> None:
    while times and times[0] <= now - 1.0:
        times.popleft()


def _jwt_like(label: str, now: float) -> str:
    """An opaque token shaped like KIS's (a JWT); it carries no credential, only random bytes."""
    header = "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzUxMiJ9"  # {"typ":"JWT","alg":"HS512"}
    claims = orjson.dumps(
        {
            "sub": "token",
            "iss": "sim-unogw",
            "aud": label,
            "iat": int(now),
            "exp": int(now) + TOKEN_LIFETIME_S,
            "jti": secrets.token_hex(16),
        }
    )
    payload = base64.urlsafe_b64encode(claims).rstrip(b"=").decode()
    return f"{header}.{payload}.{secrets.token_urlsafe(64)}"


def kst_text(epoch_s: float) -> str:
    return dt.datetime.fromtimestamp(epoch_s, KST).strftime("%Y-%m-%d %H:%M:%S")


# ------------------------------------------------------------------------------------------ app keys

APPROVAL_KEYS: web.AppKey[dict[str, str]] = web.AppKey("kis_approval_keys", dict)
REST_STATS: web.AppKey[RestStats] = web.AppKey("kis_rest_stats", RestStats)
REST_STATE: web.AppKey[RestState] = web.AppKey("kis_rest_state", RestState)
_ENDPOINT: web.RequestKey[str] = web.RequestKey("kis_endpoint", str)


def issued_approval_keys(app: web.Application) -> dict[str, str]:
    """The live dict approval key -> app key of ``app`` (filled as ``/oauth2/Approval`` issues keys)."""
    return app[APPROVAL_KEYS]


# ------------------------------------------------------------------------------------------ responses


def _json(doc: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(doc), status=status, headers=headers, content_type="application/json", charset="utf-8"
    )


def _oauth_error(request: web.Request, code: str, status: int = 403) -> web.Response:
    _state(request).stats.code(request[_ENDPOINT], code)
    return _json({"error_description": EGW_TEXT[code], "error_code": code}, status=status)


def _gateway_error(request: web.Request, code: str, status: int = 500) -> web.Response:
    _state(request).stats.code(request[_ENDPOINT], code)
    return _json({"rt_cd": "1", "msg_cd": code, "msg1": EGW_TEXT[code]}, status=status)


def _biz_error(request: web.Request, rt_cd: str, msg_cd: str, msg1: str) -> web.Response:
    _state(request).stats.code(request[_ENDPOINT], msg_cd)
    return _json({"rt_cd": rt_cd, "msg_cd": msg_cd, "msg1": msg1})


def _ok(request: web.Request, output: Any, tr_id: str) -> web.Response:
    _state(request).stats.code(request[_ENDPOINT], MSG_OK[0])
    # Date is the simulated clock (a real server's is its wall clock): clients stamp snapshots with it.
    sim_now_s = _state(request).clock() / 1e6
    headers = {
        "tr_id": tr_id,
        "tr_cont": "D",
        "gt_uid": secrets.token_hex(16),
        "Date": formatdate(sim_now_s, usegmt=True),
    }
    return _json({"output": output, "rt_cd": "0", "msg_cd": MSG_OK[0], "msg1": MSG_OK[1]}, headers=headers)


def _state(request: web.Request) -> RestState:
    return request.app[REST_STATE]


async def _body(request: web.Request) -> dict[str, Any]:
    """The JSON object body; anything else reads as empty (then the missing appkey is what gets reported)."""
    raw = await request.read()
    try:
        doc = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        log.info("sim rest: %s body is not JSON (%d bytes)", request.path, len(raw))
        return {}
    return doc if isinstance(doc, dict) else {}


# ------------------------------------------------------------------------------------------ OAuth


def _check_key_secret(request: web.Request, app_key: object, secret: object) -> web.Response | None:
    state = _state(request)
    if not isinstance(app_key, str) or app_key not in state.accepted:
        return _oauth_error(request, "EGW00103")
    if not isinstance(secret, str) or not secrets.compare_digest(secret, state.accepted[app_key]):
        return _oauth_error(request, "EGW00105")
    return None


async def approval(request: web.Request) -> web.Response:
    body = await _body(request)
    refused = _check_key_secret(request, body.get("appkey"), body.get("secretkey"))
    if refused is not None:
        return refused
    if body.get("grant_type") != "client_credentials":
        return _oauth_error(request, "EGW00205")
    key = _state(request).issue_approval_key(body["appkey"])
    _state(request).stats.code(request[_ENDPOINT], "issued")
    return _json({"approval_key": key})


async def token_p(request: web.Request) -> web.Response:
    body = await _body(request)
    refused = _check_key_secret(request, body.get("appkey"), body.get("appsecret"))
    if refused is not None:
        return refused
    if body.get("grant_type") != "client_credentials":
        return _oauth_error(request, "EGW00205")
    state = _state(request)
    token = state.issue_token(body["appkey"])
    if token is None:
        return _oauth_error(request, "EGW00133")
    state.stats.code(request[_ENDPOINT], "issued")
    remaining = max(0, math.ceil(token.expires_wall - state.wall()))
    return _json(
        {
            "access_token": token.token,
            "access_token_token_expired": kst_text(token.expires_wall),
            "token_type": "Bearer",
            "expires_in": remaining,
        }
    )


async def revoke_p(request: web.Request) -> web.Response:
    body = await _body(request)
    refused = _check_key_secret(request, body.get("appkey"), body.get("appsecret"))
    if refused is not None:
        return refused
    token = body.get("token")
    if not isinstance(token, str) or not _state(request).revoke_token(body["appkey"], token):
        return _oauth_error(request, "EGW00121")
    _state(request).stats.code(request[_ENDPOINT], "revoked")
    return _json({"code": 200, "message": REVOKE_OK})


# ------------------------------------------------------------------------------------------ quotations


def _gate(request: web.Request, tr_id: str) -> web.Response | None:
    """Header checks, the request window and injected faults, in the order a gateway would apply them."""
    state = _state(request)
    headers = request.headers
    app_key = headers.get("appkey", "")
    if app_key not in state.accepted:
        return _gateway_error(request, "EGW00103")
    if not secrets.compare_digest(headers.get("appsecret", ""), state.accepted[app_key]):
        return _gateway_error(request, "EGW00105")
    if not state.admit(app_key):
        return _gateway_error(request, "EGW00201")
    scheme, _, token_text = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token_text.strip():
        return _gateway_error(request, "EGW00205")
    token = state.token(token_text.strip())
    if token is None or token.app_key != app_key:
        return _gateway_error(request, "EGW00121")
    if state.wall() >= token.expires_wall:
        return _gateway_error(request, "EGW00123")
    if headers.get("custtype") not in ("P", "B"):
        return _gateway_error(request, "EGW00208")
    if headers.get("tr_id") != tr_id:
        return _biz_error(request, "1", "OPSQ0002", "없는 서비스 코드 입니다")
    if state.inject_fault():
        return _gateway_error(request, "EGW00002")
    return None


def _invalid(request: web.Request, param: str) -> web.Response:
    return _biz_error(request, "2", "OPSQ2001", f"ERROR INVALID {param}")


async def inquire_price(request: web.Request) -> web.Response:
    refused = _gate(request, TR_INQUIRE_PRICE)
    if refused is not None:
        return refused
    query = request.query
    if query.get("FID_COND_MRKT_DIV_CODE") not in PRICE_MARKETS:
        return _invalid(request, "FID_COND_MRKT_DIV_CODE")
    code = query.get("FID_INPUT_ISCD", "")
    try:
        output = _state(request).market.inquire_price(code)
    except KeyError:
        return _invalid(request, "FID_INPUT_ISCD")
    return _ok(request, output, TR_INQUIRE_PRICE)


async def multi_price(request: web.Request) -> web.Response:
    """Pairs ``FID_COND_MRKT_DIV_CODE_n``/``FID_INPUT_ISCD_n`` for n = 1, 2, ... up to 30, read until the first
    missing code; one row per pair, in order. Parameters past the 30th are not read [UNCONF]."""
    refused = _gate(request, TR_MULTI_PRICE)
    if refused is not None:
        return refused
    query = request.query
    market = _state(request).market
    rows = []
    for n in range(1, MULTI_PRICE_MAX_SYMBOLS + 1):
        code = query.get(f"FID_INPUT_ISCD_{n}")
        if code is None:
            break
        if query.get(f"FID_COND_MRKT_DIV_CODE_{n}") not in PRICE_MARKETS:
            return _invalid(request, f"FID_COND_MRKT_DIV_CODE_{n}")
        try:
            rows.append(market.multi_price(code))
        except KeyError:
            return _invalid(request, f"FID_INPUT_ISCD_{n}")
    if not rows:
        return _invalid(request, "FID_INPUT_ISCD_1")
    return _ok(request, rows, TR_MULTI_PRICE)


def _digits_or_empty(value: str) -> bool:
    return value == "" or value.isdigit()


async def volume_rank(request: web.Request) -> web.Response:
    refused = _gate(request, TR_VOLUME_RANK)
    if refused is not None:
        return refused
    query = request.query
    for param in RANK_PARAMS:
        if param not in query:
            return _invalid(request, param)
    checks: tuple[tuple[str, bool], ...] = (
        ("FID_COND_MRKT_DIV_CODE", query["FID_COND_MRKT_DIV_CODE"] in RANK_MARKETS),
        ("FID_COND_SCR_DIV_CODE", query["FID_COND_SCR_DIV_CODE"] == "20171"),
        ("FID_INPUT_ISCD", len(query["FID_INPUT_ISCD"]) == 4 and query["FID_INPUT_ISCD"].isdigit()),
        ("FID_DIV_CLS_CODE", query["FID_DIV_CLS_CODE"] in ("0", "1", "2")),
        ("FID_BLNG_CLS_CODE", query["FID_BLNG_CLS_CODE"] in ("0", "1", "2", "3", "4")),
        ("FID_TRGT_CLS_CODE", set(query["FID_TRGT_CLS_CODE"]) <= {"0", "1"}),
        ("FID_TRGT_EXLS_CLS_CODE", set(query["FID_TRGT_EXLS_CLS_CODE"]) <= {"0", "1"}),
        ("FID_INPUT_PRICE_1", _digits_or_empty(query["FID_INPUT_PRICE_1"])),
        ("FID_INPUT_PRICE_2", _digits_or_empty(query["FID_INPUT_PRICE_2"])),
        ("FID_VOL_CNT", _digits_or_empty(query["FID_VOL_CNT"])),
    )
    for param, valid in checks:
        if not valid:
            return _invalid(request, param)
    rows = _state(request).market.volume_rank(limit=MAX_RANK_ROWS, blng_cls_code=query["FID_BLNG_CLS_CODE"])
    low, high = query["FID_INPUT_PRICE_1"], query["FID_INPUT_PRICE_2"]
    min_vol = query["FID_VOL_CNT"]
    if low or high or min_vol:
        rows = [
            r
            for r in rows
            if (not low or int(r["stck_prpr"]) >= int(low))
            and (not high or int(r["stck_prpr"]) <= int(high))
            and (not min_vol or int(r["acml_vol"]) >= int(min_vol))
        ]
    return _ok(request, rows[:MAX_RANK_ROWS], TR_VOLUME_RANK)


# ------------------------------------------------------------------------------------------ the app


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _account(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Counts every request by endpoint and status, adds the configured delay, logs and re-raises failures."""
    state = _state(request)
    route = request.match_info.route
    endpoint = route.name or (route.resource.canonical if route.resource is not None else "unmatched")
    request[_ENDPOINT] = endpoint
    state.stats.last_sim_time_us = state.clock()
    try:
        if state.faults.slow_ms:
            await asyncio.sleep(state.faults.slow_ms / 1000)
        response = await handler(request)
    except web.HTTPException as exc:
        state.stats.count(endpoint, exc.status)
        raise
    except Exception:
        state.stats.count(endpoint, 500)
        log.exception("sim rest: %s %s failed", request.method, endpoint)
        raise
    state.stats.count(endpoint, response.status)
    return response


def create_rest_app(
    market: Market,
    clock: Callable[[], int],
    accepted: Mapping[str, str],
    faults: RestFaults,
    *,
    labels: Mapping[str, str] | None = None,
    wall_clock: Callable[[], float] = time.time,
    monotonic: Callable[[], float] = time.monotonic,
) -> web.Application:
    """KIS's REST API over ``market``. ``accepted`` maps app key -> app secret; ``labels`` app key -> its
    non-secret label (used in the stats; a digest of the key otherwise). ``clock`` is the simulated time
    (UTC microseconds); ``wall_clock``/``monotonic`` are injectable for tests."""
    state = RestState(market, clock, accepted, faults, labels=labels, wall_clock=wall_clock, monotonic=monotonic)
    app = web.Application(middlewares=[_account])
    app[REST_STATE] = state
    app[APPROVAL_KEYS] = state.approval_keys
    app[REST_STATS] = state.stats
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotAppKeyWarning)
        # Plain string keys for callers that read the app like a dict (the simulator's ledger view).
        app["approval_keys"] = state.approval_keys
        app["stats"] = state.stats
    app.router.add_post(PATH_APPROVAL, approval, name="approval")
    app.router.add_post(PATH_TOKEN, token_p, name="token")
    app.router.add_post(PATH_REVOKE, revoke_p, name="revoke")
    app.router.add_get(PATH_INQUIRE_PRICE, inquire_price, name="inquire_price")
    app.router.add_get(PATH_VOLUME_RANK, volume_rank, name="volume_rank")
    app.router.add_get(PATH_MULTI_PRICE, multi_price, name="multi_price")
    return app

"""The KIS protocol layer: classification, record splitting, RawTick mapping, encryption. Pure, no services."""

from __future__ import annotations

import datetime as dt
import string

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.kis.protocol import (
    CONTROL_MESSAGES,
    H0STCNT0_WIDTH,
    ControlReply,
    DataFrame,
    FrameError,
    Outcome,
    PingPong,
    classify,
    decrypt_payload,
    encrypt_payload,
    render_control_reply,
    render_data_frame,
    render_pingpong,
    render_subscribe_request,
    split_records,
)
from app.kis.ticks import event_time_us, frame_to_ticks, parse_trade_message

# Real frames quoted in KIS_PROTOCOL.md section 4.4 (2023-03-24 and 2026-07-24 live captures).
LIVE_2023 = (
    "0|H0STCNT0|001|005930^112616^62700^2^400^0.64^62700.41^62700^63000^62300^62700^62600^125^9694968^607878273600^"
    "25807^15918^-9889^93.01^4614191^4291558^1^0.45^63.03^090013^3^0^090646^5^-300^100741^2^400^20230324^20^N^71292^"
    "244009^2795345^2044512^0.16^5367918^180.61^0^^62700"
)
LIVE_2026 = (
    "0|H0STCNT0|001|005930^115214^250500^5^-19500^-7.22^257548.62^266000^266500^248500^250500^250000^2^11701513^"
    "3013709268750^113664^103131^-10533^60.51^7129195^4313943^1^0.37^73.08^090025^5^-15500^090025^5^-16000^114825^2^"
    "2000^20260724^20^N^8930^67892^101158^466092^0.20^8331745^140.44^0^^266000"
)
RECORD_2023 = LIVE_2023.split("|", 3)[3].split("^")
KEY32 = "tvldhmfplvgcovaqrspclzhdotfzzequ"
IV16 = "55ce3d099479ce11"


# -------------------------------------------------------------------------------------- data frames


def test_live_single_record_maps_every_core_field() -> None:
    [tick] = parse_trade_message(LIVE_2026, received_at_us=7, app_key_id="k1", session_id="s1", frame_seq=3)
    assert tick["symbol"] == "005930"
    assert tick["business_date"] == "20260724" and tick["trade_time"] == "115214"
    assert tick["event_time_us"] == int(dt.datetime(2026, 7, 24, 2, 52, 14, tzinfo=dt.UTC).timestamp()) * 1_000_000
    assert (tick["price"], tick["trade_volume"], tick["cumulative_volume"]) == (250500, 2, 11701513)
    assert (tick["change_sign"], tick["change_rate"]) == ("5", -7.22)
    assert (tick["best_ask"], tick["best_bid"], tick["side"]) == (250500, 250000, "buy")
    assert (tick["received_at_us"], tick["app_key_id"], tick["session_id"], tick["frame_seq"]) == (7, "k1", "s1", 3)
    assert (tick["record_index"], tick["record_count"]) == (0, 1)
    assert len(tick["fields"]) == H0STCNT0_WIDTH
    assert tick["fields"][44] == "" and tick["fields"][14] == "3013709268750"


def test_multi_record_frame_yields_every_record_in_order() -> None:
    records = [list(RECORD_2023) for _ in range(5)]
    for i, r in enumerate(records):
        r[13] = str(9694968 + i)  # distinct cumulative volumes
    ticks = parse_trade_message(render_data_frame("H0STCNT0", records))
    assert [t["cumulative_volume"] for t in ticks] == [9694968 + i for i in range(5)]
    assert [t["record_index"] for t in ticks] == list(range(5))
    assert {t["record_count"] for t in ticks} == {5}


def test_extra_fields_are_kept_with_their_record() -> None:
    records = [[*RECORD_2023, "2"], [*RECORD_2023, "3"]]  # a 47th field KIS may add
    ticks = parse_trade_message(render_data_frame("H0STCNT0", records))
    assert [t["fields"][-1] for t in ticks] == ["2", "3"]
    assert all(len(t["fields"]) == 47 for t in ticks)
    assert ticks[1]["symbol"] == "005930", "the second record must start at field 47, not 46"


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("0|H0STCNT0|001|" + "^".join(RECORD_2023[:45]), "wrong_field_count"),
        ("0|H0STCNT0|002|" + "^".join(RECORD_2023 + RECORD_2023[:45]), "non_divisible"),
        ("0|H0STCNT0|00x|" + "^".join(RECORD_2023), "bad_count"),
        ("0|H0STCNT0|000|" + "^".join(RECORD_2023), "bad_count"),
        ("0|H0STCNT0|001", "bad_header"),
        ("2|H0STCNT0|001|" + "^".join(RECORD_2023), "unknown_message"),
        ("0|H0STASP0|001|" + "^".join(RECORD_2023), "unknown_tr_id"),
        ("", "empty_message"),
        ("{not json", "bad_json"),
        ('{"body": {}}', "bad_control"),
        ('{"header": {"tr_id": "H0STCNT0"}}', "bad_control"),
        ("1|H0STCNT0|001|AAAA", "no_cipher"),
    ],
)
def test_bad_frames_raise_typed_errors(message: str, reason: str) -> None:
    with pytest.raises(FrameError) as err:
        parse_trade_message(message)
    assert err.value.reason == reason
    assert err.value.detail


@pytest.mark.parametrize(
    ("index", "value", "reason", "needle"),
    [
        (2, "62,700", "bad_number", "STCK_PRPR (#2)"),
        (13, "", "bad_number", "ACML_VOL (#13)"),
        (5, "nan", "bad_number", "PRDY_CTRT (#5)"),
        (33, "20230230", "bad_date", "20230230"),
        (33, "2023-03-", "bad_date", "YYYYMMDD"),
        (1, "256100", "bad_time", "256100"),
        (0, "", "bad_symbol", "MKSC_SHRN_ISCD"),
    ],
)
def test_bad_field_values_name_the_field(index: int, value: str, reason: str, needle: str) -> None:
    record = list(RECORD_2023)
    record[index] = value
    with pytest.raises(FrameError) as err:
        parse_trade_message(render_data_frame("H0STCNT0", [record]))
    assert err.value.reason == reason
    assert needle in err.value.detail


def test_bytes_must_be_utf8() -> None:
    with pytest.raises(FrameError, match="not_utf8"):
        classify(b"0|H0STCNT0|001|\xff\xfe")
    assert isinstance(classify(LIVE_2023.encode()), DataFrame)


def test_empty_fields_survive_splitting() -> None:
    frame = classify(LIVE_2023)
    assert isinstance(frame, DataFrame)
    [record] = split_records(frame)
    assert record[44] == ""


# ------------------------------------------------------------------------------------ control replies


@pytest.mark.parametrize("msg_cd", sorted(CONTROL_MESSAGES))
def test_every_control_reply_round_trips(msg_cd: str) -> None:
    text = render_control_reply("H0STCNT0", "005930", msg_cd)
    reply = classify(text)
    assert isinstance(reply, ControlReply)
    assert (reply.msg_cd, reply.rt_cd, reply.msg1) == (msg_cd, *CONTROL_MESSAGES[msg_cd])
    assert reply.tr_key == "005930"


def test_subscribe_success_carries_iv_and_key() -> None:
    reply = classify(render_control_reply("H0STCNT0", "005930", "OPSP0000", iv=IV16, key=KEY32))
    assert isinstance(reply, ControlReply)
    assert reply.outcome is Outcome.SUCCESS
    assert (reply.iv, reply.key) == (IV16, KEY32)


@pytest.mark.parametrize(
    ("msg_cd", "outcome"),
    [
        ("OPSP0002", Outcome.ALREADY_SUBSCRIBED),
        ("OPSP0008", Outcome.MAX_SUBSCRIBE_OVER),
        ("OPSP0011", Outcome.INVALID_APPROVAL),
        ("OPSP0001", Outcome.UNSUBSCRIBED),
        ("OPSP0003", Outcome.NOT_FOUND),
        ("OPSP8996", Outcome.APPKEY_IN_USE),
        ("OPSP9999", Outcome.ERROR),
        ("OPSP8991", Outcome.ERROR),
    ],
)
def test_outcome_is_keyed_on_msg_cd(msg_cd: str, outcome: Outcome) -> None:
    reply = classify(render_control_reply("H0STCNT0", "005930", msg_cd))
    assert isinstance(reply, ControlReply)
    assert reply.outcome is outcome


def test_live_captured_replies_classify() -> None:
    in_use = (
        '{"header":{"tr_id":"(null)","tr_key":"","encrypt":"N"},"body":{"rt_cd":"9","msg_cd":"OPSP8996",'
        '"msg1":"ALREADY IN USE appkey"}}'
    )
    reply = classify(in_use)
    assert isinstance(reply, ControlReply) and reply.outcome is Outcome.APPKEY_IN_USE and reply.iv is None
    success = (
        '{"header":{"tr_id":"H0STCNT0","tr_key":"005930","encrypt":"N"},"body":{"rt_cd":"0",'
        '"msg_cd":"OPSP0000","msg1":"SUBSCRIBE SUCCESS","output":{"iv":"55ce3d099479ce11",'
        '"key":"tvldhmfplvgcovaqrspclzhdotfzzequ"}}}'
    )
    reply = classify(success)
    assert isinstance(reply, ControlReply) and reply.key == KEY32


def test_unknown_msg_cd_with_success_code_is_success_and_with_error_code_is_error() -> None:
    ok = orjson.dumps({"header": {"tr_id": "H0STCNT0"}, "body": {"rt_cd": "0", "msg_cd": "OPSP0042"}}).decode()
    bad = orjson.dumps({"header": {"tr_id": "H0STCNT0"}, "body": {"rt_cd": "1", "msg_cd": "OPSP0042"}}).decode()
    assert classify(ok).outcome is Outcome.SUCCESS  # type: ignore[union-attr]
    assert classify(bad).outcome is Outcome.ERROR  # type: ignore[union-attr]


def test_pingpong_is_recognised_and_kept_verbatim_for_the_echo() -> None:
    text = '{"header":{"tr_id":"PINGPONG","datetime":"20260724115214"}}'
    msg = classify(text)
    assert isinstance(msg, PingPong)
    assert msg.text == text and msg.datetime == "20260724115214"
    assert isinstance(classify(render_pingpong("20260101090000")), PingPong)


def test_subscribe_request_has_the_documented_shape() -> None:
    req = orjson.loads(render_subscribe_request("APPROVAL", "H0STCNT0", "005930", subscribe=False))
    assert req == {
        "header": {"approval_key": "APPROVAL", "custtype": "P", "tr_type": "2", "content-type": "utf-8"},
        "body": {"input": {"tr_id": "H0STCNT0", "tr_key": "005930"}},
    }


# ---------------------------------------------------------------------------------------- encryption


def test_encrypted_frame_decrypts_with_the_subscription_key() -> None:
    plain = "^".join(RECORD_2023)
    frame = classify(
        render_data_frame("H0STCNT0", [RECORD_2023], encrypted_payload=encrypt_payload(plain, KEY32, IV16))
    )
    assert isinstance(frame, DataFrame) and frame.encrypted
    [tick] = frame_to_ticks(frame, received_at_us=0, app_key_id="", session_id="", frame_seq=0, cipher=(KEY32, IV16))
    assert tick["fields"] == RECORD_2023


def test_wrong_key_or_garbage_is_a_decrypt_error() -> None:
    cipher_text = encrypt_payload("^".join(RECORD_2023), KEY32, IV16)
    with pytest.raises(FrameError, match="decrypt_failed"):
        decrypt_payload(cipher_text, "x" * 32, IV16)
    with pytest.raises(FrameError, match="not Base64"):
        decrypt_payload("!!!", KEY32, IV16)
    with pytest.raises(FrameError, match="32/16 bytes"):
        decrypt_payload(cipher_text, "short", IV16)


# ---------------------------------------------------------------------------------------- properties

_codes = st.text(alphabet=string.digits + "ABCDEFGHJKLMNPQRSTVWXYZ", min_size=6, max_size=6)
_field_text = st.text(alphabet=st.characters(blacklist_characters="^|", blacklist_categories=("Cs",)), max_size=12)


@st.composite
def trade_records(draw: st.DrawFn) -> list[str]:
    record = [draw(_field_text) for _ in range(H0STCNT0_WIDTH)]
    day = draw(st.dates(min_value=dt.date(2000, 1, 1), max_value=dt.date(2099, 12, 31)))
    t = draw(st.times())
    record[0] = draw(_codes)
    record[1] = t.strftime("%H%M%S")
    record[33] = day.strftime("%Y%m%d")
    for i in (2, 10, 11, 12, 13):
        record[i] = str(draw(st.integers(min_value=-(2**63), max_value=2**63 - 1)))
    record[5] = f"{draw(st.integers(min_value=-3000, max_value=3000)) / 100:.2f}"
    return record


@settings(max_examples=300, deadline=None)
@given(records=st.lists(trade_records(), min_size=1, max_size=6), extra=st.lists(_field_text, max_size=2))
def test_rendered_frames_parse_back_identically(records: list[list[str]], extra: list[str]) -> None:
    records = [r + extra for r in records]
    ticks = parse_trade_message(render_data_frame("H0STCNT0", records), frame_seq=9)
    assert [t["fields"] for t in ticks] == records
    for tick, record in zip(ticks, records, strict=True):
        assert tick["symbol"] == record[0]
        assert tick["price"] == int(record[2]) and tick["cumulative_volume"] == int(record[13])
        assert tick["change_rate"] == float(record[5])
        day = dt.datetime.strptime(record[33] + record[1], "%Y%m%d%H%M%S").replace(
            tzinfo=dt.timezone(dt.timedelta(hours=9))
        )
        assert tick["event_time_us"] == int(day.timestamp()) * 1_000_000


def test_event_time_is_kst() -> None:
    assert event_time_us("20260102", "090000") == int(dt.datetime(2026, 1, 2, 0, 0, tzinfo=dt.UTC).timestamp() * 1e6)
